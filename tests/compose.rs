//! `docker-compose.yml` against the binary it runs (no Docker engine is
//! needed): every container's command is a `chatai` subcommand, every
//! variable the file sets is one the binary reads, and the service
//! addresses have the shape the services accept.

use std::collections::BTreeSet;
use std::process::Command;

use chatai_kit::config::{ServiceAddr, Targets};

const COMPOSE: &str = include_str!("../docker-compose.yml");

/// `chatai <args>`'s standard output; the command must succeed.
fn chatai(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_chatai"))
        .args(args)
        .output()
        .expect("the chatai binary runs");
    assert!(
        output.status.success(),
        "chatai {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The `command: ["…"]` of every container built from the project.
fn commands() -> Vec<String> {
    COMPOSE
        .lines()
        .filter_map(|line| line.trim().strip_prefix("command: [\""))
        .filter_map(|rest| rest.split('"').next())
        .filter(|first| !first.starts_with("redis"))
        .map(str::to_owned)
        .collect()
}

/// Every `NAME: value` the file sets for the project's containers.
fn variables() -> Vec<(String, String)> {
    COMPOSE
        .lines()
        .filter_map(|line| line.trim().split_once(": "))
        .filter(|(name, _)| {
            name.starts_with("CHATAI_") || name.starts_with("OTEL_") || *name == "RUST_LOG"
        })
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect()
}

#[test]
fn every_command_is_a_subcommand() {
    let commands = commands();
    let expected: BTreeSet<&str> =
        ["chat", "gateway", "handoff", "notification", "presence"].into();
    let found: BTreeSet<&str> = commands.iter().map(String::as_str).collect();
    assert_eq!(found, expected, "one container per part");
    for command in &commands {
        chatai(&[command, "--help"]);
    }
}

#[test]
fn every_variable_is_one_the_binary_reads() {
    let mut known = String::new();
    for command in commands() {
        known.push_str(&chatai(&[&command, "--help"]));
    }
    known.push_str(&chatai(&["--help"]));
    let variables = variables();
    assert!(variables.len() >= 10, "{variables:?}");
    for (name, _) in &variables {
        assert!(
            known.contains(&format!("[env: {name}")),
            "docker-compose.yml sets {name}, which no chatai subcommand reads"
        );
    }
}

#[test]
fn service_addresses_have_the_accepted_shape() {
    let variables = variables();
    for (name, value) in &variables {
        if name == "CHATAI_GATEWAY_ADDR" || name == "CHATAI_METRICS_ADDR" {
            value
                .parse::<std::net::SocketAddr>()
                .unwrap_or_else(|err| panic!("{name}={value}: {err}"));
        } else if name.ends_with("_ADDR") {
            value
                .parse::<ServiceAddr>()
                .unwrap_or_else(|err| panic!("{name}={value}: {err}"));
        }
    }
    let addresses = variables
        .iter()
        .filter(|(name, _)| name.ends_with("_ADDR") && name != "CHATAI_METRICS_ADDR")
        .count();
    // The gateway's twice (two gateways) and the four services'.
    assert_eq!(addresses, 6, "the gateways' and the four services'");
    let mut replicas = Vec::new();
    for (name, value) in &variables {
        if name.ends_with("_ADDRS") {
            value
                .parse::<Targets>()
                .unwrap_or_else(|err| panic!("{name}={value}: {err}"));
            replicas.push(name.as_str());
        }
    }
    replicas.sort();
    assert_eq!(
        replicas,
        [
            "CHATAI_CHAT_ADDRS",
            "CHATAI_HANDOFF_ADDRS",
            "CHATAI_NOTIFICATION_ADDRS",
            "CHATAI_PRESENCE_ADDRS"
        ],
        "every service is reached through its replicas' name"
    );
}

/// Two of each part: every service scaled to two replicas behind its name,
/// two gateways with ids of their own.
#[test]
fn two_of_each_part() {
    assert_eq!(
        COMPOSE.matches("\n      replicas: 2\n").count(),
        4,
        "chat, handoff, presence and notification run twice"
    );
    let gateways = commands()
        .iter()
        .filter(|command| *command == "gateway")
        .count();
    assert_eq!(gateways, 2, "two gateways");
    let ids: BTreeSet<String> = variables()
        .into_iter()
        .filter(|(name, _)| name == "CHATAI_GATEWAY_ID")
        .map(|(_, id)| id)
        .collect();
    assert_eq!(ids.len(), 2, "each gateway has an id of its own: {ids:?}");
}
