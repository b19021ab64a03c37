//! The chat service's own view of who holds each dialog, fed by the handoff
//! service's holder notes ([`chatai_kit::holders`]), so that a message is
//! routed without a round trip to the handoff service.
//!
//! The rule (see `docs/architecture.md`, "Who holds a dialog"): a request
//! carries the last position of the caller's own log at the handoff service
//! that its connection was delivered. The view answers only when it has
//! applied every note for that caller up to that position — then it reflects
//! every transition the caller has seen — or when an earlier answer from the
//! handoff service covered that position for that dialog. Otherwise
//! [`HolderView::lookup`] says "ask", the caller asks the handoff service and
//! tells the view what it learnt ([`HolderView::learned`]).
//!
//! Notes arrive in version order on one stream; answers from the handoff
//! service carry the version they are as of. An entry is only ever replaced
//! by something at least as new, and an entry saying "the assistant" is kept
//! only while a note older than it could still arrive.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use chatai_kit::events::generation_start;
use chatai_kit::holders::{HeldBy, HolderNote, NotedFor};

use crate::handoffs::Holder;

/// Most (caller, dialog) pairs remembered as confirmed by the handoff
/// service; past it the memory is dropped (those callers ask once more).
const MAX_CONFIRMED: usize = 65_536;
/// Entries saying "the assistant" kept before a sweep drops those no older
/// note can still overwrite.
const MAX_CLEARED: usize = 4_096;

/// Who holds each dialog, as far as the notes and answers received tell.
#[derive(Debug, Default)]
pub struct HolderView {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Attached to the handoff service and its state read: notes arrive.
    synced: bool,
    /// The newest version applied from the stream (or its snapshot).
    stream_version: u64,
    /// Dialogs with a known holder (`None`: back with the assistant, kept
    /// while a note older than `version` may still arrive), and as of when.
    dialogs: HashMap<i64, Entry>,
    /// Entries in `dialogs` whose holder is `None`.
    cleared: usize,
    /// Per caller: every note up to this position of its log was applied.
    noted: HashMap<NotedFor, u64>,
    /// Per caller and dialog: the handoff service answered for this position.
    confirmed: HashMap<(NotedFor, i64), u64>,
}

#[derive(Debug, Clone)]
struct Entry {
    holder: Option<Holder>,
    version: u64,
    /// The holding operator's first reply was reported to the handoff
    /// service (which stops its no-reply timer): no need to say it again.
    reply_recorded: bool,
}

/// Whether `known` covers `seen`: the same log generation and no lower.
fn covers(known: u64, seen: u64) -> bool {
    generation_start(known) == generation_start(seen) && known >= seen
}

fn holder_of(held: HeldBy) -> Option<Holder> {
    match held {
        HeldBy::Assistant => None,
        HeldBy::Queued => Some(Holder::Queued),
        HeldBy::Operator {
            operator_id,
            operator_name,
        } => Some(Holder::Operator {
            id: operator_id,
            name: operator_name,
        }),
    }
}

impl HolderView {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The dialog's holder when the view is sure to reflect everything
    /// `caller` has seen up to position `seen` of its handoff log; `None`
    /// when the handoff service must be asked.
    pub fn lookup(&self, dialog_id: i64, caller: NotedFor, seen: u64) -> Option<Option<Holder>> {
        let state = self.state();
        if !state.synced {
            return None;
        }
        let current = seen == 0
            || state.noted.get(&caller).is_some_and(|p| covers(*p, seen))
            || state
                .confirmed
                .get(&(caller, dialog_id))
                .is_some_and(|p| covers(*p, seen));
        if !current {
            return None;
        }
        Some(
            state
                .dialogs
                .get(&dialog_id)
                .and_then(|entry| entry.holder.clone()),
        )
    }

    /// What the handoff service answered for `dialog_id`, as of `version`,
    /// asked on behalf of `caller` who had seen up to `seen`.
    pub fn learned(
        &self,
        dialog_id: i64,
        holder: Option<Holder>,
        version: u64,
        caller: NotedFor,
        seen: u64,
    ) {
        let mut state = self.state();
        // The answer is newer than every transition the caller had seen, and
        // the view holds it or something newer (below): it covers `seen`.
        if state.confirmed.len() >= MAX_CONFIRMED {
            state.confirmed.clear();
        }
        let confirmed = state.confirmed.entry((caller, dialog_id)).or_insert(seen);
        if !covers(*confirmed, seen) {
            *confirmed = seen;
        }
        // At or below the stream's version, the notes already told as much.
        if version > state.stream_version {
            state.set(dialog_id, holder, version);
        }
    }

    /// One note from the stream (notes arrive in version order).
    pub fn apply(&self, note: HolderNote) {
        let mut state = self.state();
        state.stream_version = state.stream_version.max(note.version);
        state.set(note.dialog_id, holder_of(note.holder), note.version);
        let noted = state.noted.entry(note.recipient).or_insert(note.position);
        if !covers(*noted, note.position) {
            *noted = note.position;
        }
        if state.cleared > MAX_CLEARED {
            state.sweep();
        }
    }

