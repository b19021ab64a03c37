//! The chat service's domain logic: who may post to and read a dialog,
//! storing messages, and the assistant's answers, which are produced after
//! the request has been acknowledged and delivered as events.

use std::sync::Arc;

use chatai_assistant::{Assistant, HumanReason, Speaker, Turn};
use chatai_kit::error_code::ErrorCode;
use chatai_kit::events::{Event, EventLog, Recipient};
use chatai_kit::holders::NotedFor;
use chatai_kit::identity::{Caller, Role};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::bounded::BoundedMap;
use crate::error::ChatError;
use crate::events::{
    AiResponse, BalanceAlert, ChatMessageCopy, DeferredError, OperatorMessage, Read, Typing,
};
use crate::handoffs::{HandoffError, HandoffRecord, Handoffs, Holder, Priority, RefusalKind};
use crate::holders::HolderView;
use crate::replies::ReplyReporter;
use crate::store::{
    Charge, ChatStore, Dialog, DialogRef, Message, Money, NewMessage, Sender, StoreError,
};

/// Prices and limits, in domain units.
#[derive(Debug, Clone)]
pub struct Policy {
    pub starting_balance: Money,
    pub price_per_1k_tokens: Money,
    pub balance_threshold: Money,
    pub max_message_chars: usize,
    pub assistant_context: u32,
}

/// A stored message, as the sender learns of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub dialog_id: i64,
    pub message_id: i64,
    /// False when the idempotency key matched an earlier message.
    pub created: bool,
}

/// Most messages or dialogs in one page, on every face (WebSocket, HTTP,
/// gRPC); a larger limit is read as this one.
pub const MAX_PAGE: u32 = 100;
/// The page size when a request names none.
pub const DEFAULT_PAGE: u32 = 50;

/// The page size for a requested limit: none (or 0) is [`DEFAULT_PAGE`],
/// more than [`MAX_PAGE`] is [`MAX_PAGE`].
pub fn page_limit(requested: Option<u32>) -> u32 {
    match requested {
        None | Some(0) => DEFAULT_PAGE,
        Some(n) => n.min(MAX_PAGE),
    }
}

/// A page of a dialog's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History {
    pub dialog: Dialog,
    /// Oldest first.
    pub messages: Vec<Message>,
    /// Older messages exist (before the first one here).
    pub has_more: bool,
}

/// Who answers a dialog now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialogState {
    /// The AI assistant.
    Assistant,
    /// A handoff waits in the queue.
    Queued,
    /// This operator holds it.
    Operator(i64),
}

impl From<Option<Holder>> for DialogState {
    fn from(holder: Option<Holder>) -> Self {
        match holder {
            None => DialogState::Assistant,
            Some(Holder::Queued) => DialogState::Queued,
            Some(Holder::Operator { id, .. }) => DialogState::Operator(id),
        }
    }
}

/// A dialog in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialogSummary {
    pub dialog: Dialog,
    pub state: DialogState,
}

/// A page of the dialogs a caller may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialogList {
    /// Newest (highest id) first.
    pub dialogs: Vec<DialogSummary>,
    /// Older dialogs exist (below the last one here).
    pub has_more: bool,
}

/// The chat service. Cheap to clone.
#[derive(Clone)]
pub struct ChatService {
    store: Arc<dyn ChatStore>,
    assistant: Arc<dyn Assistant>,
    log: Arc<dyn EventLog>,
    handoffs: Arc<dyn Handoffs>,
    /// Who holds each dialog, fed by the handoff service's notes.
    holders: Arc<HolderView>,
    /// Operators' first replies, waiting to be reported to the handoff
    /// service (sent by [`ChatService::report_replies`]).
    replies: Arc<ReplyReporter>,
    /// Who owns each dialog this service has seen (an owner never changes).
    owners: Arc<BoundedMap<i64, i64>>,
    policy: Arc<Policy>,
    /// Owns the assistant-answer tasks, so shutdown can wait for them.
    tasks: TaskTracker,
}

impl ChatService {
    pub fn new(
        store: Arc<dyn ChatStore>,
        assistant: Arc<dyn Assistant>,
        log: Arc<dyn EventLog>,
        handoffs: Arc<dyn Handoffs>,
        policy: Policy,
        tasks: TaskTracker,
    ) -> Self {
        ChatService {
            store,
            assistant,
            log,
            handoffs,
            holders: Arc::new(HolderView::new()),
            replies: Arc::new(ReplyReporter::new()),
            owners: Arc::new(BoundedMap::new(MAX_OWNERS)),
            policy: Arc::new(policy),
            tasks,
        }
    }

