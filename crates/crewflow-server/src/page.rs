//! The web page at `/` (docs/server.md, "The web page"): one self-contained HTML file, its
//! CSS and script inline, that drives the server through its own JSON and SSE routes. It holds
//! no data, so [`tenant_router`](crate::tenant_router) serves it without a key; the page asks
//! for one when the routes answer 401.

use axum::extract::State;
use axum::http::{Method, Uri, header};
use axum::response::{IntoResponse, Response};

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
        ],
        PAGE,
    )
        .into_response()
}

/// Whether a request asks for the page (`GET /`): what `tenant_router` serves before it looks
/// for a key.
pub(crate) fn is_page(method: &Method, uri: &Uri) -> bool {
    (method == Method::GET || method == Method::HEAD) && matches!(uri.path(), "/" | "")
}
