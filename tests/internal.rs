//! Internal gRPC is closed by default (issue 10, finding 4): the all-in-one
//! generates a token, keeps it in `data/internal-token` (0600) and every call
//! without it — `EventStream` included — is refused; a part started alone
//! refuses to start with neither token nor TLS unless the development flag
//! says so; with certificates, the parts speak mutual TLS and a client
//! without a certificate from the deployment's CA is refused.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::common::{FAQ_QUESTION, TestOptions, WAIT, as_caller, connect_at, free_addr, spawn_app};
use chatai_kit::config::{InternalAuth, InternalTls, PemFile};
use chatai_kit::identity::Role;
use chatai_proto::v1 as pb;
use chatai_proto::v1::chat_client::ChatClient;
use chatai_proto::v1::event_stream_client::EventStreamClient;
use chatai_proto::v1::notification_client::NotificationClient;
use chatai_tokens::TokenKeys;
use tokio::process::{Child, Command};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

const JWT_SECRET: &str = "internal-test-secret-internal-test-secret";

/// How long a freshly started process may take to become healthy.
const START: Duration = Duration::from_secs(30);

/// The addresses of one system started as processes.
struct Addrs {
    gateway: SocketAddr,
    chat: SocketAddr,
    handoff: SocketAddr,
    presence: SocketAddr,
    notification: SocketAddr,
}

impl Addrs {
    fn new() -> Addrs {
        Addrs {
            gateway: free_addr(),
            chat: free_addr(),
            handoff: free_addr(),
            presence: free_addr(),
            notification: free_addr(),
        }
    }
}

/// `chatai [part]` in `folder` (its `data/` is there), with only the
/// given variables and the addresses (none of the machine's `CHATAI_*`),
/// stderr to `folder/{log}`.
fn chatai(
    folder: &Path,
    part: Option<&str>,
    addrs: &Addrs,
    env: &[(&str, &str)],
    log: &str,
) -> Child {
    let log = std::fs::File::create(folder.join(log)).expect("a log file");
    let mut command = Command::new(env!("CARGO_BIN_EXE_chatai"));
    for (name, _) in std::env::vars() {
        if name.starts_with("CHATAI_") || name.starts_with("OTEL_") {
            command.env_remove(name);
        }
    }
    command
        .args(part)
        .current_dir(folder)
        .env("CHATAI_GATEWAY_ADDR", addrs.gateway.to_string())
        .env("CHATAI_CHAT_ADDR", addrs.chat.to_string())
        .env("CHATAI_HANDOFF_ADDR", addrs.handoff.to_string())
        .env("CHATAI_PRESENCE_ADDR", addrs.presence.to_string())
        .env("CHATAI_NOTIFICATION_ADDR", addrs.notification.to_string())
        .env("CHATAI_JWT_SECRET", JWT_SECRET)
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("the chatai binary starts")
}

