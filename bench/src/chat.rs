//! `chat`: U users, each on one connection with one dialog, send
//! `chat_message` frames at an aggregate rate R (spread evenly: user i sends
//! every U/R s, offset by i/R) for S seconds. For each message it measures
//! send → `ack` (the message is stored) and send → `ai_response` (the
//! assistant's answer, stored, charged and delivered back through the
//! gateway).
//!
//! Matching: the gateway answers a connection's requests in order and writes
//! the `ack` (with `ref` = our `id`) before the events the request causes;
//! an `ai_response` is matched to the oldest acked message of its dialog
//! whose `message_id` is below the answer's.
//!
//! The generator is open-loop: a user sends on its schedule whether or not
//! earlier answers came back (missed ticks are sent late, in a burst, so the
//! offered load stays R). Latency is measured from the moment the frame was
//! written.
//!
//! `--search` runs it at rates from `--search-min` to `--search-max` (see
//! [`crate::shared::Bisection`]), each step on fresh user ids, and prints the
//! highest rate at which both p99s stay below 10 ms with no ack or answer
//! missing and no error.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::client::{Failure, ServerFrame, Target, Ws};
use crate::shared::{self, PidArgs, SearchArgs, StepOutcome};
use crate::stats::{Latencies, Table, round3};

/// Questions the built-in knowledge base answers (none asks for a human,
/// which would bring the handoff service in).
const QUESTIONS: &[&str] = &[
    "How do I reset my password?",
    "How much does ChatAI cost?",
    "What is a token and how is it counted?",
    "Where can I find my invoices and receipts?",
    "How do I enable two-factor authentication?",
    "How do I top up my balance?",
];

/// Longest wait for a warm-up answer.
const WARMUP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(clap::Args, Debug)]
pub struct ChatArgs {
    /// Aggregate messages per second across all users.
    #[arg(long, required_unless_present = "search")]
    rate: Option<f64>,
    /// Seconds of sending (each step of a search too).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Users (one connection each); default: rate / --per-user-rate, rounded up.
    #[arg(long)]
    users: Option<usize>,
    /// Messages per second per user when --users is not given. The gateway
    /// allows 20/s per connection (burst 40) by default; 10 leaves headroom
    /// for catch-up bursts.
    #[arg(long, default_value_t = 10.0)]
    per_user_rate: f64,
    /// The gateway's per-connection limit, only to warn when the plan exceeds it.
    #[arg(long, env = "CHATAI_RATE_LIMIT_PER_SEC", default_value_t = 20)]
    server_rate_limit: u32,
    /// User ids are `user_base + i`. Use a fresh base per run to start with
    /// new dialogs and full balances (a search moves it on at every step).
    #[arg(long, default_value_t = 2_000_000)]
    user_base: i64,
    /// Seconds to wait for outstanding acks and answers after sending stops.
    #[arg(long, default_value_t = 10)]
    drain_secs: u64,
    /// Connections opened (and warmed up) at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    #[command(flatten)]
    pids: PidArgs,
    #[command(flatten)]
    search: SearchArgs,
}

impl ChatArgs {
    fn users_at(&self, rate: f64) -> usize {
        self.users
            .unwrap_or_else(|| (rate / self.per_user_rate.max(0.1)).ceil() as usize)
            .max(1)
    }
}

/// What one user measured.
#[derive(Default)]
struct UserStats {
    sent: u64,
    acked: u64,
    answered: u64,
    ack: Latencies,
    answer: Latencies,
    errors: BTreeMap<String, u64>,
    lost_acks: u64,
    lost_answers: u64,
    /// How late the latest send was against its schedule.
    max_send_lag: Duration,
}

/// A user ready to send: its socket and dialog.
struct Ready {
    ws: Ws,
    dialog_id: i64,
}

pub async fn run(target: Target, args: ChatArgs, nofile: u64) -> anyhow::Result<()> {
    let target = Arc::new(target);
    if args.search.search {
        // Every step on users of its own: new dialogs, full balances.
        let stride = args.users_at(args.search.search_max) as i64 + 1;
        return shared::search("chat", &args.search, |index, rate| {
            let user_base = args.user_base + i64::from(index) * stride;
            run_once(target.clone(), &args, rate, user_base, nofile, true)
        })
        .await;
    }
    let rate = args.rate.context("--rate is required without --search")?;
    run_once(target, &args, rate, args.user_base, nofile, false).await?;
    Ok(())
}

