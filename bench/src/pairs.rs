//! `pairs`: P end users and about P/4 operators, every user's dialog put in
//! handoff by the real flow, then messages both ways at R msg/s in EACH
//! direction for S seconds.
//!
//! Setup: operators connect on `/ws/operator/{id}` (`--operator-base + j`)
//! and `set_status` `available`; then each user (`--user-base + i`) opens a
//! dialog with a `chat_message`, sends `handoff_request` for it and waits
//! for `operator_assigned`. An operator holds up to
//! `CHATAI_MAX_HANDOFFS_PER_OPERATOR` (5) dialogs; it learns which from its
//! own `operator_assigned` frames, and the tool checks these against what
//! the users were told (matched by dialog id).
//!
//! Load, open loop: every user sends `chat_message`s into its dialog at R/P
//! per second; every operator sends its `chat_message` replies round-robin
//! into the dialogs it holds, R/P per second per dialog. Every text is
//! `t=<µs since the run's start>;s=<sequence number in its dialog and direction>`,
//! so the receiver (the operator gets `chat_message`, the user gets
//! `operator_message`) computes the one-way latency and tells duplicates
//! (a sequence number seen twice) apart. After sending stops, the tool waits
//! up to `--drain-secs` for what is outstanding; a message not received by
//! then is lost. Per direction it reports sent, acked, refused (`error`
//! frames), delivered, lost, duplicated, the send → delivery and send → `ack`
//! latencies, and the CPU of the processes given by `--gateway-pid` and
//! `--chat-pid`.
//!
//! Afterwards every operator chooses `away` (so a later run's handoffs do
//! not go to it while presence still counts it online) and completes its
//! handoffs, then everything disconnects.
//!
//! `--search` steps through rates (see [`crate::shared::Bisection`]) on fresh
//! user and operator ids per step and prints the highest rate at which every
//! p99 stays below 10 ms and nothing is lost.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use chatai_kit::identity::Role;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::client::{Failure, ServerFrame, Target, Ws};
use crate::shared::{self, PidArgs, SearchArgs, StepOutcome};
use crate::stats::{Latencies, Summary, Table, round3};

/// Longest wait for one step of the setup (an ack, an assignment).
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(clap::Args, Debug)]
pub struct PairsArgs {
    /// Pairs: one user and one dialog each.
    #[arg(long, default_value_t = 50)]
    pairs: usize,
    /// Messages per second in EACH direction, across all pairs.
    #[arg(long, required_unless_present = "search")]
    rate: Option<f64>,
    /// Seconds of sending (each step of a search too).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Operators; default: pairs / 4, rounded up (each holds up to
    /// --max-handoffs-per-operator dialogs).
    #[arg(long)]
    operators: Option<usize>,
    /// The handoff service's per-operator cap, to check there are enough operators.
    #[arg(long, env = "CHATAI_MAX_HANDOFFS_PER_OPERATOR", default_value_t = 5)]
    max_handoffs_per_operator: usize,
    /// The gateway's per-connection limit, only to warn when the plan exceeds it.
    #[arg(long, env = "CHATAI_RATE_LIMIT_PER_SEC", default_value_t = 20)]
    server_rate_limit: u32,
    /// User ids are `user_base + i` (a search moves it on at every step).
    #[arg(long, default_value_t = 3_000_000)]
    user_base: i64,
    /// Operator ids are `operator_base + j` (a search moves it on at every step).
    #[arg(long, default_value_t = 3_500_000)]
    operator_base: i64,
    /// Seconds to wait for outstanding acks and deliveries after sending stops.
    #[arg(long, default_value_t = 10)]
    drain_secs: u64,
    /// Connections set up at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    #[command(flatten)]
    pids: PidArgs,
    #[command(flatten)]
    search: SearchArgs,
}

impl PairsArgs {
    fn operator_count(&self) -> usize {
        self.operators
            .unwrap_or_else(|| self.pairs.div_ceil(4))
            .max(1)
    }
}

/// A direction of the traffic; indexes the per-direction arrays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// Users' `chat_message`s, received by operators as `chat_message`.
    UserToOperator = 0,
    /// Operators' `chat_message`s, received by users as `operator_message`.
    OperatorToUser = 1,
}

impl Direction {
    fn index(self) -> usize {
        self as usize
    }

    /// The frame type the receiving side gets.
    fn delivered_as(self) -> &'static str {
        match self {
            Direction::UserToOperator => "chat_message",
            Direction::OperatorToUser => "operator_message",
        }
    }

    fn other(self) -> Direction {
        match self {
            Direction::UserToOperator => Direction::OperatorToUser,
            Direction::OperatorToUser => Direction::UserToOperator,
        }
    }
}

