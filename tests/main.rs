//! The end-to-end tests of the whole system, built as one test binary
//! (`e2e`, declared in the root `Cargo.toml`): each file of `tests/` is a
//! module here and holds one concern; `common` is what they share. One
//! binary links the system once instead of once per file.
//!
//! Tests run in parallel threads of one process: each starts its own system
//! on port 0, on a database of its own, with Redis keys under a prefix of its
//! own. `cargo test --test e2e auth::` runs one file's tests.

mod common;

mod addressing;
mod analytics;
mod auth;
mod bad_input;
mod browser;
mod chat;
mod compose;
mod connections;
mod delivery;
mod fairness;
mod history;
mod internal;
mod isolation;
mod js_client;
mod jwks;
mod limits;
mod metrics;
mod operators;
mod presence_replicas;
mod processes;
mod replicas;
mod restarts;
mod resume;
mod sse;
mod tls;
mod waiting;
mod workspace;

/// Every `tests/*.rs` file is a module of this binary: with `autotests =
/// false`, a file not declared above would be compiled by nobody.
#[test]
fn every_test_file_is_a_module() {
    let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let main = include_str!("main.rs");
    for entry in std::fs::read_dir(&folder).expect("the tests folder") {
        let path = entry.expect("a folder entry").path();
        let Some(name) = path.file_name().and_then(|name| name.to_str()) else {
            continue;
        };
        let Some(module) = name.strip_suffix(".rs") else {
            continue;
        };
        if module != "main" {
            assert!(
                main.contains(&format!("\nmod {module};\n")),
                "tests/{name} is not declared in tests/main.rs"
            );
        }
    }
}
