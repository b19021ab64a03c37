//! The pure rules of the queue, with no I/O: the order of waiting handoffs,
//! who is eligible, who gets the next one, and the wait estimate. The actor in
//! [`crate::service`] owns the state and applies these rules.

use std::cmp::Reverse;
use std::time::Duration;

use tokio::time::Instant;

use crate::directory::ChosenStatus;
use crate::store::{Handoff, Priority};

/// A waiting handoff's place in the queue. Ordered so that the smallest key
/// is served first: higher priority first; inside a priority, handoffs taken
/// back from an operator first (they had reached the front once already);
/// then by request time; then by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct QueueKey {
    class: Reverse<Priority>,
    /// False for handoffs that were taken back, so they sort first.
    fresh: bool,
    requested_at_ms: i64,
    id: i64,
}

impl QueueKey {
    pub fn of(handoff: &Handoff) -> Self {
        QueueKey {
            class: Reverse(handoff.priority),
            fresh: handoff.requeued_at_ms.is_none(),
            requested_at_ms: handoff.requested_at_ms,
            id: handoff.id,
        }
    }

    pub fn id(&self) -> i64 {
        self.id
    }
}

/// What the queue knows of one operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    pub id: i64,
    pub name: String,
    pub online: bool,
    pub chosen: ChosenStatus,
    /// The handoffs they hold now (the queue's own count).
    pub load: u32,
    /// Their last assignment or completion (`None`: none since we started).
    pub last_active: Option<Instant>,
}

impl Operator {
    /// Online, chosen status available, and below the cap.
    pub fn is_eligible(&self, max_handoffs: u32) -> bool {
        self.online && self.chosen == ChosenStatus::Available && self.load < max_handoffs
    }

    /// The name events show: their display name, or "Operator {id}".
    pub fn display_name(&self) -> String {
        if self.name.trim().is_empty() {
            format!("Operator {}", self.id)
        } else {
            self.name.clone()
        }
    }
}

/// The eligible operator who gets the next handoff: the fewest active
/// handoffs, then the longest idle (never active counts as idlest), then the
/// lowest id. `avoid` (the operator it was just taken from) is passed over
/// when anyone else is eligible.
pub fn pick<'a>(
    operators: impl IntoIterator<Item = &'a Operator>,
    max_handoffs: u32,
    avoid: Option<i64>,
) -> Option<&'a Operator> {
    let eligible: Vec<&Operator> = operators
        .into_iter()
        .filter(|op| op.is_eligible(max_handoffs))
        .collect();
    let rank = |op: &&Operator| (op.load, op.last_active, op.id);
    eligible
        .iter()
        .copied()
        .filter(|op| Some(op.id) != avoid)
        .min_by_key(rank)
        .or_else(|| eligible.iter().copied().min_by_key(rank))
}

/// Who serves the queue: the online operators who chose available (at the
/// cap or not — a full operator frees a seat when a handoff ends), and
/// their seats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capacity {
    pub operators: u32,
    pub seats: u32,
}

/// The [`Capacity`] of `operators`, each with `max_handoffs` seats.
pub fn capacity<'a>(
    operators: impl IntoIterator<Item = &'a Operator>,
    max_handoffs: u32,
) -> Capacity {
    let operators = operators
        .into_iter()
        .filter(|op| op.online && op.chosen == ChosenStatus::Available)
        .count();
    let operators = u32::try_from(operators).unwrap_or(u32::MAX);
    Capacity {
        operators,
        seats: operators.saturating_mul(max_handoffs),
    }
}

/// The estimated wait at 1-based `position`: someone is queued only while
/// every seat is taken, and the seats free up, one handoff at a time, at
/// `seats` per average handling time — so `position` × average ÷ seats,
/// rounded up to whole seconds. `None` when nobody could serve the queue
/// (no seats): no honest number exists then.
pub fn estimated_wait(
    position: u32,
    capacity: Capacity,
    average_handling: Duration,
) -> Option<u32> {
    if capacity.seats == 0 {
        return None;
    }
    let total = average_handling
        .as_millis()
        .saturating_mul(u128::from(position.max(1)));
    let millis = total.div_ceil(u128::from(capacity.seats));
    Some(u32::try_from(millis.div_ceil(1000)).unwrap_or(u32::MAX))
}

/// The handling times of the last [`RecentHandling::KEEP`] completed
/// handoffs, and their average.
#[derive(Debug, Clone)]
pub struct RecentHandling {
    /// Newest last.
    times: std::collections::VecDeque<Duration>,
    default: Duration,
}

impl RecentHandling {
    /// How many completed handoffs the average covers.
    pub const KEEP: usize = 20;

    /// `newest_first` as the store returns them; `default` until there is one.
    pub fn new(newest_first: impl IntoIterator<Item = Duration>, default: Duration) -> Self {
        let mut times: std::collections::VecDeque<Duration> =
            newest_first.into_iter().take(Self::KEEP).collect();
        times.make_contiguous().reverse();
        RecentHandling { times, default }
    }

    pub fn record(&mut self, took: Duration) {
        if self.times.len() == Self::KEEP {
            self.times.pop_front();
        }
        self.times.push_back(took);
    }

