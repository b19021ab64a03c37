//! `docs/asyncapi.yaml` against the code: the client frames it lists are
//! exactly the parser's types (`frames::inbound::TYPES`), the server frames
//! exactly those the gateway renders (`frames/outbound.rs`) and the
//! services emit (the event kinds their sources create), and the `error`
//! frame's codes exactly `ErrorCode::ALL`. A frame added to the code and
//! not to the document fails here, and so does one the document invents.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use chatai_gateway::frames::inbound::TYPES;
use chatai_kit::error_code::ErrorCode;
use serde_norway::Value;

/// Event kinds that never reach a client: the handoff service's holder
/// notes go to a room clients cannot join (`chatai_kit::holders`).
const INTERNAL_KINDS: [&str; 1] = ["holder_changed"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

fn document() -> Value {
    let text = std::fs::read_to_string(root().join("docs/asyncapi.yaml")).expect("the document");
    serde_norway::from_str(&text).expect("the document is YAML")
}

/// The `type` of each message whose name starts with `prefix`.
fn message_types(doc: &Value, prefix: &str) -> BTreeSet<String> {
    let messages = doc["components"]["messages"]
        .as_mapping()
        .expect("components.messages");
    messages
        .iter()
        .filter(|(name, _)| name.as_str().is_some_and(|n| n.starts_with(prefix)))
        .map(|(name, message)| {
            let kind = message["payload"]["properties"]["type"]["const"]
                .as_str()
                .unwrap_or_else(|| panic!("{name:?} has a const type"));
            assert_eq!(name.as_str(), Some(format!("{prefix}{kind}").as_str()));
            kind.to_owned()
        })
        .collect()
}

/// The Rust sources under `dir`, without their test modules (a file's
/// tests start at its first `#[cfg(test)]`).
fn sources(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
    for entry in std::fs::read_dir(dir).expect("a source folder") {
        let path = entry.expect("an entry").path();
        if path.is_dir() {
            if !path.ends_with("tests") {
                sources(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).expect("a source file");
            let code = match text.find("#[cfg(test)]") {
                Some(end) => text[..end].to_owned(),
                None => text,
            };
            out.push((path, code));
        }
    }
}

/// The arguments of the call whose `(` is at `open`: up to the matching `)`.
fn call_arguments(code: &str, open: usize) -> &str {
    let mut depth = 0usize;
    for (offset, c) in code[open..].char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return &code[open + 1..open + offset];
                }
            }
            _ => {}
        }
    }
    &code[open + 1..]
}

/// The first string literal of `text` that looks like a frame type.
fn first_kind_literal(text: &str) -> Option<&str> {
    let mut rest = text;
    while let Some(start) = rest.find('"') {
        let after = &rest[start + 1..];
        let end = after.find('"')?;
        let literal = &after[..end];
        if !literal.is_empty() && literal.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            return Some(literal);
        }
        rest = &after[end + 1..];
    }
    None
}

/// The value of `const NAME: &str = "…"` in any of `files`.
fn constant<'a>(files: &'a [(PathBuf, String)], name: &str) -> Option<&'a str> {
    let needle = format!("const {name}: &str = \"");
    files.iter().find_map(|(_, code)| {
        let start = code.find(&needle)? + needle.len();
        let end = code[start..].find('"')?;
        Some(&code[start..start + end])
    })
}

