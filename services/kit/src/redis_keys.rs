//! Redis names: every key and pub/sub channel ChatAI uses is spelled here,
//! through the one [`Namespace`] of a deployment, so that deployments sharing
//! a Redis server never see each other's data.
//!
//! Keys live in the deployment's own database (the number in its
//! `CHATAI_REDIS_URL`) under its prefix (`CHATAI_REDIS_PREFIX`, `chatai` by
//! default): the database and the prefix keep them apart. Pub/sub channels
//! ignore the database number — a channel is server-wide — so channels are
//! named by the deployment's id as well: a random id the deployment keeps in
//! its own database at `{prefix}:deployment`, created by the first process to
//! start (`SET NX`) and read by every later one. Two deployments on two
//! databases of one server (staging and production, say) have two ids and so
//! two sets of channels, whatever their prefixes; and every live message
//! carries the id of the deployment that published it, so a relay drops what
//! is not its own (see `events::redis`).
//!
//! Names, for prefix `p`, deployment id `d`, service `svc` and recipient `r`
//! (`user:42`):
//! - `p:deployment` — the deployment id, kept without expiry;
//! - `p:svc:seq:r`, `p:svc:base:r`, `p:svc:log:r`, `p:svc:seen:r` — the
//!   recipient's event log at that service ([`Namespace::log_key`]);
//! - channel `p:d:svc:live` — the service's live deliveries
//!   ([`Namespace::live_channel`]);
//! - `p:presence:operators`, `p:presence:gateways`, `p:presence:revisions`,
//!   `p:presence:timers`, `p:presence:version` — the presence state every
//!   presence replica shares ([`Namespace::presence_key`], described in
//!   the presence crate's `state::redis`).
//! - `p:gateway:connections:r` — a user's or operator's open connections on
//!   every gateway, a sorted set by opening time
//!   ([`Namespace::connections_key`]); `p:gateway:leases` — each gateway's
//!   lease, a hash ([`Namespace::gateway_leases_key`]); channel
//!   `p:d:gateway:evict` — connections to close for the limit
//!   ([`Namespace::evict_channel`]).
//!
//! Other parts add their own names as methods here, built with
//! [`Namespace::key`] and [`Namespace::channel`], never by formatting the
//! prefix themselves.

use std::fmt;
use std::sync::Arc;

use crate::events::Recipient;

/// Sets the deployment id when there is none, and returns the one stored.
/// KEYS: the deployment key. ARGV: a fresh id.
const RESOLVE: &str = r#"
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return redis.call('GET', KEYS[1])
"#;

/// The names of one deployment in Redis: its key prefix and its id.
#[derive(Clone, PartialEq, Eq)]
pub struct Namespace {
    prefix: Arc<str>,
    deployment: Arc<str>,
}

/// The keys of one recipient's event log at one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogKey {
    /// The last position handed out.
    Seq,
    /// The position before the log's first event.
    Base,
    /// The stream of events.
    Log,
    /// Where the recipient's connections were when last released.
    Seen,
}

impl LogKey {
    fn as_str(self) -> &'static str {
        match self {
            LogKey::Seq => "seq",
            LogKey::Base => "base",
            LogKey::Log => "log",
            LogKey::Seen => "seen",
        }
    }
}

/// The keys of the presence state (see the presence crate's `state::redis`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceKey {
    /// Hash: operator id → the operator's record.
    Operators,
    /// Hash: gateway id → the operator connections it reported.
    Gateways,
    /// Hash: `o:{operator}` / `g:{gateway}` → the record's revision.
    Revisions,
    /// Sorted set: grace periods and leases, scored by when they end.
    Timers,
    /// The last version handed to an announced change.
    Version,
}

impl PresenceKey {
    fn as_str(self) -> &'static str {
        match self {
            PresenceKey::Operators => "operators",
            PresenceKey::Gateways => "gateways",
            PresenceKey::Revisions => "revisions",
            PresenceKey::Timers => "timers",
            PresenceKey::Version => "version",
        }
    }
}

