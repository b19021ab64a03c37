//! `chatai`: the whole of ChatAI Realtime in one process (no subcommand, the
//! embedded default: SQLite under `./data/`, the event bus in memory, every
//! service still speaking real gRPC on its own loopback port), or one part of
//! it (`chatai gateway|chat|handoff|presence|notification`), or a client
//! token for trying it out (`chatai token`).
//!
//! Configuration comes from the environment (names in docs/protocol.md);
//! every variable also has a `--flag`.

/// mimalloc: at thousands of messages a second glibc's malloc and free
/// were a tenth of the process's CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::Duration;

use anyhow::Context;
use chatai_chat::ChatConfig;
use chatai_gateway::GatewayConfig;
use chatai_gateway::shared_limit::LimitRedis;
use chatai_handoff::HandoffConfig;
use chatai_kit::config::{InternalAuth, Part, ServiceAddrs, ServiceCommon, TelemetryConfig};
use chatai_kit::identity::Role;
use chatai_kit::internal_auth::TOKEN_FILE;
use chatai_kit::shutdown::ShutdownConfig;
use chatai_notification::NotificationConfig;
use chatai_presence::PresenceConfig;
use chatai_tokens::TokenKeys;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(
    name = "chatai",
    version,
    about = "ChatAI Realtime: WebSocket gateway and chat, handoff, presence and notification services"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    telemetry: TelemetryConfig,
    #[command(flatten)]
    shutdown: ShutdownConfig,
    /// Settings of the all-in-one mode (no subcommand).
    #[command(flatten)]
    all: AllInOne,
}

#[derive(clap::Args, Debug)]
struct AllInOne {
    #[command(flatten)]
    gateway: GatewayConfig,
    #[command(flatten)]
    addrs: ServiceAddrs,
    #[command(flatten)]
    chat: ChatConfig,
    #[command(flatten)]
    handoff: HandoffConfig,
    #[command(flatten)]
    presence: PresenceConfig,
    #[command(flatten)]
    notification: NotificationConfig,
    #[command(flatten)]
    common: ServiceCommon,
}

// Parsed once at start and taken apart at once: its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Run the WebSocket gateway alone.
    Gateway {
        #[command(flatten)]
        gateway: GatewayConfig,
        #[command(flatten)]
        addrs: ServiceAddrs,
        #[command(flatten)]
        auth: InternalAuth,
        #[command(flatten)]
        redis: LimitRedis,
    },
    /// Run the chat service alone.
    Chat {
        #[command(flatten)]
        chat: ChatConfig,
        #[command(flatten)]
        addrs: ServiceAddrs,
        #[command(flatten)]
        common: ServiceCommon,
    },
    /// Run the handoff service alone.
    Handoff {
        #[command(flatten)]
        handoff: HandoffConfig,
        #[command(flatten)]
        args: ServiceArgs,
    },
    /// Run the operator presence service alone.
    Presence {
        #[command(flatten)]
        presence: PresenceConfig,
        #[command(flatten)]
        args: ServiceArgs,
    },
    /// Run the notification service alone.
    Notification {
        #[command(flatten)]
        notification: NotificationConfig,
        #[command(flatten)]
        args: ServiceArgs,
    },
    /// Print a client token signed with the configured secret.
    Token(TokenArgs),
}

impl Command {
    /// What protects the internal gRPC of a part started alone.
    fn internal_auth(&self) -> Option<&InternalAuth> {
        match self {
            Command::Gateway { auth, .. } => Some(auth),
            Command::Chat { common, .. } => Some(&common.auth),
            Command::Handoff { args, .. }
            | Command::Presence { args, .. }
            | Command::Notification { args, .. } => Some(&args.common.auth),
            Command::Token(_) => None,
        }
    }
}

#[derive(clap::Args, Debug)]
struct ServiceArgs {
    #[command(flatten)]
    addrs: ServiceAddrs,
    #[command(flatten)]
    common: ServiceCommon,
}