    /// The view of dialog holders this service routes by, for the task that
    /// feeds it ([`crate::handoffs::follow_holders`]).
    pub fn holder_view(&self) -> Arc<HolderView> {
        self.holders.clone()
    }

    /// Reports operators' first replies to the handoff service until
    /// `shutdown`, retrying while it cannot be reached ([`crate::replies`]).
    /// The process runs it as a supervised task.
    pub fn report_replies(
        &self,
        shutdown: CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static {
        self.replies
            .clone()
            .run(self.handoffs.clone(), self.holders.clone(), shutdown)
    }

    /// Stores a message. From a user (in a new dialog when `dialog_id` is
    /// `None`): the assistant answers in the background, unless a handoff
    /// holds the dialog — then the holding operator gets it, or, while the
    /// handoff waits in the queue, nobody answers yet. From an operator: only
    /// into a dialog they hold; the user gets it as `operator_message`.
    ///
    /// `seen` is the last position of the caller's own log at the handoff
    /// service its connection was delivered: the message is routed by a view
    /// of the holder that reflects at least that much ([`crate::holders`]).
    pub async fn send_message(
        &self,
        caller: &Caller,
        dialog_id: Option<i64>,
        text: &str,
        idempotency_key: Option<&str>,
        seen: u64,
    ) -> Result<Sent, ChatError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(ChatError::EmptyMessage);
        }
        if text.chars().count() > self.policy.max_message_chars {
            return Err(ChatError::MessageTooLong {
                max: self.policy.max_message_chars,
            });
        }
        match caller.role {
            Role::User | Role::Admin => {
                self.user_message(caller, dialog_id, text, idempotency_key, seen)
                    .await
            }
            Role::Operator => {
                let dialog_id = dialog_id.ok_or(ChatError::DialogRequired)?;
                self.operator_message(caller, dialog_id, text, idempotency_key, seen)
                    .await
            }
            Role::Service => Err(ChatError::Forbidden),
        }
    }

    async fn user_message(
        &self,
        caller: &Caller,
        dialog_id: Option<i64>,
        text: &str,
        idempotency_key: Option<&str>,
        seen: u64,
    ) -> Result<Sent, ChatError> {
        self.store
            .ensure_user(
                caller.id,
                caller.name.as_deref(),
                self.policy.starting_balance,
            )
            .await?;
        let (dialog, checked) = match dialog_id {
            Some(id) => {
                let dialog = self.owned_dialog(caller, id).await?;
                // Asked before storing: if the handoff service cannot say,
                // nothing is stored and the client retries. Not what the
                // message is routed by (see `holder_after_store`).
                let holder = self
                    .holder(dialog.id, NotedFor::User(caller.id), seen)
                    .await?;
                (DialogRef::Existing(dialog.id), holder)
            }
            None => (DialogRef::New { user_id: caller.id }, None),
        };
        let new_message = NewMessage {
            dialog,
            sender: Sender::User,
            sender_id: Some(caller.id),
            text,
            tokens_used: 0,
            idempotency_key,
        };
        // The assistant would answer (and charge): a used-up balance refuses
        // the message, checked in the transaction that would store it.
        // Free assistants (price 0) never refuse.
        let paid = checked.is_none() && self.policy.price_per_1k_tokens > Money::ZERO;
        let stored = if paid {
            self.store
                .append_funded_message(new_message, caller.id)
                .await
        } else {
            self.store.append_message(new_message).await
        };
        let (message, created) = stored.map_err(|err| match err {
            StoreError::InsufficientBalance => ChatError::InsufficientBalance,
            err => ChatError::Store(err),
        })?;
        let sent = Sent {
            dialog_id: message.dialog_id,
            message_id: message.id,
            created,
        };
        if dialog_id.is_none() {
            // An existing dialog's owner was remembered when it was checked.
            self.owners.insert(message.dialog_id, caller.id);
        }
        if !created {
            return Ok(sent);
        }
        let holder = match dialog_id {
            Some(_) => {
                self.holder_after_store(message.dialog_id, NotedFor::User(caller.id), seen, checked)
                    .await
            }
            // A dialog opened with this message has no handoff yet.
            None => None,
        };
        // One event for the room's live copy and, when an operator holds the
        // dialog, the operator's durable one.
        let body = ChatMessageCopy {
            dialog_id: message.dialog_id,
            message_id: message.id,
            user_id: caller.id,
            message: &message.text,
        };
        let copy = Arc::new(
            Event::new("chat_message", &body)?
                .with_origin(caller.connection_id.clone())
                .with_durable_recipient(match holder {
                    Some(Holder::Operator { id, .. }) => Some(Recipient::Operator(id)),
                    _ => None,
                }),
        );
        let room = (Recipient::dialog_room(message.dialog_id), copy.clone());
        match holder {
            None => {
                let this = self.clone();
                let user_id = caller.id;
                let connection = caller.connection_id.clone();
                let span = tracing::info_span!(
                    "assistant_answer",
                    dialog_id = message.dialog_id,
                    message_id = message.id
                );
                self.copy_to_room(room).await;
                self.tasks.spawn(
                    async move { this.answer(user_id, message, connection).await }.instrument(span),
                );
            }
            Some(Holder::Queued) => self.copy_to_room(room).await,
            Some(Holder::Operator { id, .. }) => {
                self.log
                    .deliver_many(vec![(Recipient::Operator(id), copy), room])
                    .await?;
            }
        }
        Ok(sent)
    }

    async fn operator_message(
        &self,
        caller: &Caller,
        dialog_id: i64,
        text: &str,
        idempotency_key: Option<&str>,
        seen: u64,
    ) -> Result<Sent, ChatError> {
        let dialog = self.dialog_owner(dialog_id).await?;
        if !self.holds(caller, &dialog, seen).await? {
            return Err(ChatError::NotParticipant(dialog_id));
        }
        let (message, created) = self
            .store
            .append_message(NewMessage {
                dialog: DialogRef::Existing(dialog.id),
                sender: Sender::Operator,
                sender_id: Some(caller.id),
                text,
                tokens_used: 0,
                idempotency_key,
            })
            .await?;
        if created {
            let name = caller
                .name
                .clone()
                .unwrap_or_else(|| format!("Operator {}", caller.id));
            let body = OperatorMessage {
                dialog_id: dialog.id,
                message_id: message.id,
                operator_id: caller.id,
                operator_name: &name,
                message: &message.text,
            };
            let event = Arc::new(
                Event::new("operator_message", &body)?
                    .with_origin(caller.connection_id.clone())
                    .with_durable_recipient(Some(Recipient::User(dialog.user_id))),
            );
            self.log
                .deliver_many(vec![
                    (Recipient::User(dialog.user_id), event.clone()),
                    (Recipient::dialog_room(dialog.id), event),
                ])
                .await?;
            // Reported by a task, retried until accepted: the ack does not
            // wait for the handoff service, and its no-reply timer stops
            // even if it could not be reached just now.
            if self.holders.reply_to_record(dialog.id, caller.id) {
                self.replies.report(dialog.id, caller.id);
            }
        }
        Ok(Sent {
            dialog_id: message.dialog_id,
            message_id: message.id,
            created,
        })
    }

    /// Whether `caller` is the operator holding `dialog`, by a view that
    /// reflects what the operator had seen up to `seen`.
    async fn holds(&self, caller: &Caller, dialog: &Owned, seen: u64) -> Result<bool, ChatError> {
        if caller.role != Role::Operator {
            return Ok(false);
        }
        Ok(matches!(
            self.holder(dialog.id, NotedFor::Operator(caller.id), seen).await?,
            Some(Holder::Operator { id, .. }) if id == caller.id
        ))
    }

    /// Who holds the dialog, from the view when it reflects everything
    /// `caller` had seen up to `seen`, else from the handoff service (and
    /// the view learns the answer).
    async fn holder(
        &self,
        dialog_id: i64,
        caller: NotedFor,
        seen: u64,
    ) -> Result<Option<Holder>, ChatError> {
        if let Some(holder) = self.holders.lookup(dialog_id, caller, seen) {
            return Ok(holder);
        }
        let holding = self.handoffs.holding(dialog_id).await?;
        self.holders.learned(
            dialog_id,
            holding.holder.clone(),
            holding.version,
            caller,
            seen,
        );
        Ok(holding.holder)
    }

    /// Who a stored user message is routed by: the dialog's holder as the
    /// view knows it *after* the message was stored, not as it was checked
    /// before. So a message stored after the view applied a take-back or a
    /// reassignment never goes to the former holder (who has been told the
    /// dialog is no longer theirs): it goes to the new holder, waits with
    /// the queue, or is answered by the assistant. In the common case this
    /// is one more look at the view, no call; only when the view cannot
    /// answer any more (the stream to handoff broke meanwhile, or was never
    /// up) is the handoff service asked again — and if it cannot say now,
    /// the message, already stored, goes by the holder it was checked with.
    async fn holder_after_store(
        &self,
        dialog_id: i64,
        caller: NotedFor,
        seen: u64,
        checked: Option<Holder>,
    ) -> Option<Holder> {
        match self.holder(dialog_id, caller, seen).await {
            Ok(holder) => holder,
            Err(cause) => {
                tracing::warn!(%cause, dialog_id, "routing a stored message by the holder checked before storing it");
                checked
            }
        }
    }

    /// Asks for a human operator for the caller's own dialog.
    pub async fn request_handoff(
        &self,
        caller: &Caller,
        dialog_id: i64,
        reason: &str,
        priority: Priority,
    ) -> Result<HandoffRecord, ChatError> {
        let dialog = self.owned_dialog(caller, dialog_id).await?;
        Ok(self
            .handoffs
            .request(dialog.id, dialog.user_id, reason, priority)
            .await?)
    }

    /// The dialog and its holding operator (0 for none), when `caller` may
    /// see it: its owner, its operator, an admin or a service.
    pub async fn check_access(
        &self,
        caller: &Caller,
        dialog_id: i64,
    ) -> Result<(Dialog, i64), ChatError> {
        let dialog = self
            .store
            .dialog(dialog_id)
            .await?
            .ok_or(ChatError::DialogNotFound(dialog_id))?;
        // Authoritative: joining a room is rare, and grants reading.
        let operator = match self.handoffs.holding(dialog.id).await?.holder {
            Some(Holder::Operator { id, .. }) => id,
            _ => 0,
        };
        let owner = dialog.user_id == caller.id && matches!(caller.role, Role::User | Role::Admin);
        let holder = caller.role == Role::Operator && operator == caller.id;
        if owner || holder || caller.role.is_privileged() {
            Ok((dialog, operator))
        } else {
            Err(ChatError::NotParticipant(dialog_id))
        }
    }

    /// A page of a dialog's messages (`limit` of them, at most [`MAX_PAGE`],
    /// below message `before`), oldest first, for its owner, the operator
    /// holding it now (asked of the handoff service), an admin or a service.
    /// Anyone else gets [`ChatError::NotParticipant`], answered like a
    /// dialog that does not exist.
    pub async fn history(
        &self,
        caller: &Caller,
        dialog_id: i64,
        before: Option<i64>,
        limit: u32,
    ) -> Result<History, ChatError> {
        let limit = limit.clamp(1, MAX_PAGE);
        let dialog = if caller.role == Role::Service {
            // Services read every dialog, without asking who holds it: the
            // handoff service reads a transcript while it assigns, and must
            // not wait on itself.
            self.store
                .dialog(dialog_id)
                .await?
                .ok_or(ChatError::DialogNotFound(dialog_id))?
        } else {
            self.check_access(caller, dialog_id).await?.0
        };
        // One more than asked: whether it comes back says `has_more`.
        let mut messages = self.store.history(dialog.id, before, limit + 1).await?;
        let has_more = messages.len() > limit as usize;
        if has_more {
            messages.remove(0);
        }
        Ok(History {
            dialog,
            messages,
            has_more,
        })
    }

    /// A page of the dialogs `caller` may read, newest (highest id) first,
    /// `limit` of them (at most [`MAX_PAGE`]) below dialog `before`: a
    /// user's own; the ones an operator holds now (by the holder view, fed
    /// by the handoff service's notes); every dialog for admins and
    /// services. Each with who answers it now.
    pub async fn list_dialogs(
        &self,
        caller: &Caller,
        before: Option<i64>,
        limit: u32,
    ) -> Result<DialogList, ChatError> {
        let limit = limit.clamp(1, MAX_PAGE);
        let wanted = limit as usize + 1;
        let mut dialogs = match caller.role {
            Role::User => {
                self.store
                    .list_dialogs(Some(caller.id), before, limit + 1)
                    .await?
            }
            Role::Admin | Role::Service => self.store.list_dialogs(None, before, limit + 1).await?,
            Role::Operator => {
                let held =
                    self.holders
                        .held_by(caller.id)
                        .ok_or_else(|| HandoffError::Unavailable {
                            cause: "not following the handoff service's holders".into(),
                        })?;
                let mut dialogs = Vec::with_capacity(held.len().min(wanted));
                // An operator holds a handful (the handoff cap): one read each.
                for id in held
                    .into_iter()
                    .filter(|id| before.is_none_or(|before| *id < before))
                    .take(wanted)
                {
                    if let Some(dialog) = self.store.dialog(id).await? {
                        dialogs.push(dialog);
                    }
                }
                dialogs
            }
        };
        let has_more = dialogs.len() > limit as usize;
        dialogs.truncate(limit as usize);
        let mut summaries = Vec::with_capacity(dialogs.len());
        for dialog in dialogs {
            let holder = match self.holders.current(dialog.id) {
                Some(holder) => holder,
                // Not following the handoff service just now: ask it.
                None => self.handoffs.holding(dialog.id).await?.holder,
            };
            summaries.push(DialogSummary {
                dialog,
                state: holder.into(),
            });
        }
        Ok(DialogList {
            dialogs: summaries,
            has_more,
        })
    }

    /// A participant read the dialog up to `message_id`: the dialog's owner,
    /// or the operator holding it (by a view reflecting `seen`, as for
    /// messages). The other side — the holding operator for the user, the
    /// user for the operator — and the dialog's room get a live `read`;
    /// nothing is stored. The message must be one of the dialog's.
    pub async fn mark_read(
        &self,
        caller: &Caller,
        dialog_id: i64,
        message_id: i64,
        seen: u64,
    ) -> Result<(), ChatError> {
        let (dialog, reader, other_side) = if caller.role == Role::Operator {
            let dialog = self.dialog_owner(dialog_id).await?;
            if !self.holds(caller, &dialog, seen).await? {
                return Err(ChatError::NotParticipant(dialog_id));
            }
            (dialog, "operator", Some(Recipient::User(dialog.user_id)))
        } else {
            let dialog = self.owned_dialog(caller, dialog_id).await?;
            let other_side = match self
                .holder(dialog.id, NotedFor::User(caller.id), seen)
                .await?
            {
                Some(Holder::Operator { id, .. }) => Some(Recipient::Operator(id)),
                _ => None,
            };
            (dialog, "user", other_side)
        };
        // The newest message at or below `message_id` must be that one.
        let found = self
            .store
            .history(dialog.id, message_id.checked_add(1), 1)
            .await?;
        if found.first().map(|message| message.id) != Some(message_id) {
            return Err(ChatError::MessageNotInDialog {
                dialog_id,
                message_id,
            });
        }
        let body = Read {
            dialog_id: dialog.id,
            message_id,
            reader,
            reader_id: caller.id,
        };
        let event = Arc::new(Event::new("read", &body)?.with_origin(caller.connection_id.clone()));
        if let Some(other_side) = other_side {
            self.log.publish(other_side, event.clone()).await?;
        }
        self.log
            .publish(Recipient::dialog_room(dialog.id), event)
            .await?;
        Ok(())
    }

    /// Relays a typing indicator, live only: to the dialog's room, and to
    /// the other side — the holding operator for the user, the user for the
    /// operator.
    pub async fn typing(
        &self,
        caller: &Caller,
        dialog_id: i64,
        is_typing: bool,
        seen: u64,
    ) -> Result<(), ChatError> {
        let (dialog, operator) = if caller.role == Role::Operator {
            let dialog = self.dialog_owner(dialog_id).await?;
            if !self.holds(caller, &dialog, seen).await? {
                return Err(ChatError::NotParticipant(dialog_id));
            }
            (dialog, Some(caller.id))
        } else {
            (self.owned_dialog(caller, dialog_id).await?, None)
        };
        let body = Typing {
            dialog_id: dialog.id,
            user_id: operator.is_none().then_some(caller.id),
            operator_id: operator,
            is_typing,
        };
        let event =
            Arc::new(Event::new("typing", &body)?.with_origin(caller.connection_id.clone()));
        let other_side = match operator {
            Some(_) => Some(Recipient::User(dialog.user_id)),
            None => match self
                .holder(dialog.id, NotedFor::User(caller.id), seen)
                .await?
            {
                Some(Holder::Operator { id, .. }) => Some(Recipient::Operator(id)),
                _ => None,
            },
        };
        if let Some(other_side) = other_side {
            self.log.publish(other_side, event.clone()).await?;
        }
        self.log
            .publish(Recipient::dialog_room(dialog.id), event)
            .await?;
        Ok(())
    }

    /// A user's balance: one's own, or anyone's for admins and services.
    pub async fn balance(&self, caller: &Caller, user_id: i64) -> Result<Money, ChatError> {
        if caller.id != user_id && !caller.role.is_privileged() {
            return Err(ChatError::Forbidden);
        }
        Ok(self
            .store
            .balance(user_id)
            .await?
            .unwrap_or(self.policy.starting_balance))
    }

    /// Adds `amount` to a user's balance (admins and services only; a user
    /// not seen yet starts from the starting balance); the new balance.
    pub async fn top_up(
        &self,
        caller: &Caller,
        user_id: i64,
        amount: Money,
    ) -> Result<Money, ChatError> {
        if !caller.role.is_privileged() {
            return Err(ChatError::Forbidden);
        }
        if user_id <= 0 || amount <= Money::ZERO {
            return Err(ChatError::InvalidTopUp);
        }
        self.store
            .ensure_user(user_id, None, self.policy.starting_balance)
            .await?;
        let charge = self.store.charge(user_id, -amount).await?;
        tracing::info!(user_id, amount = %amount, balance = %charge.after, "balance topped up");
        Ok(charge.after)
    }

    /// The dialog, when `caller` is its owner (a user or an admin).
    async fn owned_dialog(&self, caller: &Caller, dialog_id: i64) -> Result<Owned, ChatError> {
        let dialog = self.dialog_owner(dialog_id).await?;
        if dialog.user_id != caller.id || !matches!(caller.role, Role::User | Role::Admin) {
            return Err(ChatError::NotParticipant(dialog_id));
        }
        Ok(dialog)
    }

    /// The dialog's owner: from memory when this service has seen the dialog
    /// (an owner never changes), else read once.
    async fn dialog_owner(&self, dialog_id: i64) -> Result<Owned, ChatError> {
        if let Some(user_id) = self.owners.read(&dialog_id, |owner| owner.copied()) {
            return Ok(Owned {
                id: dialog_id,
                user_id,
            });
        }
        let dialog = self
            .store
            .dialog(dialog_id)
            .await?
            .ok_or(ChatError::DialogNotFound(dialog_id))?;
        self.owners.insert(dialog.id, dialog.user_id);
        Ok(Owned {
            id: dialog.id,
            user_id: dialog.user_id,
        })
    }

    /// Live copy of a user's message for the dialog's room (not durable;
    /// a failure is only logged).
    async fn copy_to_room(&self, (room, event): (Recipient, Arc<Event>)) {
        if let Err(cause) = self.log.deliver(room.clone(), event).await {
            tracing::warn!(%cause, %room, "room copy not delivered");
        }
    }

    /// Produces, stores, charges and delivers the assistant's answer to
    /// `question`. Failures are reported to the user as an `error` event.
    async fn answer(self, user_id: i64, question: Message, connection: Option<String>) {
        let dialog_id = question.dialog_id;
        if let Err(cause) = self.try_answer(user_id, &question, connection).await {
            tracing::error!(%cause, dialog_id, "assistant answer failed");
            let body = DeferredError {
                code: ErrorCode::AssistantUnavailable,
                message: "The assistant could not answer; please try again.",
                dialog_id,
                message_id: question.id,
            };
            let delivered = match Event::new("error", &body) {
                Ok(event) => {
                    self.log
                        .deliver(Recipient::User(user_id), Arc::new(event))
                        .await
                }
                Err(err) => Err(err),
            };
            if let Err(cause) = delivered {
                tracing::error!(%cause, dialog_id, "could not tell the user the answer failed");
            }
        }
    }

    async fn try_answer(
        &self,
        user_id: i64,
        question: &Message,
        connection: Option<String>,
    ) -> Result<(), AnswerError> {
        let turns: Vec<Turn> = if self.assistant.reads_history() {
            // Bounded (`assistant_context`) and read on the index
            // `messages_dialog_id_id`.
            self.store
                .history(
                    question.dialog_id,
                    Some(question.id + 1),
                    self.policy.assistant_context,
                )
                .await?
                .into_iter()
                .map(|m| Turn {
                    speaker: match m.sender {
                        Sender::User => Speaker::User,
                        Sender::Assistant => Speaker::Assistant,
                        Sender::Operator => Speaker::Operator,
                    },
                    text: m.text,
                })
                .collect()
        } else {
            vec![Turn::new(Speaker::User, question.text.clone())]
        };
        let asked = std::time::Instant::now();
        let answer = self.assistant.answer(&turns).await;
        crate::metrics::assistant_answered(
            asked.elapsed(),
            answer.as_ref().ok().map(|a| a.tokens_used),
        );
        let answer = answer?;
        // One answer per question, whatever happens: the key is the question's.
        let key = format!("answer:{}", question.id);
        // Stored and charged in one transaction, before it is delivered: a
        // client that reads its balance on receiving the answer sees the charge.
        let (stored, charge) = self
            .store
            .append_answer(
                NewMessage {
                    dialog: DialogRef::Existing(question.dialog_id),
                    sender: Sender::Assistant,
                    sender_id: None,
                    text: &answer.text,
                    tokens_used: answer.tokens_used,
                    idempotency_key: Some(&key),
                },
                Some((user_id, self.cost(answer.tokens_used))),
            )
            .await?;
        let body = AiResponse {
            dialog_id: question.dialog_id,
            message_id: stored.id,
            message: &answer.text,
            assistant_name: self.assistant.name(),
            tokens_used: answer.tokens_used,
            needs_human: answer.needs_human.map(|reason| match reason {
                HumanReason::Requested => "requested",
                HumanReason::NoGoodAnswer => "no_good_answer",
            }),
        };
        let event = Arc::new(
            Event::new("ai_response", &body)?
                .with_origin(connection)
                .with_durable_recipient(Some(Recipient::User(user_id))),
        );
        let alert = match charge {
            Some(charge) => self.balance_alert(user_id, charge)?,
            None => None,
        };
        let mut deliveries = vec![
            (Recipient::User(user_id), event.clone()),
            (Recipient::dialog_room(question.dialog_id), event),
        ];
        if let Some(alert) = alert {
            deliveries.push((Recipient::User(user_id), Arc::new(alert)));
        }
        self.log.deliver_many(deliveries).await?;
        if let Some(reason) = answer.needs_human {
            self.ask_for_operator(question.dialog_id, user_id, reason)
                .await;
        }
        Ok(())
    }

    /// Acts on the assistant's "needs a human" signal. A dialog already
    /// queued or held is fine; other failures are logged (the user can still
    /// ask with `handoff_request`).
    async fn ask_for_operator(&self, dialog_id: i64, user_id: i64, reason: HumanReason) {
        let reason = match reason {
            HumanReason::Requested => "the user asked the assistant for a person",
            HumanReason::NoGoodAnswer => "the assistant had no good answer",
        };
        match self
            .handoffs
            .request(dialog_id, user_id, reason, Priority::Normal)
            .await
        {
            Ok(_) => {}
            Err(HandoffError::Refused(refusal)) if refusal.kind == RefusalKind::AlreadyExists => {}
            Err(cause) => tracing::warn!(%cause, dialog_id, "could not ask for an operator"),
        }
    }

    /// The price of `tokens`.
    fn cost(&self, tokens: u32) -> Money {
        Money(
            self.policy
                .price_per_1k_tokens
                .0
                .saturating_mul(i64::from(tokens))
                / 1000,
        )
    }

    /// The one `balance_alert` to send when this charge crossed the threshold.
    fn balance_alert(&self, user_id: i64, charge: Charge) -> Result<Option<Event>, AnswerError> {
        let threshold = self.policy.balance_threshold;
        if charge.before >= threshold && charge.after < threshold {
            let body = BalanceAlert {
                user_id,
                current_balance: charge.after.as_units(),
                threshold: threshold.as_units(),
                message: "Your balance is running low",
            };
            return Ok(Some(Event::new("balance_alert", &body)?));
        }
        Ok(None)
    }
}

/// A dialog and its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Owned {
    id: i64,
    user_id: i64,
}

/// Most dialog owners remembered; past it the memory starts again.
const MAX_OWNERS: usize = 262_144;

/// Why the assistant's answer could not be produced or delivered.
#[derive(Debug, thiserror::Error)]
enum AnswerError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Assistant(#[from] chatai_assistant::AssistantError),
    #[error(transparent)]
    Events(#[from] chatai_kit::events::EventLogError),
}
