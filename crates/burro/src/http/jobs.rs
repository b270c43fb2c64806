//! Job endpoints.

use super::error::{json_rejection, ApiError};
use crate::clock::{now_ms, parse_time};
use crate::config::parse_duration;
use crate::jobs::{CancelResult, EnqueueOptions, JobsError};
use crate::server::Core;
use crate::store::{JobStatus, ListQuery};
use axum::extract::rejection::JsonRejection;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};
use std::time::Duration;

const CREATE_FIELDS: &str = "name, data, maxAttempts, runAt, timeout";

/// Largest `timeout` in milliseconds, the same bound as a duration string.
/// The store keeps milliseconds as a signed 64-bit integer, so larger values
/// would not survive the round trip.
const MAX_TIMEOUT_MS: u64 = 1_000_000_000_000_000;

fn jobs_error(err: JobsError) -> ApiError {
    match err {
        JobsError::UnknownJob { .. } => ApiError::bad_request("unknown_job", err.to_string()),
        JobsError::InvalidName(_) => ApiError::bad_request("invalid_name", err.to_string()),
        JobsError::InvalidOption(_) => ApiError::bad_request("invalid_option", err.to_string()),
        JobsError::NotFound(id) => ApiError::job_not_found(&id),
        JobsError::NotRetryable(_) => ApiError::new(StatusCode::CONFLICT, "not_retryable", err.to_string()),
        JobsError::AlreadyRegistered(_) | JobsError::Store(_) => ApiError::internal(err),
    }
}

/// `POST /api/jobs` with `{name, data, maxAttempts?, runAt?, timeout?}`.
pub(crate) async fn create(State(core): State<Core>, body: Result<Json<Value>, JsonRejection>) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(json_rejection)?;
    let Value::Object(mut fields) = body else {
        return Err(ApiError::bad_request("invalid_body", format!("expected a JSON object with {CREATE_FIELDS}")));
    };
    if let Some(unknown) = fields.keys().find(|k| !CREATE_FIELDS.split(", ").any(|f| f == k.as_str())) {
        return Err(ApiError::bad_request("unknown_field", format!("unknown field {unknown:?}; expected {CREATE_FIELDS}")));
    }
    let name = match fields.remove("name") {
        Some(Value::String(name)) => name,
        None | Some(Value::Null) => return Err(ApiError::bad_request("missing_field", "missing field \"name\": the registered job name")),
        Some(other) => return Err(ApiError::bad_request("invalid_field", format!("field \"name\" must be a string, found {other}"))),
    };
    let data = fields.remove("data").unwrap_or(Value::Null);
    let options = enqueue_options(&mut fields)?;
    let id = core.jobs.enqueue(&name, data, options).await.map_err(jobs_error)?;
    Ok((StatusCode::CREATED, Json(json!({"id": id}))).into_response())
}

fn enqueue_options(fields: &mut Map<String, Value>) -> Result<EnqueueOptions, ApiError> {
    let mut options = EnqueueOptions::default();
    match fields.remove("maxAttempts") {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) => match n.as_u64().filter(|v| (1..=1000).contains(v)) {
            Some(v) => options.max_attempts = Some(v as u32),
            None => return Err(ApiError::bad_request("invalid_field", format!("field \"maxAttempts\" is {n}: expected an integer from 1 to 1000"))),
        },
        Some(other) => return Err(ApiError::bad_request("invalid_field", format!("field \"maxAttempts\" must be an integer, found {other}"))),
    }
    match fields.remove("runAt") {
        None | Some(Value::Null) => {}
        Some(Value::String(text)) => {
            let at = parse_time(&text, now_ms()).map_err(|e| ApiError::bad_request("invalid_run_at", format!("field \"runAt\": {e}")))?;
            options.run_at_ms = Some(at);
        }
        Some(other) => {
            return Err(ApiError::bad_request("invalid_run_at", format!("field \"runAt\" must be a string such as \"2026-12-04T10:00:00Z\" or \"+10m\", found {other}")))
        }
    }
    match fields.remove("timeout") {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) => match n.as_u64().filter(|v| (1..=MAX_TIMEOUT_MS).contains(v)) {
            Some(ms) => options.timeout = Some(Duration::from_millis(ms)),
            None => {
                return Err(ApiError::bad_request(
                    "invalid_field",
                    format!("field \"timeout\" is {n}: expected milliseconds from 1 to {MAX_TIMEOUT_MS} or a string such as \"30s\""),
                ))
            }
        },
        Some(Value::String(text)) => {
            let limit = parse_duration(&text).map_err(|e| ApiError::bad_request("invalid_field", format!("field \"timeout\": {e}")))?;
            if limit.is_zero() {
                return Err(ApiError::bad_request("invalid_field", "field \"timeout\" must be greater than 0"));
            }
            options.timeout = Some(limit);
        }
        Some(other) => return Err(ApiError::bad_request("invalid_field", format!("field \"timeout\" must be milliseconds or a string such as \"30s\", found {other}"))),
    }
    Ok(options)
}