const DIRECTIONS: [(Direction, &str); 2] = [
    (Direction::UserToOperator, "user → operator"),
    (Direction::OperatorToUser, "operator → user"),
];

/// The text of message `seq`, sent `micros` after the run's start.
pub fn stamp(micros: u64, seq: u64) -> String {
    format!("t={micros};s={seq}")
}

/// The send time (µs since the run's start) and sequence number in a
/// message text made by [`stamp`]; `None` for any other text.
pub fn parse_stamp(text: &str) -> Option<(u64, u64)> {
    let (t, s) = text.split_once(';')?;
    let micros = t.strip_prefix("t=")?.parse().ok()?;
    let seq = s.strip_prefix("s=")?.parse().ok()?;
    Some((micros, seq))
}

/// Frame ids of the load: `<dialog>.<seq>`.
fn message_id(dialog_id: i64, seq: u64) -> String {
    format!("{dialog_id}.{seq}")
}

/// Counters every connection updates, so the run knows when all is in.
#[derive(Default)]
struct Progress {
    sent: [AtomicU64; 2],
    /// Acked or refused.
    settled: [AtomicU64; 2],
    refused: [AtomicU64; 2],
    /// Distinct messages received.
    delivered: [AtomicU64; 2],
    /// Assignments the operators have seen.
    assignments_seen: AtomicU64,
}

impl Progress {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Every message sent is acked or refused, and every accepted one delivered.
    fn all_in(&self) -> bool {
        (0..2).all(|d| {
            let sent = self.sent[d].load(Ordering::Relaxed);
            let refused = self.refused[d].load(Ordering::Relaxed);
            self.settled[d].load(Ordering::Relaxed) >= sent
                && self.delivered[d].load(Ordering::Relaxed) + refused >= sent
        })
    }
}

/// What one or all connections measured of one direction: the sending side
/// fills the first group, the receiving side the second.
#[derive(Default)]
struct DirStats {
    /// Messages sent per dialog (sequence numbers are 0..n).
    sent: HashMap<i64, u64>,
    acked: u64,
    refused: u64,
    /// Neither acked nor refused when the run ended.
    no_ack: u64,
    ack: Latencies,
    /// Distinct sequence numbers received per dialog.
    received: HashMap<i64, HashSet<u64>>,
    duplicated: u64,
    delivery: Latencies,
    /// Frames of the delivered type without a readable stamp.
    unstamped: u64,
}

impl DirStats {
    fn merge(&mut self, other: DirStats) {
        for (dialog, n) in other.sent {
            *self.sent.entry(dialog).or_default() += n;
        }
        self.acked += other.acked;
        self.refused += other.refused;
        self.no_ack += other.no_ack;
        self.ack.extend(other.ack);
        for (dialog, seqs) in other.received {
            let mine = self.received.entry(dialog).or_default();
            for seq in seqs {
                if !mine.insert(seq) {
                    self.duplicated += 1;
                }
            }
        }
        self.duplicated += other.duplicated;
        self.delivery.extend(other.delivery);
        self.unstamped += other.unstamped;
    }

    fn sent_total(&self) -> u64 {
        self.sent.values().sum()
    }

    /// Received messages that were sent (sequence below the dialog's count).
    fn delivered(&self) -> u64 {
        self.received
            .iter()
            .map(|(dialog, seqs)| {
                let sent = self.sent.get(dialog).copied().unwrap_or(0);
                seqs.iter().filter(|&&s| s < sent).count() as u64
            })
            .sum()
    }

    /// Received messages nobody sent in this run.
    fn unexpected(&self) -> u64 {
        let all: u64 = self.received.values().map(|s| s.len() as u64).sum();
        all - self.delivered()
    }
}

/// What one connection measured: both directions, and its errors.
#[derive(Default)]
struct TaskStats {
    dirs: [DirStats; 2],
    errors: BTreeMap<String, u64>,
}

impl TaskStats {
    fn failed(code: String) -> Self {
        let mut stats = TaskStats::default();
        stats.errors.insert(code, 1);
        stats
    }

    fn error(&mut self, code: impl Into<String>) {
        *self.errors.entry(code.into()).or_default() += 1;
    }
}

/// When sending starts and how fast each dialog goes in each direction.
#[derive(Debug, Clone)]
struct Go {
    start: Instant,
    /// When sending stops.
    until: Instant,
    per_dialog: f64,
    /// The dialogs whose user is set up: operators send only into these.
    dialogs: Arc<HashSet<i64>>,
}

/// What the whole run shares.
struct Run {
    /// Time zero of the stamps.
    clock: Instant,
    progress: Progress,
    /// The main task says when the drain is over.
    stop: watch::Receiver<bool>,
    /// The latest moment any task keeps going, whatever happens.
    hard_deadline: watch::Receiver<Option<Instant>>,
}