/// Failures finding or checking a deployment's id.
#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("Redis returned no deployment id at {key}")]
    Missing { key: String },
    #[error(
        "the deployment id at {key} is now {stored}, this process uses {ours} \
         (was the database flushed?): restart this process"
    )]
    Changed {
        key: String,
        ours: String,
        stored: String,
    },
}

impl Namespace {
    /// The namespace of the deployment whose database `connection` is on,
    /// under `prefix`: its id is read from that database, and created there
    /// when this is the deployment's first start.
    pub async fn resolve<C>(connection: &mut C, prefix: &str) -> Result<Self, NamespaceError>
    where
        C: redis::aio::ConnectionLike + Send,
    {
        let key = deployment_key(prefix);
        let fresh = uuid::Uuid::new_v4().simple().to_string();
        let stored: Option<String> = redis::Script::new(RESOLVE)
            .key(&key)
            .arg(&fresh)
            .invoke_async(connection)
            .await?;
        let deployment = stored.ok_or(NamespaceError::Missing { key })?;
        Ok(Namespace::new(prefix, &deployment))
    }

    /// A namespace with a known id (tests, tools reading another
    /// deployment's names).
    pub fn new(prefix: &str, deployment: &str) -> Self {
        Namespace {
            prefix: prefix.into(),
            deployment: deployment.into(),
        }
    }

    /// Confirms that the database still holds this namespace's id, putting
    /// it back if it is gone (an evicted or deleted key): a process whose id
    /// is no longer the deployment's would publish and listen where the other
    /// replicas do not, so it reports [`NamespaceError::Changed`] (and its
    /// health check fails) until restarted.
    pub async fn check<C>(&self, connection: &mut C) -> Result<(), NamespaceError>
    where
        C: redis::aio::ConnectionLike + Send,
    {
        let key = self.deployment_key();
        let stored: Option<String> = redis::Script::new(RESOLVE)
            .key(&key)
            .arg(self.deployment.as_ref())
            .invoke_async(connection)
            .await?;
        match stored {
            Some(stored) if *stored == *self.deployment => Ok(()),
            Some(stored) => Err(NamespaceError::Changed {
                key,
                ours: self.deployment.to_string(),
                stored,
            }),
            None => Err(NamespaceError::Missing { key }),
        }
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The deployment's id.
    pub fn deployment(&self) -> &str {
        &self.deployment
    }

    /// Where the deployment id is kept.
    pub fn deployment_key(&self) -> String {
        deployment_key(&self.prefix)
    }

    /// A key of this deployment: `{prefix}:{part}:{part}…`. Keys are also
    /// apart by database, so they do not carry the deployment id (data
    /// stays readable should the id be lost).
    pub fn key(&self, parts: &[&str]) -> String {
        join(&[&self.prefix], parts)
    }

    /// A pub/sub channel of this deployment: `{prefix}:{id}:{part}…`.
    pub fn channel(&self, parts: &[&str]) -> String {
        join(&[&self.prefix, &self.deployment], parts)
    }

    /// A key of `recipient`'s event log at `service`.
    pub fn log_key(&self, service: &str, kind: LogKey, recipient: &Recipient) -> String {
        self.key(&[service, kind.as_str(), &recipient.to_string()])
    }

    /// A `SCAN MATCH` pattern for every event log (stream) of `service`.
    pub fn log_pattern(&self, service: &str) -> String {
        format!(
            "{}:log:*",
            glob_escape(&self.key(&[service])) // the prefix may hold `*`, `?`, `[`
        )
    }

    /// A key of the presence state.
    pub fn presence_key(&self, kind: PresenceKey) -> String {
        self.key(&["presence", kind.as_str()])
    }

    /// The channel of `service`'s live deliveries.
    pub fn live_channel(&self, service: &str) -> String {
        self.channel(&[service, "live"])
    }

    /// `principal`'s open connections on every gateway (the per-user limit).
    pub fn connections_key(&self, principal: &Recipient) -> String {
        self.key(&["gateway", "connections", &principal.to_string()])
    }

    /// Every gateway's lease: until when its connections count.
    pub fn gateway_leases_key(&self) -> String {
        self.key(&["gateway", "leases"])
    }

    /// The channel naming connections their gateway must close (the limit).
    pub fn evict_channel(&self) -> String {
        self.channel(&["gateway", "evict"])
    }
}

impl fmt::Debug for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Namespace({}, deployment {})",
            self.prefix, self.deployment
        )
    }
}

