//! The built-in task types.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::registry::{HandlerError, Registry, TaskContext, TaskHandler};

pub fn register(r: &mut Registry) {
    r.register("echo", Echo);
    r.register("sleep", Sleep);
    r.register("fail", Fail);
    r.register("webhook", Webhook::new());
}

fn payload<T: for<'de> Deserialize<'de>>(ctx: &TaskContext, shape: &str) -> Result<T, HandlerError> {
    T::deserialize(ctx.payload())
        .map_err(|e| HandlerError::permanent("invalid_payload", format!("expected {shape}: {e}")))
}

/// Returns the payload as the result.
pub struct Echo;

#[async_trait]
impl TaskHandler for Echo {
    async fn run(&self, ctx: TaskContext) -> Result<Value, HandlerError> {
        Ok(ctx.task.payload)
    }
}

/// `{ms}`: sleeps, then returns `{slept_ms}`; stops early when cancellation is requested.
pub struct Sleep;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SleepPayload {
    ms: u64,
}

#[async_trait]
impl TaskHandler for Sleep {
    async fn run(&self, ctx: TaskContext) -> Result<Value, HandlerError> {
        let p: SleepPayload = payload(&ctx, "{\"ms\": <milliseconds>}")?;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(p.ms)) => Ok(json!({ "slept_ms": p.ms })),
            _ = ctx.cancelled() => Err(HandlerError::cancelled()),
        }
    }
}

/// `{times}`: fails (retryably) on attempts 1..=times, then succeeds with `{attempt}`.
pub struct Fail;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FailPayload {
    times: u32,
}

#[async_trait]
impl TaskHandler for Fail {
    async fn run(&self, ctx: TaskContext) -> Result<Value, HandlerError> {
        let p: FailPayload = payload(&ctx, "{\"times\": <n>}")?;
        if ctx.attempt() <= p.times {
            return Err(HandlerError::retryable(
                "deliberate_failure",
                format!("attempt {} of the first {} fails", ctx.attempt(), p.times),
            ));
        }
        Ok(json!({ "attempt": ctx.attempt() }))
    }
}

/// `{url, method?, headers?, body?}`: one HTTP request. 2xx succeeds with `{status, body}`;
/// 408, 429 and 5xx and network errors are retried; other statuses fail the task.
pub struct Webhook {
    /// Built on the first webhook task, not at init: building a reqwest client loads and parses
    /// the system trust roots (rustls-platform-verifier), a few milliseconds of every cold
    /// start, and most workers never run a webhook.
    client: std::sync::OnceLock<reqwest::Client>,
}

/// Response bodies are kept up to this size in the result.
const WEBHOOK_BODY_LIMIT: usize = 64 * 1024;
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookPayload {
    url: String,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    headers: HashMap<String, String>,
    #[serde(default)]
    body: Option<Value>,
}

impl Webhook {
    pub fn new() -> Self {
        Self {
            client: std::sync::OnceLock::new(),
        }
    }

    fn client(&self) -> &reqwest::Client {
        // Connections still open on first use of the client, as before.
        self.client.get_or_init(|| {
            reqwest::Client::builder()
                .timeout(WEBHOOK_TIMEOUT)
                .connect_timeout(Duration::from_secs(5))
                .redirect(reqwest::redirect::Policy::limited(3))
                .build()
                .unwrap_or_default()
        })
    }
}

impl Default for Webhook {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl TaskHandler for Webhook {
    async fn run(&self, ctx: TaskContext) -> Result<Value, HandlerError> {
        let p: WebhookPayload = payload(&ctx, "{\"url\", \"method\"?, \"headers\"?, \"body\"?}")?;
        let url =
            reqwest::Url::parse(&p.url).map_err(|e| HandlerError::permanent("invalid_payload", format!("url: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(HandlerError::permanent(
                "invalid_payload",
                "url: scheme must be http or https",
            ));
        }
        let method = p
            .method
            .as_deref()
            .unwrap_or(if p.body.is_some() { "POST" } else { "GET" });
        let method = reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes()).map_err(|_| {
            HandlerError::permanent("invalid_payload", format!("method: {method:?} is not an HTTP method"))
        })?;
        let mut request = self.client().request(method, url);
        for (name, value) in &p.headers {
            request = request.header(name, value);
        }
        if let Some(body) = &p.body {
            request = match body {
                Value::String(s) => request.body(s.clone()),
                other => request.json(other),
            };
        }
        let response = request.send().await.map_err(|e| {
            if e.is_builder() {
                HandlerError::permanent("invalid_payload", e.to_string())
            } else {
                HandlerError::retryable("webhook_unreachable", e.to_string())
            }
        })?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| HandlerError::retryable("webhook_unreachable", e.to_string()))?;
        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(WEBHOOK_BODY_LIMIT)]).into_owned();
        if status.is_success() {
            let body = serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text));
            return Ok(json!({ "status": status.as_u16(), "body": body }));
        }
        let message = format!(
            "HTTP {}: {}",
            status.as_u16(),
            text.chars().take(500).collect::<String>()
        );
        if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
            Err(HandlerError::retryable("webhook_status", message))
        } else {
            Err(HandlerError::permanent("webhook_status", message))
        }
    }
}
