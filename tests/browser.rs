//! The browser faces of issue 12 in a real browser: Debian's headless
//! Chromium driven over WebDriver (`chromedriver`, through the `fantoccini`
//! client), against the whole system started in-process. Each browser
//! session is its own Chromium with its own profile, so a user in the widget
//! (`/widget`) and an operator in the console (`/console`) are two separate
//! browser contexts, as two people on two machines would be.
//!
//! Every wait polls the page for a DOM condition, bounded by
//! [`BROWSER_WAIT`]; no assertion is about time. Screenshots go to
//! `target/screenshots/` (two of them are copied into `docs/images/` for
//! the README).
//!
//! `scripts/test` installs `chromium` and `chromium-driver` when missing;
//! without them these tests fail (they are never skipped).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use chatai_kit::identity::Role;
use fantoccini::{Client, ClientBuilder, Locator};
use futures::FutureExt;
use serde_json::{Value, json};

use crate::common::{self, TestApp, TestOptions, WsClient, spawn_app};

/// The browser and its driver, as Debian installs them.
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// How long a test waits for the page to show something: generous, as two
/// browsers share a small machine with the rest of the suite.
const BROWSER_WAIT: Duration = Duration::from_secs(45);

/// The WebDriver key code of Enter.
const ENTER: &str = "\u{e007}";

/// A `chromedriver` process on a free loopback port, killed when dropped.
struct Chromedriver {
    url: String,
    _process: tokio::process::Child,
}

impl Chromedriver {
    /// Starts chromedriver and waits until it answers `GET /status`.
    async fn start() -> Chromedriver {
        let addr = common::free_addr();
        let process = tokio::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={}", addr.port()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|err| {
                panic!("starting {CHROMEDRIVER} (scripts/test installs chromium-driver): {err}")
            });
        let url = format!("http://{addr}");
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + common::WAIT;
        loop {
            if let Ok(response) = http.get(format!("{url}/status")).send().await
                && response.status().is_success()
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver did not answer on {url}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Chromedriver {
            url,
            _process: process,
        }
    }

    /// A new browser session: a headless Chromium of its own (its own
    /// profile: cookies and storage are not shared with other sessions),
    /// with a window of `width` × `height`.
    async fn session(&self, width: u32, height: u32) -> Client {
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("browserName".into(), json!("chrome"));
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    // The tests run as root in a container: no sandbox.
                    "--no-sandbox",
                    "--disable-dev-shm-usage",
                    "--disable-gpu",
                    "--no-first-run",
                    "--disable-extensions",
                    "--disable-background-networking",
                    format!("--window-size={width},{height}"),
                ],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .unwrap_or_else(|err| panic!("a Chromium session through chromedriver: {err}"))
    }
}

