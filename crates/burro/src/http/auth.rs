//! The optional API token.
//!
//! When `[server] api_token` (or `BURRO_API_TOKEN`) is set, every route
//! under `/api` and `/metrics` requires it. Programs send
//! `Authorization: Bearer <token>`. A browser's EventSource cannot send
//! headers, so the dashboard trades the token for an HttpOnly, SameSite=Strict
//! cookie at `POST /api/session`, and SSE routes also accept a `token` query
//! parameter. A token in a URL can end up in proxy logs and browser history,
//! which is why the cookie is preferred.

use super::error::{json_rejection, ApiError};
use crate::server::Core;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;

/// Name of the cookie that carries the token for browsers.
pub const COOKIE_NAME: &str = "burro_token";

/// Checks the token on protected routes; passes everything through when no
/// token is configured.
pub(crate) async fn require_token(State(core): State<Core>, request: Request, next: Next) -> Response {
    let Some(expected) = core.api_token.as_deref() else {
        return next.run(request).await;
    };
    let path = request.uri().path();
    let protected = path.starts_with("/api/") || path == "/metrics";
    if !protected || path == "/api/session" {
        return next.run(request).await;
    }
    let sse = path == "/api/events" || path.ends_with("/events");
    let presented = bearer(request.headers())
        .or_else(|| cookie(request.headers()))
        .or_else(|| if sse { query_token(request.uri().query()) } else { None });
    match presented {
        Some(token) if crate::supervisor::constant_time_eq(token.as_bytes(), expected.as_bytes()) => next.run(request).await,
        Some(_) => unauthorized("invalid API token"),
        None => unauthorized("missing API token: send Authorization: Bearer <token>"),
    }
}

fn unauthorized(message: &str) -> Response {
    let mut response = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
    response.headers_mut().insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("valid header"));
    response
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    value.strip_prefix("Bearer ").map(|token| token.trim().to_string())
}

fn cookie(headers: &HeaderMap) -> Option<String> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|cookies| {
        cookies.split(';').find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE_NAME).then(|| value.to_string())
        })
    })
}

fn query_token(query: Option<&str>) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        (name == "token").then(|| percent_decode(value))
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or(""), 16) {
                    Ok(byte) => {
                        out.push(byte);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `POST /api/session` with `{"token": "..."}`: sets the dashboard's cookie.
/// The body may be absent. A body that is not valid JSON gets a JSON error.
pub(crate) async fn session(State(core): State<Core>, body: Result<Option<Json<Value>>, JsonRejection>) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return json_rejection(rejection).into_response(),
    };
    let Some(expected) = core.api_token.as_deref() else {
        return StatusCode::NO_CONTENT.into_response();
    };
    let token = body.as_ref().and_then(|Json(body)| body.get("token")).and_then(Value::as_str).unwrap_or_default();
    if !crate::supervisor::constant_time_eq(token.as_bytes(), expected.as_bytes()) {
        return unauthorized("invalid API token");
    }
    let cookie = format!("{COOKIE_NAME}={token}; HttpOnly; SameSite=Strict; Path=/");
    (StatusCode::NO_CONTENT, [(header::SET_COOKIE, cookie)]).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_token_from_query() {
        assert_eq!(query_token(Some("channel=jobs&token=a%2Fb")), Some("a/b".into()));
        assert_eq!(query_token(Some("channel=jobs")), None);
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%4"), "%4");
    }
}
