//! One batch of writes in one transaction: the group commit's steps, written
//! once for both databases over [`Backend`], the handful of set-based
//! statements each backend spells its own way (`json_each` on SQLite,
//! `UNNEST` on PostgreSQL).
//!
//! A batch costs a few statements, whatever its size, each skipped when the
//! batch has nothing for it, in this order: upsert the users; find earlier
//! messages by idempotency key; clear keys older than [`KEY_LIFETIME_MS`];
//! read the balances of the users whose new messages must be paid for (a
//! used-up balance refuses the message); insert the new dialogs; insert the
//! messages; touch the existing dialogs' `updated_at`; apply the charges
//! (summed per user). Rows come back from
//! `RETURNING` in no promised order, so they are matched to requests by
//! their content, never by position.
//!
//! The writes of one batch are concurrent requests, so any order among them
//! is a valid one; the steps' fixed order is the one chosen.

use std::collections::{HashMap, VecDeque};

use sqlx::{Database, Pool, Transaction};

use super::error::StoreError;
use super::sql::{DialogRow, MessageRow, now_ms};
use super::types::{Charge, Dialog, DialogRef, Message, Money, Sender};

/// How long an idempotency key holds: a retry within this time returns the
/// earlier message; after it, the key is taken off the old message and the
/// new one is stored with it.
pub(super) const KEY_LIFETIME_MS: i64 = 24 * 60 * 60 * 1000;

/// One write, as the writer received it (owned: it crosses a channel).
#[derive(Debug)]
pub(super) enum Work {
    EnsureUser(UserUpsert),
    CreateDialog {
        user_id: i64,
    },
    /// A message, and for an assistant's answer the charge that goes with it.
    Append {
        message: Draft,
        charge: Option<(i64, Money)>,
        /// The user whose balance must be above zero for a new message to
        /// be stored (one the assistant will answer and charge for).
        funded_by: Option<i64>,
    },
    Charge {
        user_id: i64,
        amount: Money,
    },
}

impl Work {
    /// What the request is, for its span.
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Work::EnsureUser(_) => "ensure_user",
            Work::CreateDialog { .. } => "create_dialog",
            Work::Append { .. } => "append",
            Work::Charge { .. } => "charge",
        }
    }
}

/// A user to create, or to rename when `name` is given.
#[derive(Debug, Clone)]
pub(super) struct UserUpsert {
    pub id: i64,
    pub name: Option<String>,
    pub starting_balance: Money,
}

/// A message to store, checked: `tokens_used` fits its column.
#[derive(Debug)]
pub(super) struct Draft {
    pub dialog: DialogRef,
    pub sender: Sender,
    pub sender_id: Option<i64>,
    pub text: String,
    pub tokens_used: i32,
    pub idempotency_key: Option<String>,
}

/// An appended (or, with `created == false`, earlier) message, and the
/// charge applied with it.
#[derive(Debug)]
pub(super) struct Appended {
    pub message: Message,
    pub created: bool,
    pub charge: Option<Charge>,
}

/// What one successful write yields; the variant follows the [`Work`]'s.
#[derive(Debug)]
pub(super) enum Done {
    Unit,
    Dialog(Dialog),
    Appended(Appended),
    Charge(Charge),
}

/// A message row to insert, its dialog resolved.
#[derive(Debug, Clone, Copy)]
pub(super) struct MessageInsert<'a> {
    pub dialog_id: i64,
    pub sender: &'static str,
    pub sender_id: Option<i64>,
    pub body: &'a str,
    pub tokens_used: i32,
    pub key: Option<&'a str>,
}

/// An idempotency key to look up: sender, sender id, key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct KeyRef<'a> {
    pub sender: &'static str,
    pub sender_id: Option<i64>,
    pub key: &'a str,
}

