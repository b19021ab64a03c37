//! Reports one service must get to another, reliably, without making the
//! caller wait: the latest value per key waits in a bounded map
//! ([`Pending::put`] never blocks), and one task ([`Pending::run`]) sends
//! them. A report the other service could not take now (unreachable,
//! overloaded, stopping) is put back — unless a newer one for the same key
//! came meanwhile — with the rest of its batch, and sent again after a
//! backoff, until it is accepted or refused. Reports still waiting at
//! shutdown are dropped with it.
//!
//! Used by the handoff service (each operator's load, to presence) and the
//! chat service (an operator's first reply, to handoff).

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use backon::BackoffBuilder;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// What became of one report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Taken — or refused for good (the sender logs why): not sent again.
    Done,
    /// Not taken now: put back and sent again after a backoff.
    Retry,
}

/// Reports waiting to be sent: key → the latest value.
#[derive(Debug)]
pub struct Pending<K, V> {
    entries: Mutex<HashMap<K, V>>,
    wake: Notify,
    capacity: usize,
    /// What the reports are, for logs ("operator loads").
    what: &'static str,
}

impl<K, V> Pending<K, V>
where
    K: Eq + Hash + Copy + std::fmt::Debug + Send,
    V: Clone + Send,
{
    /// At most `capacity` keys wait; `what` names the reports in logs.
    pub fn new(capacity: usize, what: &'static str) -> Self {
        Pending {
            entries: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            capacity,
            what,
        }
    }

    fn entries(&self) -> MutexGuard<'_, HashMap<K, V>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `value` for `key`, replacing a waiting one. Never waits; when
    /// `capacity` keys already wait and `key` is not one of them, the
    /// report is dropped and logged, and `false` returned.
    pub fn put(&self, key: K, value: V) -> bool {
        {
            let mut entries = self.entries();
            if entries.len() >= self.capacity && !entries.contains_key(&key) {
                tracing::warn!(
                    what = self.what,
                    ?key,
                    "too many reports wait; dropping one"
                );
                return false;
            }
            entries.insert(key, value);
        }
        self.wake.notify_one();
        true
    }

    /// Everything waiting, taken out.
    pub fn take(&self) -> HashMap<K, V> {
        std::mem::take(&mut *self.entries())
    }

    /// Puts back reports that could not be sent, unless a newer report for
    /// the same key came meanwhile (or there is no room).
    pub fn put_back(&self, reports: impl IntoIterator<Item = (K, V)>) {
        let mut entries = self.entries();
        for (key, value) in reports {
            if entries.len() >= self.capacity && !entries.contains_key(&key) {
                tracing::warn!(
                    what = self.what,
                    ?key,
                    "too many reports wait; dropping one"
                );
                continue;
            }
            entries.entry(key).or_insert(value);
        }
    }

    /// Sends what waits with `send`, one report at a time, until
    /// `shutdown`; after a [`Sent::Retry`] the rest of the batch waits for
    /// the next try, after a jittered exponential backoff.
    pub async fn run<F, Fut>(&self, shutdown: CancellationToken, mut send: F)
    where
        F: FnMut(K, V) -> Fut,
        Fut: Future<Output = Sent>,
    {
        let mut delays = crate::follow::backoff().build();
        let mut failing = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
            }
            loop {
                let mut batch = self.take().into_iter();
                let mut failed = false;
                while let Some((key, value)) = batch.next() {
                    let sent = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        sent = send(key, value.clone()) => sent,
                    };
                    if sent == Sent::Retry {
                        if !failing {
                            tracing::warn!(
                                what = self.what,
                                ?key,
                                "cannot send a report; retrying with backoff"
                            );
                        }
                        failed = true;
                        // The rest waits for the other service too.
                        self.put_back(std::iter::once((key, value)).chain(batch.by_ref()));
                        break;
                    }
                }
                failing = failed;
                if failed {
                    let delay = delays.next().unwrap_or(Duration::from_secs(5));
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                } else {
                    delays = crate::follow::backoff().build();
                    if self.entries().is_empty() {
                        break;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// A report not taken is sent again, with the rest of its batch, after a
    /// backoff; once taken it is not sent again.
    #[tokio::test(start_paused = true)]
    async fn a_report_not_taken_is_sent_again() {
        let pending = Arc::new(Pending::<i64, u32>::new(8, "test reports"));
        let calls = Arc::new(Mutex::new(Vec::new()));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn({
            let (pending, calls, shutdown) = (pending.clone(), calls.clone(), shutdown.clone());
            async move {
                pending
                    .run(shutdown, |key, value| {
                        let calls = calls.clone();
                        async move {
                            let mut calls = calls.lock().expect("not poisoned");
                            calls.push((key, value));
                            if calls.len() == 1 {
                                Sent::Retry
                            } else {
                                Sent::Done
                            }
                        }
                    })
                    .await;
            }
        });
        assert!(pending.put(1, 10));
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(*calls.lock().expect("not poisoned"), vec![(1, 10), (1, 10)]);
        assert!(pending.take().is_empty());
        shutdown.cancel();
        task.await.expect("stops on shutdown");
    }
}