/// One run at `rate` on users from `user_base`; prints the full report, or
/// only the step's line when `quiet` (a search prints it).
async fn run_once(
    target: Arc<Target>,
    args: &ChatArgs,
    rate: f64,
    user_base: i64,
    nofile: u64,
    quiet: bool,
) -> anyhow::Result<StepOutcome> {
    shared::check_run(rate, args.duration)?;
    let users = args.users_at(rate);
    anyhow::ensure!(
        (users as u64) + 200 <= nofile,
        "{users} users need more descriptors than this process may open ({nofile})"
    );
    let per_user = rate / users as f64;
    shared::warn_rate_limit("user", per_user, args.server_rate_limit, "use more --users");
    println!(
        "chat: {users} users × {per_user:.2} msg/s = {rate} msg/s for {} s to {:?}",
        args.duration, target.gateways
    );

    // Connect and warm up every user: one message each opens its dialog.
    let token_ttl = Duration::from_secs(args.duration + args.drain_secs + 3600);
    let gate = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let (start_tx, start_rx) = watch::channel(None::<Instant>);
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<Result<(), Failure>>();
    let period = Duration::from_secs_f64(users as f64 / rate);
    let slot = Duration::from_secs_f64(1.0 / rate);
    let sending = Duration::from_secs(args.duration);
    let drain = Duration::from_secs(args.drain_secs);
    let mut handles = Vec::with_capacity(users);
    for i in 0..users {
        let (target, gate, ready_tx, mut start_rx) = (
            target.clone(),
            gate.clone(),
            ready_tx.clone(),
            start_rx.clone(),
        );
        let user = user_base + i as i64;
        handles.push(tokio::spawn(async move {
            let ready = {
                let _permit = gate.acquire().await;
                warm_up(&target, user, token_ttl).await
            };
            let ready = match ready {
                Ok(ready) => {
                    let _ = ready_tx.send(Ok(()));
                    ready
                }
                Err(failure) => {
                    let _ = ready_tx.send(Err(failure.clone()));
                    let mut stats = UserStats::default();
                    stats.errors.insert(format!("warmup_{}", failure.0), 1);
                    return stats;
                }
            };
            let start = match start_rx.wait_for(Option::is_some).await {
                Ok(start) => start.unwrap_or_else(Instant::now),
                Err(_) => return UserStats::default(),
            };
            let first = start + slot.mul_f64(i as f64);
            send_and_measure(ready, i, first, period, start + sending, drain).await
        }));
    }
    drop(ready_tx);
    let warm_deadline = tokio::time::Instant::now()
        + Duration::from_secs(60)
        + Duration::from_millis(20 * users as u64);
    let (mut ready, mut failed) = (0usize, 0usize);
    while ready + failed < users {
        match tokio::time::timeout_at(warm_deadline, ready_rx.recv()).await {
            Ok(Some(Ok(()))) => ready += 1,
            Ok(Some(Err(_))) => failed += 1,
            Ok(None) => break,
            Err(_) => {
                eprintln!("warm-up did not finish in time; starting with {ready} users");
                break;
            }
        }
    }
    if !quiet || failed > 0 {
        println!("warm-up: {ready} users ready, {failed} failed");
    }
    anyhow::ensure!(ready > 0, "no user could connect and get an answer");

    // Go.
    let start = Instant::now() + Duration::from_millis(500);
    start_tx
        .send(Some(start))
        .context("every user task is gone")?;
    tokio::time::sleep_until(start).await;
    let before = args.pids.mark();
    tokio::time::sleep_until(start + sending).await;
    let cpu = before.until(&args.pids.mark());

    let mut total = UserStats::default();
    for handle in handles {
        let stats = match tokio::time::timeout(drain + Duration::from_secs(30), handle).await {
            Ok(Ok(stats)) => stats,
            _ => {
                *total.errors.entry("task_lost".into()).or_default() += 1;
                continue;
            }
        };
        total.sent += stats.sent;
        total.acked += stats.acked;
        total.answered += stats.answered;
        total.lost_acks += stats.lost_acks;
        total.lost_answers += stats.lost_answers;
        total.max_send_lag = total.max_send_lag.max(stats.max_send_lag);
        total.ack.extend(stats.ack);
        total.answer.extend(stats.answer);
        shared::add_errors(&mut total.errors, stats.errors);
    }

    // Report.
    let secs = args.duration as f64;
    let ack = total.ack.summary();
    let answer = total.answer.summary();
    let summary = json!({
        "mode": "chat",
        "users": users,
        "users_ready": ready,
        "rate_offered": rate,
        "duration_secs": args.duration,
        "sent": total.sent,
        "acked": total.acked,
        "answered": total.answered,
        "sent_per_sec": round3(total.sent as f64 / secs),
        "answered_per_sec": round3(total.answered as f64 / secs),
        "lost_acks": total.lost_acks,
        "lost_answers": total.lost_answers,
        "ack": ack.to_json(),
        "ai_response": answer.to_json(),
        "errors": total.errors,
        "max_send_lag_ms": round3(total.max_send_lag.as_secs_f64() * 1000.0),
        "cpu_percent": cpu.to_json(),
    });
    let error_count: u64 = total.errors.values().sum();
    let outcome = StepOutcome {
        worst_p99_ms: ack.p99.max(answer.p99),
        lost: total.lost_acks + total.lost_answers,
        errors: error_count,
        line: format!(
            "sent {}, acked {}, answered {}, lost {}, errors {}; p99 ack {:.2} ms, ai_response {:.2} ms; CPU gateway {}, chat {}",
            total.sent,
            total.acked,
            total.answered,
            total.lost_acks + total.lost_answers,
            error_count,
            ack.p99,
            answer.p99,
            cpu.gateway.map_or("?".into(), |v| format!("{v:.0} %")),
            cpu.chat.map_or("?".into(), |v| format!("{v:.0} %")),
        ),
        json: summary.clone(),
    };
    if quiet {
        return Ok(outcome);
    }
    println!();
    let mut counts = Table::new(&["", "count", "per second"]);
    for (name, count) in [
        ("sent", total.sent),
        ("acked", total.acked),
        ("answered", total.answered),
    ] {
        counts.row(vec![
            name.into(),
            count.to_string(),
            format!("{:.0}", count as f64 / secs),
        ]);
    }
    counts.row(vec![
        "no ack after drain".into(),
        total.lost_acks.to_string(),
        "-".into(),
    ]);
    counts.row(vec![
        "no answer after drain".into(),
        total.lost_answers.to_string(),
        "-".into(),
    ]);
    print!("{}", counts.render());
    println!();
    let mut latency = Table::new(shared::LATENCY_HEADER);
    for (name, s) in [("send → ack", ack), ("send → ai_response", answer)] {
        latency.row(shared::latency_row(name, s));
    }
    print!("{}", latency.render());
    println!();
    println!("{}", shared::errors_line(&total.errors));
    println!(
        "latest send behind schedule: {:.1} ms",
        total.max_send_lag.as_secs_f64() * 1000.0
    );
    println!("{cpu}");
    println!("{summary}");
    Ok(outcome)
}

