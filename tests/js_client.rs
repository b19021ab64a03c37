//! The browser side served by the gateway: the JavaScript client's Node
//! tests (`web/test/*.test.mjs`, `node --test`) run against the real
//! system, and the gateway serves the `web/` folder with its types and
//! `ETag`s, and nothing a browser has no use for.
//!
//! The Node tests need Node 18+ and the packages of `web/package-lock.json`
//! in `web/node_modules` (`scripts/test` runs `npm ci` when they are
//! missing). They get the gateway's URL and JWT secret in the environment
//! (`CHATAI_TEST_GATEWAY_URL`, `CHATAI_TEST_JWT_SECRET`) and mint their own
//! tokens.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use crate::common::{TestOptions, spawn_app};

/// The repository's `web/` folder.
fn web_folder() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("web")
}

/// Every `web/test/*.test.mjs`, sorted (`node --test` is given files: how it
/// reads a folder differs between Node versions).
fn node_test_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(web_folder().join("test"))
        .expect("web/test is readable")
        .map(|entry| entry.expect("a folder entry").path())
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.ends_with(".test.mjs"))
        })
        .collect();
    files.sort();
    files
}

/// The JavaScript client's Node tests pass against a running gateway:
/// connect, request and ack, errors, resume after a drop, re-sent requests,
/// token refresh, SSE and the fallback to it (see `web/test/`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_tests_of_the_javascript_client_pass() {
    let web = web_folder();
    assert!(
        web.join("node_modules/ws").is_dir() && web.join("node_modules/undici").is_dir(),
        "web/node_modules is missing: run `npm ci` in web/ (scripts/test does)"
    );
    let files = node_test_files();
    assert!(!files.is_empty(), "no web/test/*.test.mjs");
    let app = spawn_app(TestOptions::default()).await;

    let child = tokio::process::Command::new("node")
        .arg("--test")
        .args(&files)
        .current_dir(&web)
        .env("CHATAI_TEST_GATEWAY_URL", app.http_url(""))
        .env("CHATAI_TEST_JWT_SECRET", &app.jwt_secret)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs (install Node 18 or later)");
    let output = tokio::time::timeout(Duration::from_secs(300), child.wait_with_output())
        .await
        .expect("the Node tests finish within 5 minutes")
        .expect("the Node tests' output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "node --test failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    // Shown with `--nocapture`: each test's line and the counts.
    for line in stdout
        .lines()
        .filter(|line| line.starts_with("ok ") || line.starts_with("# "))
    {
        println!("{line}");
    }
    // Every file ran tests and none was skipped or left to do.
    assert!(
        stdout.contains("# fail 0")
            && stdout.contains("# skipped 0")
            && stdout.contains("# todo 0"),
        "{stdout}"
    );
    app.stop().await;
}

/// `/web/chatai.js` is served as JavaScript with an `ETag`; the same tag in
/// `If-None-Match` gets a 304 with no body; another tag gets the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_is_served_with_its_type_and_etag() {
    let app = spawn_app(TestOptions::default()).await;
    let http = reqwest::Client::new();
    let url = app.http_url("/web/chatai.js");

    let first = http.get(&url).send().await.expect("GET /web/chatai.js");
    assert_eq!(first.status(), 200);
    let header = |response: &reqwest::Response, name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    let content_type = header(&first, "content-type").expect("a content type");
    assert!(
        content_type.contains("javascript") && content_type.contains("utf-8"),
        "{content_type}"
    );
    assert_eq!(header(&first, "cache-control").as_deref(), Some("no-cache"));
    let etag = header(&first, "etag").expect("an ETag");
    let body = first.text().await.expect("the file");
    let on_disk =
        std::fs::read_to_string(web_folder().join("chatai.js")).expect("web/chatai.js on disk");
    assert_eq!(body, on_disk);

    let again = http
        .get(&url)
        .header("if-none-match", &etag)
        .send()
        .await
        .expect("a conditional GET");
    assert_eq!(again.status(), 304);
    assert_eq!(header(&again, "etag").as_deref(), Some(etag.as_str()));
    assert!(again.bytes().await.expect("no body").is_empty());

    let stale = http
        .get(&url)
        .header("if-none-match", "\"an-older-version\"")
        .send()
        .await
        .expect("a conditional GET with another tag");
    assert_eq!(stale.status(), 200);
    app.stop().await;
}

/// What a browser has no use for is not served: the Node tests, the npm
/// files, `node_modules`, and nothing outside `web/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_files_and_paths_outside_web_are_not_served() {
    let app = spawn_app(TestOptions::default()).await;
    for path in [
        "/web/package.json",
        "/web/package-lock.json",
        "/web/test/support.mjs",
        "/web/node_modules/ws/package.json",
        "/web/../Cargo.toml",
        "/web/%2e%2e/Cargo.toml",
        "/web/no-such-file.js",
    ] {
        let (status, _) = app.http_get(path).await;
        assert_eq!(status, 404, "{path}");
    }
    app.stop().await;
}
