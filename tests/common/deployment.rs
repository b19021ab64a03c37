//! The system as it is deployed, for the tests that run each part in a
//! process of its own (`processes.rs`, `replicas.rs`): the `chatai` binary's
//! subcommands, configured only through the environment, on PostgreSQL and a
//! [`Redis`] of the test's own. A [`Deployment`] starts parts — one of each,
//! or several replicas of one under names of their own — kills them
//! (SIGKILL), stops them (SIGTERM), reads the gateway's health and connects
//! clients.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use chatai_kit::identity::{Caller, Role};
use chatai_tokens::TokenKeys;
use serde_json::Value;
use tokio::process::{Child, Command};

use super::{WAIT, WsClient, connect_at, free_addr};

pub const JWT_SECRET: &str = "processes-test-secret-of-32-bytes-or-more";
pub const INTERNAL_TOKEN: &str = "processes-internal-token";

/// `message` as a call from `caller` into one of the deployment's services:
/// the caller's identity, and the internal token the services require.
pub fn internal_call<T>(caller: &Caller, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    caller.write_metadata(request.metadata_mut());
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {INTERNAL_TOKEN}")
            .parse()
            .expect("a header value"),
    );
    request
}

/// How long a freshly started process may take to become healthy (it
/// connects to PostgreSQL and Redis and applies migrations first).
pub const START: Duration = Duration::from_secs(30);

/// A `redis-server` of the test's own, so the test can kill it.
pub struct Redis {
    pub port: u16,
    child: Child,
}

impl Redis {
    pub async fn start(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server (scripts/test installs it) starts");
        wait_for_port(port).await;
        Redis { port, child }
    }

    pub async fn kill(&mut self) {
        self.child.kill().await.expect("Redis is killed");
    }
}