/// The set-based statements of one backend. Each runs one constant SQL
/// text (prepared once per connection and cached by sqlx) on the batch's
/// transaction, whatever the number of rows.
#[async_trait::async_trait]
pub(super) trait Backend: Send + Sync + 'static {
    type Db: Database;

    /// Begins the batch's transaction (on SQLite, taking the write lock at
    /// once: a read that later upgrades could fail with SQLITE_BUSY).
    async fn begin(pool: &Pool<Self::Db>) -> Result<Transaction<'static, Self::Db>, sqlx::Error>;

    /// Creates the users that are missing; renames those given a new name.
    /// At most one row per id.
    async fn upsert_users(
        conn: &mut <Self::Db as Database>::Connection,
        users: &[UserUpsert],
        now: i64,
    ) -> Result<(), sqlx::Error>;

    /// The stored messages holding any of these keys.
    async fn find_by_keys(
        conn: &mut <Self::Db as Database>::Connection,
        keys: &[KeyRef<'_>],
    ) -> Result<Vec<MessageRow>, sqlx::Error>;

    /// Takes the idempotency key off these messages.
    async fn clear_keys(
        conn: &mut <Self::Db as Database>::Connection,
        message_ids: &[i64],
    ) -> Result<(), sqlx::Error>;

    /// Opens one dialog per entry (an id may repeat).
    async fn insert_dialogs(
        conn: &mut <Self::Db as Database>::Connection,
        user_ids: &[i64],
        now: i64,
    ) -> Result<Vec<DialogRow>, sqlx::Error>;

    /// Inserts the messages; one whose key another transaction stored
    /// meanwhile is skipped (no row returned for it).
    async fn insert_messages(
        conn: &mut <Self::Db as Database>::Connection,
        messages: &[MessageInsert<'_>],
        now: i64,
    ) -> Result<Vec<MessageRow>, sqlx::Error>;

    /// Moves these dialogs' `updated_at` forward to `now`, never back.
    async fn touch_dialogs(
        conn: &mut <Self::Db as Database>::Connection,
        dialog_ids: &[i64],
        now: i64,
    ) -> Result<(), sqlx::Error>;

    /// (user id, balance) for the users of `user_ids` that exist.
    async fn balances(
        conn: &mut <Self::Db as Database>::Connection,
        user_ids: &[i64],
    ) -> Result<Vec<(i64, i64)>, sqlx::Error>;

    /// Subtracts each (user id, micros) from the balance (one entry per
    /// user) and returns (user id, balance after) for the users that exist.
    async fn charge(
        conn: &mut <Self::Db as Database>::Connection,
        charges: &[(i64, i64)],
    ) -> Result<Vec<(i64, i64)>, sqlx::Error>;
}

/// The step that failed, to name the missing row when a request is retried
/// alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    Begin,
    Users,
    Keys,
    Funds,
    Dialogs,
    Messages,
    Touch,
    Charges,
    Commit,
}

/// Why a batch's transaction was rolled back.
#[derive(Debug, thiserror::Error)]
pub(super) enum BatchError {
    #[error("{step:?}: {source}")]
    Sql {
        step: Step,
        #[source]
        source: sqlx::Error,
    },
    /// An answer's charge names an unknown user: the answer must not be
    /// stored without its charge.
    #[error("answer charged to unknown user {0}")]
    UnknownUser(i64),
}

impl BatchError {
    fn at(step: Step) -> impl FnOnce(sqlx::Error) -> BatchError {
        move |source| BatchError::Sql { step, source }
    }

    /// The error of `work`'s request when it failed alone: a foreign-key
    /// violation becomes the missing parent.
    pub(super) fn for_request(self, work: &Work) -> StoreError {
        match self {
            BatchError::UnknownUser(id) => StoreError::NotFound { what: "user", id },
            BatchError::Sql { step, source } => {
                let missing = match (step, work) {
                    (Step::Dialogs, Work::CreateDialog { user_id }) => Some(("user", *user_id)),
                    (Step::Dialogs, Work::Append { message, .. }) => match message.dialog {
                        DialogRef::New { user_id } => Some(("user", user_id)),
                        DialogRef::Existing(_) => None,
                    },
                    (Step::Messages, Work::Append { message, .. }) => match message.dialog {
                        DialogRef::Existing(id) => Some(("dialog", id)),
                        DialogRef::New { .. } => None,
                    },
                    _ => None,
                };
                match (missing, &source) {
                    (Some((what, id)), sqlx::Error::Database(db))
                        if db.is_foreign_key_violation() =>
                    {
                        StoreError::NotFound { what, id }
                    }
                    _ => StoreError::Database(source),
                }
            }
        }
    }
}

