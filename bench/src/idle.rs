//! `idle`: open N connections (one user each), then leave them idle, and
//! watch the gateway's resident memory and CPU time while they open and
//! while they sit there.
//!
//! The gateway pings a connection that has been silent for its heartbeat
//! interval; every client task keeps reading its socket, so tungstenite
//! answers those pings and the connections stay open.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use serde_json::json;
use tokio::sync::{Semaphore, mpsc};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::client::{Failure, Target, Ws};
use crate::procstat::{Proc, Sample, cores_used};
use crate::stats::{Table, mib};

/// Length of one idle CPU sample, in seconds.
const IDLE_SLICE_SECS: u64 = 10;
/// Descriptors kept free for the runtime, stdout and the health check.
const SPARE_FDS: u64 = 200;

#[derive(clap::Args, Debug)]
pub struct IdleArgs {
    /// How many connections to open (each for its own user).
    #[arg(long)]
    connections: usize,
    /// The gateway's process id, to read its memory and CPU from /proc.
    #[arg(long)]
    gateway_pid: u32,
    /// Connections opened per second; 0 = as fast as `--concurrency` allows.
    #[arg(long, default_value_t = 0)]
    ramp_per_sec: u32,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// User ids are `user_base + i` (distinct users: the per-user limit is 5).
    #[arg(long, default_value_t = 1_000_000)]
    user_base: i64,
    /// How many samples to take while connections open.
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Seconds to wait after the last connection opened before measuring idle.
    #[arg(long, default_value_t = 5)]
    settle_secs: u64,
    /// Length of the idle CPU window, in seconds.
    #[arg(long, default_value_t = 10)]
    idle_window_secs: u64,
    /// Upper bound on the whole ramp, in seconds.
    #[arg(long, default_value_t = 900)]
    max_ramp_secs: u64,
}

/// What a client task reports to the main loop.
enum Report {
    Opened,
    Failed(Failure),
    /// An open connection was closed by the server or broke.
    Dropped(Failure),
}

/// One sample during the ramp.
struct Step {
    opened: usize,
    gateway: Sample,
    tool: Sample,
}