fn deployment_key(prefix: &str) -> String {
    format!("{prefix}:deployment")
}

fn join(head: &[&str], parts: &[&str]) -> String {
    head.iter()
        .chain(parts)
        .copied()
        .collect::<Vec<_>>()
        .join(":")
}

/// `text` matched literally by a Redis glob pattern.
fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names the event log and its documentation use.
    #[test]
    fn names() {
        let names = Namespace::new("chatai", "d1");
        assert_eq!(names.deployment_key(), "chatai:deployment");
        assert_eq!(
            names.log_key("chat", LogKey::Seq, &Recipient::User(42)),
            "chatai:chat:seq:user:42"
        );
        assert_eq!(
            names.log_key("handoff", LogKey::Seen, &Recipient::Operator(7)),
            "chatai:handoff:seen:operator:7"
        );
        assert_eq!(names.live_channel("chat"), "chatai:d1:chat:live");
        assert_eq!(
            names.presence_key(PresenceKey::Operators),
            "chatai:presence:operators"
        );
        assert_eq!(
            names.presence_key(PresenceKey::Version),
            "chatai:presence:version"
        );
        assert_eq!(
            names.connections_key(&Recipient::User(42)),
            "chatai:gateway:connections:user:42"
        );
        assert_eq!(names.gateway_leases_key(), "chatai:gateway:leases");
        assert_eq!(names.evict_channel(), "chatai:d1:gateway:evict");
        assert_eq!(names.log_pattern("chat"), "chatai:chat:log:*");
        assert_eq!(
            Namespace::new("a*[b]", "d").log_pattern("chat"),
            "a\\*\\[b\\]:chat:log:*"
        );
    }

    /// Same prefix, another deployment: other channels, the same key names
    /// (keys are apart by database).
    #[test]
    fn channels_carry_the_deployment() {
        let a = Namespace::new("chatai", "a");
        let b = Namespace::new("chatai", "b");
        assert_ne!(a.live_channel("chat"), b.live_channel("chat"));
        assert_eq!(a.key(&["x"]), b.key(&["x"]));
    }

    fn redis_url() -> String {
        std::env::var("CHATAI_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
    }

    /// Every process of a deployment finds the id the first one made; a
    /// lost id is put back by the next check; a replaced one is reported.
    #[tokio::test]
    async fn the_deployment_id_is_made_once_and_checked() {
        let client = redis::Client::open(redis_url()).expect("a Redis URL");
        let mut connection = client
            .get_multiplexed_async_connection()
            .await
            .expect("Redis at CHATAI_TEST_REDIS_URL");
        let prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
        let first = Namespace::resolve(&mut connection, &prefix)
            .await
            .expect("resolved");
        let second = Namespace::resolve(&mut connection, &prefix)
            .await
            .expect("resolved");
        assert_eq!(first, second);
        first.check(&mut connection).await.expect("still ours");

        let _: () = redis::cmd("DEL")
            .arg(first.deployment_key())
            .query_async(&mut connection)
            .await
            .expect("DEL");
        first.check(&mut connection).await.expect("put back");
        let third = Namespace::resolve(&mut connection, &prefix)
            .await
            .expect("resolved");
        assert_eq!(third, first);

        let _: () = redis::cmd("SET")
            .arg(first.deployment_key())
            .arg("another")
            .query_async(&mut connection)
            .await
            .expect("SET");
        let changed = first.check(&mut connection).await;
        assert!(
            matches!(changed, Err(NamespaceError::Changed { ref stored, .. }) if stored == "another"),
            "{changed:?}"
        );
        let _: () = redis::cmd("DEL")
            .arg(first.deployment_key())
            .query_async(&mut connection)
            .await
            .expect("DEL");
    }
}
