//! The per-user connection limit across gateways (`CHATAI_MAX_CONNECTIONS_PER_USER`,
//! 5): with Redis, each user's and operator's open connections on every
//! gateway are one sorted set, by opening time; a connection that makes it
//! one too many closes the oldest, wherever it is, with 4004 as the local
//! rule does. Without Redis (one gateway) the registry's local rule is the
//! whole limit; with it, the local rule still holds on each gateway.
//!
//! How (names in `chatai_kit::redis_keys`):
//! - an entry is the connection's name (`{gateway}:{n}`), scored by the
//!   Redis clock at its opening (µs); one Lua script adds it, drops the
//!   entries of gateways whose lease lapsed, and removes the oldest over the
//!   limit, publishing each on the deployment's evict channel — atomically,
//!   so two gateways adding at once never both keep six;
//! - each gateway renews its lease (in one hash, for the script to read)
//!   every 5 s for 15 s, the timing of its operator leases at presence, so
//!   a crashed gateway's entries stop counting within 15 s;
//! - every gateway listens on the evict channel and closes the named
//!   connections that are its own (the adding gateway also closes its own at
//!   once, from the script's answer);
//! - a closed connection's entry is removed.
//!
//! One task owns the Redis connections, behind a bounded queue: a connection
//! never waits for Redis, and while Redis is away the local rule alone
//! applies (a full queue drops the report, counted in
//! `chatai_gateway_limit_reports_dropped_total`).

use std::sync::Arc;
use std::time::Duration;

use chatai_kit::events::Recipient;
use chatai_kit::redis_keys::Namespace;
use futures::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::close::CloseReason;
use crate::registry::{ConnId, Registry};

/// Reports queued for the task.
const QUEUE: usize = 8192;
/// How often the lease is renewed (as the operator leases at presence).
const RENEW_EVERY: Duration = Duration::from_secs(5);
/// How long a lease lasts without renewal.
const LEASE: Duration = Duration::from_secs(15);
/// How long a user's set lives after its last change (entries of a crashed
/// gateway that nobody touched again go with it).
const SET_TTL: Duration = Duration::from_secs(24 * 3600);
/// The longest wait between two tries to reach Redis.
const RECONNECT_DELAY_MAX: Duration = Duration::from_secs(3);

/// Adds a connection, drops lapsed gateways' entries, removes (and
/// announces) the oldest over the limit; returns those removed.
/// KEYS: the principal's set, the leases hash. ARGV: the connection's name,
/// the limit, this gateway's id, the lease in ms, the evict channel, the
/// set's lifetime in ms.
const ADD: &str = r#"
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('HSET', KEYS[2], ARGV[3], now_ms + tonumber(ARGV[4]))
for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local gateway = string.match(member, '^(.*):[^:]*$') or member
  local lease = tonumber(redis.call('HGET', KEYS[2], gateway) or '0')
  if lease < now_ms then
    redis.call('ZREM', KEYS[1], member)
  end
end
redis.call('ZADD', KEYS[1], now_us, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
local count = redis.call('ZCARD', KEYS[1])
local limit = tonumber(ARGV[2])
local evicted = {}
if count > limit then
  evicted = redis.call('ZRANGE', KEYS[1], 0, count - limit - 1)
  for _, member in ipairs(evicted) do
    redis.call('ZREM', KEYS[1], member)
    redis.call('PUBLISH', ARGV[5], member)
  end
end
return evicted
"#;

/// Renews a gateway's lease, and forgets leases lapsed long ago.
/// KEYS: the leases hash. ARGV: the gateway's id, the lease in ms.
const RENEW: &str = r#"
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], now_ms + tonumber(ARGV[2]))
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if tonumber(all[i + 1]) < now_ms - 86400000 then
    redis.call('HDEL', KEYS[1], all[i])
  end
end
return 1
"#;

/// Redis for the limit across gateways (the services' `CHATAI_REDIS_URL`
/// and `CHATAI_REDIS_PREFIX`).
#[derive(clap::Args, Clone)]
pub struct LimitRedis {
    /// Redis, for the per-user connection limit across gateways; unset =
    /// the limit is per gateway.
    #[arg(long = "redis-url", env = "CHATAI_REDIS_URL", hide_env_values = true)]
    pub url: Option<String>,
    /// Prefix of every Redis key and channel.
    #[arg(
        long = "redis-prefix",
        env = "CHATAI_REDIS_PREFIX",
        default_value = "chatai"
    )]
    pub prefix: String,
}

