//! What the queue knows of operators, and what it tells about them: the seam
//! between the assignment logic and the presence service.
//!
//! The queue ([`crate::service`]) receives [`OperatorUpdate`]s on a channel —
//! a full [`Snapshot`](OperatorUpdate::Snapshot) after every (re)attach to
//! presence, then one [`Changed`](OperatorUpdate::Changed) per
//! `operator_status_change` event — and reports each operator's load through
//! an [`OperatorDirectory`]. [`crate::presence`] implements both over gRPC;
//! tests feed the channel and record the loads themselves.

/// The status an operator chose (as opposed to the effective status, which
/// also says `offline` and turns `busy` at the cap).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChosenStatus {
    Available,
    Busy,
    Away,
}

impl ChosenStatus {
    /// `available`, `busy` or `away`; anything else is `None`.
    pub fn parse(text: &str) -> Option<ChosenStatus> {
        match text {
            "available" => Some(ChosenStatus::Available),
            "busy" => Some(ChosenStatus::Busy),
            "away" => Some(ChosenStatus::Away),
            _ => None,
        }
    }
}

/// One operator as presence sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorView {
    pub operator_id: i64,
    /// Display name (may be empty).
    pub name: String,
    /// Any connection open (and not past the grace period after the last one closed).
    pub online: bool,
    pub chosen: ChosenStatus,
    /// The load presence holds for them, if it said; the queue corrects it
    /// when it differs from its own count.
    pub reported_load: Option<u32>,
}

/// A change in what is known of operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OperatorUpdate {
    /// Everyone presence knows, replacing the previous view (sent after each
    /// attach, before the events that follow it).
    Snapshot(Vec<OperatorView>),
    /// One operator's new state.
    Changed(OperatorView),
}

/// Where the queue reports how many handoffs each operator holds.
pub trait OperatorDirectory: Send + Sync + 'static {
    /// `operator_id` now holds `active_handoffs`. Must not block: the queue
    /// calls it from its actor; implementations hand it on (the latest value
    /// per operator wins).
    fn set_load(&self, operator_id: i64, active_handoffs: u32);
}

/// The body of an `operator_status_change` event, as presence sends it:
/// `{"operator_id","status","chosen_status","online","active_handoffs",
/// "max_handoffs","name"}`. Lenient: only `operator_id` is required;
/// `online` defaults from `status != "offline"`, `chosen_status` from
/// `status`.
#[derive(Debug, serde::Deserialize)]
struct StatusChangeBody {
    operator_id: i64,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    chosen_status: Option<String>,
    #[serde(default)]
    online: Option<bool>,
    #[serde(default)]
    active_handoffs: Option<u32>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    version: u64,
}

/// Why an `operator_status_change` body was not understood.
#[derive(Debug, thiserror::Error)]
pub enum StatusChangeError {
    #[error("not the JSON of an operator_status_change: {0}")]
    Json(#[from] serde_json::Error),
}

/// Reads an `operator_status_change` event body, and its version (0 when it
/// has none). An unknown chosen status reads as [`ChosenStatus::Away`]: such
/// an operator is never given work.
pub fn parse_status_change(body: &[u8]) -> Result<(OperatorView, u64), StatusChangeError> {
    let body: StatusChangeBody = serde_json::from_slice(body)?;
    let status = body.status.as_deref().unwrap_or("offline");
    let online = body.online.unwrap_or(status != "offline");
    let chosen_text = body.chosen_status.as_deref().unwrap_or(status);
    let chosen = ChosenStatus::parse(chosen_text).unwrap_or_else(|| {
        if body.chosen_status.is_some() {
            tracing::warn!(
                operator_id = body.operator_id,
                chosen_status = chosen_text,
                "unknown chosen status; treating the operator as away"
            );
        }
        ChosenStatus::Away
    });
    let view = OperatorView {
        operator_id: body.operator_id,
        name: body.name.unwrap_or_default(),
        online,
        chosen,
        reported_load: body.active_handoffs,
    };
    Ok((view, body.version))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The full body presence sends reads field by field.
    #[test]
    fn full_status_change_reads() {
        let (view, version) = parse_status_change(
            br#"{"operator_id":7,"status":"busy","chosen_status":"available","online":true,
                "active_handoffs":5,"max_handoffs":5,"name":"Olga","version":12}"#,
        )
        .expect("parses");
        assert_eq!(version, 12);
        assert_eq!(
            view,
            OperatorView {
                operator_id: 7,
                name: "Olga".into(),
                online: true,
                chosen: ChosenStatus::Available,
                reported_load: Some(5),
            }
        );
    }

    /// A minimal body falls back on `status`; offline means not online.
    #[test]
    fn minimal_status_change_falls_back_on_status() {
        let (view, version) =
            parse_status_change(br#"{"operator_id":7,"status":"offline"}"#).expect("parses");
        assert!(!view.online);
        assert_eq!(version, 0, "no version: unversioned");
        let (view, _) =
            parse_status_change(br#"{"operator_id":7,"status":"away"}"#).expect("parses");
        assert!(view.online);
        assert_eq!(view.chosen, ChosenStatus::Away);
        assert_eq!(view.reported_load, None);
    }

    /// Unknown statuses never make an operator eligible; bad JSON is an error.
    #[test]
    fn unknown_status_is_not_available() {
        let (view, _) = parse_status_change(
            br#"{"operator_id":7,"status":"available","chosen_status":"napping","online":true}"#,
        )
        .expect("parses");
        assert_eq!(view.chosen, ChosenStatus::Away);
        assert!(parse_status_change(b"[1,2]").is_err());
        assert!(parse_status_change(br#"{"status":"available"}"#).is_err());
    }
}
