//! The web client's files, and the security headers every response carries.
//!
//! Only the client's own pages, scripts, styles and icons are served: a file at the top of
//! the web client's directory whose name ends in `.html`, `.js`, `.css` or `.svg`. Its README,
//! its tests and anything else in the directory stay private. The test hooks
//! (`testhooks.js`: synthetic media, a signaling-address override, page introspection) are
//! served only by a server started in test mode, so a link to a production server cannot
//! switch them on.

use std::path::PathBuf;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tower_http::services::ServeDir;

/// The test hooks' file: absent unless the server runs in test mode.
pub const TEST_HOOKS_FILE: &str = "testhooks.js";

/// The Content-Security-Policy of every response. Scripts, styles, workers and connections
/// (the signaling WebSocket included: `'self'` covers `wss:` to the same host) come from this
/// server only, so an injected script could neither run nor send a join token elsewhere.
/// `blob:` serves the recordings the organizer page downloads and plays; no page may be framed.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; \
     connect-src 'self'; worker-src 'self'; object-src 'none'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

/// The headers added to every response, pages and API alike.
const SECURITY_HEADERS: &[(HeaderName, &str)] = &[
    (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
    // A year; the server only ever speaks HTTPS.
    (header::STRICT_TRANSPORT_SECURITY, "max-age=31536000"),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    // Join links carry their token in the fragment, which is never sent; nothing else of a
    // page's address needs to reach another site either.
    (header::REFERRER_POLICY, "no-referrer"),
    // For browsers that predate `frame-ancestors`.
    (header::X_FRAME_OPTIONS, "DENY"),
];

/// Adds [`SECURITY_HEADERS`] to every response of `router`.
pub fn with_security_headers<S: Clone + Send + Sync + 'static>(router: Router<S>) -> Router<S> {
    router.layer(middleware::from_fn(security_headers))
}

async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        headers.insert(name.clone(), HeaderValue::from_static(value));
    }
    response
}

/// Serves the web client from `dir`: only what [`servable`] allows, everything else 404.
pub fn client_files(dir: PathBuf, test_hooks: bool) -> Router {
    Router::new()
        .fallback_service(ServeDir::new(dir))
        .layer(middleware::from_fn(move |request: Request, next: Next| {
            let allowed = servable(request.uri().path(), test_hooks);
            async move {
                if allowed {
                    next.run(request).await
                } else {
                    (StatusCode::NOT_FOUND, Body::empty()).into_response()
                }
            }
        }))
}

/// Whether `path` names one of the client's own files: `/` (its index page) or a file at the
/// top of its directory with a web extension and a plain name. Test hooks only in test mode.
pub fn servable(path: &str, test_hooks: bool) -> bool {
    if path == "/" {
        return true;
    }
    let Some(name) = path.strip_prefix('/') else {
        return false;
    };
    let plain = !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    let web = [".html", ".js", ".css", ".svg"]
        .iter()
        .any(|ext| name.ends_with(ext));
    plain && web && (test_hooks || name != TEST_HOOKS_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_clients_own_files_are_servable() {
        for path in ["/", "/index.html", "/app.js", "/style.css", "/favicon.svg"] {
            assert!(servable(path, false), "{path}");
        }
        for path in [
            "/README.md",
            "/tests/harness.mjs",
            "/tests",
            "/../Cargo.toml",
            "/%2e%2e/x.js",
            "/.hidden.js",
            "/package.json",
            "/testhooks.js",
            "",
            "//etc/passwd.js",
        ] {
            assert!(!servable(path, false), "{path}");
        }
        assert!(servable("/testhooks.js", true));
    }
}