/// The clap defaults.
impl Default for LimitRedis {
    fn default() -> Self {
        chatai_kit::config::clap_defaults()
    }
}

/// Shown without the credentials in the URL.
impl std::fmt::Debug for LimitRedis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LimitRedis")
            .field(
                "url",
                &self.url.as_deref().map(chatai_kit::config::redact_url),
            )
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl LimitRedis {
    /// The URL, when one is set (not empty).
    pub fn url(&self) -> Option<&str> {
        self.url.as_deref().filter(|url| !url.trim().is_empty())
    }
}

enum Report {
    Opened { principal: Recipient, id: ConnId },
    Closed { principal: Recipient, id: ConnId },
}

/// Where connections report their opening and closing; does nothing
/// without Redis.
#[derive(Clone, Debug, Default)]
pub struct SharedLimit {
    reports: Option<mpsc::Sender<Report>>,
}

impl std::fmt::Debug for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Report::Opened { principal, id } => write!(f, "Opened({principal}, {id})"),
            Report::Closed { principal, id } => write!(f, "Closed({principal}, {id})"),
        }
    }
}

impl SharedLimit {
    /// The limit per gateway only (no Redis).
    pub fn local() -> Self {
        SharedLimit { reports: None }
    }

    /// The limit across gateways through the Redis at `url`: returns the
    /// handle and the task (which runs until `stop`, then sends what is
    /// still queued).
    pub fn start(
        url: &str,
        prefix: &str,
        limit: usize,
        registry: Arc<Registry>,
        stop: CancellationToken,
    ) -> Result<(Self, impl Future<Output = ()> + Send + 'static), redis::RedisError> {
        let client = redis::Client::open(url)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = Task {
            client,
            prefix: prefix.to_owned(),
            limit: limit.max(1),
            registry,
            reports: rx,
        };
        Ok((SharedLimit { reports: Some(tx) }, task.run(stop)))
    }

    /// Connection `id` of `principal` opened on this gateway.
    pub fn opened(&self, principal: &Recipient, id: ConnId) {
        self.report(Report::Opened {
            principal: principal.clone(),
            id,
        });
    }

    /// Connection `id` of `principal` closed.
    pub fn closed(&self, principal: &Recipient, id: ConnId) {
        self.report(Report::Closed {
            principal: principal.clone(),
            id,
        });
    }

    fn report(&self, report: Report) {
        if let Some(reports) = &self.reports
            && reports.try_send(report).is_err()
        {
            metrics::counter!("chatai_gateway_limit_reports_dropped_total").increment(1);
        }
    }
}

struct Task {
    client: redis::Client,
    prefix: String,
    limit: usize,
    registry: Arc<Registry>,
    reports: mpsc::Receiver<Report>,
}