    pub fn average(&self) -> Duration {
        if self.times.is_empty() {
            return self.default;
        }
        let total: Duration = self.times.iter().sum();
        total / self.times.len() as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::HandoffState;

    fn handoff(id: i64, priority: Priority, requested_at_ms: i64, requeued: bool) -> Handoff {
        Handoff {
            id,
            dialog_id: id,
            user_id: id,
            operator_id: None,
            operator_name: None,
            priority,
            reason: String::new(),
            state: HandoffState::Queued,
            requested_at_ms,
            requeued_at_ms: requeued.then_some(requested_at_ms + 1_000_000),
            assigned_at_ms: None,
            first_reply_at_ms: None,
            completed_at_ms: None,
            resolution: None,
        }
    }

    fn operator(id: i64, load: u32, last_active: Option<Instant>) -> Operator {
        Operator {
            id,
            name: String::new(),
            online: true,
            chosen: ChosenStatus::Available,
            load,
            last_active,
        }
    }

    /// Urgent > high > normal > low; inside a priority, taken-back handoffs
    /// first, then by request time, then by id.
    #[test]
    fn queue_order_is_priority_then_requeued_then_fifo() {
        let mut keys = [
            QueueKey::of(&handoff(1, Priority::Low, 10, false)),
            QueueKey::of(&handoff(2, Priority::Normal, 30, false)),
            QueueKey::of(&handoff(3, Priority::Urgent, 50, false)),
            QueueKey::of(&handoff(4, Priority::Normal, 20, false)),
            QueueKey::of(&handoff(5, Priority::High, 60, false)),
            QueueKey::of(&handoff(6, Priority::Normal, 20, false)),
            QueueKey::of(&handoff(7, Priority::Normal, 90, true)),
        ];
        keys.sort();
        let order: Vec<i64> = keys.iter().map(QueueKey::id).collect();
        assert_eq!(order, vec![3, 5, 7, 4, 6, 2, 1]);
    }

    /// Offline, away, busy and full operators are not eligible.
    #[test]
    fn eligibility_needs_online_available_and_room() {
        let base = operator(1, 0, None);
        assert!(base.is_eligible(1));
        assert!(
            !Operator {
                online: false,
                ..base.clone()
            }
            .is_eligible(1)
        );
        assert!(
            !Operator {
                chosen: ChosenStatus::Away,
                ..base.clone()
            }
            .is_eligible(1)
        );
        assert!(
            !Operator {
                chosen: ChosenStatus::Busy,
                ..base.clone()
            }
            .is_eligible(1)
        );
        assert!(!Operator { load: 1, ..base }.is_eligible(1));
    }

    /// Fewest handoffs wins; on a tie the longest idle; never-active first;
    /// then the lowest id.
    #[test]
    fn pick_prefers_fewest_then_longest_idle() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(5);
        let ops = [
            operator(1, 2, Some(t0)),
            operator(2, 1, Some(later)),
            operator(3, 1, Some(t0)),
        ];
        assert_eq!(pick(&ops, 5, None).map(|o| o.id), Some(3));
        let ops = [operator(1, 1, Some(t0)), operator(2, 1, None)];
        assert_eq!(pick(&ops, 5, None).map(|o| o.id), Some(2));
        let ops = [operator(4, 0, None), operator(3, 0, None)];
        assert_eq!(pick(&ops, 5, None).map(|o| o.id), Some(3));
        let ops = [operator(1, 5, None), operator(2, 4, None)];
        assert_eq!(pick(&ops, 5, None).map(|o| o.id), Some(2));
        assert_eq!(pick(&ops[..1], 5, None), None);
    }

    /// The operator a handoff was taken from gets it again only when nobody
    /// else can.
    #[test]
    fn pick_avoids_the_previous_operator_when_it_can() {
        let ops = [operator(1, 0, None), operator(2, 3, None)];
        assert_eq!(pick(&ops, 5, Some(1)).map(|o| o.id), Some(2));
        assert_eq!(pick(&ops[..1], 5, Some(1)).map(|o| o.id), Some(1));
    }

    /// Capacity counts online operators who chose available, full or not.
    #[test]
    fn capacity_counts_every_seat_of_available_operators() {
        let ops = [
            operator(1, 1, None),
            operator(2, 5, None),
            Operator {
                chosen: ChosenStatus::Away,
                ..operator(3, 0, None)
            },
            Operator {
                online: false,
                ..operator(4, 0, None)
            },
            operator(5, 3, None),
        ];
        let three = Capacity {
            operators: 3,
            seats: 15,
        };
        assert_eq!(capacity(&ops, 5), three, "the full one counts too");
        assert_eq!(capacity(&ops[1..2], 5).seats, 5);
        assert_eq!(capacity(&[], 5), Capacity::default());
    }

    /// position × average ÷ seats, rounded up; nothing without seats.
    #[test]
    fn estimate_follows_the_formula() {
        let avg = Duration::from_secs(60);
        let seats = |seats| Capacity {
            operators: 1,
            seats,
        };
        assert_eq!(estimated_wait(1, seats(1), avg), Some(60));
        assert_eq!(estimated_wait(3, seats(1), avg), Some(180));
        assert_eq!(estimated_wait(1, seats(15), avg), Some(4));
        assert_eq!(estimated_wait(15, seats(15), avg), Some(60));
        assert_eq!(estimated_wait(16, seats(15), avg), Some(64));
        assert_eq!(estimated_wait(2, Capacity::default(), avg), None);
    }

    /// The average covers the last 20 handling times, the default before any.
    #[test]
    fn recent_handling_averages_the_last_twenty() {
        let default = Duration::from_secs(300);
        let mut recent = RecentHandling::new([], default);
        assert_eq!(recent.average(), default);
        recent.record(Duration::from_secs(10));
        recent.record(Duration::from_secs(30));
        assert_eq!(recent.average(), Duration::from_secs(20));
        for _ in 0..20 {
            recent.record(Duration::from_secs(100));
        }
        assert_eq!(recent.average(), Duration::from_secs(100));
        let loaded = RecentHandling::new(
            (1..=30).map(|i| Duration::from_secs(if i <= 20 { 40 } else { 1000 })),
            default,
        );
        assert_eq!(loaded.average(), Duration::from_secs(40));
    }
}
