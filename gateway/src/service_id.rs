//! [`ServiceId`]: the four services whose events the gateway passes on, by
//! name. Their order is the order of their positions in the resume cursor
//! (`cursor.rs`) and of the upstreams in [`crate::gateway::Gateway`].

use std::fmt;

/// A service the gateway holds an event stream to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServiceId {
    Chat,
    Handoff,
    Presence,
    Notification,
}

impl ServiceId {
    /// How many there are.
    pub const COUNT: usize = 4;

    /// Every service, in cursor order.
    pub const ALL: [ServiceId; ServiceId::COUNT] = [
        ServiceId::Chat,
        ServiceId::Handoff,
        ServiceId::Presence,
        ServiceId::Notification,
    ];

    /// The service's name, for logs and health reports.
    pub const fn name(self) -> &'static str {
        match self {
            ServiceId::Chat => "chat",
            ServiceId::Handoff => "handoff",
            ServiceId::Presence => "presence",
            ServiceId::Notification => "notification",
        }
    }

    /// The name of the task that holds the service's event stream.
    pub const fn stream_task(self) -> &'static str {
        match self {
            ServiceId::Chat => "chat event stream",
            ServiceId::Handoff => "handoff event stream",
            ServiceId::Presence => "presence event stream",
            ServiceId::Notification => "notification event stream",
        }
    }

    /// Where the service's position sits in the cursor (and its place in
    /// [`ALL`](Self::ALL)). Part of the cursor's wire format: never reorder.
    pub const fn index(self) -> usize {
        match self {
            ServiceId::Chat => 0,
            ServiceId::Handoff => 1,
            ServiceId::Presence => 2,
            ServiceId::Notification => 3,
        }
    }
}

impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ALL` is in index order, so `ALL[s.index()] == s`.
    #[test]
    fn all_is_in_cursor_order() {
        for (index, service) in ServiceId::ALL.into_iter().enumerate() {
            assert_eq!(service.index(), index, "{service}");
        }
    }
}