pub async fn wait_for_port(port: u16) {
    let deadline = tokio::time::Instant::now() + START;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing listens on {port}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The five processes, their shared environment and their logs.
pub struct Deployment {
    env: Vec<(&'static str, String)>,
    pub gateway: SocketAddr,
    logs: tempfile::TempDir,
    children: HashMap<&'static str, Child>,
    keys: TokenKeys,
    http: reqwest::Client,
}

impl Deployment {
    /// The environment of a deployment on `database_url`, with the event
    /// logs in the Redis on `redis_port`, or in each service's memory.
    pub fn new(database_url: &str, redis_port: Option<u16>) -> Deployment {
        let gateway = free_addr();
        let mut env = vec![
            ("CHATAI_DATABASE_URL", database_url.to_owned()),
            ("CHATAI_INTERNAL_TOKEN", INTERNAL_TOKEN.to_owned()),
            ("CHATAI_JWT_SECRET", JWT_SECRET.to_owned()),
            ("CHATAI_GATEWAY_ADDR", gateway.to_string()),
            // By name, as in a container network: each service resolves its
            // own name to listen on, the others to connect.
            (
                "CHATAI_CHAT_ADDR",
                format!("localhost:{}", free_addr().port()),
            ),
            (
                "CHATAI_HANDOFF_ADDR",
                format!("localhost:{}", free_addr().port()),
            ),
            ("CHATAI_PRESENCE_ADDR", free_addr().to_string()),
            ("CHATAI_NOTIFICATION_ADDR", free_addr().to_string()),
            ("CHATAI_PRESENCE_GRACE_SECS", "1".to_owned()),
            // `CHATAI_TEST_PROCESS_LOG=debug` to see more when one fails.
            (
                "RUST_LOG",
                std::env::var("CHATAI_TEST_PROCESS_LOG").unwrap_or_else(|_| "warn".to_owned()),
            ),
        ];
        if let Some(port) = redis_port {
            env.push(("CHATAI_REDIS_URL", format!("redis://127.0.0.1:{port}")));
            env.push(("CHATAI_REDIS_PREFIX", "processes".to_owned()));
        }
        Deployment {
            env,
            gateway,
            logs: tempfile::tempdir().expect("a folder for the logs"),
            children: HashMap::new(),
            keys: TokenKeys::new(JWT_SECRET.as_bytes()),
            http: reqwest::Client::new(),
        }
    }

    pub fn log_path(&self, part: &str) -> PathBuf {
        self.logs.path().join(format!("{part}.log"))
    }

    /// What signs the deployment's client tokens.
    pub fn keys(&self) -> &TokenKeys {
        &self.keys
    }

    /// Adds a variable to every part started from now on.
    pub fn set_env(&mut self, name: &'static str, value: String) {
        self.env.retain(|(existing, _)| *existing != name);
        self.env.push((name, value));
    }

    /// A variable of the deployment's environment.
    pub fn env(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(existing, _)| *existing == name)
            .map(|(_, value)| value.as_str())
    }

    /// Starts `chatai {part}` with the deployment's environment only (none
    /// of the test machine's `CHATAI_*` settings leak in).
    pub fn start(&mut self, part: &'static str) {
        self.start_as(part, part, &[]);
    }

    /// Starts `chatai {part}` under `name` (a replica: `handoff-a`), with
    /// `extra` on top of the deployment's environment (its own address).
    pub fn start_as(
        &mut self,
        name: &'static str,
        part: &'static str,
        extra: &[(&'static str, String)],
    ) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(name))
            .expect("a log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_chatai"));
        for (variable, _) in std::env::vars() {
            if variable.starts_with("CHATAI_") || variable.starts_with("OTEL_") {
                command.env_remove(variable);
            }
        }
        let child = command
            .arg(part)
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("the chatai binary starts");
        self.children.insert(name, child);
    }

    /// Every part's log, for a failure message.
    pub fn logs(&self) -> String {
        let mut all = String::new();
        for part in self.children.keys() {
            let text = std::fs::read_to_string(self.log_path(part)).unwrap_or_default();
            all.push_str(&format!("--- {part}\n{text}"));
        }
        all
    }

    /// SIGKILL: the part gets no chance to say goodbye.
    pub async fn kill(&mut self, part: &str) {
        let mut child = self.children.remove(part).expect("a running part");
        child.kill().await.expect("the part is killed");
    }

    /// SIGTERM, then waits for the process; it must exit 0 in time.
    pub async fn terminate(&mut self, part: &str) {
        self.send_sigterm(part).await;
        let status = self.wait_exit(part, WAIT * 2).await;
        assert!(
            status.success(),
            "the {part} exits cleanly on SIGTERM: {status}\n{}",
            self.logs()
        );
    }

    /// Sends SIGTERM and returns at once (the process drains meanwhile).
    pub async fn send_sigterm(&mut self, part: &str) {
        let child = self.children.get(part).expect("a running part");
        let pid = child.id().expect("a live process");
        let sent = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await
            .expect("kill runs");
        assert!(sent.success(), "SIGTERM sent to the {part}");
    }

    /// Waits for the part's process to exit, at most `within`.
    pub async fn wait_exit(&mut self, part: &str, within: Duration) -> ExitStatus {
        let mut child = self.children.remove(part).expect("a running part");
        let exited = tokio::time::timeout(within, child.wait()).await;
        match exited {
            Ok(status) => status.expect("its exit status"),
            Err(_) => panic!("the {part} did not exit within {within:?}\n{}", self.logs()),
        }
    }

    /// The health endpoint's status and body of the gateway at `gateway`,
    /// or `None` while it does not answer.
    pub async fn health_of(&self, gateway: SocketAddr) -> Option<(u16, Value)> {
        let url = format!("http://{gateway}/api/websocket/health");
        let response = self.http.get(url).send().await.ok()?;
        let status = response.status().as_u16();
        Some((status, response.json().await.ok()?))
    }

    /// Polls health until `wanted` says yes; fails with every log otherwise.
    pub async fn wait_for_health(&self, what: &str, wanted: impl Fn(u16, &Value) -> bool) -> Value {
        self.wait_for_health_of(self.gateway, what, wanted).await
    }

    /// The same, of the gateway at `gateway`.
    pub async fn wait_for_health_of(
        &self,
        gateway: SocketAddr,
        what: &str,
        wanted: impl Fn(u16, &Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + START;
        let mut last = None;
        loop {
            if let Some((status, body)) = self.health_of(gateway).await {
                if wanted(status, &body) {
                    return body;
                }
                last = Some((status, body));
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: last health {last:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait_healthy(&self) {
        self.wait_for_health("the deployment becomes healthy", |status, _| status == 200)
            .await;
    }

    pub async fn connect(&self, id: i64, role: Role) -> WsClient {
        self.connect_to(self.gateway, id, role, "").await.0
    }

    /// Connects to the gateway at `gateway` with `query` (`&cursor=…`);
    /// returns the client and its `connected` frame.
    pub async fn connect_to(
        &self,
        gateway: SocketAddr,
        id: i64,
        role: Role,
        query: &str,
    ) -> (WsClient, Value) {
        let token = self
            .keys
            .mint(id, role, None, Duration::from_secs(600))
            .expect("a token");
        connect_at(gateway, &token, id, role, query).await
    }
}

impl Drop for Deployment {
    /// A failed test shows what every process logged.
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

/// Reads frames until one satisfies `last`; returns them all.
pub async fn until(client: &mut WsClient, last: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut frames = Vec::new();
    loop {
        let frame = client.recv().await;
        let done = last(&frame);
        frames.push(frame);
        if done {
            return frames;
        }
    }
}
