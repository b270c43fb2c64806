//! The OpenAPI document of the HTTP API, served at `/api/openapi.json`.

use axum::response::{IntoResponse, Response};

/// The document, kept beside this file as JSON.
const DOCUMENT: &str = include_str!("openapi.json");

/// `GET /api/openapi.json`.
pub(crate) async fn document() -> Response {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], DOCUMENT).into_response()
}