pub async fn run(target: Target, args: PairsArgs, nofile: u64) -> anyhow::Result<()> {
    let target = Arc::new(target);
    if args.search.search {
        let user_stride = args.pairs as i64 + 1;
        let operator_stride = args.operator_count() as i64 + 1;
        return shared::search("pairs", &args.search, |index, rate| {
            let bases = (
                args.user_base + i64::from(index) * user_stride,
                args.operator_base + i64::from(index) * operator_stride,
            );
            run_once(target.clone(), &args, rate, bases, nofile, true)
        })
        .await;
    }
    let rate = args.rate.context("--rate is required without --search")?;
    let bases = (args.user_base, args.operator_base);
    run_once(target, &args, rate, bases, nofile, false).await?;
    Ok(())
}

/// One run at `rate` per direction, on users and operators from `bases`;
/// prints the full report, or nothing when `quiet` (a search prints the
/// step's line).
async fn run_once(
    target: Arc<Target>,
    args: &PairsArgs,
    rate: f64,
    (user_base, operator_base): (i64, i64),
    nofile: u64,
    quiet: bool,
) -> anyhow::Result<StepOutcome> {
    shared::check_run(rate, args.duration)?;
    anyhow::ensure!(
        (1..=20_000).contains(&args.pairs),
        "--pairs must be 1..=20000"
    );
    let pairs = args.pairs;
    let operators = args.operator_count();
    anyhow::ensure!(
        operators * args.max_handoffs_per_operator.max(1) >= pairs,
        "{operators} operators hold at most {} dialogs, fewer than {pairs} pairs (use more --operators)",
        operators * args.max_handoffs_per_operator
    );
    anyhow::ensure!(
        (pairs + operators) as u64 + 200 <= nofile,
        "{pairs} pairs need more descriptors than this process may open ({nofile})"
    );
    let per_dialog = rate / pairs as f64;
    shared::warn_rate_limit(
        "user",
        per_dialog,
        args.server_rate_limit,
        "use more --pairs",
    );
    shared::warn_rate_limit(
        "operator",
        per_dialog * pairs.div_ceil(operators) as f64,
        args.server_rate_limit,
        "use more --operators",
    );
    println!(
        "pairs: {pairs} users and {operators} operators, {per_dialog:.2} msg/s per dialog each way = {rate} msg/s per direction for {} s to {:?}",
        args.duration, target.gateways
    );

    let token_ttl = Duration::from_secs(args.duration + args.drain_secs + 3600);
    let gate = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let (go_tx, go_rx) = watch::channel(None::<Go>);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (deadline_tx, deadline_rx) = watch::channel(None::<Instant>);
    let shared_run = Arc::new(Run {
        clock: Instant::now(),
        progress: Progress::default(),
        stop: stop_rx,
        hard_deadline: deadline_rx,
    });

    // Operators first, available before any user asks.
    let (op_ready_tx, mut op_ready_rx) = mpsc::unbounded_channel::<Result<(), Failure>>();
    let mut operator_tasks = Vec::with_capacity(operators);
    for j in 0..operators {
        let (target, gate, ready, go, run) = (
            target.clone(),
            gate.clone(),
            op_ready_tx.clone(),
            go_rx.clone(),
            shared_run.clone(),
        );
        let id = operator_base + j as i64;
        let phase = j as f64 / operators as f64;
        operator_tasks.push(tokio::spawn(async move {
            let ws = {
                let _permit = gate.acquire().await;
                operator_setup(&target, id, token_ttl).await
            };
            match ws {
                Ok(ws) => {
                    let _ = ready.send(Ok(()));
                    drop(ready);
                    operator_run(ws, phase, go, &run).await
                }
                Err(failure) => {
                    let _ = ready.send(Err(failure.clone()));
                    TaskStats::failed(format!("setup_operator_{}", failure.0))
                }
            }
        }));
    }
    drop(op_ready_tx);
    let (mut operators_ready, mut operators_failed) = (0usize, 0usize);
    let setup_deadline =
        Instant::now() + SETUP_TIMEOUT + Duration::from_millis(20 * operators as u64);
    while operators_ready + operators_failed < operators {
        match tokio::time::timeout_at(setup_deadline, op_ready_rx.recv()).await {
            Ok(Some(Ok(()))) => operators_ready += 1,
            Ok(Some(Err(_))) => operators_failed += 1,
            _ => break,
        }
    }

    // Users: a dialog each, then the handoff.
    let (user_ready_tx, mut user_ready_rx) = mpsc::unbounded_channel::<Result<Assigned, Failure>>();
    let mut user_tasks = Vec::with_capacity(pairs);
    for i in 0..pairs {
        let (target, gate, ready, go, run) = (
            target.clone(),
            gate.clone(),
            user_ready_tx.clone(),
            go_rx.clone(),
            shared_run.clone(),
        );
        let id = user_base + i as i64;
        let phase = i as f64 / pairs as f64;
        user_tasks.push(tokio::spawn(async move {
            let setup = {
                let _permit = gate.acquire().await;
                user_setup(&target, id, token_ttl).await
            };
            match setup {
                Ok((ws, assigned)) => {
                    let _ = ready.send(Ok(assigned));
                    drop(ready);
                    user_run(ws, assigned.dialog_id, phase, go, &run).await
                }
                Err(failure) => {
                    let _ = ready.send(Err(failure.clone()));
                    TaskStats::failed(format!("setup_user_{}", failure.0))
                }
            }
        }));
    }
    drop(user_ready_tx);
    let mut assignments: Vec<Assigned> = Vec::with_capacity(pairs);
    let mut users_failed = 0usize;
    let setup_deadline = Instant::now() + SETUP_TIMEOUT + Duration::from_millis(20 * pairs as u64);
    while assignments.len() + users_failed < pairs {
        match tokio::time::timeout_at(setup_deadline, user_ready_rx.recv()).await {
            Ok(Some(Ok(assigned))) => assignments.push(assigned),
            Ok(Some(Err(_))) => users_failed += 1,
            _ => break,
        }
    }
    // Every assignment a user was told of must reach its operator too.
    let seen_deadline = Instant::now() + Duration::from_secs(10);
    while (shared_run.progress.assignments_seen.load(Ordering::Relaxed) as usize)
        < assignments.len()
        && Instant::now() < seen_deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ours = operator_base..operator_base + operators as i64;
    let mut load: BTreeMap<i64, usize> = BTreeMap::new();
    let mut elsewhere = 0u64;
    for assigned in &assignments {
        if ours.contains(&assigned.operator_id) {
            *load.entry(assigned.operator_id).or_default() += 1;
        } else {
            elsewhere += 1;
        }
    }
    let seen = shared_run.progress.assignments_seen.load(Ordering::Relaxed);
    if !quiet || operators_failed + users_failed > 0 || elsewhere > 0 {
        println!(
            "setup: {operators_ready} operators available ({operators_failed} failed); {} users in handoff ({users_failed} failed), {elsewhere} of them with an operator not of this run; operators saw {seen} assignments; dialogs per operator: max {}, min {}",
            assignments.len(),
            load.values().max().copied().unwrap_or(0),
            load.values().min().copied().unwrap_or(0),
        );
    }
    let stop_all = |why: &str| {
        let _ = stop_tx.send(true);
        let _ = go_tx.send(None);
        anyhow::anyhow!("{why}")
    };
    if assignments.is_empty() {
        return Err(stop_all("no user could connect and get an operator"));
    }

    // Go.
    let start = Instant::now() + Duration::from_millis(500);
    let sending = Duration::from_secs(args.duration);
    let drain = Duration::from_secs(args.drain_secs);
    let _ = deadline_tx.send(Some(start + sending + drain + Duration::from_secs(5)));
    go_tx
        .send(Some(Go {
            start,
            until: start + sending,
            per_dialog,
            dialogs: Arc::new(assignments.iter().map(|a| a.dialog_id).collect()),
        }))
        .map_err(|_| stop_all("every task is gone"))?;
    tokio::time::sleep_until(start).await;
    let before = args.pids.mark();
    tokio::time::sleep_until(start + sending).await;
    let cpu = before.until(&args.pids.mark());
    // Drain: until everything is in, or the drain is over.
    let drain_end = start + sending + drain;
    while !shared_run.progress.all_in() && Instant::now() < drain_end {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let drained_in = Instant::now().saturating_duration_since(start + sending);
    let _ = stop_tx.send(true);

    let mut dirs: [DirStats; 2] = Default::default();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for handle in user_tasks.into_iter().chain(operator_tasks) {
        match tokio::time::timeout(Duration::from_secs(30), handle).await {
            Ok(Ok(stats)) => {
                let [a, b] = stats.dirs;
                dirs[0].merge(a);
                dirs[1].merge(b);
                shared::add_errors(&mut errors, stats.errors);
            }
            _ => *errors.entry("task_lost".into()).or_default() += 1,
        }
    }
    if elsewhere > 0 {
        errors.insert("assigned_to_another_operator".into(), elsewhere);
    }

    // Report.
    let secs = args.duration as f64;
    let mut summaries: Vec<(Summary, Summary)> = Vec::new();
    let mut per_direction = serde_json::Map::new();
    let mut lost_total = 0;
    let mut bad_total = 0;
    let mut counts = Table::new(&["", "user → operator", "operator → user"]);
    let mut columns: Vec<Vec<u64>> = Vec::new();
    for ((direction, _), stats) in DIRECTIONS.iter().zip(dirs.iter_mut()) {
        let sent = stats.sent_total();
        let delivered = stats.delivered();
        let lost = sent - delivered;
        let unexpected = stats.unexpected();
        lost_total += lost;
        bad_total += stats.duplicated + unexpected + stats.unstamped + stats.refused;
        let delivery = stats.delivery.summary();
        let ack = stats.ack.summary();
        summaries.push((delivery, ack));
        columns.push(vec![
            sent,
            stats.acked,
            stats.refused,
            stats.no_ack,
            delivered,
            lost,
            stats.duplicated,
            unexpected + stats.unstamped,
        ]);
        let key = match direction {
            Direction::UserToOperator => "user_to_operator",
            Direction::OperatorToUser => "operator_to_user",
        };
        per_direction.insert(
            key.into(),
            json!({
                "sent": sent,
                "sent_per_sec": round3(sent as f64 / secs),
                "acked": stats.acked,
                "refused": stats.refused,
                "no_ack": stats.no_ack,
                "delivered": delivered,
                "lost": lost,
                "duplicated": stats.duplicated,
                "unexpected": unexpected + stats.unstamped,
                "delivery": delivery.to_json(),
                "ack": ack.to_json(),
            }),
        );
    }
    let error_count: u64 = errors.values().sum::<u64>() + bad_total;
    let worst_p99 = summaries
        .iter()
        .map(|(d, a)| d.p99.max(a.p99))
        .fold(0.0, f64::max);
    let summary = json!({
        "mode": "pairs",
        "pairs": pairs,
        "pairs_in_handoff": assignments.len(),
        "operators": operators,
        "rate_offered_per_direction": rate,
        "duration_secs": args.duration,
        "drained_in_ms": round3(drained_in.as_secs_f64() * 1000.0),
        "directions": per_direction,
        "errors": errors,
        "cpu_percent": cpu.to_json(),
    });
    let outcome = StepOutcome {
        worst_p99_ms: worst_p99,
        lost: lost_total,
        errors: error_count,
        line: format!(
            "sent {}/{}, lost {}/{}, dup {}/{}, errors {error_count}; p99 delivery {:.2}/{:.2} ms, ack {:.2}/{:.2} ms (user→operator/operator→user); CPU gateway {}, chat {}",
            columns[0][0],
            columns[1][0],
            columns[0][5],
            columns[1][5],
            columns[0][6],
            columns[1][6],
            summaries[0].0.p99,
            summaries[1].0.p99,
            summaries[0].1.p99,
            summaries[1].1.p99,
            cpu.gateway.map_or("?".into(), |v| format!("{v:.0} %")),
            cpu.chat.map_or("?".into(), |v| format!("{v:.0} %")),
        ),
        json: summary.clone(),
    };
    if quiet {
        return Ok(outcome);
    }
    println!();
    for (row, name) in [
        "sent",
        "acked",
        "refused (error)",
        "no ack after drain",
        "delivered",
        "lost (not delivered after drain)",
        "duplicated",
        "unexpected",
    ]
    .iter()
    .enumerate()
    {
        counts.row(vec![
            (*name).into(),
            columns[0][row].to_string(),
            columns[1][row].to_string(),
        ]);
    }
    print!("{}", counts.render());
    println!();
    let mut latency = Table::new(shared::LATENCY_HEADER);
    for ((_, name), (delivery, ack)) in DIRECTIONS.iter().zip(&summaries) {
        latency.row(shared::latency_row(
            &format!("{name}: send → delivery"),
            *delivery,
        ));
        latency.row(shared::latency_row(&format!("{name}: send → ack"), *ack));
    }
    print!("{}", latency.render());
    println!();
    println!("{}", shared::errors_line(&errors));
    println!(
        "drained in {:.0} ms after sending stopped",
        drained_in.as_secs_f64() * 1000.0
    );
    println!("{cpu}");
    println!("{summary}");
    Ok(outcome)
}

/// A user's dialog and the operator it was assigned to.
#[derive(Debug, Clone, Copy)]
struct Assigned {
    dialog_id: i64,
    operator_id: i64,
}

fn text_frame(frame: &Value) -> Message {
    Message::Text(Utf8Bytes::from(frame.to_string()))
}

/// The next text frame, or why there is none.
async fn next_text(ws: &mut Ws) -> Result<Utf8Bytes, Failure> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => return Ok(text),
            Some(Ok(message @ Message::Close(_))) => return Err(Failure::closed(&message)),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return Err(Failure::new("socket_error")),
        }
    }
}

