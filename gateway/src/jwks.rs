//! The identity provider's keys (`CHATAI_JWKS_URL`): one task owns the
//! fetching — at start, every `CHATAI_JWKS_REFRESH_SECS`, and when a token
//! names a key the set does not hold, at most once per
//! `CHATAI_JWKS_MIN_REFRESH_SECS` (a flood of made-up `kid`s costs the
//! provider one request) — and publishes each set it reads. [`Jwks`] is the
//! handle connections verify with.
//!
//! A fetch that fails (the provider down, a timeout, an error status, a
//! document that is not one) keeps the keys already held: nobody is logged
//! out because the provider blinked. It is tried again sooner (1 s, doubling
//! up to the refresh period). Until the first set arrives, every token names
//! an unknown key and the gateway reports itself unhealthy.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chatai_tokens::{Claims, Expected, JwksKeys, TokenError};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long one fetch of the document may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest document read (real ones are a few KiB).
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// Tokens with an unknown key waiting for the task's answer; more are
/// refused at once (the set is being refreshed, or was just now).
const REFRESH_QUEUE: usize = 64;

/// The first retry after a failed fetch; doubles up to the refresh period.
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// A JWKS setting the gateway cannot start with.
#[derive(Debug, thiserror::Error)]
pub enum JwksConfigError {
    #[error("CHATAI_JWKS_URL {url:?} is not an http(s) URL")]
    Url { url: String },
    #[error("cannot build the JWKS HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// Where the keys come from and how often.
#[derive(Debug, Clone)]
pub struct JwksSettings {
    pub url: String,
    /// `iss` and `aud` every token must carry.
    pub expected: Expected,
    /// Period of the regular fetch.
    pub refresh_every: Duration,
    /// Least time between two fetches asked for by unknown keys.
    pub min_refresh: Duration,
}

/// The handle: verifies tokens with the current set, asking the task for a
/// fresh one when a token names an unknown key.
#[derive(Clone)]
pub struct Jwks {
    keys: watch::Receiver<Arc<JwksKeys>>,
    refresh: mpsc::Sender<Refresh>,
}

/// A token named key `kid`, which the set did not hold: fetch (if allowed)
/// and say when done.
struct Refresh {
    kid: String,
    done: oneshot::Sender<()>,
}

impl Jwks {
    /// The handle, and the task that fetches (to run until `stop`).
    pub fn start(
        settings: JwksSettings,
        stop: CancellationToken,
    ) -> Result<(Jwks, impl Future<Output = ()> + Send + 'static), JwksConfigError> {
        let url = reqwest::Url::parse(&settings.url)
            .ok()
            .filter(|url| matches!(url.scheme(), "http" | "https"))
            .ok_or_else(|| JwksConfigError::Url {
                url: settings.url.clone(),
            })?;
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()?;
        let (publish, keys) = watch::channel(Arc::new(JwksKeys::empty()));
        let (refresh, requests) = mpsc::channel(REFRESH_QUEUE);
        let fetcher = Fetcher {
            client,
            url,
            expected: settings.expected.clone(),
        };
        let task = run(fetcher, settings, publish, requests, stop);
        Ok((Jwks { keys, refresh }, task))
    }

    /// Whether a set with at least one key has been read.
    pub fn loaded(&self) -> bool {
        !self.keys.borrow().is_empty()
    }

    /// Verifies an identity provider's token; one naming an unknown key
    /// waits for a refresh (or the answer that none is allowed yet) and is
    /// tried again.
    pub async fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let current = self.keys.borrow().clone();
        let kid = match current.verify(token) {
            Err(TokenError::UnknownKey(kid)) => kid,
            verdict => return verdict,
        };
        let (done, refreshed) = oneshot::channel();
        let asked = self.refresh.try_send(Refresh {
            kid: kid.clone(),
            done,
        });
        if asked.is_err() {
            return Err(TokenError::UnknownKey(kid));
        }
        // Answered within one fetch's timeout; dropped on shutdown.
        let _ = refreshed.await;
        let current = self.keys.borrow().clone();
        current.verify(token)
    }
}

/// The HTTP side: one GET of the document.
struct Fetcher {
    client: reqwest::Client,
    url: reqwest::Url,
    expected: Expected,
}

/// Why a fetch brought no keys.
#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error(transparent)]
    Http(#[from] reqwest::Error),
    #[error("the document is larger than {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge,
    #[error(transparent)]
    Document(#[from] chatai_tokens::JwksError),
}

impl Fetcher {
    async fn fetch(&self) -> Result<JwksKeys, FetchError> {
        let mut response = self
            .client
            .get(self.url.clone())
            .header(http::header::ACCEPT, "application/json")
            .send()
            .await?
            .error_for_status()?;
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(FetchError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        let (keys, skipped) = JwksKeys::from_json(&body, &self.expected)?;
        for key in skipped {
            tracing::warn!(kid = ?key.kid, reason = key.reason, "JWKS key not used");
        }
        Ok(keys)
    }
}

/// The task: fetches at start and on schedule, answers refresh requests,
/// publishes every set read, until `stop`.
async fn run(
    fetcher: Fetcher,
    settings: JwksSettings,
    publish: watch::Sender<Arc<JwksKeys>>,
    mut requests: mpsc::Receiver<Refresh>,
    stop: CancellationToken,
) {
    let mut next_fetch = Instant::now();
    let mut retry = FIRST_RETRY;
    let mut last_asked: Option<Instant> = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep_until(next_fetch) => {
                let fetched = tokio::select! {
                    () = stop.cancelled() => break,
                    fetched = refresh(&fetcher, &publish, "scheduled") => fetched,
                };
                next_fetch = if fetched {
                    retry = FIRST_RETRY;
                    Instant::now() + settings.refresh_every
                } else {
                    let wait = retry.min(settings.refresh_every);
                    retry = retry.saturating_mul(2);
                    Instant::now() + wait
                };
            }
            Some(request) = requests.recv() => {
                let known = publish.borrow().contains(&request.kid);
                let allowed = last_asked.is_none_or(|at| at.elapsed() >= settings.min_refresh);
                if !known && allowed {
                    last_asked = Some(Instant::now());
                    tracing::info!(kid = %request.kid, "token names an unknown key: fetching the JWKS");
                    let fetched = tokio::select! {
                        () = stop.cancelled() => break,
                        fetched = refresh(&fetcher, &publish, "unknown key") => fetched,
                    };
                    if fetched {
                        retry = FIRST_RETRY;
                        next_fetch = Instant::now() + settings.refresh_every;
                    }
                } else if !known {
                    tracing::debug!(kid = %request.kid, "unknown key; the JWKS was fetched for one a moment ago");
                }
                let _ = request.done.send(());
            }
        }
    }
}

/// One fetch; on success the set is published. Says whether it succeeded.
async fn refresh(fetcher: &Fetcher, publish: &watch::Sender<Arc<JwksKeys>>, why: &str) -> bool {
    match fetcher.fetch().await {
        Ok(keys) => {
            tracing::info!(keys = keys.len(), why, "JWKS loaded");
            if keys.is_empty() {
                tracing::warn!(
                    "the JWKS holds no key this gateway can use: every token is refused"
                );
            }
            publish.send_replace(Arc::new(keys));
            true
        }
        Err(err) => {
            let held = publish.borrow().len();
            tracing::warn!(cause = %err, url = %fetcher.url, held, why, "cannot fetch the JWKS; keeping the keys held");
            false
        }
    }
}
