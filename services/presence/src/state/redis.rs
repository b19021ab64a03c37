//! The presence state in Redis, shared by every presence replica of a
//! deployment and kept across their restarts. Keys, named by the
//! deployment's [`Namespace`] (prefix `p`):
//! - `p:presence:operators` — hash, operator id → the operator's record
//!   (JSON: chosen status, online, connections, load, grace deadline, …);
//! - `p:presence:gateways` — hash, gateway id → its operator connections,
//!   lease deadline and report order (JSON);
//! - `p:presence:revisions` — hash, `o:{operator}` / `g:{gateway}` → the
//!   record's revision, one more with every write;
//! - `p:presence:timers` — sorted set of `g:{operator}` (grace periods) and
//!   `l:{gateway}` (leases), scored by when they end (ms);
//! - `p:presence:version` — the last version handed to an announced change.
//!
//! Reads are one `MULTI`/`EXEC` each (a record with its revision, or every
//! operator with the version, as of one moment). A commit is one Lua script
//! (`COMMIT`): it checks every revision read, and the version when the
//! change hands out versions, then writes the records and timers and
//! publishes the change's `operator_status_change`s on presence's live
//! channel — or, if anything moved, does nothing and says so. Two replicas
//! deciding on the same operator at once therefore never lose a change, and
//! each change is announced once, by the replica that made it, in the order
//! the changes were made; every replica's event relay passes it on.

use std::time::Duration;

use chatai_kit::events::Recipient;
use chatai_kit::events::redis::live_message;
use chatai_kit::identity::Role;
use chatai_kit::redis_keys::{Namespace, PresenceKey};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{
    Commit, Committed, GatewayRecord, OperatorRecord, OperatorsRead, StateError, StateStore, Timer,
    Versioned, decode,
};

/// Applies a change if nothing it read has changed. KEYS: revisions,
/// operators, gateways, timers, version. ARGV: the version as read (`''`:
/// not checked), the new version (`''`: unchanged); the number of reads,
/// then `field revision` for each; the number of writes, then `kind id
/// record` for each (`o` operator or `g` gateway; an empty record deletes);
/// the number of timers, then `member ends` for each (empty: cleared); the
/// channel, the number of messages, then each message. Returns 1 when
/// applied, 0 on a conflict.
const COMMIT: &str = r#"
local at = 0
local function take()
  at = at + 1
  return ARGV[at]
end
local read_version = take()
local new_version = take()
if read_version ~= '' and (redis.call('GET', KEYS[5]) or '0') ~= read_version then
  return 0
end
local reads = tonumber(take())
for _ = 1, reads do
  local field = take()
  local revision = take()
  if (redis.call('HGET', KEYS[1], field) or '0') ~= revision then
    return 0
  end
end
if new_version ~= '' then
  redis.call('SET', KEYS[5], new_version)
end
local writes = tonumber(take())
for _ = 1, writes do
  local kind = take()
  local id = take()
  local record = take()
  local hash = KEYS[3]
  if kind == 'o' then hash = KEYS[2] end
  local field = kind .. ':' .. id
  if record == '' then
    redis.call('HDEL', hash, id)
    redis.call('HDEL', KEYS[1], field)
  else
    redis.call('HSET', hash, id, record)
    redis.call('HINCRBY', KEYS[1], field, 1)
  end
end
local timers = tonumber(take())
for _ = 1, timers do
  local member = take()
  local ends = take()
  if ends == '' then
    redis.call('ZREM', KEYS[4], member)
  else
    redis.call('ZADD', KEYS[4], ends, member)
  end
end
local channel = take()
local messages = tonumber(take())
for _ = 1, messages do
  redis.call('PUBLISH', channel, take())
end
return 1
"#;

/// The service whose live channel carries the announcements.
const SERVICE: &str = "presence";

/// The presence state in Redis.
pub(crate) struct RedisState {
    connection: ConnectionManager,
    names: Namespace,
    operators: String,
    gateways: String,
    revisions: String,
    timers: String,
    version: String,
    commit: redis::Script,
}

impl RedisState {
    /// Connects to `url` and finds the deployment's names under `prefix`
    /// (the same [`Namespace`] as the event log's).
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, StateError> {
        let client = redis::Client::open(url)?;
        // Fail fast while Redis is away, as the event log does: callers get
        // UNAVAILABLE and retry, health says so.
        let reconnect = ConnectionManagerConfig::new()
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500))
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(3)));
        let mut connection = ConnectionManager::new_with_config(client, reconnect).await?;
        let names = Namespace::resolve(&mut connection, prefix).await?;
        Ok(RedisState {
            operators: names.presence_key(PresenceKey::Operators),
            gateways: names.presence_key(PresenceKey::Gateways),
            revisions: names.presence_key(PresenceKey::Revisions),
            timers: names.presence_key(PresenceKey::Timers),
            version: names.presence_key(PresenceKey::Version),
            connection,
            names,
            commit: redis::Script::new(COMMIT),
        })
    }

    fn connection(&self) -> ConnectionManager {
        self.connection.clone()
    }
}

fn operator_field(id: i64) -> String {
    format!("o:{id}")
}

fn gateway_field(id: &str) -> String {
    format!("g:{id}")
}

fn encode<T: serde::Serialize>(record: &T) -> Result<Vec<u8>, StateError> {
    serde_json::to_vec(record).map_err(StateError::Encode)
}

#[async_trait::async_trait]
impl StateStore for RedisState {
    async fn gateway(&self, gateway: &str) -> Result<Versioned<GatewayRecord>, StateError> {
        let (revision, record): (Option<u64>, Option<Vec<u8>>) = redis::pipe()
            .atomic()
            .hget(&self.revisions, gateway_field(gateway))
            .hget(&self.gateways, gateway)
            .query_async(&mut self.connection())
            .await?;
        Ok(Versioned {
            revision: revision.unwrap_or(0),
            record: record
                .map(|bytes| decode("gateway", gateway, &bytes))
                .transpose()?,
        })
    }

