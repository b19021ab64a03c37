//! `fanout`: hold N connections, make the notification service broadcast
//! `system_alert`s to everyone (`chatai.v1.Notification/SystemAlert`, the
//! way an internal caller does), and time how long until every connection
//! has read each one.
//!
//! Two phases: *one at a time* (an alert, then wait until all N have it:
//! the latency from the call to each client's read, and to the last one),
//! then *a burst* (k alerts back to back: N·k deliveries over the time from
//! the first call to the last read, the throughput).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use chatai_kit::identity::{Caller, Role};
use chatai_proto::v1 as pb;
use chatai_proto::v1::notification_client::NotificationClient;
use futures::StreamExt;
use serde_json::json;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::Channel;

use crate::client::{Failure, ServerFrame, Target, Ws};
use crate::procstat::{Proc, cores_used};
use crate::stats::{Latencies, Table, mib, round3};

/// Descriptors kept free for the runtime, stdout and gRPC.
const SPARE_FDS: u64 = 200;

#[derive(clap::Args, Debug)]
pub struct FanoutArgs {
    /// How many connections receive every alert (each its own user).
    #[arg(long)]
    connections: usize,
    /// Alerts in each phase.
    #[arg(long, default_value_t = 20)]
    alerts: usize,
    /// The notification service's gRPC address.
    #[arg(
        long,
        env = "CHATAI_NOTIFICATION_ADDR",
        default_value = "127.0.0.1:50054"
    )]
    notification: SocketAddr,
    /// The internal token the services require; unset = the one in
    /// `--internal-token-file`, if that file exists.
    #[arg(long, env = "CHATAI_INTERNAL_TOKEN", hide_env_values = true)]
    internal_token: Option<String>,
    /// Where an all-in-one `chatai` keeps the token it generated (relative
    /// to where it runs).
    #[arg(long, default_value = chatai_kit::internal_auth::TOKEN_FILE)]
    internal_token_file: std::path::PathBuf,
    /// The gateway's process id, to read its memory and CPU from /proc.
    #[arg(long)]
    gateway_pid: Option<u32>,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// User ids are `user_base + i`.
    #[arg(long, default_value_t = 2_000_000)]
    user_base: i64,
    /// How long to wait for every connection to read one alert.
    #[arg(long, default_value_t = 60)]
    timeout_secs: u64,
}

/// Arrivals of one alert, counted by the client tasks.
#[derive(Default)]
struct Alert {
    /// When it was sent, in µs since the run's epoch.
    sent_us: AtomicU64,
    /// Connections that have read it.
    read: AtomicUsize,
    /// The latest read, in µs since the run's epoch.
    last_us: AtomicU64,
}

/// What every client task shares.
struct Board {
    epoch: Instant,
    alerts: Vec<Alert>,
    /// Woken whenever an alert is read by its last connection.
    complete: Notify,
    connections: usize,
}

impl Board {
    fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// A client read alert `index`; returns its latency in µs.
    fn arrived(&self, index: usize) -> Option<u64> {
        let alert = self.alerts.get(index)?;
        let now = self.now_us();
        alert.last_us.fetch_max(now, Ordering::AcqRel);
        if alert.read.fetch_add(1, Ordering::AcqRel) + 1 == self.connections {
            self.complete.notify_waiters();
        }
        Some(now.saturating_sub(alert.sent_us.load(Ordering::Acquire)))
    }

