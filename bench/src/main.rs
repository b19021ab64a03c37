//! `chatai-load`: drives a running ChatAI gateway over real WebSockets, on
//! loopback only, and reports what it measured.
//!
//! Modes:
//! - `idle`: opens N connections, samples the gateway's memory and CPU while
//!   they open and while they sit idle, and prints the cost per connection.
//! - `chat`: U users send `chat_message`s at an aggregate rate for a while;
//!   prints the latency from send to `ack` and from send to `ai_response`.
//! - `fanout`: N connections, `system_alert`s broadcast through the
//!   notification service; prints the latency to every reader and the
//!   deliveries per second of a burst.
//! - `pairs`: P users, each put in handoff with one of ~P/4 operators by the
//!   real flow (`set_status`, `handoff_request`, `operator_assigned`), then
//!   messages both ways at R msg/s per direction; prints, per direction,
//!   sent/acked/delivered/lost/duplicated and the one-way and ack latencies.
//!
//! `chat` and `pairs` take `--search`: runs at rates between `--search-min`
//! and `--search-max` (bisecting, fresh ids per step, at most
//! `--search-steps` runs) and prints the highest rate at which every p99
//! stays below 10 ms and nothing is lost.
//!
//! Every mode is bounded in count and time and stops by itself. Results are
//! plain text tables, then one line of JSON (the last line printed).
//! How the numbers in BENCHMARKS.md were produced is written there.
//!
//! Layout:
//! - [`client`] — one WebSocket client: token, connect, wait for `connected`.
//! - [`procstat`] — RSS and CPU time of a process, from `/proc`.
//! - [`stats`] — latency percentiles and table printing.
//! - [`shared`] — what `chat` and `pairs` share: CPU readings, report rows,
//!   the saturation search.
//! - [`idle`], [`chat`], [`fanout`], [`pairs`] — the modes.

mod chat;
mod client;
mod fanout;
mod idle;
mod pairs;
mod procstat;
mod shared;
mod stats;

use std::net::SocketAddr;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "chatai-load",
    version,
    about = "Load generator for a running ChatAI gateway (loopback only)"
)]
struct Cli {
    #[command(flatten)]
    target: TargetArgs,
    #[command(subcommand)]
    mode: Mode,
}

/// Where the gateway is and how to mint tokens for it.
#[derive(clap::Args, Debug)]
pub struct TargetArgs {
    /// The gateway's HTTP/WebSocket address; must be a loopback address.
    #[arg(
        long,
        env = "CHATAI_GATEWAY_ADDR",
        default_value = "127.0.0.1:8080",
        global = true
    )]
    gateway: SocketAddr,
    /// More gateways of the same deployment (comma-separated, loopback):
    /// clients are spread over all of them, client `id` on gateway
    /// `id % count` (users and operators alike), so a user and their
    /// operator may be on two gateways.
    #[arg(long = "also-gateways", value_delimiter = ',', global = true)]
    also_gateways: Vec<SocketAddr>,
    /// The gateway's HS256 secret; unset = the gateway's development secret.
    #[arg(
        long = "jwt-secret",
        env = "CHATAI_JWT_SECRET",
        hide_env_values = true,
        global = true
    )]
    jwt_secret: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Open N idle connections and measure the gateway's memory and CPU per connection.
    Idle(idle::IdleArgs),
    /// Send chat messages at a fixed aggregate rate and measure round-trip
    /// latency; --search finds the highest rate with p99 < 10 ms.
    Chat(chat::ChatArgs),
    /// Broadcast system alerts to N connections and measure delivery latency and rate.
    Fanout(fanout::FanoutArgs),
    /// Users and operators in handoff (the real flow), messages both ways at
    /// a fixed rate per direction: one-way latency, losses and duplicates
    /// per direction; --search finds the highest rate with p99 < 10 ms.
    Pairs(pairs::PairsArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    anyhow::ensure!(
        cli.target.gateway.ip().is_loopback(),
        "chatai-load only talks to a gateway on this machine (a loopback address), not {}",
        cli.target.gateway
    );
    anyhow::ensure!(
        cli.target
            .also_gateways
            .iter()
            .all(|g| g.ip().is_loopback()),
        "chatai-load only talks to gateways on this machine (loopback addresses)"
    );
    let nofile = raise_nofile_limit();
    let secret = chatai_tokens::configured_secret(cli.target.jwt_secret.as_deref())?
        .unwrap_or(chatai_tokens::DEVELOPMENT_SECRET)
        .to_owned();
    let target = client::Target::new(cli.target.gateway, secret.as_bytes())
        .spread_over(&cli.target.also_gateways);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        match cli.mode {
            Mode::Idle(args) => idle::run(target, args, nofile).await,
            Mode::Chat(args) => chat::run(target, args, nofile).await,
            Mode::Fanout(args) => fanout::run(target, args, nofile).await,
            Mode::Pairs(args) => pairs::run(target, args, nofile).await,
        }
    })
}

/// Raises this process's soft open-files limit to the hard limit (the tool
/// holds one socket per connection) and returns the limit now in force.
fn raise_nofile_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(err) => {
            eprintln!("could not raise the open-files limit: {err}");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
        }
    }
}
