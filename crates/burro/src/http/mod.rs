//! The HTTP API under `/api`, plus `/health`.

mod auth;
mod dashboard;
mod error;
mod events;
mod jobs;
mod openapi;

pub use error::ApiError;

use crate::server::Core;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;

/// Builds the API router.
pub fn router(core: Core, body_limit: usize, cors_origins: &[String]) -> Router {
    let router = Router::new()
        .route("/api/jobs", post(jobs::create).get(jobs::list))
        .route("/api/jobs/{id}", get(jobs::get_one))
        .route("/api/jobs/{id}/cancel", post(jobs::cancel))
        .route("/api/jobs/{id}/retry", post(jobs::retry))
        .route("/api/stats", get(jobs::stats))
        .route("/api/nodes", get(jobs::nodes))
        .route("/api/purge", post(jobs::purge))
        .route("/metrics", get(jobs::metrics))
        .route("/api/jobs/{id}/logs", get(jobs::logs))
        .route("/api/jobs/{id}/events", get(events::job_events))
        .route("/api/events", get(events::channel_events))
        .route("/health", get(jobs::health))
        .route("/api/session", post(auth::session))
        .route("/api/openapi.json", get(openapi::document))
        .merge(dashboard::routes())
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(core.clone(), auth::require_token))
        .with_state(core);
    if cors_origins.is_empty() {
        return router;
    }
    let origins: Vec<axum::http::HeaderValue> = cors_origins.iter().filter_map(|origin| origin.parse().ok()).collect();
    let cors = tower_http::cors::CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([axum::http::Method::GET, axum::http::Method::POST])
        .allow_headers([axum::http::header::AUTHORIZATION, axum::http::header::CONTENT_TYPE, axum::http::HeaderName::from_static("last-event-id")]);
    router.layer(cors)
}
