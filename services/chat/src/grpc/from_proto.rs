//! Wire to domain: what the chat service's callers send it and what the
//! handoff service answers, as the domain types the rest of the crate uses.
//! The one place those `chatai.v1` messages (and a handoff call's `Status`)
//! are read; [`super::to_proto`] goes the other way.

use chatai_kit::holders::{self, HeldBy, HolderNote};
use chatai_kit::status::error_code;
use chatai_proto::v1 as pb;
use tonic::{Code, Status};

use crate::handoffs::{
    HandoffError, HandoffRecord, HandoffState, Holder, Holding, Priority, Refusal, RefusalKind,
};
use crate::store::Money;

/// The page a history or dialog-listing request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// Only items with an id below this one (none: the newest).
    pub before: Option<i64>,
    /// 0 is the default page, more than the largest page is the largest
    /// ([`crate::page_limit`]).
    pub limit: u32,
}

impl Page {
    fn new(before: i64, limit: u32) -> Self {
        Page {
            before: Some(before).filter(|id| *id > 0),
            limit: crate::page_limit(Some(limit)),
        }
    }
}

impl From<&pb::GetHistoryRequest> for Page {
    fn from(request: &pb::GetHistoryRequest) -> Self {
        Page::new(request.before_message_id, request.limit)
    }
}

impl From<&pb::ListDialogsRequest> for Page {
    fn from(request: &pb::ListDialogsRequest) -> Self {
        Page::new(request.before_dialog_id, request.limit)
    }
}

/// A top-up's amount: anything but a finite number is no amount (refused).
pub fn amount(units: f64) -> Money {
    if units.is_finite() {
        Money::from_units(units)
    } else {
        Money::ZERO
    }
}

/// A request's idempotency key: empty means none.
pub fn idempotency_key(key: &str) -> Option<&str> {
    Some(key).filter(|k| !k.is_empty())
}

/// A wire priority: unspecified, or a number this version does not know,
/// means normal.
pub fn priority(wire: i32) -> Priority {
    match pb::Priority::try_from(wire) {
        Ok(pb::Priority::Low) => Priority::Low,
        Ok(pb::Priority::High) => Priority::High,
        Ok(pb::Priority::Urgent) => Priority::Urgent,
        Ok(pb::Priority::Normal | pb::Priority::Unspecified) | Err(_) => Priority::Normal,
    }
}

/// A failed call to the handoff service: unreachable (the client may retry),
/// or refused for a reason the client is told as it was given.
impl From<Status> for HandoffError {
    fn from(status: Status) -> Self {
        let kind = match status.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
                return HandoffError::Unavailable {
                    cause: status.to_string(),
                };
            }
            Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => {
                RefusalKind::InvalidRequest
            }
            Code::Unauthenticated => RefusalKind::Unauthenticated,
            Code::PermissionDenied => RefusalKind::Forbidden,
            Code::NotFound => RefusalKind::NotFound,
            Code::AlreadyExists => RefusalKind::AlreadyExists,
            Code::ResourceExhausted => RefusalKind::Exhausted,
            Code::Unimplemented => RefusalKind::Unsupported,
            Code::Ok | Code::Aborted | Code::Internal | Code::DataLoss => RefusalKind::Failed,
        };
        HandoffError::Refused(Refusal {
            kind,
            code: error_code(&status).and_then(|code| code.parse().ok()),
            message: status.message().to_owned(),
        })
    }
}

/// A reply the handoff service should never give.
fn malformed(what: impl std::fmt::Display) -> HandoffError {
    HandoffError::Unavailable {
        cause: format!("the handoff service sent {what}"),
    }
}

impl From<pb::GetActiveHandoffResponse> for Holding {
    fn from(response: pb::GetActiveHandoffResponse) -> Self {
        Holding {
            holder: response.handoff.map(|handoff| match handoff.operator_id {
                0 => Holder::Queued,
                id => Holder::Operator {
                    id,
                    name: handoff.operator_name,
                },
            }),
            version: response.version,
        }
    }
}

impl TryFrom<pb::HandoffRecord> for HandoffRecord {
    type Error = HandoffError;

    fn try_from(record: pb::HandoffRecord) -> Result<Self, HandoffError> {
        let state = match pb::HandoffState::try_from(record.state) {
            Ok(pb::HandoffState::Queued) => HandoffState::Queued,
            Ok(pb::HandoffState::Assigned) => HandoffState::Assigned,
            Ok(pb::HandoffState::Completed) => HandoffState::Completed,
            Ok(pb::HandoffState::Returned) => HandoffState::Returned,
            Ok(pb::HandoffState::Unspecified) | Err(_) => {
                return Err(malformed(format_args!(
                    "a handoff in an unknown state ({})",
                    record.state
                )));
            }
        };
        Ok(HandoffRecord {
            handoff_id: record.handoff_id,
            dialog_id: record.dialog_id,
            user_id: record.user_id,
            state,
            priority: priority(record.priority),
            reason: record.reason,
            operator_id: Some(record.operator_id).filter(|id| *id != 0),
            operator_name: Some(record.operator_name).filter(|name| !name.is_empty()),
            position: Some(record.position).filter(|position| *position != 0),
            estimated_wait_seconds: (!record.wait_unknown).then_some(record.estimated_wait_seconds),
            operators_online: record.operators_online,
            requested_at_ms: record.requested_at_ms,
            assigned_at_ms: Some(record.assigned_at_ms).filter(|ms| *ms != 0),
            completed_at_ms: Some(record.completed_at_ms).filter(|ms| *ms != 0),
            resolution: Some(record.resolution).filter(|text| !text.is_empty()),
        })
    }
}

/// The handoff service's listing, as the holder of each dialog it lists
/// and the holder version it is as of.
pub fn held_dialogs(listing: pb::ListQueueResponse) -> (Vec<(i64, HeldBy)>, u64) {
    let queued = listing
        .queued
        .iter()
        .map(|handoff| (handoff.dialog_id, HeldBy::Queued));
    let assigned = listing.assigned.into_iter().map(|handoff| {
        let holder = HeldBy::Operator {
            operator_id: handoff.operator_id,
            operator_name: handoff.operator_name,
        };
        (handoff.dialog_id, holder)
    });
    (queued.chain(assigned).collect(), listing.version)
}

/// The holder note an event from the handoff service carries; `None` for
/// any other kind of event.
pub fn holder_note(event: &pb::Event) -> Result<Option<HolderNote>, serde_json::Error> {
    if event.r#type != holders::KIND {
        return Ok(None);
    }
    serde_json::from_slice(&event.body).map(Some)
}
