//! A small HTTP client for the burro API with errors that name the fix.

use anyhow::{anyhow, Context};
use reqwest::StatusCode;
use serde_json::Value;

pub struct Client {
    base: String,
    http: reqwest::Client,
}

/// An error the server returned: status, code and message.
#[derive(Debug)]
pub struct ApiFailure {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    pub body: Value,
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}, HTTP {})", self.message, self.code, self.status.as_u16())
    }
}

impl std::error::Error for ApiFailure {}

impl Client {
    pub fn new(base: &str, token: Option<&str>) -> anyhow::Result<Self> {
        let base = base.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(anyhow!(
                "invalid server URL {base:?} (from --server or BURRO_SERVER): expected http://HOST:PORT, for example http://127.0.0.1:3000"
            ));
        }
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = token.filter(|t| !t.is_empty()) {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| anyhow!("invalid API token: it must be printable ASCII"))?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder().default_headers(headers).build().context("creating the HTTP client failed")?;
        Ok(Client { base, http })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub fn unreachable(&self, err: reqwest::Error) -> anyhow::Error {
        anyhow!("cannot reach the server at {}: is `burro serve` running? ({err})", self.base)
    }

    /// Sends a request and returns the JSON body, or an [`ApiFailure`].
    pub async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let response = request.send().await.map_err(|e| self.unreachable(e))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| self.unreachable(e))?;
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            return Ok(body);
        }
        let code = body.pointer("/error/code").and_then(Value::as_str).unwrap_or("http_error").to_string();
        if status.as_u16() == 401 {
            return Err(anyhow!("the server requires an API token: pass --token or set BURRO_API_TOKEN"));
        }
        let message = body
            .pointer("/error/message")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| format!("the server returned HTTP {}", status.as_u16()));
        Err(ApiFailure { status, code, message, body }.into())
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.http.get(self.url(path))).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(self.http.post(self.url(path)).json(body)).await
    }
}