/// `GET /api/jobs/{id}`.
pub(crate) async fn get_one(State(core): State<Core>, Path(id): Path<String>) -> Result<Response, ApiError> {
    match core.jobs.get(&id).await.map_err(jobs_error)? {
        Some(job) => Ok(Json(job).into_response()),
        None => Err(ApiError::job_not_found(&id)),
    }
}

/// `GET /api/jobs?status=&name=&limit=&offset=&after=`.
pub(crate) async fn list(State(core): State<Core>, params: Result<Query<Vec<(String, String)>>, QueryRejection>) -> Result<Response, ApiError> {
    let mut query = ListQuery::default();
    let Query(params) = params.map_err(super::error::query_rejection)?;
    for (key, value) in params {
        match key.as_str() {
            "status" if !value.is_empty() => {
                query.status = Some(value.parse::<JobStatus>().map_err(|e| ApiError::bad_request("invalid_status", e))?);
            }
            "name" if !value.is_empty() => query.name = Some(value),
            "limit" => query.limit = parse_count("limit", &value)?,
            "offset" => query.offset = parse_count("offset", &value)?,
            "after" if !value.is_empty() => query.after = Some(value),
            "status" | "name" | "after" => {}
            other => {
                return Err(ApiError::bad_request("unknown_parameter", format!("unknown query parameter {other:?}; expected status, name, limit, offset, after")))
            }
        }
    }
    let page = core.jobs.list(query).await.map_err(jobs_error)?;
    Ok(Json(page).into_response())
}

fn parse_count(name: &str, value: &str) -> Result<u32, ApiError> {
    value
        .parse::<u32>()
        .map_err(|_| ApiError::bad_request("invalid_parameter", format!("query parameter {name:?} is {value:?}: expected a non-negative integer")))
}

/// `POST /api/jobs/{id}/cancel`: the job, or 409 when it had finished.
pub(crate) async fn cancel(State(core): State<Core>, Path(id): Path<String>) -> Result<Response, ApiError> {
    match core.jobs.cancel(&id).await.map_err(jobs_error)? {
        CancelResult::Cancelled(job) | CancelResult::Requested(job) => Ok(Json(job).into_response()),
        CancelResult::AlreadyFinished(job) => {
            let body = json!({
                "error": {
                    "code": "already_finished",
                    "message": format!("job {} already finished with status {}; nothing to cancel", job.id, job.status),
                },
                "status": job.status,
                "job": job,
            });
            Ok((StatusCode::CONFLICT, Json(body)).into_response())
        }
    }
}

/// `POST /api/jobs/{id}/retry`: a new attempt of a failed or cancelled job.
pub(crate) async fn retry(State(core): State<Core>, Path(id): Path<String>) -> Result<Response, ApiError> {
    match core.jobs.retry(&id).await {
        Ok(job) => Ok(Json(job).into_response()),
        Err(JobsError::NotRetryable(job)) => {
            let message = format!("job {} is {}; only failed or cancelled jobs can be retried", job.id, job.status);
            let body = json!({"error": {"code": "not_retryable", "message": message}, "status": job.status, "job": job});
            Ok((StatusCode::CONFLICT, Json(body)).into_response())
        }
        Err(err) => Err(jobs_error(err)),
    }
}

/// `GET /api/stats`: job counts per status and per name.
pub(crate) async fn stats(State(core): State<Core>) -> Result<Response, ApiError> {
    Ok(Json(core.jobs.stats().await.map_err(jobs_error)?).into_response())
}

