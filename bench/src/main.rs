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
//!
//! Every mode is bounded in count and time and stops by itself. Results are
//! plain text tables, then one line of JSON (the last line printed).
//! How the numbers in BENCHMARKS.md were produced is written there.
//!
//! Layout:
//! - [`client`] — one WebSocket client: token, connect, wait for `connected`.
//! - [`procstat`] — RSS and CPU time of a process, from `/proc`.
//! - [`stats`] — latency percentiles and table printing.
//! - [`idle`], [`chat`], [`fanout`] — the modes.

mod chat;
mod client;
mod fanout;
mod idle;
mod procstat;
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
    /// Send chat messages at a fixed aggregate rate and measure round-trip latency.
    Chat(chat::ChatArgs),
    /// Broadcast system alerts to N connections and measure delivery latency and rate.
    Fanout(fanout::FanoutArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    anyhow::ensure!(
        cli.target.gateway.ip().is_loopback(),
        "chatai-load only talks to a gateway on this machine (a loopback address), not {}",
        cli.target.gateway
    );
    let nofile = raise_nofile_limit();
    let secret = cli
        .target
        .jwt_secret
        .clone()
        .unwrap_or_else(|| chatai_gateway::config::DEVELOPMENT_SECRET.to_owned());
    let target = client::Target::new(cli.target.gateway, secret.as_bytes());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        match cli.mode {
            Mode::Idle(args) => idle::run(target, args, nofile).await,
            Mode::Chat(args) => chat::run(target, args, nofile).await,
            Mode::Fanout(args) => fanout::run(target, args, nofile).await,
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