impl Task {
    async fn run(mut self, stop: CancellationToken) {
        // Connect (and learn the deployment's names) before anything else;
        // reports wait in the queue meanwhile.
        let mut delays = reconnect_delays();
        let (mut connection, names) = loop {
            match self.connect().await {
                Ok(connected) => break connected,
                Err(err) => {
                    tracing::warn!(cause = %err, "connection limit across gateways: cannot reach Redis yet")
                }
            }
            let delay = delays.next().unwrap_or(RECONNECT_DELAY_MAX);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        };
        let listener = tokio::spawn(listen(
            self.client.clone(),
            names.evict_channel(),
            self.registry.clone(),
            stop.clone(),
        ));
        let mut renew = tokio::time::interval(RENEW_EVERY);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = renew.tick() => self.renew(&mut connection, &names).await,
                report = self.reports.recv() => match report {
                    Some(report) => self.apply(&mut connection, &names, report).await,
                    None => break,
                },
            }
        }
        // What the closing connections reported last.
        while let Ok(report) = self.reports.try_recv() {
            self.apply(&mut connection, &names, report).await;
        }
        let _ = listener.await;
    }

    async fn connect(&self) -> redis::RedisResult<(ConnectionManager, Namespace)> {
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500))
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(3)));
        let mut connection =
            ConnectionManager::new_with_config(self.client.clone(), config).await?;
        let names = Namespace::resolve(&mut connection, &self.prefix)
            .await
            .map_err(|err| match err {
                chatai_kit::redis_keys::NamespaceError::Redis(err) => err,
                other => redis::RedisError::from((
                    redis::ErrorKind::Client,
                    "deployment id",
                    other.to_string(),
                )),
            })?;
        Ok((connection, names))
    }

    async fn renew(&self, connection: &mut ConnectionManager, names: &Namespace) {
        let renewed: redis::RedisResult<i64> = redis::Script::new(RENEW)
            .key(names.gateway_leases_key())
            .arg(self.registry.gateway_id())
            .arg(LEASE.as_millis() as u64)
            .invoke_async(connection)
            .await;
        if let Err(err) = renewed {
            tracing::warn!(cause = %err, "connection limit across gateways: cannot renew the lease");
        }
    }

    async fn apply(&self, connection: &mut ConnectionManager, names: &Namespace, report: Report) {
        match report {
            Report::Opened { principal, id } => {
                let name = self.registry.connection_name(id);
                let evicted: redis::RedisResult<Vec<String>> = redis::Script::new(ADD)
                    .key(names.connections_key(&principal))
                    .key(names.gateway_leases_key())
                    .arg(&name)
                    .arg(self.limit)
                    .arg(self.registry.gateway_id())
                    .arg(LEASE.as_millis() as u64)
                    .arg(names.evict_channel())
                    .arg(SET_TTL.as_millis() as u64)
                    .invoke_async(connection)
                    .await;
                match evicted {
                    Ok(evicted) => {
                        for name in evicted {
                            close_if_ours(&self.registry, &name);
                        }
                    }
                    Err(err) => {
                        tracing::warn!(conn = %name, cause = %err, "connection limit across gateways: cannot count a connection")
                    }
                }
            }
            Report::Closed { principal, id } => {
                let removed: redis::RedisResult<i64> = redis::cmd("ZREM")
                    .arg(names.connections_key(&principal))
                    .arg(self.registry.connection_name(id))
                    .query_async(connection)
                    .await;
                if let Err(err) = removed {
                    tracing::warn!(cause = %err, "connection limit across gateways: cannot remove a connection");
                }
            }
        }
    }
}

/// Closes (4004) the connection `name` names, when it is this gateway's.
fn close_if_ours(registry: &Registry, name: &str) {
    let Some((gateway, id)) = name.rsplit_once(':') else {
        return;
    };
    if gateway != registry.gateway_id() {
        return;
    }
    if let Ok(id) = id.parse::<ConnId>() {
        registry.stop_connection(id, CloseReason::Replaced);
    }
}

/// Delays between tries to reach Redis: from 100 ms up to 3 s, jittered,
/// forever.
fn reconnect_delays() -> backon::ExponentialBackoff {
    backon::BackoffBuilder::build(
        backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(RECONNECT_DELAY_MAX)
            .with_jitter()
            .without_max_times(),
    )
}

/// Follows the evict channel until `stop`, resubscribing after a loss (an
/// eviction announced meanwhile is missed: that connection stays open, over
/// the limit, until it closes).
async fn listen(
    client: redis::Client,
    channel: String,
    registry: Arc<Registry>,
    stop: CancellationToken,
) {
    let mut delays = reconnect_delays();
    loop {
        let subscribed = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            redis::RedisResult::Ok(pubsub)
        };
        let subscribed = tokio::select! {
            _ = stop.cancelled() => return,
            subscribed = subscribed => subscribed,
        };
        match subscribed {
            Ok(mut pubsub) => {
                delays = reconnect_delays();
                let mut messages = pubsub.on_message();
                loop {
                    let message = tokio::select! {
                        _ = stop.cancelled() => return,
                        message = messages.next() => message,
                    };
                    let Some(message) = message else { break };
                    if let Ok(name) = std::str::from_utf8(message.get_payload_bytes()) {
                        close_if_ours(&registry, name);
                    }
                }
                tracing::warn!(%channel, "lost the connection-limit channel; resubscribing");
            }
            Err(err) => {
                tracing::warn!(%channel, cause = %err, "cannot subscribe to the connection-limit channel yet")
            }
        }
        let delay = delays.next().unwrap_or(RECONNECT_DELAY_MAX);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}