fn chat_frame(id: &str, dialog_id: Option<i64>, question: &str) -> Message {
    let frame = json!({
        "type": "chat_message",
        "id": id,
        "dialog_id": dialog_id,
        "message": question,
    });
    Message::Text(Utf8Bytes::from(frame.to_string()))
}

/// Connects `user`, sends one message to open a dialog, and waits for its
/// `ack` and `ai_response`.
async fn warm_up(target: &Target, user: i64, token_ttl: Duration) -> Result<Ready, Failure> {
    let mut ws = target.connect(user, token_ttl).await?;
    ws.send(chat_frame("warmup", None, QUESTIONS[0]))
        .await
        .map_err(|_| Failure::new("socket_error"))?;
    let mut dialog_id = None;
    let exchange = async {
        loop {
            let text = match ws.next().await {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(message @ Message::Close(_))) => return Err(Failure::closed(&message)),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Err(Failure::new("socket_error")),
            };
            let Ok(frame) = serde_json::from_str::<ServerFrame<'_>>(text.as_str()) else {
                return Err(Failure::new("bad_frame"));
            };
            match frame.kind.as_ref() {
                "ack" if frame.reference.as_deref() == Some("warmup") => {
                    dialog_id = frame.dialog_id;
                }
                "ai_response" if dialog_id.is_some() && frame.dialog_id == dialog_id => {
                    return dialog_id.ok_or_else(|| Failure::new("no_dialog"));
                }
                "error" => {
                    return Err(Failure(
                        frame.code.map_or("error".into(), |c| c.into_owned()),
                    ));
                }
                _ => {}
            }
        }
    };
    let dialog_id = tokio::time::timeout(WARMUP_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| Err(Failure::new("warmup_timeout")))?;
    Ok(Ready { ws, dialog_id })
}

