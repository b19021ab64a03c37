//! The Redis event log, for production: durable per-recipient logs in Redis
//! Streams shared by every replica of a service, live fan-out through Redis
//! pub/sub, appended and published atomically by one Lua script.
//! [`EventLog::deliver_many`] runs one script for a whole batch: one round
//! trip, the batch's publishes contiguous on the channel.
//!
//! Every key and channel is named by the deployment's
//! [`Namespace`](crate::redis_keys::Namespace) (prefix `chatai` by default,
//! `CHATAI_REDIS_PREFIX`, and the deployment id kept in its database). For
//! service `svc` and recipient `r` (`user:42`, `operator:7`):
//! - `chatai:{svc}:seq:{r}` — the last position handed out;
//! - `chatai:{svc}:base:{r}` — the position before the log's first event;
//! - `chatai:{svc}:log:{r}` — a stream with one entry per event, entry id
//!   `{position}-0`, fields `t` (append time, ms) and `e` (the protobuf `Event`);
//! - `chatai:{svc}:seen:{r}` — where the recipient's connections were when
//!   last released;
//! - channel `chatai:{deployment}:{svc}:live` — every delivery, framed as
//!   `{deployment} {position} {recipient-length} {recipient}{event}`. Pub/sub
//!   is server-wide, whatever the database: the relay drops any message whose
//!   deployment is not its own, so another deployment on the same server
//!   never reaches this one's clients.
//!
//! A recipient's first position is a random base (20 bits, shifted left 32),
//! so positions of a log that expired and started again never match an old
//! cursor, and every position stays below 2^53 (exact as a Lua number). All
//! keys of a recipient expire after twice the retention without an append;
//! entries older than the retention are trimmed on append, and at most
//! `max_per_recipient` are kept.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::BackoffBuilder;
use chatai_proto::v1 as pb;
use futures::StreamExt;
use prost::Message;
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::paging::{self, LogBounds, Plan};
use super::{Delivery, Event, EventLog, EventLogError, LogPage, LogStats, Recipient, ReplayFrom};
use crate::config::EventLogConfig;
use crate::redis_keys::{LogKey, Namespace, NamespaceError};

/// Lua: drops the entries of stream `$log` appended before `$cutoff` (ms).
/// The oldest entry is looked at first: when it is recent enough, as on
/// almost every append, nothing more is read.
macro_rules! trim_lua {
    ($log:literal, $cutoff:literal) => {
        concat!(
            "local cutoff = tonumber(",
            $cutoff,
            ")\n",
            "local oldest = redis.call('XRANGE', ",
            $log,
            ", '-', '+', 'COUNT', 1)\n",
            "while #oldest > 0 and tonumber(oldest[1][2][2]) < cutoff do\n",
            "  local batch = redis.call('XRANGE', ",
            $log,
            ", '-', '+', 'COUNT', 64)\n",
            "  if #batch == 0 then break end\n",
            "  local keep = nil\n",
            "  for _, entry in ipairs(batch) do\n",
            "    if tonumber(entry[2][2]) >= cutoff then keep = entry[1] break end\n",
            "  end\n",
            "  if keep then redis.call('XTRIM', ",
            $log,
            ", 'MINID', keep) break end\n",
            "  for _, entry in ipairs(batch) do redis.call('XDEL', ",
            $log,
            ", entry[1]) end\n",
            "  oldest = redis.call('XRANGE', ",
            $log,
            ", '-', '+', 'COUNT', 1)\n",
            "end\n",
        )
    };
}