/// Runs `work` in one transaction and commits; then (only then) the
/// results, one per request, in order. On `Err` nothing was stored.
pub(super) async fn run<B: Backend>(
    pool: &Pool<B::Db>,
    work: &[&Work],
) -> Result<Vec<Result<Done, StoreError>>, BatchError> {
    let now = now_ms();
    let mut tx = B::begin(pool).await.map_err(BatchError::at(Step::Begin))?;
    match steps::<B>(&mut tx, work, now).await {
        Ok(results) => {
            tx.commit().await.map_err(BatchError::at(Step::Commit))?;
            Ok(results)
        }
        Err(err) => {
            // The error is the news; a failed rollback closes the connection.
            let _ = tx.rollback().await;
            Err(err)
        }
    }
}

/// What becomes of a message request with regard to its idempotency key.
#[derive(Debug)]
enum Plan {
    /// Stored as a new row.
    Insert,
    /// The key returns this earlier message.
    Earlier(MessageRow),
    /// The same key as request `.0` of this batch, which comes first.
    SameAs(usize),
    /// Not stored: its payer cannot pay.
    Refused(Refusal),
}

/// Why a message that must be paid for was not stored.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    /// The payer's balance is zero or below.
    UsedUp,
    /// The payer is not a known user.
    UnknownPayer(i64),
}

impl Refusal {
    fn error(self) -> StoreError {
        match self {
            Refusal::UsedUp => StoreError::InsufficientBalance,
            Refusal::UnknownPayer(id) => StoreError::NotFound { what: "user", id },
        }
    }
}

/// Identifies an inserted row among the batch's: every column but the id and
/// the time (the same for all). Requests with equal identities are
/// interchangeable, so any pairing of them with the returned rows is right;
/// lower ids go to earlier requests.
type Identity<'a> = (i64, &'a str, Option<i64>, Option<&'a str>, &'a str, i32);

