//! Versions for state that one service owns and others follow: a
//! [`VersionClock`] stamps every change with a version that only grows (also
//! across a restart of the owner), and a [`SnapshotGate`] applies the rule of
//! "snapshot, then follow": after reading the owner's state as of version
//! `V`, the follower drops every event stamped `V` or lower — the snapshot
//! already holds it — and applies the rest in order.
//!
//! Why it matters: a follower subscribes first and reads the snapshot second
//! (so nothing is missed), which means events older than the snapshot may
//! wait on the stream and arrive after it. Applied, such a stale event would
//! undo what the snapshot said — an "offline" older than the "online" it
//! follows, say — and some of what it triggers cannot be undone.
//!
//! Used by the handoff service following presence, and by the chat service's
//! view of who holds each dialog (`holders`).

/// Hands out versions: each greater than the last and, so that they keep
/// growing across a restart, at least the wall clock in microseconds.
#[derive(Debug, Default)]
pub struct VersionClock {
    last: u64,
}

impl VersionClock {
    /// A clock whose next version is greater than `last`: the clock of a
    /// state kept elsewhere (presence's in Redis), resumed where it stood.
    pub fn after(last: u64) -> Self {
        VersionClock { last }
    }

    /// The next version.
    pub fn tick(&mut self) -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
            .unwrap_or_default();
        self.last = now.max(self.last.saturating_add(1));
        self.last
    }

    /// The latest version handed out (0 before the first).
    pub fn current(&self) -> u64 {
        self.last
    }
}

/// The follower's side: which events a snapshot makes stale.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotGate {
    /// The version of the last snapshot applied.
    floor: u64,
}

impl SnapshotGate {
    /// A snapshot as of `version` was applied.
    pub fn snapshot(&mut self, version: u64) {
        self.floor = version;
    }

    /// Whether an event stamped `version` is newer than the last snapshot
    /// and must be applied. Version 0 means "not versioned" (an owner that
    /// does not stamp its events) and is always applied.
    pub fn admits(&self, version: u64) -> bool {
        version == 0 || version > self.floor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_only_grow() {
        let mut clock = VersionClock::default();
        let first = clock.tick();
        assert!(first > 1_600_000_000_000_000, "at least the clock in µs");
        let mut last = first;
        for _ in 0..10_000 {
            let next = clock.tick();
            assert!(next > last);
            last = next;
        }
        assert_eq!(clock.current(), last);
        let far = u64::MAX / 2;
        let mut resumed = VersionClock::after(far);
        assert_eq!(resumed.tick(), far + 1, "resumed above what it was given");
    }

    /// Events the snapshot holds are dropped, newer ones applied; unversioned
    /// events always pass.
    #[test]
    fn a_snapshot_makes_older_events_stale() {
        let mut gate = SnapshotGate::default();
        assert!(gate.admits(1), "nothing read yet: everything applies");
        gate.snapshot(10);
        assert!(!gate.admits(9));
        assert!(!gate.admits(10));
        assert!(gate.admits(11));
        assert!(gate.admits(0));
    }
}
