//! The built-in task types.

use std::collections::HashMap;
use std::time::Duration;

use taskq_outbound::{Network, Outbound, OutboundError, Policy, Request};

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::registry::{HandlerError, Registry, TaskContext, TaskHandler};

/// Registers the built-in types, `webhook` as given.
pub fn register(r: &mut Registry, webhook: Webhook) {
    r.register("echo", Echo);
    r.register("sleep", Sleep);
    r.register("fail", Fail);
    r.register("webhook", webhook);
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

/// `{url, method?, headers?, body?}`: one HTTP request through the guarded outbound client
/// (public addresses only, see `taskq_outbound`). 2xx succeeds with `{status, body}` (plus
/// `truncated: true` past 64 KiB); 408, 429, 5xx and network errors are retried; a refused
/// address and other statuses fail the task.
pub struct Webhook {
    outbound: Outbound,
}

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
    /// Requests reach what `network` allows; everything else is [`Webhook::policy`]'s.
    pub fn new(network: Network) -> Self {
        Self {
            outbound: Outbound::new(Self::policy(network)),
        }
    }

    /// [`Policy::public`] (3 redirects, each checked; 5 s to connect, 30 s in all, 64 KiB of
    /// body kept) reaching `network`.
    pub fn policy(network: Network) -> Policy {
        let mut policy = Policy::public(concat!("taskq-worker/", env!("CARGO_PKG_VERSION")));
        policy.network = network;
        policy
    }

    /// Over a given client (tests: a resolver of their own).
    pub fn with_outbound(outbound: Outbound) -> Self {
        Self { outbound }
    }
}

fn handler_error(e: OutboundError) -> HandlerError {
    match &e {
        OutboundError::Refused(_) => HandlerError::permanent("webhook_refused", e.to_string()),
        OutboundError::Invalid(_) => HandlerError::permanent("invalid_payload", e.to_string()),
        OutboundError::Build(_) => {
            tracing::error!(error = %e, "outbound HTTP client unavailable");
            HandlerError::retryable("outbound_unavailable", e.to_string())
        }
        OutboundError::Timeout(_) | OutboundError::Transport(_) => {
            HandlerError::retryable("webhook_unreachable", e.to_string())
        }
    }
}

#[async_trait]
impl TaskHandler for Webhook {
    async fn run(&self, ctx: TaskContext) -> Result<Value, HandlerError> {
        let p: WebhookPayload = payload(&ctx, "{\"url\", \"method\"?, \"headers\"?, \"body\"?}")?;
        let method = p
            .method
            .clone()
            .unwrap_or_else(|| if p.body.is_some() { "POST" } else { "GET" }.to_owned());
        let mut request = Request::new(method, p.url);
        for (name, value) in p.headers {
            request = request.header(name, value);
        }
        match p.body {
            Some(Value::String(s)) => request = request.body(s),
            Some(other) => {
                let has_type = request
                    .headers
                    .iter()
                    .any(|(n, _)| n.eq_ignore_ascii_case("content-type"));
                if !has_type {
                    request = request.header("content-type", "application/json");
                }
                request = request.body(other.to_string());
            }
            None => {}
        }
        let response = self.outbound.send(request).await.map_err(handler_error)?;
        let text = String::from_utf8_lossy(&response.body).into_owned();
        let status = response.status;
        if (200..300).contains(&status) {
            let body = serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text));
            let mut result = json!({ "status": status, "body": body });
            if response.truncated {
                result["truncated"] = Value::Bool(true);
            }
            return Ok(result);
        }
        let message = format!("HTTP {status}: {}", text.chars().take(500).collect::<String>());
        if status >= 500 || status == 408 || status == 429 {
            Err(HandlerError::retryable("webhook_status", message))
        } else {
            Err(HandlerError::permanent("webhook_status", message))
        }
    }
}