/// Appends one event, trims by age, and publishes it, atomically.
/// KEYS: seq, log, base. ARGV: base, now ms, cutoff ms, max len, event, ttl ms, channel, recipient,
/// deployment.
const APPEND: &str = concat!(
    "if redis.call('EXISTS', KEYS[1]) == 0 then\n",
    "  redis.call('SET', KEYS[1], ARGV[1])\n",
    "  redis.call('SET', KEYS[3], ARGV[1])\n",
    "end\n",
    "local pos = redis.call('INCR', KEYS[1])\n",
    // Lua prints big numbers in exponent form: format positions as integers.
    "local id = string.format('%d', pos)\n",
    "redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[4], id .. '-0', 't', ARGV[2], 'e', ARGV[5])\n",
    trim_lua!("KEYS[2]", "ARGV[3]"),
    "redis.call('PEXPIRE', KEYS[1], ARGV[6])\n",
    "redis.call('PEXPIRE', KEYS[2], ARGV[6])\n",
    "redis.call('PEXPIRE', KEYS[3], ARGV[6])\n",
    "redis.call('PUBLISH', ARGV[7], ARGV[9] .. ' ' .. id .. ' ' .. string.len(ARGV[8]) .. ' ' .. ARGV[8] .. ARGV[5])\n",
    "return pos\n",
);

/// Delivers a batch in order, atomically (one script run, so its publishes
/// are contiguous on the channel): for each durable delivery what `APPEND`
/// does for one (a log is trimmed and its keys' expiry set once per batch:
/// the batch's later appends are as new as the first); for each live-only
/// one only the publish. Returns the positions, 0 for live-only ones.
/// KEYS: seq, log, base of each durable delivery, in order.
/// ARGV: now ms, cutoff ms, max len, ttl ms, channel, n, deployment; then for
/// each of the n deliveries base ('' = live only), recipient, event number j;
/// then the distinct events, event j at ARGV[7 + 3n + j].
const APPEND_MANY: &str = concat!(
    "local n = tonumber(ARGV[6])\n",
    "local positions = {}\n",
    "local done = {}\n",
    "local k = 0\n",
    "for i = 0, n - 1 do\n",
    "  local base = ARGV[8 + 3 * i]\n",
    "  local recipient = ARGV[9 + 3 * i]\n",
    "  local event = ARGV[7 + 3 * n + tonumber(ARGV[10 + 3 * i])]\n",
    "  local id = '0'\n",
    "  positions[i + 1] = 0\n",
    "  if base ~= '' then\n",
    "    local seq, log, basekey = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]\n",
    "    k = k + 3\n",
    "    if redis.call('EXISTS', seq) == 0 then\n",
    "      redis.call('SET', seq, base)\n",
    "      redis.call('SET', basekey, base)\n",
    "    end\n",
    "    local pos = redis.call('INCR', seq)\n",
    // Lua prints big numbers in exponent form: format positions as integers.
    "    id = string.format('%d', pos)\n",
    "    redis.call('XADD', log, 'MAXLEN', ARGV[3], id .. '-0', 't', ARGV[1], 'e', event)\n",
    "    if not done[log] then\n",
    "      done[log] = true\n",
    trim_lua!("log", "ARGV[2]"),
    "      redis.call('PEXPIRE', seq, ARGV[4])\n",
    "      redis.call('PEXPIRE', log, ARGV[4])\n",
    "      redis.call('PEXPIRE', basekey, ARGV[4])\n",
    "    end\n",
    "    positions[i + 1] = pos\n",
    "  end\n",
    "  redis.call('PUBLISH', ARGV[5], ARGV[7] .. ' ' .. id .. ' ' .. string.len(recipient) .. ' ' .. recipient .. event)\n",
    "end\n",
    "return positions\n",
);

/// Drops a log's entries older than the retention. KEYS: log. ARGV: cutoff ms.
const TRIM: &str = concat!(trim_lua!("KEYS[1]", "ARGV[1]"), "return 0\n");

/// Moves the last-seen mark forward only. KEYS: seen, seq. ARGV: position, ttl ms.
const MARK_SEEN: &str = r#"
local last = redis.call('GET', KEYS[2])
if not last or tonumber(ARGV[1]) > tonumber(last) then return 0 end
local seen = redis.call('GET', KEYS[1])
if seen and tonumber(seen) >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"#;