/// Sends `frame` (with `id` = `reference`) and waits for its `ack`; other
/// frames go to `other`.
async fn request(
    ws: &mut Ws,
    frame: Value,
    reference: &str,
    mut other: impl FnMut(&ServerFrame<'_>),
) -> Result<(), Failure> {
    ws.send(text_frame(&frame))
        .await
        .map_err(|_| Failure::new("socket_error"))?;
    let exchange = async {
        loop {
            let text = next_text(ws).await?;
            let frame = serde_json::from_str::<ServerFrame<'_>>(text.as_str())
                .map_err(|_| Failure::new("bad_frame"))?;
            if frame.reference.as_deref() == Some(reference) {
                return match frame.kind.as_ref() {
                    "ack" => {
                        other(&frame);
                        Ok(())
                    }
                    _ => Err(Failure(
                        frame.code.map_or("error".into(), |c| c.into_owned()),
                    )),
                };
            }
            other(&frame);
        }
    };
    tokio::time::timeout(SETUP_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| Err(Failure::new(format!("{reference}_timeout"))))
}

/// Connects operator `id` and makes it available.
async fn operator_setup(target: &Target, id: i64, token_ttl: Duration) -> Result<Ws, Failure> {
    let mut ws = target.connect_as(id, Role::Operator, token_ttl).await?;
    let frame = json!({"type": "set_status", "id": "available", "status": "available"});
    request(&mut ws, frame, "available", |_| {}).await?;
    Ok(ws)
}

/// Connects user `id`, opens a dialog, asks for a person and waits until
/// an operator is assigned.
async fn user_setup(
    target: &Target,
    id: i64,
    token_ttl: Duration,
) -> Result<(Ws, Assigned), Failure> {
    let mut ws = target.connect(id, token_ttl).await?;
    let mut dialog_id = None;
    // A question the knowledge base answers without asking for a human.
    let open =
        json!({"type": "chat_message", "id": "open", "message": "How do I reset my password?"});
    request(&mut ws, open, "open", |frame| {
        if frame.kind == "ack" {
            dialog_id = frame.dialog_id;
        }
    })
    .await?;
    let dialog_id = dialog_id.ok_or_else(|| Failure::new("no_dialog"))?;
    let mut operator_id = None;
    let ask = json!({"type": "handoff_request", "id": "handoff", "dialog_id": dialog_id, "reason": "load test", "priority": "normal"});
    let asked = request(&mut ws, ask, "handoff", |frame| {
        if let Some(id) = assigned_operator(frame, dialog_id) {
            operator_id = Some(id);
        }
    })
    .await;
    match asked {
        Ok(()) => {}
        // The assistant already asked for a person for this dialog: its
        // handoff is the one to wait for.
        Err(failure) if failure.0 == "handoff_exists" => {}
        Err(failure) => return Err(failure),
    }
    let wait = async {
        loop {
            if let Some(id) = operator_id {
                return Ok::<i64, Failure>(id);
            }
            let text = next_text(&mut ws).await?;
            let frame = serde_json::from_str::<ServerFrame<'_>>(text.as_str())
                .map_err(|_| Failure::new("bad_frame"))?;
            operator_id = assigned_operator(&frame, dialog_id);
        }
    };
    let operator_id = tokio::time::timeout(SETUP_TIMEOUT, wait)
        .await
        .unwrap_or_else(|_| Err(Failure::new("assignment_timeout")))?;
    Ok((
        ws,
        Assigned {
            dialog_id,
            operator_id,
        },
    ))
}

/// The operator of an `operator_assigned` frame for `dialog_id`.
fn assigned_operator(frame: &ServerFrame<'_>, dialog_id: i64) -> Option<i64> {
    (frame.kind == "operator_assigned" && frame.dialog_id == Some(dialog_id))
        .then_some(frame.operator_id)
        .flatten()
}

/// Waits for the go signal while reading; `frame` sees every frame.
/// `None` when the run was called off.
async fn wait_for_go(
    ws: &mut Ws,
    go: &mut watch::Receiver<Option<Go>>,
    stop: &mut watch::Receiver<bool>,
    mut frame: impl FnMut(&ServerFrame<'_>),
) -> Result<Option<Go>, Failure> {
    if let Some(go) = go.borrow_and_update().clone() {
        return Ok(Some(go));
    }
    loop {
        tokio::select! {
            changed = go.changed() => {
                if changed.is_err() {
                    return Ok(None);
                }
                if let Some(go) = go.borrow_and_update().clone() {
                    return Ok(Some(go));
                }
            }
            _ = stop.changed() => return Ok(None),
            text = next_text(ws) => {
                let text = text?;
                if let Ok(parsed) = serde_json::from_str::<ServerFrame<'_>>(text.as_str()) {
                    frame(&parsed);
                }
            }
        }
    }
}

async fn user_run(
    mut ws: Ws,
    dialog_id: i64,
    phase: f64,
    mut go: watch::Receiver<Option<Go>>,
    run: &Run,
) -> TaskStats {
    let mut stop = run.stop.clone();
    let go = match wait_for_go(&mut ws, &mut go, &mut stop, |_| {}).await {
        Ok(Some(go)) => go,
        Ok(None) => return TaskStats::default(),
        Err(failure) => return TaskStats::failed(failure.0),
    };
    let period = Duration::from_secs_f64(1.0 / go.per_dialog);
    let first = go.start + period.mul_f64(phase);
    let mut dialogs = vec![dialog_id];
    let stats = pump(
        &mut ws,
        Direction::UserToOperator,
        &mut dialogs,
        first,
        period,
        go,
        run,
    )
    .await;
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    stats
}

async fn operator_run(
    mut ws: Ws,
    phase: f64,
    mut go: watch::Receiver<Option<Go>>,
    run: &Run,
) -> TaskStats {
    let mut stop = run.stop.clone();
    let mut dialogs: Vec<i64> = Vec::new();
    let waited = wait_for_go(&mut ws, &mut go, &mut stop, |frame| {
        note_assignment(frame, &mut dialogs, &run.progress);
    })
    .await;
    let mut stats = match waited {
        Ok(Some(go)) => {
            let mut sending_to: Vec<i64> = dialogs
                .iter()
                .copied()
                .filter(|dialog_id| go.dialogs.contains(dialog_id))
                .collect();
            // Its dialogs in one period: each gets R/P per second.
            let per_connection = go.per_dialog * sending_to.len().max(1) as f64;
            let period = Duration::from_secs_f64(1.0 / per_connection);
            let first = go.start + period.mul_f64(phase);
            let stats = pump(
                &mut ws,
                Direction::OperatorToUser,
                &mut sending_to,
                first,
                period,
                go,
                run,
            )
            .await;
            for dialog_id in sending_to {
                if !dialogs.contains(&dialog_id) {
                    dialogs.push(dialog_id);
                }
            }
            stats
        }
        Ok(None) => TaskStats::default(),
        Err(failure) => return TaskStats::failed(failure.0),
    };
    // Leave the system as found: away (no new handoffs while presence still
    // counts this operator online), then every handoff completed.
    let mut frames = vec![json!({"type": "set_status", "id": "away", "status": "away"})];
    for dialog_id in &dialogs {
        frames.push(json!({"type": "complete_handoff", "id": format!("done{dialog_id}"), "dialog_id": dialog_id, "resolution": "load test over"}));
    }
    for frame in frames {
        let reference = frame["id"].as_str().unwrap_or_default().to_owned();
        if let Err(failure) = request(&mut ws, frame, &reference, |_| {}).await {
            stats.error(format!("cleanup_{}", failure.0));
            break;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    stats
}

/// An `operator_assigned` to this operator adds the dialog it holds.
fn note_assignment(frame: &ServerFrame<'_>, dialogs: &mut Vec<i64>, progress: &Progress) {
    if frame.kind == "operator_assigned"
        && let Some(dialog_id) = frame.dialog_id
        && !dialogs.contains(&dialog_id)
    {
        dialogs.push(dialog_id);
        Progress::bump(&progress.assignments_seen);
    }
}

/// Sends stamped messages in `sends` direction round-robin into `dialogs`
/// from `first` every `period` until sending stops, and records what comes
/// back: acks and refusals of its own messages, and the other direction's
/// messages it receives. Ends when the run says stop.
async fn pump(
    ws: &mut Ws,
    sends: Direction,
    dialogs: &mut Vec<i64>,
    first: Instant,
    period: Duration,
    go: Go,
    run: &Run,
) -> TaskStats {
    let mut stats = TaskStats::default();
    let receives = sends.other();
    let (out, inc) = (sends.index(), receives.index());
    let mut ticks = tokio::time::interval_at(first, period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut stop = run.stop.clone();
    let hard_deadline = run
        .hard_deadline
        .borrow()
        .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
    let mut next_seq: HashMap<i64, u64> = HashMap::new();
    let mut awaiting_ack: HashMap<String, Instant> = HashMap::new();
    let mut turn = 0usize;
    let mut sending = true;
    loop {
        tokio::select! {
            scheduled = ticks.tick(), if sending && !dialogs.is_empty() => {
                if scheduled >= go.until {
                    sending = false;
                    continue;
                }
                let dialog_id = dialogs[turn % dialogs.len()];
                turn += 1;
                let seq = next_seq.entry(dialog_id).or_default();
                let id = message_id(dialog_id, *seq);
                let sent_at = Instant::now();
                let micros = sent_at.duration_since(run.clock).as_micros() as u64;
                let frame = json!({
                    "type": "chat_message",
                    "id": id,
                    "dialog_id": dialog_id,
                    "message": stamp(micros, *seq),
                });
                *seq += 1;
                if ws.send(text_frame(&frame)).await.is_err() {
                    stats.error("socket_error");
                    break;
                }
                *stats.dirs[out].sent.entry(dialog_id).or_default() += 1;
                Progress::bump(&run.progress.sent[out]);
                awaiting_ack.insert(id, sent_at);
            }
            text = next_text(ws) => {
                let now = Instant::now();
                let text = match text {
                    Ok(text) => text,
                    Err(failure) => {
                        stats.error(failure.0);
                        break;
                    }
                };
                let Ok(frame) = serde_json::from_str::<ServerFrame<'_>>(text.as_str()) else {
                    stats.error("bad_frame");
                    continue;
                };
                match frame.kind.as_ref() {
                    "ack" => {
                        if let Some(sent_at) = frame.reference.as_deref().and_then(|r| awaiting_ack.remove(r)) {
                            let dir = &mut stats.dirs[out];
                            dir.acked += 1;
                            dir.ack.record(now.duration_since(sent_at).as_micros());
                            Progress::bump(&run.progress.settled[out]);
                        }
                    }
                    "error" => {
                        let code = frame.code.as_deref().unwrap_or("error").to_owned();
                        stats.error(code);
                        if frame.reference.as_deref().and_then(|r| awaiting_ack.remove(r)).is_some() {
                            stats.dirs[out].refused += 1;
                            Progress::bump(&run.progress.settled[out]);
                            Progress::bump(&run.progress.refused[out]);
                        }
                    }
                    "operator_assigned" if sends == Direction::OperatorToUser
                        && frame.dialog_id.is_some_and(|d| go.dialogs.contains(&d)) => {
                        note_assignment(&frame, dialogs, &run.progress);
                    }
                    "handoff_completed" => stats.error("handoff_completed_during_run"),
                    kind if kind == receives.delivered_as() => {
                        let dir = &mut stats.dirs[inc];
                        let stamped = frame.message.as_deref().and_then(parse_stamp);
                        match (stamped, frame.dialog_id) {
                            (Some((micros, seq)), Some(dialog_id)) => {
                                if dir.received.entry(dialog_id).or_default().insert(seq) {
                                    let at = now.duration_since(run.clock).as_micros() as u64;
                                    dir.delivery.record(u128::from(at.saturating_sub(micros)));
                                    Progress::bump(&run.progress.delivered[inc]);
                                } else {
                                    dir.duplicated += 1;
                                }
                            }
                            _ => dir.unstamped += 1,
                        }
                    }
                    _ => {}
                }
            }
            _ = stop.changed() => break,
            _ = tokio::time::sleep_until(hard_deadline) => break,
        }
    }
    stats.dirs[out].no_ack = awaiting_ack.len() as u64;
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stamp reads back as written; other texts are not stamps.
    #[test]
    fn stamps_round_trip() {
        assert_eq!(parse_stamp(&stamp(1_234_567, 42)), Some((1_234_567, 42)));
        assert_eq!(parse_stamp("t=0;s=0"), Some((0, 0)));
        for text in [
            "", "hello", "t=1", "t=x;s=1", "s=1;t=2", "t=1;s=", "t=-1;s=2",
        ] {
            assert_eq!(parse_stamp(text), None, "{text:?}");
        }
    }

    /// Lost = sent − delivered; a sequence received twice is a duplicate,
    /// across connections too; one beyond what was sent is unexpected.
    #[test]
    fn merging_counts_lost_and_duplicates() {
        let mut sender = DirStats::default();
        sender.sent.insert(7, 3);
        let mut receiver = DirStats::default();
        receiver.received.insert(7, [0, 2, 5].into_iter().collect());
        let mut again = DirStats::default();
        again.received.insert(7, [2].into_iter().collect());
        let mut total = DirStats::default();
        total.merge(sender);
        total.merge(receiver);
        total.merge(again);
        assert_eq!(total.sent_total(), 3);
        assert_eq!(total.delivered(), 2);
        assert_eq!(total.duplicated, 1);
        assert_eq!(total.unexpected(), 1);
    }
}