    /// The handoff service's state as of `version`, read after (re)attaching:
    /// every dialog it lists, none other held — except what an answer newer
    /// than the snapshot said.
    pub fn reset(&self, held: Vec<(i64, HeldBy)>, version: u64) {
        let mut state = self.state();
        state.dialogs.retain(|_, entry| entry.version > version);
        for (dialog_id, holder) in held {
            state.dialogs.entry(dialog_id).or_insert_with(|| Entry {
                holder: holder_of(holder),
                version,
                reply_recorded: false,
            });
        }
        state.cleared = state
            .dialogs
            .values()
            .filter(|entry| entry.holder.is_none())
            .count();
        state.stream_version = state.stream_version.max(version);
        state.synced = true;
    }

    /// Whether the handoff service must still be told that `operator_id`,
    /// who holds `dialog_id`, replied: not when the view knows it was told
    /// since the operator got the dialog.
    pub fn reply_to_record(&self, dialog_id: i64, operator_id: i64) -> bool {
        let state = self.state();
        match state.dialogs.get(&dialog_id) {
            Some(Entry {
                holder: Some(Holder::Operator { id, .. }),
                reply_recorded: true,
                ..
            }) => *id != operator_id,
            _ => true,
        }
    }

    /// The handoff service was told `operator_id` replied in `dialog_id`.
    pub fn reply_recorded(&self, dialog_id: i64, operator_id: i64) {
        let mut state = self.state();
        if let Some(entry) = state.dialogs.get_mut(&dialog_id)
            && matches!(&entry.holder, Some(Holder::Operator { id, .. }) if *id == operator_id)
        {
            entry.reply_recorded = true;
        }
    }

    /// The dialog's holder as far as the view knows now (the notes applied so
    /// far); `None` while the view is not synced.
    pub fn current(&self, dialog_id: i64) -> Option<Option<Holder>> {
        let state = self.state();
        state.synced.then(|| {
            state
                .dialogs
                .get(&dialog_id)
                .and_then(|entry| entry.holder.clone())
        })
    }

    /// The dialogs `operator_id` holds as far as the view knows now, highest
    /// id first; `None` while the view is not synced.
    pub fn held_by(&self, operator_id: i64) -> Option<Vec<i64>> {
        let state = self.state();
        if !state.synced {
            return None;
        }
        let mut held: Vec<i64> = state
            .dialogs
            .iter()
            .filter(|(_, entry)| {
                matches!(&entry.holder, Some(Holder::Operator { id, .. }) if *id == operator_id)
            })
            .map(|(dialog_id, _)| *dialog_id)
            .collect();
        held.sort_unstable_by(|a, b| b.cmp(a));
        Some(held)
    }

    /// The stream to the handoff service broke: ask it until the next snapshot.
    pub fn detached(&self) {
        self.state().synced = false;
    }
}

impl State {
    /// Sets a dialog's holder unless the entry is newer.
    fn set(&mut self, dialog_id: i64, holder: Option<Holder>, version: u64) {
        let (was_cleared, reply_recorded) = match self.dialogs.get(&dialog_id) {
            Some(entry) if entry.version > version => return,
            Some(entry) => (
                entry.holder.is_none(),
                entry.reply_recorded && entry.holder == holder,
            ),
            None => (false, false),
        };
        let clears = holder.is_none();
        if clears && version <= self.stream_version {
            // No older note can come any more: nothing to remember.
            self.dialogs.remove(&dialog_id);
        } else {
            self.dialogs.insert(
                dialog_id,
                Entry {
                    holder,
                    version,
                    reply_recorded,
                },
            );
        }
        let now_cleared = clears && self.dialogs.contains_key(&dialog_id);
        match (was_cleared, now_cleared) {
            (false, true) => self.cleared += 1,
            (true, false) => self.cleared = self.cleared.saturating_sub(1),
            _ => {}
        }
    }