pub async fn run(target: Target, args: IdleArgs, nofile: u64) -> anyhow::Result<()> {
    let n = args.connections;
    anyhow::ensure!(n > 0, "--connections must be at least 1");
    anyhow::ensure!(
        (n as u64) + SPARE_FDS <= nofile,
        "{n} connections need {} descriptors; this process may open {nofile} (raise the hard RLIMIT_NOFILE or open fewer)",
        n as u64 + SPARE_FDS
    );
    let gateway = Proc::Pid(args.gateway_pid);
    let before = gateway.sample().with_context(|| {
        format!(
            "reading /proc/{} (is --gateway-pid right?)",
            args.gateway_pid
        )
    })?;
    let tool_before = Proc::Myself.sample()?;
    let active_before = target.active_connections().await;
    println!(
        "idle: {n} connections to ws://{} (gateway pid {}), gateway RSS before: {} MiB, active connections before: {}",
        target.addr,
        args.gateway_pid,
        mib(before.rss_bytes),
        active_before.map_or("?".to_owned(), |a| a.to_string()),
    );

    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    let (report_tx, mut reports) = mpsc::unbounded_channel();
    let target = Arc::new(target);
    // Tokens outlive the whole run comfortably.
    let token_ttl = Duration::from_secs(args.max_ramp_secs + 3600);
    let spawner = {
        let (target, stop, tasks, report_tx) = (
            target.clone(),
            stop.clone(),
            tasks.clone(),
            report_tx.clone(),
        );
        let handshakes = Arc::new(Semaphore::new(args.concurrency.max(1)));
        let pace = (args.ramp_per_sec > 0)
            .then(|| Duration::from_secs_f64(1.0 / f64::from(args.ramp_per_sec)));
        let user_base = args.user_base;
        tokio::spawn(async move {
            let mut ticker = pace.map(tokio::time::interval);
            for i in 0..n {
                if let Some(ticker) = ticker.as_mut() {
                    ticker.tick().await;
                }
                let permit = tokio::select! {
                    permit = handshakes.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => return,
                    },
                    _ = stop.cancelled() => return,
                };
                let (target, stop, report_tx) = (target.clone(), stop.clone(), report_tx.clone());
                let user = user_base + i as i64;
                tasks.spawn(async move {
                    let connected = tokio::select! {
                        connected = target.connect(user, token_ttl) => connected,
                        _ = stop.cancelled() => return,
                    };
                    drop(permit);
                    match connected {
                        Ok(ws) => {
                            let _ = report_tx.send(Report::Opened);
                            hold(ws, &stop, &report_tx).await;
                        }
                        Err(failure) => {
                            let _ = report_tx.send(Report::Failed(failure));
                        }
                    }
                });
            }
        })
    };
    drop(report_tx);

    // The ramp: sample at every step of N/steps connections.
    let step_size = n.div_ceil(args.steps.max(1));
    let mut next_step = step_size;
    let (mut opened, mut failed, mut dropped) = (0usize, 0usize, 0usize);
    let mut failures: std::collections::BTreeMap<Failure, usize> = Default::default();
    let mut steps = vec![Step {
        opened: 0,
        gateway: before,
        tool: tool_before,
    }];
    let ramp_deadline = tokio::time::Instant::now() + Duration::from_secs(args.max_ramp_secs);
    let started = Instant::now();
    while opened + failed < n {
        let report = tokio::select! {
            report = reports.recv() => report,
            _ = tokio::time::sleep_until(ramp_deadline) => {
                eprintln!("ramp took longer than {} s; measuring what is open", args.max_ramp_secs);
                break;
            }
        };
        match report {
            Some(Report::Opened) => opened += 1,
            Some(Report::Failed(failure)) => {
                failed += 1;
                *failures.entry(failure).or_default() += 1;
            }
            Some(Report::Dropped(failure)) => {
                dropped += 1;
                *failures
                    .entry(Failure(format!("dropped_{}", failure.0)))
                    .or_default() += 1;
            }
            None => break,
        }
        if opened + failed >= next_step.min(n) {
            next_step += step_size;
            steps.push(Step {
                opened,
                gateway: gateway.sample()?,
                tool: Proc::Myself.sample()?,
            });
        }
    }
    let ramp_secs = started.elapsed().as_secs_f64();
    let ramp_end = steps.last().map_or(before, |s| s.gateway);
    spawner.abort();

    // Idle: settle, then a CPU window with everything open.
    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    let idle_start = gateway.sample()?;
    let tool_idle_start = Proc::Myself.sample()?;
    // Sampled every 10 s: the gateway pings a connection only after a
    // heartbeat interval (25 s) of silence, so the slices show when that
    // work lands.
    let mut slices = vec![idle_start];
    let mut left = args.idle_window_secs;
    while left > 0 {
        let slice = left.min(IDLE_SLICE_SECS);
        tokio::time::sleep(Duration::from_secs(slice)).await;
        slices.push(gateway.sample()?);
        left -= slice;
    }
    let idle_end = *slices.last().unwrap_or(&idle_start);
    let tool_idle_end = Proc::Myself.sample()?;
    while let Ok(report) = reports.try_recv() {
        if let Report::Dropped(failure) = report {
            dropped += 1;
            *failures
                .entry(Failure(format!("dropped_{}", failure.0)))
                .or_default() += 1;
        }
    }
    let active_after = target.active_connections().await;

    stop.cancel();
    tasks.close();
    if tokio::time::timeout(Duration::from_secs(30), tasks.wait())
        .await
        .is_err()
    {
        eprintln!("some client tasks did not finish closing within 30 s");
    }

    // Report.
    let held = opened.saturating_sub(dropped).max(1);
    let mut table = Table::new(&[
        "connections",
        "elapsed s",
        "gateway RSS MiB",
        "ΔRSS KiB/conn",
        "gateway CPU s",
        "CPU ms/1000 conn",
        "tool RSS MiB",
    ]);
    for step in &steps {
        let delta = step.gateway.rss_bytes.saturating_sub(before.rss_bytes);
        let cpu = step.gateway.cpu.saturating_sub(before.cpu);
        let per_conn = |value: f64| {
            if step.opened == 0 {
                "-".to_owned()
            } else {
                format!("{:.2}", value / step.opened as f64)
            }
        };
        table.row(vec![
            step.opened.to_string(),
            format!(
                "{:.1}",
                step.gateway.at.duration_since(before.at).as_secs_f64()
            ),
            mib(step.gateway.rss_bytes),
            per_conn(delta as f64 / 1024.0),
            format!("{:.2}", cpu.as_secs_f64()),
            per_conn(cpu.as_secs_f64() * 1_000_000.0),
            mib(step.tool.rss_bytes),
        ]);
    }
    table.row(vec![
        format!(
            "{held} (idle {} s)",
            args.settle_secs + args.idle_window_secs
        ),
        format!("{:.1}", idle_end.at.duration_since(before.at).as_secs_f64()),
        mib(idle_end.rss_bytes),
        format!(
            "{:.2}",
            idle_end.rss_bytes.saturating_sub(before.rss_bytes) as f64 / 1024.0 / held as f64
        ),
        format!(
            "{:.2}",
            idle_end.cpu.saturating_sub(before.cpu).as_secs_f64()
        ),
        "-".to_owned(),
        mib(tool_idle_end.rss_bytes),
    ]);
    println!();
    print!("{}", table.render());

    let rss_per_conn = idle_end.rss_bytes.saturating_sub(before.rss_bytes) as f64 / held as f64;
    let slope = rss_slope(&steps);
    let ramp_cpu_ms = ramp_end.cpu.saturating_sub(before.cpu).as_secs_f64() * 1000.0;
    let ramp_cpu_per_1000 = ramp_cpu_ms / opened.max(1) as f64 * 1000.0;
    let idle_cores = cores_used(&idle_start, &idle_end);
    let tool_idle_cores = cores_used(&tool_idle_start, &tool_idle_end);
    let tool_ramp_cores = cores_used(&tool_before, &steps.last().map_or(tool_before, |s| s.tool));
    println!();
    println!(
        "opened {opened}, failed {failed}, dropped while open {dropped}, in {ramp_secs:.1} s ({:.0} connections/s)",
        opened as f64 / ramp_secs.max(1e-9)
    );
    if !failures.is_empty() {
        let list: Vec<String> = failures
            .iter()
            .map(|(f, c)| format!("{}: {c}", f.0))
            .collect();
        println!("failures: {}", list.join(", "));
    }
    println!(
        "gateway active_connections (health): before {}, while idle {}",
        active_before.map_or("?".to_owned(), |a| a.to_string()),
        active_after.map_or("?".to_owned(), |a| a.to_string())
    );
    println!(
        "gateway memory per connection: {:.0} B = {:.2} KiB ((RSS after idle − RSS before) / {held}); marginal (least squares over the ramp): {:.2} KiB",
        rss_per_conn,
        rss_per_conn / 1024.0,
        slope / 1024.0
    );
    println!(
        "gateway CPU while opening: {ramp_cpu_ms:.0} ms total, {ramp_cpu_per_1000:.1} ms per 1000 connections"
    );
    println!(
        "gateway CPU while idle ({} s window, {held} connections): {:.3} % of one core ({:.2} ms/s)",
        args.idle_window_secs,
        idle_cores * 100.0,
        idle_cores * 1000.0
    );
    let slice_ms: Vec<String> = slices
        .windows(2)
        .map(|w| {
            format!(
                "{:.0}",
                w[1].cpu.saturating_sub(w[0].cpu).as_secs_f64() * 1000.0
            )
        })
        .collect();
    println!(
        "gateway CPU ms in each {IDLE_SLICE_SECS} s slice of the idle window: [{}]",
        slice_ms.join(", ")
    );
    println!(
        "load tool: {:.0} % of one core while opening, {:.3} % while idle, RSS {} MiB",
        tool_ramp_cores * 100.0,
        tool_idle_cores * 100.0,
        mib(tool_idle_end.rss_bytes)
    );
    let failure_counts: serde_json::Map<String, serde_json::Value> = failures
        .iter()
        .map(|(failure, count)| (failure.0.clone(), json!(count)))
        .collect();
    let summary = json!({
        "mode": "idle",
        "connections_requested": n,
        "opened": opened,
        "failed": failed,
        "dropped": dropped,
        "ramp_secs": crate::stats::round3(ramp_secs),
        "gateway_rss_before_bytes": before.rss_bytes,
        "gateway_rss_after_ramp_bytes": ramp_end.rss_bytes,
        "gateway_rss_idle_bytes": idle_end.rss_bytes,
        "rss_per_connection_bytes": rss_per_conn.round(),
        "rss_marginal_per_connection_bytes": slope.round(),
        "ramp_cpu_ms_per_1000_connections": crate::stats::round3(ramp_cpu_per_1000),
        "idle_cpu_core_fraction": idle_cores,
        "idle_window_secs": args.idle_window_secs,
        "idle_cpu_ms_per_slice": slices
            .windows(2)
            .map(|w| (w[1].cpu.saturating_sub(w[0].cpu).as_secs_f64() * 1000.0).round())
            .collect::<Vec<_>>(),
        "active_connections_health": active_after,
        "failures": failure_counts,
    });
    println!("{summary}");
    Ok(())
}

