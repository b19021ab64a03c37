//! The presence state in the process: the one-process default, where one
//! actor is the only writer. It keeps the records, revisions and timers as
//! the Redis store does, behind one mutex that is never held across an
//! `.await`, and checks commits the same way (so both pass one suite); it
//! publishes nothing itself — the actor delivers the events through the
//! service's event log after the commit.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};

use super::{
    Commit, Committed, GatewayRecord, OperatorRecord, OperatorsRead, StateError, StateStore, Timer,
    Versioned,
};

#[derive(Debug, Default)]
struct Data {
    clock: u64,
    operators: BTreeMap<i64, (u64, OperatorRecord)>,
    gateways: HashMap<String, (u64, GatewayRecord)>,
    /// Timer → when it ends, and the same ordered by end.
    timers: HashMap<Timer, i64>,
    by_end: BTreeSet<(i64, Timer)>,
}

impl Data {
    fn operator_revision(&self, id: i64) -> u64 {
        self.operators.get(&id).map_or(0, |(revision, _)| *revision)
    }

    fn gateway_revision(&self, id: &str) -> u64 {
        self.gateways.get(id).map_or(0, |(revision, _)| *revision)
    }

    fn set_timer(&mut self, timer: Timer, ends: Option<i64>) {
        if let Some(previous) = self.timers.remove(&timer) {
            self.by_end.remove(&(previous, timer.clone()));
        }
        if let Some(ends) = ends {
            self.by_end.insert((ends, timer.clone()));
            self.timers.insert(timer, ends);
        }
    }
}

/// The presence state in memory.
#[derive(Debug, Default)]
pub(crate) struct MemoryState {
    data: Mutex<Data>,
}

impl MemoryState {
    fn data(&self) -> MutexGuard<'_, Data> {
        // A panic while holding the lock leaves plain data behind: use it.
        self.data
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait::async_trait]
impl StateStore for MemoryState {
    async fn gateway(&self, gateway: &str) -> Result<Versioned<GatewayRecord>, StateError> {
        Ok(match self.data().gateways.get(gateway) {
            Some((revision, record)) => Versioned {
                revision: *revision,
                record: Some(record.clone()),
            },
            None => Versioned::absent(),
        })
    }

    async fn operators(&self, ids: &[i64]) -> Result<OperatorsRead, StateError> {
        let data = self.data();
        let operators = ids
            .iter()
            .map(|id| {
                let read = match data.operators.get(id) {
                    Some((revision, record)) => Versioned {
                        revision: *revision,
                        record: Some(record.clone()),
                    },
                    None => Versioned::absent(),
                };
                (*id, read)
            })
            .collect();
        Ok(OperatorsRead {
            operators,
            clock: data.clock,
        })
    }

    async fn commit(&self, commit: Commit) -> Result<Committed, StateError> {
        let mut data = self.data();
        let unchanged = commit
            .read_gateways
            .iter()
            .all(|(id, revision)| data.gateway_revision(id) == *revision)
            && commit
                .read_operators
                .iter()
                .all(|(id, revision)| data.operator_revision(*id) == *revision)
            && commit.clock.is_none_or(|(read, _)| data.clock == read);
        if !unchanged {
            return Ok(Committed::Conflict);
        }
        if let Some((_, new)) = commit.clock {
            data.clock = new;
        }
        for (id, record) in commit.gateways {
            match record {
                Some(record) => {
                    let revision = data.gateway_revision(&id) + 1;
                    data.gateways.insert(id, (revision, record));
                }
                None => {
                    data.gateways.remove(&id);
                }
            }
        }
        for (id, record) in commit.operators {
            let revision = data.operator_revision(id) + 1;
            data.operators.insert(id, (revision, record));
        }
        for (timer, ends) in commit.timers {
            data.set_timer(timer, ends);
        }
        Ok(Committed::Applied {
            unpublished: commit.events,
        })
    }

    async fn operator(&self, id: i64) -> Result<Option<OperatorRecord>, StateError> {
        Ok(self
            .data()
            .operators
            .get(&id)
            .map(|(_, record)| record.clone()))
    }

    async fn list(&self) -> Result<(Vec<(i64, OperatorRecord)>, u64), StateError> {
        let data = self.data();
        let operators = data
            .operators
            .iter()
            .map(|(id, (_, record))| (*id, record.clone()))
            .collect();
        Ok((operators, data.clock))
    }

    async fn due(&self, now_ms: i64, limit: usize) -> Result<Vec<Timer>, StateError> {
        Ok(self
            .data()
            .by_end
            .iter()
            .take_while(|(ends, _)| *ends <= now_ms)
            .take(limit)
            .map(|(_, timer)| timer.clone())
            .collect())
    }

    async fn next_due(&self) -> Result<Option<i64>, StateError> {
        Ok(self.data().by_end.first().map(|(ends, _)| *ends))
    }

    fn shared(&self) -> bool {
        false
    }

    async fn ping(&self) -> Result<(), StateError> {
        Ok(())
    }
}