/// Polls the gateway's health until 200, failing with the log otherwise.
async fn wait_healthy(gateway: SocketAddr, log: &Path) {
    let http = reqwest::Client::new();
    let url = format!("http://{gateway}/api/websocket/health");
    let deadline = tokio::time::Instant::now() + START;
    loop {
        if let Ok(response) = http.get(&url).send().await
            && response.status() == 200
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the system did not become healthy:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGTERM, then waits for the process to exit cleanly.
async fn terminate(mut child: Child) {
    let pid = child.id().expect("a live process");
    let sent = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await
        .expect("kill runs");
    assert!(sent.success());
    let status = tokio::time::timeout(WAIT * 2, child.wait())
        .await
        .expect("it stops after SIGTERM")
        .expect("its exit status");
    assert!(status.success(), "a clean exit: {status}");
}

fn plaintext(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("a URI")
        .connect_lazy()
}

/// `request` with `authorization: Bearer {token}`.
fn with_token<T>(mut request: tonic::Request<T>, token: &str) -> tonic::Request<T> {
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("a header value"),
    );
    request
}

fn replay_request(user: i64) -> tonic::Request<pb::ReplayRequest> {
    tonic::Request::new(pb::ReplayRequest {
        recipient: Some(pb::Recipient {
            kind: Some(pb::recipient::Kind::User(user)),
        }),
        from: Some(pb::replay_request::From::AfterPosition(0)),
        limit: 0,
    })
}

/// The code a call failed with, `None` when it succeeded.
fn code<T>(result: Result<T, tonic::Status>) -> Option<Code> {
    result.err().map(|status| status.code())
}

/// Every internal call without the token is refused: the history, the event
/// log (`Replay`, which needs no caller metadata), the gateway stream
/// (`Attach`), posting as a user, a system alert.
async fn assert_refused_without_token(addrs: &Addrs, user: i64, dialog_id: i64) {
    let chat = plaintext(addrs.chat);

    let history = ChatClient::new(chat.clone())
        .get_history(as_caller(
            user,
            Role::User,
            pb::GetHistoryRequest {
                dialog_id,
                ..Default::default()
            },
        ))
        .await;
    assert_eq!(code(history), Some(Code::Unauthenticated), "GetHistory");

    let post = ChatClient::new(chat.clone())
        .send_message(as_caller(
            user,
            Role::User,
            pb::SendMessageRequest {
                dialog_id: Some(dialog_id),
                text: "posted by a stranger".into(),
                ..Default::default()
            },
        ))
        .await;
    assert_eq!(code(post), Some(Code::Unauthenticated), "SendMessage");

    let replay = EventStreamClient::new(chat.clone())
        .replay(replay_request(user))
        .await;
    assert_eq!(code(replay), Some(Code::Unauthenticated), "Replay");

    let hello = pb::GatewayMessage {
        msg: Some(pb::gateway_message::Msg::Hello(pb::Hello {
            gateway_id: "intruder".into(),
            ..Default::default()
        })),
    };
    let attach = EventStreamClient::new(chat)
        .attach(futures::stream::iter([hello]))
        .await;
    assert_eq!(code(attach), Some(Code::Unauthenticated), "Attach");

    let alert = NotificationClient::new(plaintext(addrs.notification))
        .system_alert(as_caller(
            0,
            Role::Service,
            pb::SystemAlertRequest {
                severity: "critical".into(),
                message: "fake".into(),
                affected_services: Vec::new(),
            },
        ))
        .await;
    assert_eq!(code(alert), Some(Code::Unauthenticated), "SystemAlert");
}

/// With the token the same reads work: the history holds the user's
/// messages and `Replay` the events of the user's log.
async fn assert_allowed_with_token(addrs: &Addrs, token: &str, user: i64, dialog_id: i64) {
    let chat = plaintext(addrs.chat);
    let history = ChatClient::new(chat.clone())
        .get_history(with_token(
            as_caller(
                user,
                Role::User,
                pb::GetHistoryRequest {
                    dialog_id,
                    ..Default::default()
                },
            ),
            token,
        ))
        .await
        .expect("GetHistory with the token")
        .into_inner();
    assert!(
        history.messages.len() >= 2,
        "the question and the answer: {history:?}"
    );
    let replay = EventStreamClient::new(chat)
        .replay(with_token(replay_request(user), token))
        .await
        .expect("Replay with the token")
        .into_inner();
    assert!(
        replay
            .deliveries
            .iter()
            .any(|d| d.event.as_ref().is_some_and(|e| e.r#type == "ai_response")),
        "the user's log holds the answer: {replay:?}"
    );
}

/// A real conversation through the gateway, so there is something to read:
/// `user` asks the FAQ question in a new dialog (frame id `reference`, new
/// each time: the id is also the message's idempotency key) and gets the
/// answer. Returns the dialog.
async fn converse(gateway: SocketAddr, user: i64, reference: &str) -> i64 {
    let keys = TokenKeys::new(JWT_SECRET.as_bytes());
    let client_token = keys
        .mint(user, Role::User, None, Duration::from_secs(3600))
        .expect("a client token");
    let (mut client, _) = connect_at(gateway, &client_token, user, Role::User, "").await;
    let (ack, _answer) = client.chat_and_answer(reference, None, FAQ_QUESTION).await;
    client.close().await;
    ack["dialog_id"].as_i64().expect("a dialog id")
}

/// `chatai` with no configuration generates an internal token, writes it to
/// `data/internal-token` (mode 0600) and its parts use it: a call without it
/// is refused (`EventStream/Replay` and `Attach` too), one with it works; a
/// restart keeps the file's token, so tools holding it go on working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_all_in_one_generates_an_internal_token_and_requires_it() {
    let folder = tempfile::tempdir().expect("a folder to run in");
    let addrs = Addrs::new();
    let system = chatai(folder.path(), None, &addrs, &[], "system.log");
    let log = folder.path().join("system.log");
    wait_healthy(addrs.gateway, &log).await;

    let token_path = folder.path().join("data").join("internal-token");
    let token = std::fs::read_to_string(&token_path)
        .expect("data/internal-token is written")
        .trim()
        .to_owned();
    assert_eq!(token.len(), 64, "a 64-hex-digit token: {token:?}");
    assert!(token.chars().all(|c| c.is_ascii_hexdigit()), "{token:?}");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&token_path)
            .expect("the token file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "only the owner may read the token");
    }

    let user = 456;
    let dialog_id = converse(addrs.gateway, user, "m1").await;
    assert_refused_without_token(&addrs, user, dialog_id).await;
    assert_allowed_with_token(&addrs, &token, user, dialog_id).await;
    terminate(system).await;

    // Started again: the same token, still required.
    let system = chatai(folder.path(), None, &addrs, &[], "system-again.log");
    wait_healthy(addrs.gateway, &folder.path().join("system-again.log")).await;
    let kept = std::fs::read_to_string(&token_path).expect("the token file");
    assert_eq!(kept.trim(), token, "a restart keeps the token");
    // The event logs are in memory: a new answer to read back.
    converse(addrs.gateway, user, "m2").await;
    assert_refused_without_token(&addrs, user, dialog_id).await;
    assert_allowed_with_token(&addrs, &token, user, dialog_id).await;
    terminate(system).await;
}

/// Every part started alone with neither an internal token nor TLS exits at
/// once with a message naming the settings; with the development flag a
/// part starts (and serves without a token), with a token it requires it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_alone_refuses_to_start_without_internal_protection() {
    let folder = tempfile::tempdir().expect("a folder to run in");
    let addrs = Addrs::new();
    for part in ["gateway", "chat", "handoff", "presence", "notification"] {
        let log_name = format!("{part}.log");
        let mut child = chatai(folder.path(), Some(part), &addrs, &[], &log_name);
        let status = tokio::time::timeout(START, child.wait())
            .await
            .unwrap_or_else(|_| panic!("chatai {part} exits without a token"))
            .expect("its exit status");
        let log = std::fs::read_to_string(folder.path().join(&log_name)).expect("its log");
        assert!(!status.success(), "chatai {part} refuses to start: {log}");
        for named in [
            "CHATAI_INTERNAL_TOKEN",
            "CHATAI_INTERNAL_TLS_CERT",
            "CHATAI_INSECURE_INTERNAL=1",
        ] {
            assert!(log.contains(named), "chatai {part} names {named}: {log}");
        }
    }

    let stats = |token: Option<&'static str>| {
        let channel = plaintext(addrs.presence);
        async move {
            let request = tonic::Request::new(pb::StatsRequest {});
            let request = match token {
                Some(token) => with_token(request, token),
                None => request,
            };
            EventStreamClient::new(channel).stats(request).await
        }
    };
    let wait_serving = |log: &'static str, token: Option<&'static str>| {
        let log = folder.path().join(log);
        async move {
            let deadline = tokio::time::Instant::now() + START;
            while stats(token).await.is_err() {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "chatai presence does not serve: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };

    let insecure = chatai(
        folder.path(),
        Some("presence"),
        &addrs,
        &[("CHATAI_INSECURE_INTERNAL", "1")],
        "insecure.log",
    );
    wait_serving("insecure.log", None).await;
    terminate(insecure).await;
    let log = std::fs::read_to_string(folder.path().join("insecure.log")).expect("its log");
    assert!(
        log.contains("CHATAI_INSECURE_INTERNAL is set"),
        "a loud warning: {log}"
    );

    let with_a_token = chatai(
        folder.path(),
        Some("presence"),
        &addrs,
        &[("CHATAI_INTERNAL_TOKEN", "part-token")],
        "token.log",
    );
    wait_serving("token.log", Some("part-token")).await;
    assert_eq!(
        stats(None).await.err().map(|status| status.code()),
        Some(Code::Unauthenticated)
    );
    terminate(with_a_token).await;
}

/// A CA and a certificate it signed for `localhost` and 127.0.0.1, usable as
/// server and as client, written as PEM files into `folder`; returns the
/// paths of the certificate, the key and the CA.
fn issue_certificates(folder: &Path, name: &str) -> [String; 3] {
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    };
    let ca_key = KeyPair::generate().expect("a CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("{name} test CA"));
    let ca_cert = ca_params.self_signed(&ca_key).expect("the CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);

    let key = KeyPair::generate().expect("a key");
    let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("certificate parameters");
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.signed_by(&key, &issuer).expect("a certificate");

    let write = |file: &str, pem: String| {
        let path = folder.join(format!("{name}-{file}"));
        std::fs::write(&path, pem).expect("a PEM file");
        path.to_str().expect("a UTF-8 path").to_owned()
    };
    [
        write("cert.pem", cert.pem()),
        write("key.pem", key.serialize_pem()),
        write("ca.pem", ca_cert.pem()),
    ]
}

/// A client of `addr` over TLS trusting `ca`, presenting `identity`.
fn tls_channel(addr: SocketAddr, ca: &str, identity: Option<(&str, &str)>) -> Channel {
    let read = |path: &str| std::fs::read(path).expect("a PEM file");
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)));
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(read(cert), read(key)));
    }
    Endpoint::from_shared(format!("https://{addr}"))
        .expect("a URI")
        .tls_config(tls)
        .expect("a TLS configuration")
        .connect_lazy()
}