/// Sends on schedule from `first` every `period` until `stop_sending`, reads
/// everything, and waits up to `drain` for outstanding replies.
async fn send_and_measure(
    Ready { mut ws, dialog_id }: Ready,
    user_index: usize,
    first: Instant,
    period: Duration,
    stop_sending: Instant,
    drain: Duration,
) -> UserStats {
    let mut stats = UserStats::default();
    let mut ticks = tokio::time::interval_at(first, period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let deadline = stop_sending + drain;
    let mut next_seq: u64 = 0;
    // Sent, not yet acked: seq → sent at.
    let mut awaiting_ack: HashMap<u64, Instant> = HashMap::new();
    // Acked, not yet answered: (user message id, sent at), in ack order.
    let mut awaiting_answer: VecDeque<(i64, Instant)> = VecDeque::new();
    let mut sending = first < stop_sending;
    loop {
        if !sending && awaiting_ack.is_empty() && awaiting_answer.is_empty() {
            break;
        }
        tokio::select! {
            scheduled = ticks.tick(), if sending => {
                if scheduled >= stop_sending {
                    sending = false;
                    continue;
                }
                let seq = next_seq;
                next_seq += 1;
                let question = QUESTIONS[(user_index + seq as usize) % QUESTIONS.len()];
                let frame = chat_frame(&format!("m{seq}"), Some(dialog_id), question);
                let sent_at = Instant::now();
                let lag = sent_at.saturating_duration_since(scheduled);
                stats.max_send_lag = stats.max_send_lag.max(lag);
                if ws.send(frame).await.is_err() {
                    *stats.errors.entry("socket_error".into()).or_default() += 1;
                    break;
                }
                stats.sent += 1;
                awaiting_ack.insert(seq, sent_at);
            }
            message = ws.next() => {
                let now = Instant::now();
                let text = match message {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(message @ Message::Close(_))) => {
                        *stats.errors.entry(Failure::closed(&message).0).or_default() += 1;
                        break;
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => {
                        *stats.errors.entry("socket_error".into()).or_default() += 1;
                        break;
                    }
                };
                let Ok(frame) = serde_json::from_str::<ServerFrame<'_>>(text.as_str()) else {
                    *stats.errors.entry("bad_frame".into()).or_default() += 1;
                    continue;
                };
                let seq = frame
                    .reference
                    .as_deref()
                    .and_then(|r| r.strip_prefix('m'))
                    .and_then(|n| n.parse::<u64>().ok());
                match frame.kind.as_ref() {
                    "ack" => {
                        if let Some(sent_at) = seq.and_then(|s| awaiting_ack.remove(&s)) {
                            stats.acked += 1;
                            stats.ack.record(now.duration_since(sent_at).as_micros());
                            if let Some(message_id) = frame.message_id {
                                awaiting_answer.push_back((message_id, sent_at));
                            }
                        }
                    }
                    "ai_response" if frame.dialog_id == Some(dialog_id) => {
                        let answer_id = frame.message_id.unwrap_or(i64::MAX);
                        let oldest = awaiting_answer.iter().position(|(id, _)| *id < answer_id);
                        if let Some((_, sent_at)) = oldest.and_then(|i| awaiting_answer.remove(i)) {
                            stats.answered += 1;
                            stats.answer.record(now.duration_since(sent_at).as_micros());
                        }
                    }
                    "error" => {
                        let code = frame.code.as_deref().unwrap_or("error").to_owned();
                        *stats.errors.entry(code).or_default() += 1;
                        if let Some(s) = seq {
                            awaiting_ack.remove(&s);
                        }
                        // A deferred error (the assistant failed) names the message.
                        if let Some(message_id) = frame.message_id {
                            awaiting_answer.retain(|(id, _)| *id != message_id);
                        }
                    }
                    _ => {}
                }
            }
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    stats.lost_acks = awaiting_ack.len() as u64;
    stats.lost_answers = awaiting_answer.len() as u64;
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    stats
}
