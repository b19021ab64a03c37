//! The browser assets: the repository's `web/` folder (the JavaScript
//! client, the operator console, the chat widget, the demo page) served by
//! the gateway itself — no separate web server, no build step.
//!
//! The files are part of the binary (`rust-embed`): embedded at compile time
//! in release builds; in debug builds read at run time from the source
//! folder, found by its absolute path (so an edited page shows on reload and
//! the working directory does not matter). What a browser has no use for is
//! left out: `node_modules/`, the Node tests (`test/`) and `package*.json`.
//!
//! Routes (in [`crate::http`]): `/web/{path}` for any file, and the pages
//! `/console`, `/widget`, `/demo`. Each answer carries its content type, an
//! `ETag` (the file's SHA-256), `Cache-Control: no-cache` (names are stable,
//! so a browser revalidates: a `304` while nothing changed, the new file
//! after an upgrade), and `Access-Control-Allow-Origin: *` so a site
//! embedding the widget may import `/web/chatai.js` as a module (the files
//! are public; the APIs behind them have their own origin checks).

use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rust_embed::RustEmbed;

/// The `web/` folder, less what a browser never asks for.
#[derive(RustEmbed)]
#[folder = "../web/"]
#[exclude = "node_modules/*"]
#[exclude = "test/*"]
#[exclude = "package.json"]
#[exclude = "package-lock.json"]
struct Assets;

/// `GET /web/{path}`: the file at `path` under `web/`; a folder's
/// `index.html` for a path ending in `/`.
pub async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    let path = if path.is_empty() || path.ends_with('/') {
        format!("{path}index.html")
    } else {
        path
    };
    serve(&path, &headers)
}

/// `GET /console`: the operator console.
pub async fn console(headers: HeaderMap) -> Response {
    serve("console/index.html", &headers)
}

/// `GET /widget`: the chat widget.
pub async fn widget(headers: HeaderMap) -> Response {
    serve("widget/index.html", &headers)
}

/// `GET /demo`: the demo page embedding the widget.
pub async fn demo(headers: HeaderMap) -> Response {
    serve("demo.html", &headers)
}

/// The file at `path` (relative to `web/`), or 404; 304 when the client's
/// `If-None-Match` names the current version.
fn serve(path: &str, request: &HeaderMap) -> Response {
    // `..` never reaches the folder's parent: rust-embed only knows the
    // files it listed; this keeps such paths out of its lookup altogether.
    if path.split('/').any(|part| part == "..") {
        return not_found();
    }
    let Some(file) = Assets::get(path) else {
        return not_found();
    };
    let etag = format!(
        "\"{}\"",
        URL_SAFE_NO_PAD.encode(file.metadata.sha256_hash())
    );
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if matches_etag(request, &etag) {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    if let Ok(value) = HeaderValue::from_str(&content_type(file.metadata.mimetype())) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    (StatusCode::OK, headers, file.data.into_owned()).into_response()
}

/// Whether `If-None-Match` lists `etag` (or is `*`).
fn matches_etag(request: &HeaderMap, etag: &str) -> bool {
    request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|tag| tag.trim().trim_start_matches("W/"))
        .any(|tag| tag == etag || tag == "*")
}

/// The `Content-Type` for a guessed MIME type: text in UTF-8, as the files are.
fn content_type(mime: &str) -> String {
    let textual = mime.starts_with("text/")
        || matches!(
            mime,
            "application/javascript" | "application/json" | "image/svg+xml"
        );
    if textual && !mime.contains("charset") {
        format!("{mime}; charset=utf-8")
    } else {
        mime.to_owned()
    }
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "no such file").into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The client is there, with its type; what a browser has no use for is not.
    #[test]
    fn the_folder_is_served_less_node_files() {
        let client = Assets::get("chatai.js").expect("web/chatai.js is embedded");
        assert!(content_type(client.metadata.mimetype()).contains("javascript"));
        for hidden in [
            "package.json",
            "package-lock.json",
            "test/support.mjs",
            "node_modules/ws/package.json",
        ] {
            assert!(Assets::get(hidden).is_none(), "{hidden} is served");
        }
    }

    /// A tag in a list, a weak tag and `*` match; another tag does not.
    #[test]
    fn if_none_match_is_read_as_a_list() {
        let with = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::IF_NONE_MATCH, HeaderValue::from_static(value));
            headers
        };
        assert!(matches_etag(&with("\"a\", \"b\""), "\"b\""));
        assert!(matches_etag(&with("W/\"b\""), "\"b\""));
        assert!(matches_etag(&with("*"), "\"b\""));
        assert!(!matches_etag(&with("\"a\""), "\"b\""));
        assert!(!matches_etag(&HeaderMap::new(), "\"b\""));
    }

    /// Text types say UTF-8; others are left alone.
    #[test]
    fn text_types_carry_the_charset() {
        assert_eq!(content_type("text/html"), "text/html; charset=utf-8");
        assert_eq!(
            content_type("text/javascript"),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(content_type("image/png"), "image/png");
    }
}