/// The Redis [`EventLog`] of one service.
pub struct RedisLog {
    names: Namespace,
    service: String,
    channel: String,
    connection: ConnectionManager,
    live: Arc<Mutex<broadcast::Sender<Delivery>>>,
    append: redis::Script,
    append_many: redis::Script,
    trim: redis::Script,
    mark_seen: redis::Script,
    retention: Duration,
    max_per_recipient: usize,
}

fn unavailable(err: redis::RedisError) -> EventLogError {
    EventLogError::Unavailable(err.to_string())
}

impl From<NamespaceError> for EventLogError {
    fn from(err: NamespaceError) -> Self {
        EventLogError::Unavailable(err.to_string())
    }
}

impl RedisLog {
    /// Connects to `url` for `service`'s logs under key prefix `prefix`
    /// (finding the deployment's [`Namespace`] in the database, or creating
    /// it at a first start) and starts relaying its live channel until
    /// `shutdown`. The relay task is returned for the caller to own.
    pub async fn connect(
        url: &str,
        prefix: &str,
        service: &str,
        config: &EventLogConfig,
        shutdown: CancellationToken,
    ) -> Result<(Self, impl Future<Output = ()> + Send + 'static), EventLogError> {
        let client = redis::Client::open(url).map_err(unavailable)?;
        // Fail fast while Redis is away (the default retries for ~6 s per
        // command): callers get `Unavailable` and health says so at once.
        let reconnect = ConnectionManagerConfig::new()
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500))
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(3)));
        let mut connection = ConnectionManager::new_with_config(client.clone(), reconnect)
            .await
            .map_err(unavailable)?;
        let names = Namespace::resolve(&mut connection, prefix).await?;
        let (sender, _) = broadcast::channel(config.live_buffer.max(16));
        let live = Arc::new(Mutex::new(sender));
        let channel = names.live_channel(service);
        // Subscribe before returning, so nothing published after `connect`
        // can be missed by the first receivers.
        let pubsub = subscribe(&client, &channel).await.map_err(unavailable)?;
        let relay = relay(
            client,
            channel.clone(),
            names.deployment().into(),
            pubsub,
            LiveSender {
                sender: live.clone(),
                capacity: config.live_buffer.max(16),
            },
            service.to_owned(),
            shutdown,
        );
        let log = RedisLog {
            names,
            service: service.to_owned(),
            channel,
            connection,
            live,
            append: redis::Script::new(APPEND),
            append_many: redis::Script::new(APPEND_MANY),
            trim: redis::Script::new(TRIM),
            mark_seen: redis::Script::new(MARK_SEEN),
            retention: config.retention(),
            max_per_recipient: config.max_per_recipient.max(1),
        };
        Ok((log, relay))
    }

    /// The deployment's names this log uses.
    pub fn names(&self) -> &Namespace {
        &self.names
    }

    fn key(&self, kind: LogKey, recipient: &Recipient) -> String {
        self.names.log_key(&self.service, kind, recipient)
    }

    /// Entries appended before this are past the retention.
    fn cutoff_ms(&self) -> i64 {
        paging::oldest_kept_ms(self.retention)
    }

    /// How long a log's keys outlive its last event (as the memory log
    /// remembers an emptied log).
    fn ttl_ms(&self) -> u64 {
        paging::forget_after_ms(self.retention)
    }

    async fn publish_live(
        &self,
        recipient: &Recipient,
        event: &Event,
    ) -> Result<(), EventLogError> {
        let mut connection = self.connection.clone();
        let payload = frame(self.names.deployment(), 0, recipient, event);
        let _: i64 = connection
            .publish(&self.channel, payload)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

/// The channel and the message that publish `event` live to `recipient`
/// on `service`'s log, as [`EventLog::publish`] would: for a caller that
/// publishes in a script of its own, in the same atomic step as the change
/// the event announces (presence, so that replicas announce each change once
/// and in the order the changes were made). Every replica's relay passes it
/// on like any other live delivery.
pub fn live_message(
    names: &Namespace,
    service: &str,
    recipient: &Recipient,
    event: &Event,
) -> (String, Vec<u8>) {
    (
        names.live_channel(service),
        frame(names.deployment(), 0, recipient, event),
    )
}

/// `{deployment} {position} {recipient-length} {recipient}{event}`.
fn frame(deployment: &str, position: u64, recipient: &Recipient, event: &Event) -> Vec<u8> {
    let recipient = pb::Recipient::from(recipient).encode_to_vec();
    let event = pb::Event::from(event).encode_to_vec();
    let mut payload = format!("{deployment} {position} {} ", recipient.len()).into_bytes();
    payload.extend_from_slice(&recipient);
    payload.extend_from_slice(&event);
    payload
}

/// Why a live message is not relayed.
#[derive(Debug, PartialEq, Eq)]
enum Dropped {
    /// Published by another deployment.
    Foreign,
    Unreadable,
}

/// The delivery in a live message published by `deployment`.
fn parse_frame(payload: &[u8], deployment: &str) -> Result<Delivery, Dropped> {
    let (origin, rest) = payload
        .iter()
        .position(|b| *b == b' ')
        .map(|space| (&payload[..space], &payload[space + 1..]))
        .ok_or(Dropped::Unreadable)?;
    if origin != deployment.as_bytes() {
        return Err(Dropped::Foreign);
    }
    parse_delivery(rest).ok_or(Dropped::Unreadable)
}

/// `{position} {recipient-length} {recipient}{event}`.
fn parse_delivery(payload: &[u8]) -> Option<Delivery> {
    let mut parts = payload.splitn(3, |b| *b == b' ');
    let position: u64 = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let length: usize = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let rest = parts.next()?;
    if rest.len() < length {
        return None;
    }
    let (recipient, event) = rest.split_at(length);
    let recipient = Recipient::try_from(&pb::Recipient::decode(recipient).ok()?).ok()?;
    let event = pb::Event::decode(event).ok()?;
    Some(Delivery {
        recipient,
        position,
        event: Arc::new(event.into()),
    })
}

async fn subscribe(
    client: &redis::Client,
    channel: &str,
) -> redis::RedisResult<redis::aio::PubSub> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channel).await?;
    Ok(pubsub)
}