/// Every frame type the services' sources create events of: the kind
/// given to `Event::new(…)` and to the `deliver…(…)` helpers, a literal or
/// a constant. Calls with a kind from elsewhere (an internal caller's
/// `Notify`) name none.
fn service_kinds() -> BTreeSet<String> {
    let mut files = Vec::new();
    sources(&root().join("services"), &mut files);
    let mut kinds = BTreeSet::new();
    for (_, code) in &files {
        for marker in ["Event::new", "deliver"] {
            for (at, _) in code.match_indices(marker) {
                // `deliver(`, `deliver_noted(`…: the helpers that make the event.
                let name_end = at
                    + marker.len()
                    + code[at + marker.len()..]
                        .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                        .unwrap_or(0);
                if !code[name_end..].starts_with('(') || code[..at].ends_with("fn ") {
                    continue;
                }
                let arguments = call_arguments(code, name_end);
                if let Some(kind) = first_kind_literal(arguments) {
                    kinds.insert(kind.to_owned());
                } else if marker == "Event::new" {
                    let first = arguments.split(',').next().unwrap_or("").trim();
                    let name = first.rsplit("::").next().unwrap_or(first);
                    if name.chars().all(|c| c.is_ascii_uppercase() || c == '_') && !name.is_empty()
                    {
                        let kind = constant(&files, name)
                            .unwrap_or_else(|| panic!("the constant {name} is defined"));
                        kinds.insert(kind.to_owned());
                    }
                }
            }
        }
    }
    for internal in INTERNAL_KINDS {
        assert!(kinds.remove(internal), "{internal} is still emitted");
    }
    kinds
}

/// Every frame type the gateway renders itself (`frame("…", …)` in
/// `frames/outbound.rs`).
fn gateway_kinds() -> BTreeSet<String> {
    let code = std::fs::read_to_string(root().join("gateway/src/frames/outbound.rs"))
        .expect("outbound.rs");
    let code = &code[..code.find("#[cfg(test)]").unwrap_or(code.len())];
    code.match_indices("frame(")
        .filter(|(at, _)| !code[..*at].ends_with("fn "))
        .filter_map(|(at, _)| first_kind_literal(call_arguments(code, at + 5)))
        .map(str::to_owned)
        .collect()
}

/// The client frames are the parser's.
#[test]
fn client_frames_are_the_parsers() {
    let documented = message_types(&document(), "client_");
    let known: BTreeSet<String> = TYPES.iter().map(|t| (*t).to_owned()).collect();
    assert_eq!(documented, known);
}

/// The server frames are those the gateway renders and the services emit.
#[test]
fn server_frames_are_the_codes() {
    let documented = message_types(&document(), "server_");
    let gateway = gateway_kinds();
    let services = service_kinds();
    for expected in ["connected", "ack", "error", "closed", "heartbeat_ack"] {
        assert!(
            gateway.contains(expected),
            "{expected} found in outbound.rs: {gateway:?}"
        );
    }
    for expected in [
        "ai_response",
        "handoff_queued",
        "operator_status_change",
        "system_alert",
    ] {
        assert!(
            services.contains(expected),
            "{expected} found in the services: {services:?}"
        );
    }
    let known: BTreeSet<String> = gateway.union(&services).cloned().collect();
    assert_eq!(
        documented,
        known,
        "documented but unknown: {:?}; emitted but undocumented: {:?}",
        documented.difference(&known).collect::<Vec<_>>(),
        known.difference(&documented).collect::<Vec<_>>()
    );
}

/// The `error` frame's codes are `ErrorCode::ALL`.
#[test]
fn error_codes_are_the_lists() {
    let doc = document();
    let codes: BTreeSet<&str> =
        doc["components"]["messages"]["server_error"]["payload"]["properties"]["code"]["enum"]
            .as_sequence()
            .expect("the error codes")
            .iter()
            .map(|code| code.as_str().expect("a code"))
            .collect();
    let known: BTreeSet<&str> = ErrorCode::ALL.iter().map(|code| code.as_str()).collect();
    assert_eq!(codes, known);
}

/// Every message a channel or operation names exists.
#[test]
fn every_reference_resolves() {
    let text = std::fs::read_to_string(root().join("docs/asyncapi.yaml")).expect("the document");
    let doc = document();
    for reference in text.split("$ref: '#/").skip(1) {
        let path = &reference[..reference.find('\'').expect("a closing quote")];
        let mut node = &doc;
        for part in path.split('/') {
            node = &node[part];
        }
        assert!(!node.is_null(), "{path} resolves");
    }
}