/// Keeps an open connection: reads (so pings are answered) until `stop`,
/// then closes it; reports a close or failure from the server.
async fn hold(mut ws: Ws, stop: &CancellationToken, report_tx: &mpsc::UnboundedSender<Report>) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                let _ = tokio::time::timeout(Duration::from_secs(5), ws.close(None)).await;
                return;
            }
            message = ws.next() => {
                let dropped = match message {
                    Some(Ok(message @ Message::Close(_))) => Failure::closed(&message),
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => Failure::new("socket_error"),
                };
                let _ = report_tx.send(Report::Dropped(dropped));
                return;
            }
        }
    }
}

/// Bytes of gateway RSS per extra connection: the least-squares slope of RSS
/// over the open count across the ramp's samples (fixed costs drop out).
fn rss_slope(steps: &[Step]) -> f64 {
    let n = steps.len() as f64;
    if steps.len() < 2 {
        return 0.0;
    }
    let xs: Vec<f64> = steps.iter().map(|s| s.opened as f64).collect();
    let ys: Vec<f64> = steps.iter().map(|s| s.gateway.rss_bytes as f64).collect();
    let mean_x = xs.iter().sum::<f64>() / n;
    let mean_y = ys.iter().sum::<f64>() / n;
    let cov: f64 = xs
        .iter()
        .zip(&ys)
        .map(|(x, y)| (x - mean_x) * (y - mean_y))
        .sum();
    let var: f64 = xs.iter().map(|x| (x - mean_x).powi(2)).sum();
    if var == 0.0 { 0.0 } else { cov / var }
}