/// The local broadcast the relay feeds, and its capacity.
struct LiveSender {
    sender: Arc<Mutex<broadcast::Sender<Delivery>>>,
    capacity: usize,
}

impl LiveSender {
    /// Replaces the broadcast, which ends every receiver (every attached
    /// gateway stream, which then re-attaches and catches up).
    fn cut(&self) {
        if let Ok(mut sender) = self.sender.lock() {
            *sender = broadcast::channel(self.capacity).0;
        }
    }
}

/// Relays the live channel into the local broadcast. When the subscription
/// breaks, events may have been missed: the broadcast is replaced, which ends
/// every attached gateway stream, and the gateways re-attach and catch up
/// from the logs.
async fn relay(
    client: redis::Client,
    channel: String,
    deployment: Arc<str>,
    mut pubsub: redis::aio::PubSub,
    live: LiveSender,
    service: String,
    shutdown: CancellationToken,
) {
    let backoff = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(3))
        .with_jitter()
        .without_max_times();
    loop {
        {
            let mut messages = pubsub.on_message();
            loop {
                let message = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    message = messages.next() => message,
                };
                let Some(message) = message else { break };
                match parse_frame(message.get_payload_bytes(), &deployment) {
                    Ok(delivery) => {
                        if let Ok(sender) = live.sender.lock() {
                            let _ = sender.send(delivery);
                        }
                    }
                    Err(Dropped::Foreign) => tracing::warn!(
                        %channel,
                        "dropping a live event of another deployment (is another system publishing here?)"
                    ),
                    Err(Dropped::Unreadable) => {
                        tracing::warn!(%channel, "dropping an unreadable live event")
                    }
                }
            }
        }
        tracing::warn!(%channel, "lost the Redis live subscription; cutting attached streams and resubscribing");
        live.cut();
        let mut delays = backoff.build();
        pubsub = loop {
            let delay = delays.next().unwrap_or(Duration::from_secs(3));
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            match subscribe(&client, &channel).await {
                Ok(pubsub) => break pubsub,
                Err(err) => {
                    metrics::counter!(crate::metrics::REDIS_ERRORS, "service" => service.clone())
                        .increment(1);
                    tracing::warn!(%channel, cause = %err, "cannot resubscribe yet")
                }
            }
        };
        metrics::counter!(crate::metrics::REDIS_RECONNECTS, "service" => service.clone())
            .increment(1);
        // Anything published while unsubscribed reaches gateways through
        // their catch-up replay; cut them again so none keeps waiting.
        live.cut();
    }
}

