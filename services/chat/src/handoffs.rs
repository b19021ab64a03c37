//! What the chat service needs to know from the handoff service, behind a
//! trait, in domain types: who holds a dialog, asking for an operator, and
//! telling it an operator replied. The gRPC implementation and the task
//! following the handoff service's holder notes are in the gRPC adapter
//! (`grpc::handoff_client`); tests use a fake, deployments without operators
//! [`NoHandoffs`].

use std::fmt;

use chatai_kit::error_code::ErrorCode;

/// A dialog's active handoff, as the chat service sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// Waiting in the queue: nobody answers but the assistant stays quiet.
    Queued,
    /// Held by this operator.
    Operator { id: i64, name: String },
}

/// Who holds a dialog, as of a holder version ([`chatai_kit::holders`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holding {
    pub holder: Option<Holder>,
    pub version: u64,
}

/// How urgent a handoff is (the handoff service serves the more urgent first).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Priority {
    Low,
    #[default]
    Normal,
    High,
    Urgent,
}

/// Where a handoff is in its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HandoffState {
    /// Waiting in the queue; no operator (where a new handoff starts).
    #[default]
    Queued,
    /// An operator holds it.
    Assigned,
    /// Ended by its operator (or an admin / service).
    Completed,
    /// Waited too long and went back to the assistant.
    Returned,
}

/// A handoff as the handoff service describes it. Times are milliseconds
/// since the Unix epoch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HandoffRecord {
    pub handoff_id: i64,
    pub dialog_id: i64,
    pub user_id: i64,
    pub state: HandoffState,
    pub priority: Priority,
    pub reason: String,
    /// The operator holding it (or who completed it); `None` while queued.
    pub operator_id: Option<i64>,
    /// That operator's display name.
    pub operator_name: Option<String>,
    /// 1-based place in the queue while queued.
    pub position: Option<u32>,
    /// The expected wait in the queue (0 when not waiting; `None` while
    /// queued with nobody online to serve the queue).
    pub estimated_wait_seconds: Option<u32>,
    /// Online operators who chose available.
    pub operators_online: u32,
    pub requested_at_ms: i64,
    pub assigned_at_ms: Option<i64>,
    pub completed_at_ms: Option<i64>,
    /// How it ended.
    pub resolution: Option<String>,
}

/// Why the handoff service could not answer.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    /// It refused the request; the refusal is passed on to the client as it
    /// was given.
    #[error("handoff service refused: {0}")]
    Refused(Refusal),
    /// It could not be reached in time, or its answer made no sense.
    #[error("handoff service unavailable: {cause}")]
    Unavailable { cause: String },
}

impl HandoffError {
    /// Whether asking again later may succeed: the handoff service could
    /// not be reached or was overloaded, as opposed to a refusal.
    pub fn is_retryable(&self) -> bool {
        match self {
            HandoffError::Unavailable { .. } => true,
            HandoffError::Refused(refusal) => refusal.kind == RefusalKind::Exhausted,
        }
    }
}

/// The handoff service's refusal of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub kind: RefusalKind,
    /// The stable, client-facing error code it gave (`handoff_exists`,
    /// `queue_full`, …), if any.
    pub code: Option<ErrorCode>,
    /// Its explanation, written for people.
    pub message: String,
}

/// What kind of "no" the handoff service said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// The request was malformed.
    InvalidRequest,
    /// The caller's identity was not accepted.
    Unauthenticated,
    /// The caller may not do that.
    Forbidden,
    /// No such handoff.
    NotFound,
    /// The dialog already has a handoff queued or held.
    AlreadyExists,
    /// The queue is full.
    Exhausted,
    /// There is no handoff service to ask ([`NoHandoffs`]).
    Unsupported,
    /// Anything else.
    Failed,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.kind)?;
        if let Some(code) = &self.code {
            write!(f, " ({code})")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// The handoff service, as the chat service uses it.
#[async_trait::async_trait]
pub trait Handoffs: Send + Sync + 'static {
    /// Who holds the dialog now, if anyone.
    async fn holding(&self, dialog_id: i64) -> Result<Holding, HandoffError>;
    /// Asks for a human operator for the user's dialog.
    async fn request(
        &self,
        dialog_id: i64,
        user_id: i64,
        reason: &str,
        priority: Priority,
    ) -> Result<HandoffRecord, HandoffError>;
    /// The holding operator replied (stops the handoff's no-reply timer).
    async fn operator_replied(&self, dialog_id: i64, operator_id: i64) -> Result<(), HandoffError>;
}

/// No handoff service: nothing is ever handed off (for tests of the
/// assistant path, and deployments without operators).
#[derive(Debug, Default, Clone)]
pub struct NoHandoffs;

#[async_trait::async_trait]
impl Handoffs for NoHandoffs {
    async fn holding(&self, _: i64) -> Result<Holding, HandoffError> {
        Ok(Holding {
            holder: None,
            version: 0,
        })
    }

    async fn request(
        &self,
        _: i64,
        _: i64,
        _: &str,
        _: Priority,
    ) -> Result<HandoffRecord, HandoffError> {
        Err(HandoffError::Refused(Refusal {
            kind: RefusalKind::Unsupported,
            code: None,
            message: "no handoff service".into(),
        }))
    }

    async fn operator_replied(&self, _: i64, _: i64) -> Result<(), HandoffError> {
        Ok(())
    }
}