    async fn operators(&self, ids: &[i64]) -> Result<OperatorsRead, StateError> {
        if ids.is_empty() {
            let clock: Option<u64> = redis::cmd("GET")
                .arg(&self.version)
                .query_async(&mut self.connection())
                .await?;
            return Ok(OperatorsRead {
                operators: Default::default(),
                clock: clock.unwrap_or(0),
            });
        }
        let fields: Vec<String> = ids.iter().map(|id| operator_field(*id)).collect();
        let (clock, revisions, records): (Option<u64>, Vec<Option<u64>>, Vec<Option<Vec<u8>>>) =
            redis::pipe()
                .atomic()
                .get(&self.version)
                .cmd("HMGET")
                .arg(&self.revisions)
                .arg(&fields)
                .cmd("HMGET")
                .arg(&self.operators)
                .arg(ids)
                .query_async(&mut self.connection())
                .await?;
        let mut operators = std::collections::BTreeMap::new();
        for ((id, revision), record) in ids.iter().zip(revisions).zip(records) {
            let record = record
                .map(|bytes| decode("operator", id, &bytes))
                .transpose()?;
            operators.insert(
                *id,
                Versioned {
                    revision: revision.unwrap_or(0),
                    record,
                },
            );
        }
        Ok(OperatorsRead {
            operators,
            clock: clock.unwrap_or(0),
        })
    }

    async fn commit(&self, commit: Commit) -> Result<Committed, StateError> {
        let mut script = self.commit.prepare_invoke();
        script
            .key(&self.revisions)
            .key(&self.operators)
            .key(&self.gateways)
            .key(&self.timers)
            .key(&self.version);
        match commit.clock {
            Some((read, new)) => script.arg(read).arg(new),
            None => script.arg("").arg(""),
        };
        script.arg(commit.read_gateways.len() + commit.read_operators.len());
        for (id, revision) in &commit.read_gateways {
            script.arg(gateway_field(id)).arg(revision);
        }
        for (id, revision) in &commit.read_operators {
            script.arg(operator_field(*id)).arg(revision);
        }
        script.arg(commit.gateways.len() + commit.operators.len());
        for (id, record) in &commit.gateways {
            let record = match record {
                Some(record) => encode(record)?,
                None => Vec::new(),
            };
            script.arg("g").arg(id).arg(record);
        }
        for (id, record) in &commit.operators {
            script.arg("o").arg(id).arg(encode(record)?);
        }
        script.arg(commit.timers.len());
        for (timer, ends) in &commit.timers {
            script.arg(timer.encode());
            match ends {
                Some(ends) => script.arg(ends),
                None => script.arg(""),
            };
        }
        script
            .arg(self.names.live_channel(SERVICE))
            .arg(commit.events.len());
        let operators = Recipient::Role(Role::Operator);
        for event in &commit.events {
            let (_, message) = live_message(&self.names, SERVICE, &operators, event);
            script.arg(message);
        }
        let applied: i64 = script.invoke_async(&mut self.connection()).await?;
        Ok(if applied == 1 {
            Committed::Applied {
                unpublished: Vec::new(),
            }
        } else {
            Committed::Conflict
        })
    }

    async fn operator(&self, id: i64) -> Result<Option<OperatorRecord>, StateError> {
        let record: Option<Vec<u8>> = redis::cmd("HGET")
            .arg(&self.operators)
            .arg(id)
            .query_async(&mut self.connection())
            .await?;
        record
            .map(|bytes| decode("operator", id, &bytes))
            .transpose()
    }

    async fn list(&self) -> Result<(Vec<(i64, OperatorRecord)>, u64), StateError> {
        let (clock, all): (Option<u64>, Vec<(String, Vec<u8>)>) = redis::pipe()
            .atomic()
            .get(&self.version)
            .hgetall(&self.operators)
            .query_async(&mut self.connection())
            .await?;
        let mut operators = all
            .into_iter()
            .map(|(id, bytes)| {
                let operator_id = id.parse::<i64>().map_err(|_| StateError::Corrupt {
                    what: "operator id",
                    id: id.clone(),
                    cause: serde::de::Error::custom("not a number"),
                })?;
                Ok((operator_id, decode("operator", &id, &bytes)?))
            })
            .collect::<Result<Vec<_>, StateError>>()?;
        operators.sort_by_key(|(id, _)| *id);
        Ok((operators, clock.unwrap_or(0)))
    }

    async fn due(&self, now_ms: i64, limit: usize) -> Result<Vec<Timer>, StateError> {
        let members: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(&self.timers)
            .arg("-inf")
            .arg(now_ms)
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut self.connection())
            .await?;
        members
            .into_iter()
            .map(|member| Timer::decode(&member).ok_or(StateError::BadTimer(member)))
            .collect()
    }

    async fn next_due(&self) -> Result<Option<i64>, StateError> {
        let first: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(&self.timers)
            .arg(0)
            .arg(0)
            .arg("WITHSCORES")
            .query_async(&mut self.connection())
            .await?;
        // Deadlines are whole milliseconds, exact in a double.
        #[allow(clippy::cast_possible_truncation)]
        Ok(first.first().map(|(_, ends)| *ends as i64))
    }

    fn shared(&self) -> bool {
        true
    }

    async fn ping(&self) -> Result<(), StateError> {
        let _: String = redis::cmd("PING")
            .query_async(&mut self.connection())
            .await?;
        Ok(())
    }
}
