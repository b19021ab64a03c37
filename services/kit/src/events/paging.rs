//! The paging rules of a recipient's log, written once for every backend:
//! where a replay starts, when it is complete, what a page says about what
//! follows, and how long events and an emptied log are kept. A backend reads its log's bounds ([`LogBounds`]), asks
//! [`plan`] what to do, reads the events after the start when told to, and
//! builds the page with [`page_of`] — so resuming works the same on memory
//! and on Redis.
//!
//! The one rule a reader must know: an incomplete replay (events after the
//! start were trimmed, or the start is not a position of this log) returns
//! no events at all, and live delivery goes on from the log's last position.

use std::time::Duration;

use super::{Delivery, LogPage, ReplayFrom};

/// Events appended before this instant (ms since the epoch) are past the
/// `retention` and may be trimmed.
pub(crate) fn oldest_kept_ms(retention: Duration) -> i64 {
    crate::now_ms() - retention.as_millis() as i64
}

/// How long an emptied log is remembered (its last position and mark) after
/// its last event, in ms: twice the retention, at least a second.
pub(crate) fn forget_after_ms(retention: Duration) -> u64 {
    (retention.as_millis() as u64).saturating_mul(2).max(1000)
}

/// What a backend knows of one recipient's log before reading any event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LogBounds {
    /// The position before the log's first event (its generation's start).
    pub base: u64,
    /// The last position handed out.
    pub last: u64,
    /// The position of the oldest event still kept (`last + 1` when none is).
    pub first_kept: u64,
    /// Where the recipient's connections were when last released.
    pub seen: Option<u64>,
}

/// What a read does, decided from the bounds alone.
#[derive(Debug)]
pub(crate) enum Plan {
    /// Answer this page, which holds no events.
    Answer(LogPage),
    /// Read up to the limit of events with a position above `start`, then
    /// build the page with [`page_of`].
    ReadAfter { start: u64, last: u64 },
}

/// Plans a read from `from` of a log with these bounds (`None`: the
/// recipient has no log at all).
pub(crate) fn plan(bounds: Option<LogBounds>, from: ReplayFrom) -> Plan {
    let Some(bounds) = bounds else {
        // No log: only "nothing seen yet" can be complete.
        let start = match from {
            ReplayFrom::After(position) => position,
            ReplayFrom::SinceLastSeen => 0,
        };
        return Plan::Answer(LogPage {
            deliveries: Vec::new(),
            complete: start == 0,
            start_after: start,
            next_after: 0,
            more: false,
        });
    };
    let start = match from {
        ReplayFrom::After(position) => position,
        // Never released: everything retained is its offline queue.
        ReplayFrom::SinceLastSeen => bounds.seen.unwrap_or(0),
    };
    let complete = replay_is_complete(start, bounds.base, bounds.first_kept, bounds.last);
    let nothing_after_start = start >= bounds.last || bounds.first_kept > bounds.last;
    if !complete || nothing_after_start {
        return Plan::Answer(LogPage {
            deliveries: Vec::new(),
            complete,
            start_after: start,
            next_after: bounds.last,
            more: false,
        });
    }
    Plan::ReadAfter {
        start,
        last: bounds.last,
    }
}

/// The page of a complete read after `start` that found `deliveries` (in
/// log order) in a log whose last position is `last`.
pub(crate) fn page_of(start: u64, last: u64, deliveries: Vec<Delivery>) -> LogPage {
    let next_after = deliveries.last().map_or(start, |d| d.position);
    LogPage {
        // An empty page never promises more: a reader would ask again forever.
        more: next_after < last && !deliveries.is_empty(),
        deliveries,
        complete: true,
        start_after: start,
        next_after,
    }
}

/// Whether a replay after `start` can be complete: nothing after it was
/// trimmed, and it is not ahead of the log. `0` means "nothing seen from this
/// log yet": complete while the log still holds its first event.
fn replay_is_complete(start: u64, base: u64, first_kept: u64, last: u64) -> bool {
    let from_beginning = start == 0 && first_kept == base + 1;
    (from_beginning || start.saturating_add(1) >= first_kept) && start <= last
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Completeness: nothing trimmed after the start, not ahead of the log;
    /// "nothing seen yet" is complete only while the first event is kept.
    #[test]
    fn completeness_rules() {
        let base = 7 << 32;
        assert!(replay_is_complete(base + 3, base, base + 1, base + 5));
        assert!(replay_is_complete(base + 5, base, base + 1, base + 5));
        assert!(
            !replay_is_complete(base + 6, base, base + 1, base + 5),
            "ahead of the log"
        );
        assert!(
            !replay_is_complete(base + 1, base, base + 4, base + 5),
            "events 2 and 3 trimmed"
        );
        assert!(replay_is_complete(base + 3, base, base + 4, base + 5));
        assert!(replay_is_complete(0, base, base + 1, base + 5));
        assert!(
            !replay_is_complete(0, base, base + 2, base + 5),
            "the first event is gone"
        );
        assert!(
            !replay_is_complete(3 << 32, base, base + 1, base + 5),
            "another log's position"
        );
    }

    /// An incomplete replay answers no events and goes on live from the
    /// log's last position; a caught-up one reads nothing either.
    #[test]
    fn incomplete_and_caught_up_replays_read_nothing() {
        let base = 7 << 32;
        let bounds = LogBounds {
            base,
            last: base + 5,
            first_kept: base + 4,
            seen: None,
        };
        let Plan::Answer(trimmed) = plan(Some(bounds), ReplayFrom::After(base + 1)) else {
            panic!("events 2 and 3 are gone: nothing to read");
        };
        assert!(!trimmed.complete && trimmed.deliveries.is_empty());
        assert_eq!(trimmed.next_after, base + 5);
        let Plan::Answer(caught_up) = plan(Some(bounds), ReplayFrom::After(base + 5)) else {
            panic!("nothing after the last position");
        };
        assert!(caught_up.complete && !caught_up.more);
        assert_eq!(caught_up.next_after, base + 5);
        assert!(matches!(
            plan(Some(bounds), ReplayFrom::After(base + 3)),
            Plan::ReadAfter { start, last } if start == base + 3 && last == base + 5
        ));
        let Plan::Answer(no_log) = plan(None, ReplayFrom::SinceLastSeen) else {
            panic!("no log, nothing to read");
        };
        assert!(no_log.complete && no_log.next_after == 0);
    }
}