/// `POST /api/purge` with `{"olderThan": "30d", "status": "failed"?}`.
pub(crate) async fn purge(State(core): State<Core>, body: Result<Json<Value>, JsonRejection>) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(json_rejection)?;
    let Value::Object(fields) = body else {
        return Err(ApiError::bad_request("invalid_body", "expected a JSON object with olderThan and an optional status"));
    };
    if let Some(unknown) = fields.keys().find(|k| !["olderThan", "status"].contains(&k.as_str())) {
        return Err(ApiError::bad_request("unknown_field", format!("unknown field {unknown:?}; expected olderThan, status")));
    }
    let older_than = match fields.get("olderThan") {
        Some(Value::String(text)) => parse_duration(text).map_err(|e| ApiError::bad_request("invalid_field", format!("field \"olderThan\": {e}")))?,
        _ => return Err(ApiError::bad_request("missing_field", "missing field \"olderThan\": a duration such as \"30d\"")),
    };
    let statuses = match fields.get("status") {
        None | Some(Value::Null) => vec![JobStatus::Completed, JobStatus::Failed, JobStatus::Cancelled],
        Some(Value::String(text)) => {
            let status: JobStatus = text.parse().map_err(|e| ApiError::bad_request("invalid_status", e))?;
            if !status.is_finished() {
                return Err(ApiError::bad_request("invalid_status", format!("status {status} is not finished: only completed, failed and cancelled jobs can be purged")));
            }
            vec![status]
        }
        Some(other) => return Err(ApiError::bad_request("invalid_field", format!("field \"status\" must be a string, found {other}"))),
    };
    let deleted = core.jobs.purge(&statuses, older_than).await.map_err(jobs_error)?;
    Ok(Json(json!({"deleted": deleted})).into_response())
}

/// `GET /metrics` in the Prometheus text format.
pub(crate) async fn metrics(State(core): State<Core>) -> Response {
    let mut snapshot = crate::metrics::Snapshot {
        running: core.jobs.running_count() as u64,
        sse_clients: core.sse.client_count() as u64,
        ..Default::default()
    };
    match core.jobs.stats().await {
        Ok(stats) => snapshot.by_status = stats.by_status.into_iter().collect(),
        Err(err) => {
            core.jobs.metrics().store_error();
            tracing::warn!(error = %err, "reading job counts for /metrics failed");
        }
    }
    let body = core.jobs.metrics().render(&snapshot);
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

/// `GET /api/jobs/{id}/logs?tail=N`.
pub(crate) async fn logs(State(core): State<Core>, Path(id): Path<String>, params: Result<Query<Vec<(String, String)>>, QueryRejection>) -> Result<Response, ApiError> {
    let mut tail = None;
    let Query(params) = params.map_err(super::error::query_rejection)?;
    for (key, value) in params {
        match key.as_str() {
            "tail" => tail = Some(parse_count("tail", &value)? as usize),
            other => return Err(ApiError::bad_request("unknown_parameter", format!("unknown query parameter {other:?}; expected tail"))),
        }
    }
    if core.jobs.get(&id).await.map_err(jobs_error)?.is_none() {
        return Err(ApiError::job_not_found(&id));
    }
    let entries = core.jobs.read_logs(&id, tail).await.map_err(jobs_error)?;
    Ok(Json(json!({"jobId": id, "entries": entries})).into_response())
}

/// `GET /api/nodes`: the nodes sharing this server's database, with their
/// leases; empty on SQLite.
pub(crate) async fn nodes(State(core): State<Core>) -> Result<Response, ApiError> {
    let nodes = core.jobs.nodes().await.map_err(jobs_error)?;
    Ok(Json(json!({"self": core.jobs.node_id(), "nodes": nodes})).into_response())
}

/// `GET /health`: the store, the control socket and the dispatcher.
pub(crate) async fn health(State(core): State<Core>) -> Response {
    let store = match core.jobs.list(ListQuery { limit: 1, ..Default::default() }).await {
        Ok(_) => "ok".to_string(),
        Err(err) => format!("error: {err}"),
    };
    let healthy = store == "ok";
    let body = json!({
        "status": if healthy { "ok" } else { "degraded" },
        "store": store,
        "controlSocket": core.jobs.control_socket_status(),
        "dispatcher": core.jobs.dispatcher_status(),
        "runningExternal": core.jobs.supervised_count(),
    });
    let status = if healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}
