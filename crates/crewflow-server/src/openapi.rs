//! The OpenAPI document (`GET /openapi.json`), written by hand and checked by the tests
//! against the router's own route table (every route documented, nothing else).

use axum::http::header;
use axum::response::IntoResponse;

/// The document, as served.
const DOCUMENT: &str = include_str!("openapi.json");

pub(crate) async fn document() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT)
}