type StreamEntries = Vec<(String, Vec<(String, Vec<u8>)>)>;

fn entry_position(id: &str) -> Option<u64> {
    id.split('-').next()?.parse().ok()
}

#[async_trait::async_trait]
impl EventLog for RedisLog {
    #[tracing::instrument(name = "redis.publish", skip_all)]
    async fn publish(&self, recipient: Recipient, event: Arc<Event>) -> Result<(), EventLogError> {
        self.publish_live(&recipient, &event).await
    }

    #[tracing::instrument(name = "redis.deliver", skip_all)]
    async fn deliver(&self, recipient: Recipient, event: Arc<Event>) -> Result<u64, EventLogError> {
        if !recipient.is_durable() {
            self.publish_live(&recipient, &event).await?;
            return Ok(0);
        }
        let base = super::random_base();
        let encoded = pb::Event::from(event.as_ref()).encode_to_vec();
        let recipient_bytes = pb::Recipient::from(&recipient).encode_to_vec();
        let mut connection = self.connection.clone();
        let position: u64 = self
            .append
            .key(self.key(LogKey::Seq, &recipient))
            .key(self.key(LogKey::Log, &recipient))
            .key(self.key(LogKey::Base, &recipient))
            .arg(base)
            .arg(crate::now_ms())
            .arg(self.cutoff_ms())
            .arg(self.max_per_recipient)
            .arg(encoded)
            .arg(self.ttl_ms())
            .arg(&self.channel)
            .arg(recipient_bytes)
            .arg(self.names.deployment())
            .invoke_async(&mut connection)
            .await
            .map_err(unavailable)?;
        Ok(position)
    }

