//! The web dashboard, served at `/` from files embedded in the binary.
//!
//! The page is plain HTML, CSS and JavaScript under `web/` at the root of the
//! repository. It reads the JSON API and the SSE streams like any other
//! client, so it needs no state of its own on the server.

use crate::server::Core;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

const INDEX_HTML: &str = include_str!("../../../../web/index.html");
const APP_JS: &str = include_str!("../../../../web/app.js");
const STYLE_CSS: &str = include_str!("../../../../web/style.css");

/// Routes of the dashboard.
pub(crate) fn routes() -> Router<Core> {
    Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }))
        .route("/ui/app.js", get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }))
        .route("/ui/style.css", get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }))
}

/// Builds the response for an embedded file. `no-cache` makes a browser
/// check with the server before reusing its copy, so after an upgrade it
/// loads the page of the new binary.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [(CONTENT_TYPE, content_type), (CACHE_CONTROL, "no-cache"), (X_CONTENT_TYPE_OPTIONS, "nosniff")],
        body,
    )
        .into_response()
}
