//! The store's one writer (group commit): a task that owns every write.
//!
//! Callers send a write request with a reply channel through a bounded queue
//! ([`QUEUE_CAPACITY`]; a full queue makes callers wait). The task waits for
//! one request, takes whatever else is waiting (up to [`MAX_BATCH`]), runs
//! them all in one transaction (`batch.rs`), commits, and only then answers
//! each: an answered write is committed. When that transaction fails, the
//! requests are run again one by one, each in its own transaction, so a bad
//! request fails alone. Reads never come here; they use the pool.
//!
//! The task ends when the store's last handle is dropped (every sender
//! gone), after answering what was queued.
//!
//! [`Writer`] is the handle. It also remembers, boundedly, which users it has
//! already ensured, so `ensure_user` costs a statement once per user, not
//! once per message.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::Pool;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::bounded::BoundedMap;

use super::batch::{self, Appended, Backend, Done, Draft, UserUpsert, Work};
use super::error::StoreError;
use super::types::{Charge, Dialog, Message, Money, NewMessage};

/// Requests that may wait for the writer. Beyond this, callers wait to
/// enqueue (backpressure) instead of memory growing. Two full batches.
pub(super) const QUEUE_CAPACITY: usize = 2 * MAX_BATCH;

/// The most requests one transaction takes. Bounds a batch's statements'
/// parameters (and, on SQLite, how long the write lock is held).
pub(super) const MAX_BATCH: usize = 512;

/// Users remembered as ensured; past this the memory is emptied and
/// refilled (each user then costs one more upsert).
const ENSURED_CAPACITY: usize = 16_384;

/// One request and where its answer goes.
#[derive(Debug)]
struct Job {
    work: Work,
    reply: Reply,
    /// The caller's `db.write` span, open while it waits: the batch that
    /// carries the request links to it.
    span: tracing::Span,
}

/// The reply channel of a [`Job`], typed by what the caller waits for.
#[derive(Debug)]
enum Reply {
    Unit(oneshot::Sender<Result<(), StoreError>>),
    Dialog(oneshot::Sender<Result<Dialog, StoreError>>),
    Appended(oneshot::Sender<Result<Appended, StoreError>>),
    Charge(oneshot::Sender<Result<Charge, StoreError>>),
}

impl Reply {
    fn is_closed(&self) -> bool {
        match self {
            Reply::Unit(tx) => tx.is_closed(),
            Reply::Dialog(tx) => tx.is_closed(),
            Reply::Appended(tx) => tx.is_closed(),
            Reply::Charge(tx) => tx.is_closed(),
        }
    }

    /// Answers the caller; one who stopped waiting is not an error.
    fn send(self, result: Result<Done, StoreError>) {
        // `batch::run` answers each request with its own kind; another kind
        // would be a bug, reported as a missing row rather than a panic.
        let wrong = || StoreError::Database(sqlx::Error::RowNotFound);
        let _ = match self {
            Reply::Unit(tx) => tx.send(result.map(|_| ())).map_err(|_| ()),
            Reply::Dialog(tx) => tx
                .send(result.and_then(|done| match done {
                    Done::Dialog(dialog) => Ok(dialog),
                    _ => Err(wrong()),
                }))
                .map_err(|_| ()),
            Reply::Appended(tx) => tx
                .send(result.and_then(|done| match done {
                    Done::Appended(appended) => Ok(appended),
                    _ => Err(wrong()),
                }))
                .map_err(|_| ()),
            Reply::Charge(tx) => tx
                .send(result.and_then(|done| match done {
                    Done::Charge(charge) => Ok(charge),
                    _ => Err(wrong()),
                }))
                .map_err(|_| ()),
        };
    }
}

/// The handle to a store's writer. Cheap to clone; the writer stops when
/// the last clone is dropped.
#[derive(Debug, Clone)]
pub(super) struct Writer {
    jobs: mpsc::Sender<Job>,
    ensured: Arc<EnsuredUsers>,
    /// Batches taken from the queue so far (retries not counted).
    batches: Arc<AtomicU64>,
}

impl Writer {
    /// Starts the writer task of `pool` on the current Tokio runtime.
    ///
    /// # Panics
    /// Outside a Tokio runtime, like [`tokio::spawn`].
    pub(super) fn spawn<B: Backend>(pool: Pool<B::Db>) -> Writer {
        let (jobs, queue) = mpsc::channel(QUEUE_CAPACITY);
        let batches = Arc::new(AtomicU64::new(0));
        tokio::spawn(write_loop::<B>(pool, queue, Arc::clone(&batches)));
        Writer {
            jobs,
            ensured: Arc::default(),
            batches,
        }
    }

    /// How many batches the writer has taken from its queue.
    #[cfg_attr(not(test), expect(dead_code, reason = "observed by tests"))]
    pub(super) fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    async fn submit<T>(
        &self,
        work: Work,
        reply: Reply,
        answer: oneshot::Receiver<Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        // A child of the caller's span (e.g. `send_message`), from queueing
        // to the answer; the batch's own span links to it.
        let span = tracing::info_span!("db.write", request = work.kind());
        let job = Job {
            work,
            reply,
            span: span.clone(),
        };
        async move {
            self.jobs
                .send(job)
                .await
                .map_err(|_| StoreError::WriterStopped)?;
            answer.await.map_err(|_| StoreError::WriterStopped)?
        }
        .instrument(span)
        .await
    }