/// Runs `scenario`, then closes the browser sessions whatever happened (so
/// no Chromium outlives a failed test), then passes a failure on.
async fn with_browsers<F>(sessions: &[&Client], scenario: F)
where
    F: Future<Output = ()>,
{
    let outcome = AssertUnwindSafe(scenario).catch_unwind().await;
    for session in sessions {
        // A session that already failed may not close cleanly; the driver
        // process is killed anyway.
        let _ = (*session).clone().close().await;
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Evaluates `expression` in the page until `ready` holds for its value;
/// returns that value. Fails with `what` and the page's text if it never
/// does within [`BROWSER_WAIT`].
async fn wait_for(
    browser: &Client,
    what: &str,
    expression: &str,
    ready: impl Fn(&Value) -> bool,
) -> Value {
    let script = format!("return ({expression});");
    let deadline = tokio::time::Instant::now() + BROWSER_WAIT;
    loop {
        let value = browser
            .execute(&script, Vec::new())
            .await
            .unwrap_or(Value::Null);
        if ready(&value) {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            let text = browser
                .execute("return document.body.innerText;", Vec::new())
                .await
                .unwrap_or(Value::Null);
            panic!("waited in vain for {what}: last value {value}; the page says:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `expression` is `true`.
async fn wait_true(browser: &Client, what: &str, expression: &str) {
    wait_for(browser, what, expression, |v| v == &Value::Bool(true)).await;
}

/// The texts of the messages (`li.message`) in `list`, in page order, and
/// their `data-message-id`s.
fn messages_of(list: &str) -> String {
    format!(
        "[...document.querySelectorAll('{list} li.message')].map(li => \
         [li.dataset.messageId || null, li.querySelector('.text').textContent])"
    )
}

/// Waits until the page shows exactly `expected` messages in `list`, in
/// order, each with its own message id (none pending, none twice).
async fn wait_messages(browser: &Client, list: &str, expected: &[&str]) {
    let value = wait_for(
        browser,
        &format!("the messages {expected:?} in {list}"),
        &messages_of(list),
        |v| {
            v.as_array().is_some_and(|items| {
                items.len() == expected.len()
                    && items
                        .iter()
                        .zip(expected)
                        .all(|(item, text)| item[0].is_string() && item[1] == *text)
            })
        },
    )
    .await;
    let mut ids: Vec<&str> = value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| item[0].as_str())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(
        ids.len(),
        expected.len(),
        "a message id shows twice: {value}"
    );
}

/// Types `text` into the element at `css`.
async fn type_into(browser: &Client, css: &str, text: &str) {
    browser
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|err| panic!("no {css} on the page: {err}"))
        .send_keys(text)
        .await
        .unwrap_or_else(|err| panic!("typing into {css}: {err}"));
}

/// Clicks the element at `css`.
async fn click(browser: &Client, css: &str) {
    browser
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|err| panic!("no {css} on the page: {err}"))
        .click()
        .await
        .unwrap_or_else(|err| panic!("clicking {css}: {err}"));
}

/// Writes a screenshot of the page to `target/screenshots/{name}.png`.
async fn screenshot(browser: &Client, name: &str) {
    let folder = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&folder).expect("creating target/screenshots");
    let png = browser.screenshot().await.expect("a screenshot");
    std::fs::write(folder.join(format!("{name}.png")), png).expect("writing the screenshot");
}

/// A token for `id` in `role` named `name`, valid for an hour.
fn token(app: &TestApp, id: i64, role: Role, name: &str) -> String {
    app.keys
        .mint(id, role, Some(name), Duration::from_secs(3600))
        .expect("minting a token")
}

/// Signs in to the console at `app` with `token`, through the sign-in form,
/// and waits until it is connected.
async fn console_sign_in(app: &TestApp, browser: &Client, token: &str) {
    browser
        .goto(&app.http_url("/console"))
        .await
        .expect("opening /console");
    type_into(browser, "#token-input", token).await;
    click(browser, "#token-form button[type=submit]").await;
    wait_true(
        browser,
        "the console connected",
        "document.getElementById('connection').dataset.state === 'open'",
    )
    .await;
}

/// The status the console's team table shows for `operator_id`.
fn roster_status(operator_id: i64) -> String {
    format!(
        "(document.querySelector('#roster tr[data-operator-id=\"{operator_id}\"] .status') || {{}}).textContent"
    )
}

/// A user in the widget and an operator in the console through a whole
/// handoff: the user's place in the queue shows, the operator claims the
/// dialog and sees its transcript, messages go both ways with typing and
/// read receipts shown on the other side, the widget reloads mid-dialog and
/// shows every message once (a reply sent while it reloaded included), the
/// console shows a second operator going away, and the operator completes
/// the dialog.
#[tokio::test]
async fn a_handoff_between_the_widget_and_the_console() {
    // Clients that do not read for a while (the second operator here) are
    // not cut for silence while the browsers work.
    let app = spawn_app(TestOptions::default().heartbeat(25, 600)).await;
    let olga = 7101;
    let oscar = 7102;
    let ann = 7111;
    let olga_token = token(&app, olga, Role::Operator, "Olga");
    let ann_token = token(&app, ann, Role::User, "Ann");
    // A second operator, busy: no handoff goes to him by itself.
    let oscar_token = token(&app, oscar, Role::Operator, "Oscar");
    let (mut oscar_ws, _) =
        common::connect_at(app.gateway_addr, &oscar_token, oscar, Role::Operator, "").await;
    choose(&mut oscar_ws, "busy").await;

    let driver = Chromedriver::start().await;
    let console = driver.session(1366, 820).await;
    let widget = driver.session(420, 720).await;
    with_browsers(
        &[&console, &widget],
        handoff_scenario(&app, &console, &widget, olga_token, ann_token, oscar_ws),
    )
    .await;
    app.stop().await;
}

async fn choose(operator: &mut WsClient, status: &str) {
    let reply = operator
        .request(json!({"type": "set_status", "id": format!("status-{status}"), "status": status}))
        .await;
    assert_eq!(reply["type"], "ack", "{reply}");
}

async fn handoff_scenario(
    app: &TestApp,
    console: &Client,
    widget: &Client,
    olga_token: String,
    ann_token: String,
    mut oscar_ws: WsClient,
) {
    let (olga, oscar) = (7101, 7102);

    // The operator signs in and chooses away, so the user's request waits.
    console_sign_in(app, console, &olga_token).await;
    wait_true(
        console,
        "the team lists the second operator as busy",
        &format!("{} === 'busy'", roster_status(oscar)),
    )
    .await;
    click(console, "#status-toggle label:nth-of-type(3)").await;
    wait_true(
        console,
        "the console shows its operator away",
        &format!(
            "{} === 'away' && document.querySelector('#status-toggle input[value=away]').checked",
            roster_status(olga)
        ),
    )
    .await;

    // The user asks the assistant, then for a person.
    widget
        .goto(&app.http_url(&format!("/widget#token={ann_token}")))
        .await
        .expect("opening /widget");
    wait_true(
        widget,
        "the widget connected",
        "document.getElementById('connection').dataset.state === 'open'",
    )
    .await;
    let question = common::FAQ_QUESTION;
    type_into(widget, "#input", &format!("{question}{ENTER}")).await;
    wait_for(
        widget,
        "the assistant's answer",
        &messages_of("#messages"),
        |v| v.as_array().is_some_and(|items| items.len() == 2),
    )
    .await;
    let answer = widget
        .execute(
            "return document.querySelector('#messages li.from-assistant .text').textContent;",
            Vec::new(),
        )
        .await
        .expect("the assistant's text");
    let answer = answer.as_str().expect("text").to_owned();
    wait_messages(widget, "#messages", &[question, &answer]).await;
    click(widget, "#ask-human").await;
    wait_true(
        widget,
        "the widget shows its place in the queue",
        "!document.getElementById('waiting').hidden && \
         document.getElementById('waiting').textContent.includes('number 1 in the queue')",
    )
    .await;
    screenshot(widget, "widget-queued").await;

    // The console's queue shows the dialog; the operator claims it.
    let dialog_id = wait_for(
        console,
        "the queue shows the waiting dialog",
        "(document.querySelector('#queue tbody tr') || {dataset: {}}).dataset.dialogId",
        Value::is_string,
    )
    .await;
    let dialog_id = dialog_id.as_str().expect("a dialog id").to_owned();
    wait_true(
        console,
        "the queue row shows position 1 and a waiting time",
        "document.querySelector('#queue tbody tr .position').textContent === '1' && \
         /^\\d+s$/.test(document.querySelector('#queue tbody tr .waiting').textContent)",
    )
    .await;
    screenshot(console, "console-queue").await;
    click(
        console,
        &format!("#queue tr[data-dialog-id=\"{dialog_id}\"] button.claim"),
    )
    .await;
    wait_true(
        console,
        "the claimed dialog leaves the queue",
        "document.querySelectorAll('#queue tbody tr').length === 0",
    )
    .await;
    // The transcript (or the history) shows what was said before.
    wait_messages(console, "#messages", &[question, &answer]).await;
    wait_true(
        widget,
        "the widget names the operator",
        "document.getElementById('who').textContent === 'You are talking to Olga' && \
         document.getElementById('waiting').hidden",
    )
    .await;

    // The user types: the console shows it, then the message.
    let from_ann = "I tried that, the mail never came";
    type_into(widget, "#input", "I tried that").await;
    wait_true(
        console,
        "the console shows the user typing",
        "!document.getElementById('typing').hidden",
    )
    .await;
    type_into(widget, "#input", &format!(", the mail never came{ENTER}")).await;
    wait_messages(console, "#messages", &[question, &answer, from_ann]).await;
    // The operator has the dialog open: the user sees it read.
    wait_true(
        widget,
        "the widget shows the message seen",
        "([...document.querySelectorAll('#messages li.from-user')].pop().querySelector('.receipt') || {}).textContent === 'Seen'",
    )
    .await;

    // The operator types: the widget shows it, then the reply.
    let from_olga = "Hi Ann, I am Olga. Let me look at your account.";
    type_into(console, "#reply", "Hi Ann,").await;
    wait_true(
        widget,
        "the widget shows the operator typing",
        "!document.getElementById('typing').hidden && \
         document.getElementById('typing').textContent === 'Olga is typing…'",
    )
    .await;
    type_into(
        console,
        "#reply",
        &format!(" I am Olga. Let me look at your account.{ENTER}"),
    )
    .await;
    wait_messages(
        widget,
        "#messages",
        &[question, &answer, from_ann, from_olga],
    )
    .await;
    wait_messages(
        console,
        "#messages",
        &[question, &answer, from_ann, from_olga],
    )
    .await;
    wait_true(
        console,
        "the console shows the reply read",
        "(document.querySelector('#messages li.from-operator .receipt') || {}).textContent === 'Read'",
    )
    .await;

    // The widget reloads; a reply sent meanwhile is not lost, and nothing
    // shows twice.
    widget.refresh().await.expect("reloading the widget");
    let while_away = "I have sent you a new link.";
    type_into(console, "#reply", &format!("{while_away}{ENTER}")).await;
    wait_messages(
        widget,
        "#messages",
        &[question, &answer, from_ann, from_olga, while_away],
    )
    .await;
    wait_true(
        widget,
        "the reloaded widget still names the operator",
        "document.getElementById('who').textContent === 'You are talking to Olga'",
    )
    .await;
    let after = "Got it, thanks!";
    type_into(widget, "#input", &format!("{after}{ENTER}")).await;
    let last = "Glad to help.";
    wait_messages(
        console,
        "#messages",
        &[question, &answer, from_ann, from_olga, while_away, after],
    )
    .await;
    type_into(console, "#reply", &format!("{last}{ENTER}")).await;
    let all = [
        question, &answer, from_ann, from_olga, while_away, after, last,
    ];
    wait_messages(widget, "#messages", &all).await;
    wait_messages(console, "#messages", &all).await;
    screenshot(widget, "widget").await;

    // The second operator goes away: the console's team shows it.
    choose(&mut oscar_ws, "away").await;
    wait_true(
        console,
        "the team shows the second operator away",
        &format!("{} === 'away'", roster_status(oscar)),
    )
    .await;
    screenshot(console, "console").await;

    // The operator completes the dialog; the user is told, and the
    // assistant answers again.
    type_into(console, "#resolution", "sent a new reset link").await;
    click(console, "#complete-form button[type=submit]").await;
    wait_true(
        console,
        "the console shows the dialog completed",
        "!document.getElementById('ended').hidden && \
         document.getElementById('ended').textContent.startsWith('Completed: sent a new reset link')",
    )
    .await;
    wait_true(
        widget,
        "the widget tells the user the operator closed the conversation",
        "document.getElementById('who').textContent === 'Assistant' && \
         [...document.querySelectorAll('#messages li.note')].some(n => \
           n.textContent.startsWith('Olga closed the conversation: sent a new reset link'))",
    )
    .await;
    wait_messages(widget, "#messages", &all).await;
    oscar_ws.close().await;
}

/// An admin in the console sees each analytics metric charted with its
/// current value, and sends a system alert with the form: a connected user
/// gets it as a `system_alert`, and the console shows it too.
#[tokio::test]
async fn the_admin_console_charts_the_analytics_and_sends_an_alert() {
    let mut options = TestOptions::default();
    options.notification.analytics_interval_secs = 1;
    let app = spawn_app(options).await;
    let (mut user, _) = app.connect_user(7211).await;
    let admin_token = token(&app, 7201, Role::Admin, "Ada");
    let driver = Chromedriver::start().await;
    let console = driver.session(1366, 820).await;
    with_browsers(&[&console], async {
        console_sign_in(&app, &console, &admin_token).await;
        wait_true(
            &console,
            "a chart of each metric, with its value",
            "['active_connections', 'active_users', 'online_operators', 'messages_per_minute']\
               .every(m => { const f = document.querySelector(`figure[data-metric=\"${m}\"]`); \
                 return f && /^\\d+$/.test(f.querySelector('.value').textContent) && f.querySelector('svg polyline'); })",
        )
        .await;
        // Two connections: the user's and the admin's console.
        wait_true(
            &console,
            "the connections chart counts the user and the console",
            "document.querySelector('figure[data-metric=\"active_connections\"] .value').textContent === '2'",
        )
        .await;
        type_into(&console, "#alert-message", "Maintenance at 22:00 UTC").await;
        console
            .find(Locator::Css("#alert-severity"))
            .await
            .expect("the severity list")
            .select_by_value("warning")
            .await
            .expect("choosing warning");
        click(&console, "#alert-form input[value=chat]").await;
        click(&console, "#alert-form button[type=submit]").await;
        let alert = user.next_of("system_alert").await;
        assert_eq!(alert["message"], "Maintenance at 22:00 UTC", "{alert}");
        assert_eq!(alert["severity"], "warning", "{alert}");
        assert_eq!(alert["affected_services"], json!(["chat"]), "{alert}");
        wait_true(
            &console,
            "the console shows the alert and that it was sent",
            "document.querySelector('#alerts .alert-warning').textContent.startsWith('WARNING: Maintenance at 22:00 UTC (chat)') && \
             document.getElementById('alert-result').textContent.startsWith('Sent')",
        )
        .await;
        screenshot(&console, "console-admin").await;
    })
    .await;
    app.stop().await;
}

/// The demo page embeds the widget (`embed.js`, an iframe) with a token
/// from the development endpoint, and the visitor talks to the assistant;
/// the console signs an operator in with the development-token form.
#[tokio::test]
async fn the_demo_page_and_the_development_sign_in() {
    // The development secret: the development token endpoint answers.
    let mut options = TestOptions::default();
    options.gateway.jwt_secret = None;
    let app = spawn_app(options).await;
    let driver = Chromedriver::start().await;
    let browser = driver.session(1100, 820).await;
    with_browsers(&[&browser], async {
        browser
            .goto(&app.http_url("/demo"))
            .await
            .expect("opening /demo");
        browser
            .wait()
            .at_most(BROWSER_WAIT)
            .for_element(Locator::Css("iframe"))
            .await
            .expect("the widget's iframe");
        browser.enter_frame(0).await.expect("entering the widget");
        wait_true(
            &browser,
            "the embedded widget connected",
            "document.getElementById('connection').dataset.state === 'open' && \
             document.getElementById('title').textContent === 'Acme support'",
        )
        .await;
        type_into(
            &browser,
            "#input",
            &format!("{}{ENTER}", common::FAQ_QUESTION),
        )
        .await;
        wait_for(
            &browser,
            "the assistant's answer in the embedded widget",
            &format!("{}.map(m => m[1])", messages_of("#messages")),
            |v| {
                v.as_array().is_some_and(|items| {
                    items.len() == 2 && items[0] == common::FAQ_QUESTION && items[1].is_string()
                })
            },
        )
        .await;
        browser
            .enter_parent_frame()
            .await
            .expect("back to the page");
        screenshot(&browser, "demo").await;

        browser
            .goto(&app.http_url("/console"))
            .await
            .expect("opening /console");
        wait_true(
            &browser,
            "the console offers the development token",
            "!document.getElementById('dev-form').hidden",
        )
        .await;
        click(&browser, "#dev-form button[type=submit]").await;
        wait_true(
            &browser,
            "the console connected with a development token as Olga",
            "document.getElementById('connection').dataset.state === 'open' && \
             document.getElementById('me-name').textContent === 'Olga (operator #7)'",
        )
        .await;
        wait_true(
            &browser,
            "the team lists the operator",
            &format!("{} === 'available'", roster_status(7)),
        )
        .await;
    })
    .await;
    app.stop().await;
}