/// With `CHATAI_INTERNAL_TLS_*` set the parts speak mutual TLS: the gateway
/// attaches to every service and a user gets the assistant's answer (chat
/// also calls handoff); a client with a certificate from the deployment's CA
/// gets answers, one without a certificate, with one from another CA, or in
/// plain text is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_between_the_parts() {
    let folder = tempfile::tempdir().expect("a folder for certificates");
    let [cert, key, ca] = issue_certificates(folder.path(), "deployment");
    let [other_cert, other_key, _] = issue_certificates(folder.path(), "other");
    let mut options = TestOptions::default();
    options.common.auth = InternalAuth {
        internal_token: None,
        insecure_internal: false,
        tls: InternalTls {
            cert: Some(PemFile::read(&cert).expect("the certificate")),
            key: Some(PemFile::read(&key).expect("the key")),
            ca: Some(PemFile::read(&ca).expect("the CA")),
        },
    };
    // Healthy means the gateway's four event streams are attached, over TLS.
    let app = spawn_app(options).await;

    let user = 456;
    let (mut client, _) = app.connect_user(user).await;
    let (ack, answer) = client.chat_and_answer("m1", None, FAQ_QUESTION).await;
    assert!(ack["dialog_id"].as_i64().is_some(), "{ack}");
    assert_eq!(answer["type"], "ai_response", "{answer}");
    client.close().await;

    let chat: SocketAddr = app.services.chat.to_string().parse().expect("an address");
    let replay = |channel: Channel| async move {
        EventStreamClient::new(channel)
            .replay(replay_request(user))
            .await
    };
    let replayed = replay(tls_channel(chat, &ca, Some((&cert, &key))))
        .await
        .expect("a client with the deployment's certificate is served")
        .into_inner();
    assert!(
        replayed
            .deliveries
            .iter()
            .any(|d| d.event.as_ref().is_some_and(|e| e.r#type == "ai_response")),
        "{replayed:?}"
    );
    assert!(
        replay(tls_channel(chat, &ca, None)).await.is_err(),
        "a client without a certificate is refused"
    );
    assert!(
        replay(tls_channel(chat, &ca, Some((&other_cert, &other_key))))
            .await
            .is_err(),
        "a client with a certificate from another CA is refused"
    );
    assert!(
        replay(plaintext(chat)).await.is_err(),
        "a plain-text client is refused"
    );
    app.stop().await;
}