#[derive(clap::Args, Debug)]
struct TokenArgs {
    /// The subject: the user's or operator's numeric id.
    #[arg(long)]
    sub: i64,
    /// `user`, `operator` or `admin`.
    #[arg(long, default_value = "user")]
    role: String,
    /// Display name.
    #[arg(long)]
    name: Option<String>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl: u64,
    /// The HS256 secret (the gateway's): at least 32 bytes; unset or empty =
    /// the development secret.
    #[arg(long = "jwt-secret", env = "CHATAI_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// `iss` to write, as the gateway expects it (`CHATAI_JWT_ISSUER`).
    #[arg(long = "issuer", env = "CHATAI_JWT_ISSUER")]
    issuer: Option<String>,
    /// `aud` to write, as the gateway expects it (`CHATAI_JWT_AUDIENCE`).
    #[arg(long = "audience", env = "CHATAI_JWT_AUDIENCE")]
    audience: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Token(args)) = &cli.command {
        return print_token(args);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(run(cli));
    // What did not stop within the shutdown bound is abandoned, not waited for.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

fn print_token(args: &TokenArgs) -> anyhow::Result<()> {
    let role: Role = args.role.parse()?;
    anyhow::ensure!(
        role != Role::Service,
        "client tokens are for users, operators and admins"
    );
    let secret = chatai_tokens::configured_secret(args.jwt_secret.as_deref())?
        .unwrap_or(chatai_tokens::DEVELOPMENT_SECRET);
    let non_empty = |value: &Option<String>| value.clone().filter(|v| !v.is_empty());
    let expected = chatai_tokens::Expected {
        issuer: non_empty(&args.issuer),
        audience: non_empty(&args.audience),
    };
    let token = TokenKeys::new(secret.as_bytes()).expecting(expected).mint(
        args.sub,
        role,
        args.name.as_deref(),
        Duration::from_secs(args.ttl),
    )?;
    println!("{token}");
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let name = match &cli.command {
        None => "chatai",
        Some(Command::Gateway { .. }) => "chatai-gateway",
        Some(Command::Chat { .. }) => "chatai-chat",
        Some(Command::Handoff { .. }) => "chatai-handoff",
        Some(Command::Presence { .. }) => "chatai-presence",
        Some(Command::Notification { .. }) => "chatai-notification",
        Some(Command::Token(_)) => "chatai-token",
    };
    let _telemetry = chatai_kit::telemetry::init(name, &cli.telemetry)?;
    // A part alone refuses to start with its internal gRPC open to anyone
    // (the all-in-one generates a token instead, below).
    if let Some(auth) = cli.command.as_ref().and_then(Command::internal_auth) {
        auth.require_protection()?;
    }
    let shutdown = CancellationToken::new();
    let shutdown_timeout = cli.shutdown.timeout();
    let mut parts = chatai::Parts::new();
    match cli.command {
        None => {
            let AllInOne {
                gateway,
                addrs,
                chat,
                handoff,
                presence,
                notification,
                mut common,
            } = cli.all;
            let token_file = common
                .auth
                .protect_all_in_one(std::path::Path::new(TOKEN_FILE))?;
            let listeners = chatai::Listeners::bind(gateway.listen, &addrs).await?;
            let gateway_addr = listeners.gateway_addr()?;
            // Refused here, before anything starts, when set but too short.
            let uses_dev_secret =
                chatai_tokens::configured_secret(gateway.jwt_secret.as_deref())?.is_none();
            let (ws, http) = if matches!(gateway.tls_files(), Ok(Some(_))) {
                ("wss", "https")
            } else {
                ("ws", "http")
            };
            let config = chatai::SystemConfig {
                gateway,
                chat,
                handoff,
                presence,
                notification,
                common,
            };
            chatai::spawn_all(listeners, config, &shutdown, &mut parts)?;
            let internal_hint = match token_file {
                Some(file) => format!(
                    "  gRPC:      the internal token is in {} ({}): grpcurl -H \"authorization: Bearer $(cat {})\" …\n",
                    file.path.display(),
                    if file.created {
                        "new"
                    } else {
                        "kept from an earlier start"
                    },
                    file.path.display()
                ),
                None => String::new(),
            };
            let secret_hint = if uses_dev_secret {
                ""
            } else {
                " (with CHATAI_JWT_SECRET set)"
            };
            eprintln!(
                "\nChatAI Realtime is running.\n  WebSocket: {ws}://{gateway_addr}/ws/{{user_id}}?token=…   operators: {ws}://{gateway_addr}/ws/operator/{{id}}?token=…\n  Health:    {http}://{gateway_addr}/api/websocket/health   Metrics: {http}://{gateway_addr}/metrics\n  A token:   cargo run --release -- token --sub 456 --role user{secret_hint}\n{internal_hint}"
            );
        }
        Some(Command::Gateway {
            mut gateway,
            addrs,
            auth,
            redis,
        }) => {
            gateway.redis = redis;
            let listener = chatai::bind(gateway.listen, "gateway").await?;
            let gateway = chatai_gateway::run(listener, gateway, addrs, auth, shutdown.clone());
            chatai::spawn_part(&mut parts, "gateway", gateway);
        }
        Some(Command::Chat {
            chat,
            addrs,
            common,
        }) => {
            let listener = chatai::bind_service(&addrs.chat, "chat").await?;
            let chat = chatai_chat::run(
                listener,
                chat,
                addrs.target(Part::Handoff),
                common,
                shutdown.clone(),
            );
            chatai::spawn_part(&mut parts, "chat", chat);
        }
        Some(Command::Handoff { handoff, args }) => {
            let listener = chatai::bind_service(&args.addrs.handoff, "handoff").await?;
            let handoff = chatai_handoff::run(
                listener,
                handoff,
                args.addrs.target(Part::Presence),
                Some(args.addrs.target(Part::Chat)),
                args.common,
                shutdown.clone(),
            );
            chatai::spawn_part(&mut parts, "handoff", handoff);
        }
        Some(Command::Presence { presence, args }) => {
            let listener = chatai::bind_service(&args.addrs.presence, "presence").await?;
            let presence = chatai_presence::run(listener, presence, args.common, shutdown.clone());
            chatai::spawn_part(&mut parts, "presence", presence);
        }
        Some(Command::Notification { notification, args }) => {
            let listener = chatai::bind_service(&args.addrs.notification, "notification").await?;
            let notification =
                chatai_notification::run(listener, notification, args.common, shutdown.clone());
            chatai::spawn_part(&mut parts, "notification", notification);
        }
        Some(Command::Token(_)) => unreachable!("handled before the runtime starts"),
    }
    let signals = tokio::spawn(chatai_kit::shutdown::cancel_on_signal(shutdown.clone()));
    let result = supervise(parts, shutdown, shutdown_timeout).await;
    signals.abort();
    result
}

/// Waits for SIGINT/SIGTERM (the caller cancels `shutdown` on them) or for
/// any part to stop; then stops the rest and waits for all, at most
/// `timeout` after shutdown began. A part that stops on its own is an error,
/// and says why; so is a part still running when the time is up.
async fn supervise(
    mut parts: chatai::Parts,
    shutdown: CancellationToken,
    timeout: Duration,
) -> anyhow::Result<()> {
    let mut failure = None;
    let bound = async {
        shutdown.cancelled().await;
        tokio::time::sleep(timeout).await;
    };
    tokio::pin!(bound);
    loop {
        let joined = tokio::select! {
            joined = parts.join_next() => match joined {
                Some(joined) => joined,
                None => break,
            },
            () = &mut bound => {
                tracing::error!(
                    still_running = parts.len(),
                    timeout_secs = timeout.as_secs(),
                    "not stopped within CHATAI_SHUTDOWN_TIMEOUT_SECS; exiting anyway"
                );
                parts.abort_all();
                failure.get_or_insert_with(|| {
                    anyhow::anyhow!("{} part(s) did not stop within {timeout:?}", parts.len())
                });
                break;
            }
        };
        let stopped_early = !shutdown.is_cancelled();
        match joined {
            Ok((part, Ok(()))) if stopped_early => {
                tracing::error!(part, "stopped on its own; shutting everything down");
                failure.get_or_insert_with(|| anyhow::anyhow!("the {part} stopped unexpectedly"));
            }
            Ok((part, Ok(()))) => tracing::info!(part, "stopped"),
            Ok((part, Err(err))) => {
                tracing::error!(part, cause = %format!("{err:#}"), "failed; shutting everything down");
                failure.get_or_insert(err.context(format!("the {part} failed")));
            }
            Err(join_error) => {
                tracing::error!(cause = %join_error, "a part panicked; shutting everything down");
                failure.get_or_insert_with(|| anyhow::anyhow!("a part panicked: {join_error}"));
            }
        }
        shutdown.cancel();
    }
    match failure {
        Some(err) => Err(err),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every subcommand's flags and variables fit together (clap checks ids,
    /// flags and conflicts).
    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    /// A part that does not stop after shutdown is abandoned when the bound
    /// is up, and the exit says so; parts that stop end it cleanly.
    #[tokio::test]
    async fn a_shutdown_is_bounded() {
        let shutdown = CancellationToken::new();
        let mut parts = chatai::Parts::new();
        let stuck = std::future::pending::<anyhow::Result<()>>();
        chatai::spawn_part(&mut parts, "stuck", stuck);
        shutdown.cancel();
        let stopped = supervise(parts, shutdown, Duration::from_millis(10)).await;
        assert!(stopped.is_err(), "a part still running is an error");

        let shutdown = CancellationToken::new();
        let mut parts = chatai::Parts::new();
        let token = shutdown.clone();
        chatai::spawn_part(&mut parts, "polite", async move {
            token.cancelled().await;
            Ok::<(), anyhow::Error>(())
        });
        shutdown.cancel();
        supervise(parts, shutdown, Duration::from_secs(30))
            .await
            .expect("a part that stops ends the shutdown cleanly");
    }

    /// One `--database-url` is the database of every service, in the
    /// all-in-one mode and alone.
    #[test]
    fn one_database_url_for_every_service() {
        let parse = |args: &[&str]| {
            let matches = Cli::command()
                .mut_args(|arg| arg.env(None::<&str>))
                .try_get_matches_from(args)
                .expect("parses");
            <Cli as clap::FromArgMatches>::from_arg_matches(&matches).expect("converts")
        };
        let all = parse(&["chatai", "--database-url=postgres://db/x"]);
        assert_eq!(all.all.common.database_url, "postgres://db/x");
        let handoff = parse(&["chatai", "handoff", "--database-url=postgres://db/y"]);
        let Some(Command::Handoff { args, .. }) = handoff.command else {
            panic!("the handoff subcommand");
        };
        assert_eq!(args.common.database_url, "postgres://db/y");
    }
}
