//! The presence domain types: the three signals kept per operator (the
//! status they chose, whether they are online, their load) and the effective
//! status everyone sees, derived from them in one place.

/// A status an operator can choose. `offline` is not chosen, it happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChosenStatus {
    Available,
    Busy,
    Away,
}

impl ChosenStatus {
    /// As written in events and stored (`available`, `busy`, `away`).
    pub fn as_str(self) -> &'static str {
        Status::from(self).as_str()
    }

    /// The reverse of [`as_str`](Self::as_str); anything else is `None`.
    pub fn parse(text: &str) -> Option<ChosenStatus> {
        match text {
            "available" => Some(ChosenStatus::Available),
            "busy" => Some(ChosenStatus::Busy),
            "away" => Some(ChosenStatus::Away),
            _ => None,
        }
    }
}

/// The effective status all operators (and the handoff service) see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Available,
    Busy,
    Away,
    Offline,
}

impl Status {
    /// The effective status, as `presence.proto` defines it: `offline` when
    /// not online; else `away` if they chose away; else `busy` if they chose
    /// busy or hold `max_handoffs` or more (auto-busy, which never overrides
    /// away); else `available`.
    pub fn derive(
        chosen: ChosenStatus,
        online: bool,
        active_handoffs: u32,
        max_handoffs: u32,
    ) -> Status {
        match chosen {
            _ if !online => Status::Offline,
            ChosenStatus::Away => Status::Away,
            ChosenStatus::Busy => Status::Busy,
            ChosenStatus::Available if active_handoffs >= max_handoffs => Status::Busy,
            ChosenStatus::Available => Status::Available,
        }
    }

    /// As written in events (`available`, `busy`, `away`, `offline`).
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Available => "available",
            Status::Busy => "busy",
            Status::Away => "away",
            Status::Offline => "offline",
        }
    }
}

impl From<ChosenStatus> for Status {
    fn from(chosen: ChosenStatus) -> Self {
        match chosen {
            ChosenStatus::Available => Status::Available,
            ChosenStatus::Busy => Status::Busy,
            ChosenStatus::Away => Status::Away,
        }
    }
}

/// One operator connection on one gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    pub operator_id: i64,
    pub connection_id: String,
    /// The operator's display name from their token; empty when unknown.
    pub name: String,
}

/// Where one of a gateway's reports (an open, a close, a lease refresh)
/// stands among its others: `presence.proto`'s `ReportOrder`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ReportOrder {
    /// When this run of the gateway started (µs since the epoch): a later
    /// run has a larger one.
    pub incarnation: u64,
    /// Grows within one run.
    pub sequence: u64,
}

/// What is known of one operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorView {
    pub operator_id: i64,
    /// Derived by [`Status::derive`].
    pub status: Status,
    pub chosen_status: ChosenStatus,
    /// Any live connection, or the grace period after the last one.
    pub online: bool,
    pub active_handoffs: u32,
    pub max_handoffs: u32,
    /// Live connections, over every gateway.
    pub connections: u32,
    /// Empty when unknown.
    pub name: String,
    /// When the operator last became online or offline (or was first heard
    /// of), ms since the epoch.
    pub since_ms: i64,
    /// The version of the last announced change of this operator (0: none).
    pub version: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The effective status follows the proto header: offline beats
    /// everything, away is never overridden by auto-busy, the load cap makes
    /// an available operator busy.
    #[test]
    fn effective_status_is_derived_as_specified() {
        use ChosenStatus as C;
        let cases = [
            (C::Available, false, 0, Status::Offline),
            (C::Away, false, 9, Status::Offline),
            (C::Available, true, 0, Status::Available),
            (C::Available, true, 4, Status::Available),
            (C::Available, true, 5, Status::Busy),
            (C::Available, true, 6, Status::Busy),
            (C::Busy, true, 0, Status::Busy),
            (C::Away, true, 0, Status::Away),
            (C::Away, true, 5, Status::Away),
        ];
        for (chosen, online, load, expected) in cases {
            assert_eq!(
                Status::derive(chosen, online, load, 5),
                expected,
                "chosen {chosen:?}, online {online}, load {load}"
            );
        }
    }
}