    /// Drops "the assistant" entries the stream has caught up with.
    fn sweep(&mut self) {
        let stream_version = self.stream_version;
        self.dialogs
            .retain(|_, entry| entry.holder.is_some() || entry.version > stream_version);
        self.cleared = self
            .dialogs
            .values()
            .filter(|entry| entry.holder.is_none())
            .count();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const USER: NotedFor = NotedFor::User(5);
    const OPERATOR: NotedFor = NotedFor::Operator(7);

    fn assigned(version: u64, recipient: NotedFor, position: u64) -> HolderNote {
        HolderNote {
            dialog_id: 1,
            user_id: 5,
            holder: HeldBy::Operator {
                operator_id: 7,
                operator_name: "Bo".into(),
            },
            version,
            recipient,
            position,
        }
    }

    fn back_to_assistant(version: u64, recipient: NotedFor, position: u64) -> HolderNote {
        HolderNote {
            holder: HeldBy::Assistant,
            ..assigned(version, recipient, position)
        }
    }

    fn bo() -> Option<Holder> {
        Some(Holder::Operator {
            id: 7,
            name: "Bo".into(),
        })
    }

    /// `held_by` lists an operator's dialogs (newest first) only while
    /// synced, and follows the notes: a dialog taken back leaves the list.
    #[test]
    fn held_by_follows_the_notes() {
        let view = HolderView::new();
        assert_eq!(view.held_by(7), None);
        assert_eq!(view.current(1), None);
        view.reset(
            vec![(
                3,
                HeldBy::Operator {
                    operator_id: 7,
                    operator_name: "Bo".into(),
                },
            )],
            10,
        );
        view.apply(assigned(11, OPERATOR, 1));
        assert_eq!(view.held_by(7), Some(vec![3, 1]));
        assert_eq!(view.held_by(8), Some(vec![]));
        assert_eq!(view.current(1), Some(bo()));
        view.apply(back_to_assistant(12, OPERATOR, 2));
        assert_eq!(view.held_by(7), Some(vec![3]));
        assert_eq!(view.current(1), Some(None));
        view.detached();
        assert_eq!(view.held_by(7), None);
    }

    /// Before the first snapshot, and after the stream broke, it never answers.
    #[test]
    fn answers_only_while_synced() {
        let view = HolderView::new();
        assert_eq!(view.lookup(1, USER, 0), None);
        view.reset(Vec::new(), 10);
        assert_eq!(view.lookup(1, USER, 0), Some(None));
        view.detached();
        assert_eq!(view.lookup(1, USER, 0), None);
    }

    /// A caller who has seen more than the notes told must ask.
    #[test]
    fn a_caller_ahead_of_the_notes_asks() {
        let view = HolderView::new();
        view.reset(Vec::new(), 10);
        view.apply(assigned(11, USER, 3));
        assert_eq!(view.lookup(1, USER, 3), Some(bo()));
        assert_eq!(view.lookup(1, USER, 4), None, "a note for 4 is on its way");
        assert_eq!(
            view.lookup(1, OPERATOR, 1),
            None,
            "nothing noted for the operator"
        );
        view.apply(assigned(11, OPERATOR, 1));
        assert_eq!(view.lookup(1, OPERATOR, 1), Some(bo()));
        // A position of another log generation is never covered.
        assert_eq!(view.lookup(1, USER, (1 << 32) + 1), None);
    }

    /// An answer newer than the stream holds until the stream passes it; an
    /// older one changes nothing; both confirm the caller's position.
    #[test]
    fn answers_and_notes_never_go_back_in_time() {
        let view = HolderView::new();
        view.reset(Vec::new(), 10);
        view.learned(1, bo(), 20, USER, 4);
        assert_eq!(view.lookup(1, USER, 4), Some(bo()));
        // An older note (in flight when the answer was given) changes nothing.
        view.apply(back_to_assistant(15, USER, 2));
        assert_eq!(view.lookup(1, USER, 4), Some(bo()));
        // A newer one does.
        view.apply(back_to_assistant(21, USER, 5));
        assert_eq!(view.lookup(1, USER, 5), Some(None));
        // An answer older than the stream is not stored.
        view.learned(1, bo(), 18, USER, 5);
        assert_eq!(view.lookup(1, USER, 5), Some(None));
    }

    /// A snapshot replaces what is older than it, keeps what is newer.
    #[test]
    fn a_snapshot_keeps_newer_answers() {
        let view = HolderView::new();
        view.reset(Vec::new(), 10);
        view.apply(assigned(11, USER, 1));
        view.learned(2, Some(Holder::Queued), 30, USER, 1);
        view.detached();
        view.reset(vec![(3, HeldBy::Queued)], 25);
        assert_eq!(
            view.lookup(1, USER, 1),
            Some(None),
            "dialog 1 is no longer held"
        );
        assert_eq!(view.lookup(2, USER, 1), Some(Some(Holder::Queued)));
        assert_eq!(view.lookup(3, USER, 1), Some(Some(Holder::Queued)));
    }

    /// A first reply is reported once per assignment.
    #[test]
    fn a_reply_is_reported_once_per_assignment() {
        let view = HolderView::new();
        view.reset(Vec::new(), 10);
        view.apply(assigned(11, OPERATOR, 1));
        assert!(view.reply_to_record(1, 7));
        view.reply_recorded(1, 7);
        assert!(!view.reply_to_record(1, 7));
        // Another note saying the same keeps it; a new holder does not.
        view.apply(assigned(12, USER, 2));
        assert!(!view.reply_to_record(1, 7));
        view.apply(back_to_assistant(13, USER, 3));
        view.apply(assigned(14, OPERATOR, 2));
        assert!(view.reply_to_record(1, 7));
    }

    /// "Back to the assistant" entries do not pile up.
    #[test]
    fn cleared_dialogs_are_forgotten() {
        let view = HolderView::new();
        view.reset(Vec::new(), 10);
        for dialog_id in 0..10_000 {
            view.learned(dialog_id, None, 11 + dialog_id as u64, USER, 0);
        }
        view.apply(HolderNote {
            dialog_id: 99_999,
            ..back_to_assistant(100_000, USER, 1)
        });
        let state = view.state();
        assert!(
            state.dialogs.len() <= MAX_CLEARED + 1,
            "{}",
            state.dialogs.len()
        );
    }
}
