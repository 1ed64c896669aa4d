//! The v1 API over HTTP. Every call returns the response's JSON or a [`CliError`] that says what
//! went wrong in the server's own words (its problem+json `title` and `detail`).

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::error::CliError;

pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

/// A successful response: its status and JSON body.
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
}

impl Client {
    pub fn new(base_url: &str, token: Option<String>) -> Result<Self, CliError> {
        let base = base_url.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(CliError::Usage(format!(
                "--url / TASKQ_URL must start with http:// or https://, not {base_url:?}"
            )));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // Above the longest server-side wait (20 s) so a long poll is never cut short.
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("taskq-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CliError::Client(e.to_string()))?;
        Ok(Self { http, base, token })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn token(&self) -> Result<&str, CliError> {
        self.token.as_deref().filter(|t| !t.is_empty()).ok_or(CliError::NoToken)
    }

    /// `path` starts with `/v1/`; `query` pairs are encoded here.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
        headers: &[(&str, String)],
    ) -> Result<Answer, CliError> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url).bearer_auth(self.token()?).query(query);
        for (name, value) in headers {
            req = req.header(*name, value);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| CliError::Unreachable {
            url: self.base.clone(),
            cause: chain(&e),
        })?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| CliError::Unreachable {
            url: self.base.clone(),
            cause: chain(&e),
        })?;
        let parsed: Option<Value> = serde_json::from_str(&text).ok();
        if status.is_success() {
            let body = parsed.ok_or_else(|| CliError::NotJson {
                status: status.as_u16(),
                start: text.chars().take(200).collect(),
            })?;
            return Ok(Answer { status, body });
        }
        Err(CliError::Api {
            status: status.as_u16(),
            title: parsed
                .as_ref()
                .and_then(|p| p["title"].as_str())
                .or(status.canonical_reason())
                .unwrap_or("error")
                .to_owned(),
            detail: parsed
                .as_ref()
                .and_then(|p| p["detail"].as_str())
                .map(str::to_owned)
                .unwrap_or_else(|| text.chars().take(200).collect()),
            problem: parsed,
        })
    }

    pub async fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Value, CliError> {
        Ok(self.call(Method::GET, path, query, None, &[]).await?.body)
    }
}

/// An error and its causes on one line: reqwest's own message alone ("error sending request")
/// does not say whether the name, the connection or TLS failed.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
