//! The bodies of the events the presence service sends. The gateway adds
//! `type`, `timestamp` and `event_id`.

use serde::Serialize;

use crate::model::{OperatorView, Status};

/// The frame type of [`OperatorStatusChange`].
pub const OPERATOR_STATUS_CHANGE: &str = "operator_status_change";

/// `operator_status_change`, to every operator connection (and the handoff
/// service, which follows it): sent when an operator's effective status,
/// chosen status, online flag or load changed. docs/protocol.md's fields
/// (`operator_id`, `status`) first; the rest lets a follower keep the whole
/// picture without asking.
#[derive(Debug, Serialize)]
pub struct OperatorStatusChange<'a> {
    pub operator_id: i64,
    /// Effective: `available`, `busy`, `away` or `offline`.
    pub status: &'static str,
    /// What the operator chose: `available`, `busy` or `away`.
    pub chosen_status: &'static str,
    pub online: bool,
    pub active_handoffs: u32,
    pub max_handoffs: u32,
    /// Empty when unknown.
    pub name: &'a str,
    /// Grows with every change presence announces (also across its
    /// restarts): a client that read a listing as of version `V` drops the
    /// changes at or below `V`.
    pub version: u64,
}

impl<'a> From<&'a OperatorView> for OperatorStatusChange<'a> {
    fn from(view: &'a OperatorView) -> Self {
        OperatorStatusChange {
            operator_id: view.operator_id,
            status: view.status.as_str(),
            chosen_status: Status::from(view.chosen_status).as_str(),
            online: view.online,
            active_handoffs: view.active_handoffs,
            max_handoffs: view.max_handoffs,
            name: &view.name,
            version: view.version,
        }
    }
}
