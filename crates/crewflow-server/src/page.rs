//! The web page at `/` (docs/server.md, "The web page"): one self-contained HTML file, its
//! CSS and script inline, that drives the server through its own JSON and SSE routes. It holds
//! no data, so [`tenant_router`](crate::tenant_router) serves it without a key; the page asks
//! for one when the routes answer 401.

use axum::extract::State;
use axum::http::{Method, Uri, header};
use axum::response::{IntoResponse, Response};

use base64::Engine;
use base64::prelude::BASE64_STANDARD;
use crewflow_plot::Picture;
use sha2::{Digest, Sha256};
use std::sync::LazyLock;

use crate::routes::{Shared, no_route};

/// The page, as served.
const PAGE: &str = include_str!("page.html");

/// `GET /`: the page, unless the server was built with `Server::page(false)`.
pub(crate) async fn page(State(app): Shared) -> Response {
    if !app.page {
        return no_route().into_response();
    }
    response()
}

/// The page's response.
pub(crate) fn response() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // Asked again each time, so a new server version's page is used at once.
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CONTENT_SECURITY_POLICY, policy()),
        ],
        PAGE,
    )
        .into_response()
}

/// The page's Content-Security-Policy: nothing but the server's own routes, and no code but
/// the page's own inline style and script and those of the flow pictures it shows (in a frame
/// whose document inherits this policy), each allowed by its SHA-256. An injected `<script>`,
/// inline handler or style attribute does not run; nothing loads from elsewhere.
pub(crate) fn policy() -> &'static str {
    static POLICY: LazyLock<String> = LazyLock::new(|| {
        let plot = Picture::html_inline_code();
        let (scripts, styles) = ([inline(PAGE, "script"), plot.script], [inline(PAGE, "style"), plot.style]);
        format!(
            "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src 'self' data:; \
             frame-src 'self'; base-uri 'none'; form-action 'none'",
            hashes(&scripts),
            hashes(&styles)
        )
    });
    &POLICY
}

/// The text of the first `<tag>` element of `html` (the page has one `<style>` and one `<script>`).
fn inline(html: &str, tag: &str) -> String {
    let open = format!("<{tag}>");
    let start = html.find(&open).map_or(html.len(), |at| at + open.len());
    let end = html[start..].find(&format!("</{tag}>")).map_or(html.len(), |at| start + at);
    html[start..end].to_string()
}

/// `'sha256-…'` for each text.
fn hashes(texts: &[String]) -> String {
    let hash = |text: &String| format!("'sha256-{}'", BASE64_STANDARD.encode(Sha256::digest(text.as_bytes())));
    texts.iter().map(hash).collect::<Vec<_>>().join(" ")
}

/// Whether a request asks for the page (`GET /`): what `tenant_router` serves before it looks
/// for a key.
pub(crate) fn is_page(method: &Method, uri: &Uri) -> bool {
    (method == Method::GET || method == Method::HEAD) && matches!(uri.path(), "/" | "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_allows_the_pages_own_code_by_hash_and_nothing_inline_else() {
        let policy = policy();
        assert!(!policy.contains("unsafe-inline") && !policy.contains("unsafe-eval"), "{policy}");
        let script = inline(PAGE, "script");
        assert!(script.len() > 1000 && script.contains("function h("), "the page's script");
        assert!(policy.contains(&hashes(&[script])), "{policy}");
        assert_eq!((PAGE.matches("<script").count(), PAGE.matches("<style").count()), (1, 1));
        assert!(!PAGE.contains(" style=\""), "an inline style attribute in the page");
    }
}