    /// See [`ChatStore::ensure_user`](super::ChatStore::ensure_user).
    /// Returns at once, without a statement, for a user this store has
    /// ensured with the same name (or when no name is given).
    pub(super) async fn ensure_user(
        &self,
        user_id: i64,
        name: Option<&str>,
        starting_balance: Money,
    ) -> Result<(), StoreError> {
        if self.ensured.knows(user_id, name) {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        let work = Work::EnsureUser(UserUpsert {
            id: user_id,
            name: name.map(str::to_owned),
            starting_balance,
        });
        self.submit(work, Reply::Unit(tx), rx).await?;
        self.ensured.remember(user_id, name);
        Ok(())
    }

    pub(super) async fn create_dialog(&self, user_id: i64) -> Result<Dialog, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.submit(Work::CreateDialog { user_id }, Reply::Dialog(tx), rx)
            .await
    }

    /// Appends `message`, with `charge` (user id, amount) when it is an
    /// answer (a zero amount is no charge), and only while `funded_by`'s
    /// balance is above zero when given.
    pub(super) async fn append(
        &self,
        message: NewMessage<'_>,
        charge: Option<(i64, Money)>,
        funded_by: Option<i64>,
    ) -> Result<(Message, bool, Option<Charge>), StoreError> {
        let tokens_used = i32::try_from(message.tokens_used)
            .map_err(|_| StoreError::TokensOutOfRange(message.tokens_used))?;
        let draft = Draft {
            dialog: message.dialog,
            sender: message.sender,
            sender_id: message.sender_id,
            text: message.text.to_owned(),
            tokens_used,
            idempotency_key: message.idempotency_key.map(str::to_owned),
        };
        let (tx, rx) = oneshot::channel();
        let work = Work::Append {
            message: draft,
            charge: charge.filter(|(_, amount)| *amount != Money::ZERO),
            funded_by,
        };
        let appended = self.submit(work, Reply::Appended(tx), rx).await?;
        Ok((appended.message, appended.created, appended.charge))
    }

    pub(super) async fn charge(&self, user_id: i64, amount: Money) -> Result<Charge, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.submit(Work::Charge { user_id, amount }, Reply::Charge(tx), rx)
            .await
    }
}

/// The writer task: batch, run, answer, until every handle is gone.
async fn write_loop<B: Backend>(
    pool: Pool<B::Db>,
    mut queue: mpsc::Receiver<Job>,
    batches: Arc<AtomicU64>,
) {
    let mut jobs: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut jobs, MAX_BATCH).await > 0 {
        batches.fetch_add(1, Ordering::Relaxed);
        // A caller that stopped waiting (cancelled) was never told "stored":
        // its write may as well not happen.
        jobs.retain(|job| !job.reply.is_closed());
        if jobs.is_empty() {
            continue;
        }
        let work: Vec<&Work> = jobs.iter().map(|job| &job.work).collect();
        crate::metrics::commit_batch(work.len());
        // The transaction's own span: a root (it serves many requests, none
        // its parent), linked to the `db.write` span of each request it
        // carries (a link per request; the sampler keeps the batch when it
        // keeps any of them).
        let span = tracing::info_span!(parent: None, "db.batch", requests = work.len());
        for job in &jobs {
            span.follows_from(&job.span);
        }
        let run = batch::run::<B>(&pool, &work);
        let timed =
            chatai_kit::metrics::timed_statement(crate::metrics::SERVICE, "commit_batch", run);
        let results = async { match timed.await {
            Ok(results) => results,
            Err(err) if work.len() == 1 => match work.first() {
                Some(w) => vec![Err(err.for_request(w))],
                None => Vec::new(),
            },
            Err(err) => {
                tracing::debug!(cause = %err, requests = work.len(), "batch failed; running its requests one by one");
                let mut results = Vec::with_capacity(work.len());
                for w in &work {
                    let alone = match batch::run::<B>(&pool, &[*w]).await {
                        Ok(mut results) => results
                            .pop()
                            .unwrap_or(Err(StoreError::Database(sqlx::Error::RowNotFound))),
                        Err(err) => Err(err.for_request(w)),
                    };
                    results.push(alone);
                }
                results
            }
        } }
        .instrument(span)
        .await;
        drop(work);
        for (job, result) in jobs.drain(..).zip(results) {
            job.reply.send(result);
        }
        // Any job left without a result (none should be) is dropped here:
        // its caller gets `WriterStopped`.
        jobs.clear();
    }
}

/// The users a store has ensured, with the name it last stored for each
/// (`None`: exists, name not known). Bounded by [`ENSURED_CAPACITY`].
#[derive(Debug)]
struct EnsuredUsers(BoundedMap<i64, Option<String>>);

impl Default for EnsuredUsers {
    fn default() -> Self {
        EnsuredUsers(BoundedMap::new(ENSURED_CAPACITY))
    }
}

impl EnsuredUsers {
    /// Whether `ensure_user(user_id, name)` would change nothing.
    fn knows(&self, user_id: i64, name: Option<&str>) -> bool {
        self.0.read(&user_id, |known| match (known, name) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(known), Some(name)) => known.as_deref() == Some(name),
        })
    }

    fn remember(&self, user_id: i64, name: Option<&str>) {
        match name {
            Some(name) => self.0.insert(user_id, Some(name.to_owned())),
            None => self.0.insert_if_absent(user_id, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ensured_users_know_names_and_stay_bounded() {
        let ensured = EnsuredUsers::default();
        assert!(!ensured.knows(1, None));
        ensured.remember(1, None);
        assert!(ensured.knows(1, None));
        assert!(!ensured.knows(1, Some("Ann")));
        ensured.remember(1, Some("Ann"));
        assert!(ensured.knows(1, Some("Ann")));
        assert!(ensured.knows(1, None));
        assert!(!ensured.knows(1, Some("Bob")));
        for id in 2..=(ENSURED_CAPACITY as i64 + 10) {
            ensured.remember(id, None);
        }
        let len = ensured.0.len();
        assert!(len <= ENSURED_CAPACITY, "{len}");
    }
}
