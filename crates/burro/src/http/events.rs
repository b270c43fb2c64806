//! Server-Sent Events endpoints.

use super::error::ApiError;
use crate::jobs::JobView;
use crate::server::Core;
use crate::sse::SseMessage;
use crate::store::JobStatus;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::json;
use std::sync::Arc;

/// Id of the last event of a finished job's stream. A client that
/// reconnects with it gets 204, which makes a browser's EventSource stop.
pub const FINAL_EVENT_ID: &str = "final";

/// Short event names that end a job's stream.
const TERMINAL_EVENTS: [&str; 3] = ["completed", "failed", "cancelled"];

fn last_event_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .filter(|v| !v.is_empty())
}

/// Builds the final event of a finished job from its stored state.
fn final_message(job: &JobView) -> Arc<SseMessage> {
    let (event, data) = match job.status {
        JobStatus::Completed => ("completed", json!({"jobId": job.id, "name": job.name, "result": job.result})),
        JobStatus::Failed => ("failed", json!({"jobId": job.id, "name": job.name, "error": job.error, "stack": job.stack})),
        _ => ("cancelled", json!({"jobId": job.id, "name": job.name})),
    };
    Arc::new(SseMessage::new(Some(FINAL_EVENT_ID.into()), event, data.to_string()))
}

/// `GET /api/jobs/{id}/events`: a `job` snapshot, then the job's events; the
/// stream ends after the terminal event, whose id is `final`.
pub(crate) async fn job_events(State(core): State<Core>, Path(id): Path<String>, headers: HeaderMap) -> Result<Response, ApiError> {
    let last_id = last_event_id(&headers);
    let job = core.jobs.get(&id).await.map_err(ApiError::internal)?.ok_or_else(|| ApiError::job_not_found(&id))?;
    if job.status.is_finished() {
        return Ok(finished_response(&core, &job, last_id.as_deref()));
    }

    let replay_from = last_id.as_deref().filter(|v| *v != FINAL_EVENT_ID);
    let (_client, stream) = core.sse.add_client(&[format!("job:{id}")], replay_from);
    // The job may have finished between the first read and the subscription.
    let job = core.jobs.get(&id).await.map_err(ApiError::internal)?.ok_or_else(|| ApiError::job_not_found(&id))?;
    if job.status.is_finished() {
        return Ok(finished_response(&core, &job, last_id.as_deref()));
    }

    let snapshot = Arc::new(SseMessage::new(None, "job", serde_json::to_string(&job).unwrap_or_default()));
    let events = futures::stream::unfold((stream, false), |(mut stream, done)| async move {
        if done {
            return None;
        }
        let message = stream.next().await?;
        if TERMINAL_EVENTS.contains(&message.event.as_str()) {
            let last = Arc::new(SseMessage::new(Some(FINAL_EVENT_ID.into()), &message.event, message.data.clone()));
            return Some((last, (stream, true)));
        }
        Some((message, (stream, false)))
    });
    let stream = futures::stream::once(async move { snapshot }).chain(events);
    Ok(core.sse.response(stream))
}

fn finished_response(core: &Core, job: &JobView, last_id: Option<&str>) -> Response {
    if last_id == Some(FINAL_EVENT_ID) {
        return StatusCode::NO_CONTENT.into_response();
    }
    let message = final_message(job);
    core.sse.response(futures::stream::once(async move { message }))
}

/// `GET /api/events?channel=jobs&channel=job:ID`: any channels (default
/// `jobs`), replaying missed events after `Last-Event-ID`.
pub(crate) async fn channel_events(
    State(core): State<Core>,
    params: Result<Query<Vec<(String, String)>>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let mut channels = Vec::new();
    let Query(params) = params.map_err(super::error::query_rejection)?;
    for (key, value) in params {
        match key.as_str() {
            "channel" => channels.extend(value.split(',').map(str::trim).filter(|c| !c.is_empty()).map(str::to_string)),
            // Checked by the API token middleware.
            "token" => {}
            other => {
                return Err(ApiError::bad_request("unknown_parameter", format!("unknown query parameter {other:?}; expected channel")))
            }
        }
    }
    if channels.is_empty() {
        channels.push("jobs".into());
    }
    if let Some(bad) = channels.iter().find(|c| c.len() > 200 || c.chars().any(char::is_control)) {
        return Err(ApiError::bad_request("invalid_channel", format!("invalid channel {bad:?}: at most 200 bytes, no control characters")));
    }
    let last_id = last_event_id(&headers);
    let (_client, stream) = core.sse.add_client(&channels, last_id.as_deref());
    Ok(core.sse.response(stream))
}