    #[tracing::instrument(name = "redis.deliver_many", skip_all)]
    async fn deliver_many(
        &self,
        batch: Vec<(Recipient, Arc<Event>)>,
    ) -> Result<Vec<u64>, EventLogError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let count = batch.len();
        let mut script = self.append_many.prepare_invoke();
        script
            .arg(crate::now_ms())
            .arg(self.cutoff_ms())
            .arg(self.max_per_recipient)
            .arg(self.ttl_ms())
            .arg(&self.channel)
            .arg(count)
            .arg(self.names.deployment());
        // One event is often delivered to several recipients (a user and the
        // dialog's room): each distinct one is encoded and sent once.
        let mut events: Vec<(&Arc<Event>, Vec<u8>)> = Vec::new();
        for (recipient, event) in &batch {
            let number = match events.iter().position(|(seen, _)| Arc::ptr_eq(seen, event)) {
                Some(index) => index + 1,
                None => {
                    let encoded = pb::Event::from(event.as_ref()).encode_to_vec();
                    events.push((event, encoded));
                    events.len()
                }
            };
            if recipient.is_durable() {
                script
                    .key(self.key(LogKey::Seq, recipient))
                    .key(self.key(LogKey::Log, recipient))
                    .key(self.key(LogKey::Base, recipient))
                    .arg(super::random_base());
            } else {
                script.arg("");
            }
            script
                .arg(pb::Recipient::from(recipient).encode_to_vec())
                .arg(number);
        }
        for (_, encoded) in events {
            script.arg(encoded);
        }
        let mut connection = self.connection.clone();
        let positions: Vec<u64> = script
            .invoke_async(&mut connection)
            .await
            .map_err(unavailable)?;
        if positions.len() != count {
            return Err(EventLogError::Unavailable(format!(
                "the batch script returned {} positions for {count} deliveries",
                positions.len()
            )));
        }
        Ok(positions)
    }

    #[tracing::instrument(name = "redis.read", skip_all)]
    async fn read(
        &self,
        recipient: &Recipient,
        from: ReplayFrom,
        limit: usize,
    ) -> Result<LogPage, EventLogError> {
        let mut connection = self.connection.clone();
        let log_key = self.key(LogKey::Log, recipient);
        // What is past the retention is gone for reads too, appended to or not.
        let _: i64 = self
            .trim
            .key(&log_key)
            .arg(self.cutoff_ms())
            .invoke_async(&mut connection)
            .await
            .map_err(unavailable)?;
        let (last, base, seen, first): (Option<u64>, Option<u64>, Option<u64>, StreamEntries) =
            redis::pipe()
                .atomic()
                .get(self.key(LogKey::Seq, recipient))
                .get(self.key(LogKey::Base, recipient))
                .get(self.key(LogKey::Seen, recipient))
                .cmd("XRANGE")
                .arg(&log_key)
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut connection)
                .await
                .map_err(unavailable)?;
        let bounds = last.map(|last| LogBounds {
            base: base.unwrap_or(last),
            last,
            first_kept: first
                .first()
                .and_then(|(id, _)| entry_position(id))
                .unwrap_or(last + 1),
            seen,
        });
        let (start, last) = match paging::plan(bounds, from) {
            Plan::Answer(page) => return Ok(page),
            Plan::ReadAfter { start, last } => (start, last),
        };
        let entries: StreamEntries = redis::cmd("XRANGE")
            .arg(&log_key)
            .arg(format!("({start}-0"))
            .arg("+")
            .arg("COUNT")
            .arg(limit.max(1))
            .query_async(&mut connection)
            .await
            .map_err(unavailable)?;
        let mut deliveries = Vec::with_capacity(entries.len());
        for (id, fields) in entries {
            let Some(position) = entry_position(&id) else {
                continue;
            };
            let Some((_, bytes)) = fields.iter().find(|(name, _)| name == "e") else {
                continue;
            };
            match pb::Event::decode(bytes.as_slice()) {
                Ok(event) => deliveries.push(Delivery {
                    recipient: recipient.clone(),
                    position,
                    event: Arc::new(event.into()),
                }),
                Err(err) => {
                    tracing::warn!(%recipient, position, cause = %err, "skipping an unreadable logged event")
                }
            }
        }
        Ok(paging::page_of(start, last, deliveries))
    }

    #[tracing::instrument(name = "redis.mark_seen", skip_all)]
    async fn mark_seen(&self, recipient: &Recipient, position: u64) -> Result<(), EventLogError> {
        let mut connection = self.connection.clone();
        let _: i64 = self
            .mark_seen
            .key(self.key(LogKey::Seen, recipient))
            .key(self.key(LogKey::Seq, recipient))
            .arg(position)
            .arg(self.ttl_ms())
            .invoke_async(&mut connection)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    fn live(&self) -> broadcast::Receiver<Delivery> {
        match self.live.lock() {
            Ok(sender) => sender.subscribe(),
            Err(poisoned) => poisoned.into_inner().subscribe(),
        }
    }

    async fn stats(&self) -> Result<LogStats, EventLogError> {
        let mut connection = self.connection.clone();
        let mut keys: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(self.names.log_pattern(&self.service))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut connection)
                .await
                .map_err(unavailable)?;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let mut stats = LogStats {
            recipients: keys.len() as u64,
            retained_events: 0,
        };
        for chunk in keys.chunks(500) {
            let mut pipe = redis::pipe();
            for key in chunk {
                pipe.cmd("XLEN").arg(key);
            }
            let lengths: Vec<u64> = pipe
                .query_async(&mut connection)
                .await
                .map_err(unavailable)?;
            stats.retained_events += lengths.iter().sum::<u64>();
        }
        Ok(stats)
    }

    async fn trim(&self) -> Result<(), EventLogError> {
        // Trimming happens on append and by key expiry.
        Ok(())
    }

    /// Reachable, and still the deployment it started in (see
    /// [`Namespace::check`]).
    async fn ping(&self) -> Result<(), EventLogError> {
        let mut connection = self.connection.clone();
        self.names.check(&mut connection).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A live frame reads back as the delivery it was made from, whatever
    /// bytes the recipient and event hold.
    #[test]
    fn live_frames_round_trip() {
        let event = Event {
            id: "e 1".into(),
            kind: "ai_response".into(),
            body: b"{\"message\":\"a b  c\"}".to_vec().into(),
            timestamp_ms: 5,
            trace_context: Default::default(),
            origin_connection: Some("g:1".into()),
            durable_recipient: None,
        };
        for recipient in [Recipient::User(7), Recipient::Room("dialog: 1".into())] {
            let delivery =
                parse_frame(&frame("d1", 42, &recipient, &event), "d1").expect("frame parses");
            assert_eq!(delivery.position, 42);
            assert_eq!(delivery.recipient, recipient);
            assert_eq!(*delivery.event, event);
        }
        assert_eq!(parse_frame(b"x", "d1").err(), Some(Dropped::Unreadable));
        assert_eq!(
            parse_frame(b"d1 1 99 abc", "d1").err(),
            Some(Dropped::Unreadable)
        );
    }

    /// A frame another deployment published is not this one's, however
    /// readable.
    #[test]
    fn frames_of_another_deployment_are_dropped() {
        let event = Event::new("notice", &serde_json::json!({})).expect("an event");
        let payload = frame("other", 1, &Recipient::User(7), &event);
        assert_eq!(parse_frame(&payload, "d1").err(), Some(Dropped::Foreign));
        assert_eq!(parse_frame(&payload, "othe").err(), Some(Dropped::Foreign));
    }

    fn redis_url() -> String {
        std::env::var("CHATAI_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
    }

    /// A message on the live channel that another deployment published (or
    /// one framed the old way, without a deployment) never reaches the live
    /// receivers; the log's own deliveries do.
    #[tokio::test]
    async fn the_relay_passes_only_its_own_deployments_events() {
        let prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
        let shutdown = CancellationToken::new();
        let (log, relay) = RedisLog::connect(
            &redis_url(),
            &prefix,
            "chat",
            &EventLogConfig::default(),
            shutdown.clone(),
        )
        .await
        .expect("Redis at CHATAI_TEST_REDIS_URL");
        let relay = tokio::spawn(relay);
        let mut live = log.live();
        let mut connection = log.connection.clone();
        let stranger = Event::new("stranger", &serde_json::json!({})).expect("an event");
        for payload in [
            frame("another-deployment", 1, &Recipient::User(7), &stranger),
            parse_free_frame(&stranger),
        ] {
            let _: i64 = connection
                .publish(log.names().live_channel("chat"), payload)
                .await
                .expect("PUBLISH");
        }
        let own = Arc::new(Event::new("own", &serde_json::json!({})).expect("an event"));
        log.publish(Recipient::User(7), own.clone())
            .await
            .expect("published");
        let first = live.recv().await.expect("a live delivery");
        assert_eq!(first.event.kind, "own");
        shutdown.cancel();
        relay.await.expect("the relay stops");
        let _: i64 = connection
            .del(log.names().deployment_key())
            .await
            .expect("DEL");
    }

    /// The frame of the layout before deployments were named.
    fn parse_free_frame(event: &Event) -> Vec<u8> {
        let recipient = pb::Recipient::from(&Recipient::User(7)).encode_to_vec();
        let mut payload = format!("0 {} ", recipient.len()).into_bytes();
        payload.extend_from_slice(&recipient);
        payload.extend_from_slice(&pb::Event::from(event).encode_to_vec());
        payload
    }
}