async fn steps<B: Backend>(
    conn: &mut <B::Db as Database>::Connection,
    work: &[&Work],
    now: i64,
) -> Result<Vec<Result<Done, StoreError>>, BatchError> {
    let mut results: Vec<Option<Result<Done, StoreError>>> = work.iter().map(|_| None).collect();

    // 1. Users: one row per id; the first call's balance, the last name given.
    let mut users: Vec<UserUpsert> = Vec::new();
    let mut user_rows: HashMap<i64, usize> = HashMap::new();
    for (i, w) in work.iter().enumerate() {
        if let Work::EnsureUser(user) = w {
            match user_rows.get(&user.id).and_then(|&row| users.get_mut(row)) {
                Some(row) => {
                    if user.name.is_some() {
                        row.name.clone_from(&user.name);
                    }
                }
                None => {
                    user_rows.insert(user.id, users.len());
                    users.push(user.clone());
                }
            }
            results[i] = Some(Ok(Done::Unit));
        }
    }
    if !users.is_empty() {
        B::upsert_users(conn, &users, now)
            .await
            .map_err(BatchError::at(Step::Users))?;
    }

    // 2. Idempotency keys: earlier messages, duplicates inside the batch,
    // keys that have expired.
    let mut plans: Vec<Option<Plan>> = work.iter().map(|_| None).collect();
    let mut first_with_key: HashMap<KeyRef<'_>, usize> = HashMap::new();
    for (i, w) in work.iter().enumerate() {
        if let Work::Append { message, .. } = w {
            let plan = match key_of(message) {
                Some(key) => match first_with_key.get(&key) {
                    Some(&first) => Plan::SameAs(first),
                    None => {
                        first_with_key.insert(key, i);
                        Plan::Insert
                    }
                },
                None => Plan::Insert,
            };
            plans[i] = Some(plan);
        }
    }
    if !first_with_key.is_empty() {
        let keys: Vec<KeyRef<'_>> = first_with_key.keys().copied().collect();
        let found = B::find_by_keys(conn, &keys)
            .await
            .map_err(BatchError::at(Step::Keys))?;
        let mut expired = Vec::new();
        for row in found {
            let Some(&i) = first_with_key.get(&row_key(&row)) else {
                continue;
            };
            if now - row.created_at < KEY_LIFETIME_MS {
                plans[i] = Some(Plan::Earlier(row));
            } else {
                expired.push(row.id);
            }
        }
        if !expired.is_empty() {
            B::clear_keys(conn, &expired)
                .await
                .map_err(BatchError::at(Step::Keys))?;
        }
    }
    // 2b. Funds: a new message the assistant will answer needs its payer's
    // balance above zero. An earlier message its key returns needs nothing.
    let mut payers: Vec<(usize, i64)> = Vec::new();
    for (i, w) in work.iter().enumerate() {
        if let Work::Append {
            funded_by: Some(user_id),
            ..
        } = w
            && matches!(plans.get(i), Some(Some(Plan::Insert)))
        {
            payers.push((i, *user_id));
        }
    }
    if !payers.is_empty() {
        let mut ids: Vec<i64> = payers.iter().map(|&(_, user_id)| user_id).collect();
        ids.sort_unstable();
        ids.dedup();
        let balances: HashMap<i64, i64> = B::balances(conn, &ids)
            .await
            .map_err(BatchError::at(Step::Funds))?
            .into_iter()
            .collect();
        for (i, user_id) in payers {
            let refusal = match balances.get(&user_id) {
                Some(&micros) if Money(micros) > Money::ZERO => continue,
                Some(_) => Refusal::UsedUp,
                None => Refusal::UnknownPayer(user_id),
            };
            if let Some(plan) = plans.get_mut(i) {
                *plan = Some(Plan::Refused(refusal));
            }
        }
        // A duplicate inside the batch shares its first request's fate.
        for i in 0..plans.len() {
            if let Some(Some(Plan::SameAs(first))) = plans.get(i)
                && let Some(Some(Plan::Refused(refusal))) = plans.get(*first)
            {
                plans[i] = Some(Plan::Refused(*refusal));
            }
        }
    }
    let inserts = |i: usize| matches!(plans.get(i), Some(Some(Plan::Insert)));

    // 3. New dialogs: for create_dialog, and for first messages that insert.
    let mut dialog_users = Vec::new();
    let mut dialog_owners = Vec::new();
    for (i, w) in work.iter().enumerate() {
        let user_id = match w {
            Work::CreateDialog { user_id } => *user_id,
            Work::Append { message, .. } if inserts(i) => match message.dialog {
                DialogRef::New { user_id } => user_id,
                DialogRef::Existing(_) => continue,
            },
            _ => continue,
        };
        dialog_users.push(user_id);
        dialog_owners.push(i);
    }
    let mut new_dialogs: HashMap<usize, i64> = HashMap::new();
    if !dialog_users.is_empty() {
        let mut rows = B::insert_dialogs(conn, &dialog_users, now)
            .await
            .map_err(BatchError::at(Step::Dialogs))?;
        rows.sort_by_key(|row| row.id);
        let mut by_user: HashMap<i64, VecDeque<DialogRow>> = HashMap::new();
        for row in rows {
            by_user.entry(row.user_id).or_default().push_back(row);
        }
        for (&i, &user_id) in dialog_owners.iter().zip(&dialog_users) {
            let row = by_user
                .get_mut(&user_id)
                .and_then(VecDeque::pop_front)
                .ok_or_else(|| missing_row(Step::Dialogs))?;
            match work.get(i) {
                Some(Work::CreateDialog { .. }) => results[i] = Some(Ok(Done::Dialog(row.into()))),
                _ => {
                    new_dialogs.insert(i, row.id);
                }
            }
        }
    }

    // 4. Messages.
    let mut rows_to_insert = Vec::new();
    let mut inserting = Vec::new();
    // Whether the row's dialog existed before this batch (it needs a touch).
    let mut existing = Vec::new();
    for (i, w) in work.iter().enumerate() {
        if let Work::Append { message, .. } = w
            && inserts(i)
        {
            let dialog_id = match message.dialog {
                DialogRef::Existing(id) => id,
                DialogRef::New { .. } => *new_dialogs
                    .get(&i)
                    .ok_or_else(|| missing_row(Step::Dialogs))?,
            };
            rows_to_insert.push(MessageInsert {
                dialog_id,
                sender: message.sender.as_str(),
                sender_id: message.sender_id,
                body: &message.text,
                tokens_used: message.tokens_used,
                key: message.idempotency_key.as_deref(),
            });
            inserting.push(i);
            existing.push(matches!(message.dialog, DialogRef::Existing(_)));
        }
    }
    let mut stored: HashMap<usize, MessageRow> = HashMap::new();
    let mut touched: Vec<i64> = Vec::new();
    if !rows_to_insert.is_empty() {
        let mut rows = B::insert_messages(conn, &rows_to_insert, now)
            .await
            .map_err(BatchError::at(Step::Messages))?;
        rows.sort_by_key(|row| row.id);
        let mut waiting: HashMap<Identity<'_>, VecDeque<usize>> = HashMap::new();
        for (&i, row) in inserting.iter().zip(&rows_to_insert) {
            let identity = (
                row.dialog_id,
                row.sender,
                row.sender_id,
                row.key,
                row.body,
                row.tokens_used,
            );
            waiting.entry(identity).or_default().push_back(i);
        }
        let mut owners = Vec::with_capacity(rows.len());
        for row in &rows {
            let identity = (
                row.dialog_id,
                row.sender.as_str(),
                row.sender_id,
                row.idempotency_key.as_deref(),
                row.body.as_str(),
                row.tokens_used,
            );
            owners.push(waiting.get_mut(&identity).and_then(VecDeque::pop_front));
        }
        drop(waiting);
        for (owner, row) in owners.into_iter().zip(rows) {
            if let Some(i) = owner {
                stored.insert(i, row);
            }
        }
        // A keyed row skipped by ON CONFLICT: another writer (another
        // process) stored the key since step 2 and has committed (PostgreSQL
        // waits for it). Its message is the earlier one. A dialog opened
        // for such a request stays empty.
        let raced: Vec<(usize, KeyRef<'_>)> = inserting
            .iter()
            .filter(|i| !stored.contains_key(i))
            .map(|&i| match work.get(i) {
                Some(Work::Append { message, .. }) => key_of(message)
                    .map(|key| (i, key))
                    .ok_or_else(|| missing_row(Step::Messages)),
                _ => Err(missing_row(Step::Messages)),
            })
            .collect::<Result<_, _>>()?;
        if !raced.is_empty() {
            let keys: Vec<KeyRef<'_>> = raced.iter().map(|(_, key)| *key).collect();
            let found = B::find_by_keys(conn, &keys)
                .await
                .map_err(BatchError::at(Step::Messages))?;
            let mut by_key: HashMap<KeyRef<'_>, MessageRow> = HashMap::new();
            for row in found {
                let key = row_key(&row);
                if let Some((_, key)) = raced.iter().find(|(_, raced)| *raced == key) {
                    by_key.insert(*key, row);
                }
            }
            for (i, key) in &raced {
                let row = by_key
                    .remove(key)
                    .ok_or_else(|| missing_row(Step::Messages))?;
                plans[*i] = Some(Plan::Earlier(row));
            }
        }
        for ((i, row), existed) in inserting.iter().zip(&rows_to_insert).zip(&existing) {
            if *existed && stored.contains_key(i) {
                touched.push(row.dialog_id);
            }
        }
    }

    // 5. Dialogs that got a message and existed before this batch.
    touched.sort_unstable();
    touched.dedup();
    if !touched.is_empty() {
        B::touch_dialogs(conn, &touched, now)
            .await
            .map_err(BatchError::at(Step::Touch))?;
    }

    // 6. Charges: charge() calls, and the answers stored now; summed per
    // user in one statement, then each request's before/after in order.
    let mut charges: Vec<(usize, i64, Money, bool)> = Vec::new();
    for (i, w) in work.iter().enumerate() {
        match w {
            Work::Charge { user_id, amount } => charges.push((i, *user_id, *amount, false)),
            Work::Append {
                charge: Some((user_id, amount)),
                ..
            } if *amount != Money::ZERO && stored.contains_key(&i) => {
                charges.push((i, *user_id, *amount, true));
            }
            _ => {}
        }
    }
    let mut charged: HashMap<usize, Charge> = HashMap::new();
    if !charges.is_empty() {
        let mut sums: Vec<(i64, i64)> = Vec::new();
        let mut sum_rows: HashMap<i64, usize> = HashMap::new();
        for &(_, user_id, amount, _) in &charges {
            match sum_rows.get(&user_id).and_then(|&row| sums.get_mut(row)) {
                Some((_, sum)) => *sum = sum.saturating_add(amount.0),
                None => {
                    sum_rows.insert(user_id, sums.len());
                    sums.push((user_id, amount.0));
                }
            }
        }
        let balances = B::charge(conn, &sums)
            .await
            .map_err(BatchError::at(Step::Charges))?;
        // Each user's balance before the batch's charges.
        let mut running: HashMap<i64, Money> = HashMap::new();
        for (user_id, after) in balances {
            let sum = sum_rows
                .get(&user_id)
                .and_then(|&row| sums.get(row))
                .map_or(0, |(_, sum)| *sum);
            running.insert(user_id, Money(after) + Money(sum));
        }
        for (i, user_id, amount, with_answer) in charges {
            match running.get_mut(&user_id) {
                Some(balance) => {
                    let before = *balance;
                    let after = before - amount;
                    *balance = after;
                    if with_answer {
                        charged.insert(i, Charge { before, after });
                    } else {
                        results[i] = Some(Ok(Done::Charge(Charge { before, after })));
                    }
                }
                None if with_answer => return Err(BatchError::UnknownUser(user_id)),
                None => {
                    results[i] = Some(Err(StoreError::NotFound {
                        what: "user",
                        id: user_id,
                    }));
                }
            }
        }
    }

    // 7. Every message request's answer, duplicates after the first.
    let mut messages: HashMap<usize, (MessageRow, bool)> = HashMap::new();
    for (i, plan) in plans.iter_mut().enumerate() {
        match plan.take() {
            Some(Plan::Insert) => {
                if let Some(row) = stored.remove(&i) {
                    messages.insert(i, (row, true));
                }
            }
            Some(Plan::Earlier(row)) => {
                messages.insert(i, (row, false));
            }
            Some(Plan::SameAs(first)) => {
                let row = messages
                    .get(&first)
                    .map(|(row, _)| row.clone())
                    .ok_or_else(|| missing_row(Step::Messages))?;
                messages.insert(i, (row, false));
            }
            Some(Plan::Refused(refusal)) => {
                if let Some(slot) = results.get_mut(i) {
                    *slot = Some(Err(refusal.error()));
                }
            }
            None => {}
        }
    }
    for (i, (row, created)) in messages {
        let charge = charged.remove(&i);
        if let Some(slot) = results.get_mut(i) {
            *slot = Some(Message::try_from(row).map(|message| {
                Done::Appended(Appended {
                    message,
                    created,
                    charge,
                })
            }));
        }
    }

    results
        .into_iter()
        .map(|result| result.ok_or_else(|| missing_row(Step::Commit)))
        .collect()
}

/// The idempotency key of a message request, if it has one.
fn key_of(message: &Draft) -> Option<KeyRef<'_>> {
    message.idempotency_key.as_deref().map(|key| KeyRef {
        sender: message.sender.as_str(),
        sender_id: message.sender_id,
        key,
    })
}

/// The key a stored row holds (a row found by key has one). An unknown
/// sender text matches no request.
fn row_key(row: &MessageRow) -> KeyRef<'_> {
    KeyRef {
        sender: Sender::parse(&row.sender).map_or("", Sender::as_str),
        sender_id: row.sender_id,
        key: row.idempotency_key.as_deref().unwrap_or_default(),
    }
}

/// A statement returned fewer rows than the batch needs: the database did
/// not do what was asked, so nothing is committed.
fn missing_row(step: Step) -> BatchError {
    BatchError::Sql {
        step,
        source: sqlx::Error::RowNotFound,
    }
}