    async fn wait_complete(&self, index: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.complete.notified();
            if self.alerts[index].read.load(Ordering::Acquire) >= self.connections {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }
}

pub async fn run(target: Target, args: FanoutArgs, nofile: u64) -> anyhow::Result<()> {
    let n = args.connections;
    let k = args.alerts;
    anyhow::ensure!(
        n > 0 && k > 0,
        "--connections and --alerts must be at least 1"
    );
    anyhow::ensure!(
        (n as u64) + SPARE_FDS <= nofile,
        "{n} connections need {} descriptors; this process may open {nofile}",
        n as u64 + SPARE_FDS
    );
    let internal_token = match args.internal_token.clone().filter(|t| !t.is_empty()) {
        Some(token) => Some(token),
        None => chatai_kit::internal_auth::read_token_file(&args.internal_token_file)?,
    };
    let gateway = args.gateway_pid.map(Proc::Pid);
    let mut notification = NotificationClient::connect(format!("http://{}", args.notification))
        .await
        .with_context(|| {
            format!(
                "connecting to the notification service at {}",
                args.notification
            )
        })?;

    // Alerts 0..k are the one-at-a-time phase, k..2k the burst.
    let board = Arc::new(Board {
        epoch: Instant::now(),
        alerts: (0..2 * k).map(|_| Alert::default()).collect(),
        complete: Notify::new(),
        connections: n,
    });
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    let (latency_tx, mut latency_rx) = mpsc::unbounded_channel::<(usize, u64)>();
    let (open_tx, mut open_rx) = mpsc::unbounded_channel::<Result<(), Failure>>();
    let handshakes = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let target = Arc::new(target);
    for i in 0..n {
        let permit = handshakes.clone().acquire_owned().await?;
        let (target, board, stop) = (target.clone(), board.clone(), stop.clone());
        let (latency_tx, open_tx) = (latency_tx.clone(), open_tx.clone());
        let user = args.user_base + i as i64;
        tasks.spawn(async move {
            let connected = target.connect(user, Duration::from_secs(3600)).await;
            drop(permit);
            match connected {
                Ok(ws) => {
                    let _ = open_tx.send(Ok(()));
                    receive(ws, &board, &stop, &latency_tx).await;
                }
                Err(failure) => {
                    let _ = open_tx.send(Err(failure));
                }
            }
        });
    }
    drop((latency_tx, open_tx));
    let mut failures = Vec::new();
    for _ in 0..n {
        match open_rx.recv().await {
            Some(Ok(())) => {}
            Some(Err(failure)) => failures.push(failure),
            None => break,
        }
    }
    anyhow::ensure!(
        failures.is_empty(),
        "{} of {n} connections failed to open: {:?}",
        failures.len(),
        failures.first()
    );
    println!(
        "fanout: {n} connections open to ws://{}; {k} alerts one at a time, then {k} in a burst",
        target.addr
    );
    let timeout = Duration::from_secs(args.timeout_secs);
    let gateway_before = gateway.map(|g| g.sample()).transpose()?;

    // One at a time: the time from the call until each connection read it.
    let mut completions = Latencies::default();
    for index in 0..k {
        send(&mut notification, &board, index, internal_token.as_deref()).await?;
        anyhow::ensure!(
            board.wait_complete(index, timeout).await,
            "alert {index} reached {} of {n} connections in {timeout:?}",
            board.alerts[index].read.load(Ordering::Acquire)
        );
        let alert = &board.alerts[index];
        let last = alert.last_us.load(Ordering::Acquire);
        completions.record(u128::from(
            last.saturating_sub(alert.sent_us.load(Ordering::Acquire)),
        ));
    }
    // The burst: k alerts back to back.
    let burst_start = board.now_us();
    for index in k..2 * k {
        send(&mut notification, &board, index, internal_token.as_deref()).await?;
    }
    for index in k..2 * k {
        anyhow::ensure!(
            board.wait_complete(index, timeout).await,
            "burst alert {index} reached {} of {n} connections in {timeout:?}",
            board.alerts[index].read.load(Ordering::Acquire)
        );
    }
    let burst_end = (k..2 * k)
        .map(|i| board.alerts[i].last_us.load(Ordering::Acquire))
        .max()
        .unwrap_or(burst_start);
    let gateway_after = gateway.map(|g| g.sample()).transpose()?;
    stop.cancel();
    tasks.close();
    tasks.wait().await;

    let mut one_at_a_time = Latencies::default();
    let mut in_burst = Latencies::default();
    while let Some((index, micros)) = latency_rx.recv().await {
        if index < k {
            one_at_a_time.record(u128::from(micros));
        } else {
            in_burst.record(u128::from(micros));
        }
    }
    let burst_secs = (burst_end.saturating_sub(burst_start)) as f64 / 1e6;
    let deliveries = (n * k) as f64;
    let per_sec = deliveries / burst_secs.max(1e-9);
    let (per_read, completion, burst) = (
        one_at_a_time.summary(),
        completions.summary(),
        in_burst.summary(),
    );

    let mut table = Table::new(&["ms", "count", "mean", "p50", "p90", "p99", "max"]);
    for (name, s) in [
        ("call → each read (one at a time)", per_read),
        ("call → last read (one at a time)", completion),
        ("call → each read (burst)", burst),
    ] {
        table.row(vec![
            name.to_owned(),
            s.count.to_string(),
            format!("{:.2}", s.mean),
            format!("{:.2}", s.p50),
            format!("{:.2}", s.p90),
            format!("{:.2}", s.p99),
            format!("{:.2}", s.max),
        ]);
    }
    print!("{}", table.render());
    println!(
        "burst: {n} × {k} = {deliveries} deliveries in {burst_secs:.3} s = {per_sec:.0} deliveries/s"
    );
    // Both phases delivered 2·N·k frames; the gateway's CPU time over them.
    let gateway_cpu = match (gateway_before, gateway_after) {
        (Some(before), Some(after)) => {
            let cpu_secs = after.cpu.saturating_sub(before.cpu).as_secs_f64();
            let per_delivery_us = cpu_secs * 1e6 / (2.0 * deliveries);
            println!(
                "gateway: {cpu_secs:.2} s CPU ({:.2} cores) for {} deliveries = {per_delivery_us:.2} µs each; RSS {} MiB",
                cores_used(&before, &after),
                2 * n * k,
                mib(after.rss_bytes)
            );
            Some((cores_used(&before, &after), per_delivery_us))
        }
        _ => None,
    };
    println!(
        "{}",
        json!({
            "mode": "fanout",
            "connections": n,
            "alerts": k,
            "each_read": per_read.to_json(),
            "last_read": completion.to_json(),
            "burst_each_read": burst.to_json(),
            "burst_secs": round3(burst_secs),
            "burst_deliveries_per_sec": per_sec.round(),
            "gateway_cores": gateway_cpu.map(|(cores, _)| round3(cores)),
            "gateway_cpu_us_per_delivery": gateway_cpu.map(|(_, us)| round3(us)),
        })
    );
    Ok(())
}

/// Calls `SystemAlert` for alert `index` as an internal service would.
async fn send(
    client: &mut NotificationClient<Channel>,
    board: &Board,
    index: usize,
    internal_token: Option<&str>,
) -> anyhow::Result<()> {
    let mut request = tonic::Request::new(pb::SystemAlertRequest {
        severity: "info".into(),
        message: format!("fanout {index}"),
        affected_services: Vec::new(),
    });
    Caller {
        id: 0,
        role: Role::Service,
        name: None,
        connection_id: None,
    }
    .write_metadata(request.metadata_mut());
    if let Some(token) = internal_token {
        let value = format!("Bearer {token}")
            .parse()
            .context("the internal token is not a valid header value")?;
        request.metadata_mut().insert("authorization", value);
    }
    board.alerts[index]
        .sent_us
        .store(board.now_us(), Ordering::Release);
    client
        .system_alert(request)
        .await
        .with_context(|| format!("SystemAlert {index}"))?;
    Ok(())
}

/// Reads the socket until stopped, reporting each alert's arrival.
async fn receive(
    mut ws: Ws,
    board: &Board,
    stop: &CancellationToken,
    latency_tx: &mpsc::UnboundedSender<(usize, u64)>,
) {
    loop {
        let message = tokio::select! {
            message = ws.next() => message,
            _ = stop.cancelled() => break,
        };
        match message {
            Some(Ok(Message::Text(text))) => {
                let Ok(frame) = serde_json::from_str::<ServerFrame<'_>>(text.as_str()) else {
                    continue;
                };
                if frame.kind != "system_alert" {
                    continue;
                }
                let index = frame
                    .message
                    .as_deref()
                    .and_then(|m| m.strip_prefix("fanout "))
                    .and_then(|i| i.parse::<usize>().ok());
                if let Some(index) = index
                    && let Some(micros) = board.arrived(index)
                {
                    let _ = latency_tx.send((index, micros));
                }
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break,
        }
    }
    let _ = ws.close(None).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn board(connections: usize, alerts: usize) -> Board {
        Board {
            epoch: Instant::now(),
            alerts: (0..alerts).map(|_| Alert::default()).collect(),
            complete: Notify::new(),
            connections,
        }
    }

    /// An alert is complete once every connection read it, not before; an
    /// unknown alert number is ignored.
    #[tokio::test]
    async fn an_alert_completes_when_every_connection_read_it() {
        let board = board(3, 1);
        assert!(board.arrived(0).is_some());
        assert!(board.arrived(0).is_some());
        assert!(!board.wait_complete(0, Duration::from_millis(10)).await);
        assert!(board.arrived(0).is_some());
        assert!(board.wait_complete(0, Duration::from_millis(10)).await);
        assert_eq!(board.alerts[0].read.load(Ordering::Acquire), 3);
        assert!(board.arrived(7).is_none());
    }
}
