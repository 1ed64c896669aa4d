//! Task types whose handler lives outside the worker: a Lambda function (`lambda` target) or an
//! HTTPS endpoint (`http` target), as the catalog ([`taskq_core::catalog`]) configures them.
//!
//! Both receive the same JSON, the task as this attempt sees it:
//!
//! ```json
//! {"id": "01J…", "type": "resize", "payload": {…}, "attempt": 1, "max_attempts": 3,
//!  "deadline": "2026-11-25T07:30:00.000Z"}
//! ```
//!
//! and answer with JSON, which becomes the task's result. Failures are retried or permanent by
//! one rule per target, written down in the README ("Task handlers in any language").

use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_lambda::primitives::Blob;
use serde_json::{json, Value};
use taskq_core::limits::{MAX_PAYLOAD_BYTES, MAX_TIMEOUT_SECONDS};
use taskq_core::{Catalog, Target};
use taskq_outbound::signature::{self, DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER};
use taskq_outbound::{Network, Outbound, OutboundError, Policy, Request};

use crate::registry::{HandlerError, Registry, TaskContext, TaskHandler};

/// The `Taskq-Event` header of a task sent to an `http` target.
pub const RUN_EVENT: &str = "task.run";

/// What the targets need: a Lambda client (for `lambda` types) and an outbound client with the
/// signing secret (for `http` types). Either may be absent when no type needs it.
#[derive(Clone, Default)]
pub struct TargetClients {
    pub lambda: Option<aws_sdk_lambda::Client>,
    pub http: Option<HttpClient>,
}

/// The guarded outbound client and the secret requests are signed with (the completion
/// webhooks' secret: one verify function for receivers of both).
#[derive(Clone)]
pub struct HttpClient {
    outbound: Outbound,
    secret: Arc<[u8]>,
}

impl HttpClient {
    /// Requests reach what `network` allows, as the `webhook` type's do.
    pub fn new(network: Network, secret: impl Into<Vec<u8>>) -> Self {
        Self::with_outbound(Outbound::new(Self::policy(network)), secret)
    }

    /// [`Policy::public`], https only, no redirects (a target is configured, so a redirect is a
    /// mistake, not something to follow), the longest task timeout (the worker's own timeout
    /// stops the request first), and a reply up to the payload limit.
    pub fn policy(network: Network) -> Policy {
        let mut policy = Policy::public(concat!("taskq-worker/", env!("CARGO_PKG_VERSION")));
        policy.network = network.clone();
        policy.https_only = matches!(network, Network::PublicOnly);
        policy.max_redirects = 0;
        policy.total_timeout = std::time::Duration::from_secs(MAX_TIMEOUT_SECONDS.into());
        policy.max_response_bytes = MAX_PAYLOAD_BYTES;
        policy
    }

    /// Over a given client (tests: a resolver of their own).
    pub fn with_outbound(outbound: Outbound, secret: impl Into<Vec<u8>>) -> Self {
        Self {
            outbound,
            secret: secret.into().into(),
        }
    }
}

/// Registers a handler for every `lambda` and `http` type in `catalog`. Refuses (listing every
/// such type) when a client they need is missing: a worker that would fail each of their tasks
/// must not start.
pub fn register(registry: &mut Registry, catalog: &Catalog, clients: &TargetClients) -> Result<(), String> {
    let mut missing = Vec::new();
    for spec in catalog.types() {
        match &spec.target {
            Target::Builtin => {}
            Target::Lambda(function) => match &clients.lambda {
                Some(client) => {
                    registry.register(
                        spec.name.as_str(),
                        LambdaTarget {
                            client: client.clone(),
                            function: function.clone(),
                        },
                    );
                }
                None => missing.push(format!("{} (lambda: no Lambda client)", spec.name)),
            },
            Target::Http(url) => match &clients.http {
                Some(client) => {
                    registry.register(
                        spec.name.as_str(),
                        HttpTarget {
                            client: client.clone(),
                            url: url.clone(),
                        },
                    );
                }
                None => missing.push(format!("{} (http: no signing secret)", spec.name)),
            },
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("task types without a way to run them: {}", missing.join(", ")))
    }
}

/// The JSON a target receives.
pub fn request_body(ctx: &TaskContext) -> Value {
    json!({
        "id": ctx.task.id.to_string(),
        "type": ctx.task.task_type.as_str(),
        "payload": ctx.task.payload,
        "attempt": ctx.attempt(),
        "max_attempts": ctx.task.max_attempts,
        "deadline": ctx.deadline().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    })
}

/// A reply's body as the result: JSON, or a permanent failure saying what came instead.
fn result_from(body: &[u8], truncated: bool) -> Result<Value, HandlerError> {
    if truncated {
        return Err(HandlerError::permanent(
            "target_reply",
            format!("the reply is larger than {MAX_PAYLOAD_BYTES} bytes"),
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        HandlerError::permanent(
            "target_reply",
            format!("the reply is not JSON ({e}): {}", snippet(body)),
        )
    })
}

fn snippet(body: &[u8]) -> String {
    String::from_utf8_lossy(body).chars().take(300).collect()
}

/// Invokes a function synchronously (`RequestResponse`) with the task.
///
/// Retry rule: a function error (its `errorType`, as a Lambda runtime reports it) is retried,
/// unless `errorType` ends in `Permanent` or `PermanentError`; Invoke itself failing is
/// retried on throttling (429), a service error (5xx) or no answer, and fails the task at once
/// on any other client error (no such function, access denied, payload too large).
pub struct LambdaTarget {
    client: aws_sdk_lambda::Client,
    function: String,
}

impl LambdaTarget {
    /// A Lambda client for targets: one attempt per Invoke (the task's own retries decide what
    /// runs again; an SDK retry after a lost response would run the function twice under one
    /// attempt) and an operation timeout past the longest task timeout (the worker's timeout
    /// stops the wait first).
    pub fn client(sdk: &aws_config::SdkConfig) -> aws_sdk_lambda::Client {
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(std::time::Duration::from_secs(3))
            .operation_timeout(std::time::Duration::from_secs(u64::from(MAX_TIMEOUT_SECONDS) + 60))
            .build();
        let config = aws_sdk_lambda::config::Builder::from(sdk)
            .timeout_config(timeouts)
            .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(1))
            .build();
        aws_sdk_lambda::Client::from_conf(config)
    }
}

#[async_trait]
impl TaskHandler for LambdaTarget {
    async fn run(&self, ctx: TaskContext) -> Result<Value, HandlerError> {
        let body = request_body(&ctx).to_string();
        let out = self
            .client
            .invoke()
            .function_name(&self.function)
            .payload(Blob::new(body))
            .send()
            .await
            .map_err(invoke_error)?;
        let reply = out.payload.map(Blob::into_inner).unwrap_or_default();
        if let Some(kind) = out.function_error {
            let parsed: Value = serde_json::from_slice(&reply).unwrap_or(Value::Null);
            let error_type = parsed["errorType"].as_str().unwrap_or(&kind).to_owned();
            let message = parsed["errorMessage"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| snippet(&reply));
            let message = format!("{error_type}: {message}");
            return Err(
                if error_type.ends_with("Permanent") || error_type.ends_with("PermanentError") {
                    HandlerError::permanent("function_error", message)
                } else {
                    HandlerError::retryable("function_error", message)
                },
            );
        }
        result_from(&reply, false)
    }
}

fn invoke_error(e: aws_sdk_lambda::error::SdkError<aws_sdk_lambda::operation::invoke::InvokeError>) -> HandlerError {
    let status = e.raw_response().map(|r| r.status().as_u16());
    let message = aws_sdk_lambda::error::DisplayErrorContext(&e).to_string();
    match status {
        Some(s) if s == 429 || s >= 500 => HandlerError::retryable("invoke_failed", message),
        Some(_) => HandlerError::permanent("invoke_failed", message),
        // No HTTP answer: timeouts, connection failures, a lost response.
        None => HandlerError::retryable("invoke_failed", message),
    }
}

/// POSTs the task to a configured URL through the guarded outbound client, signed like a
/// completion webhook (`Taskq-Signature`, verified by the same function).
///
/// Retry rule: a 2xx reply's JSON body is the result; 408, 429, 5xx, timeouts and connection
/// failures are retried; any other status, a refused address or a non-JSON 2xx reply fails the
/// task at once.
pub struct HttpTarget {
    client: HttpClient,
    url: String,
}

#[async_trait]
impl TaskHandler for HttpTarget {
    async fn run(&self, ctx: TaskContext) -> Result<Value, HandlerError> {
        let body = request_body(&ctx).to_string().into_bytes();
        let now = chrono::Utc::now().timestamp();
        let request = Request::new("POST", self.url.clone())
            .header("content-type", "application/json")
            .header(SIGNATURE_HEADER, signature::header(&self.client.secret, now, &body))
            .header(DELIVERY_HEADER, format!("{}.{}", ctx.task.id, ctx.attempt()))
            .header(EVENT_HEADER, RUN_EVENT)
            .body(body);
        let response = self.client.outbound.send(request).await.map_err(|e| match &e {
            OutboundError::Refused(_) | OutboundError::Invalid(_) => {
                HandlerError::permanent("target_refused", e.to_string())
            }
            OutboundError::Build(_) | OutboundError::Timeout(_) | OutboundError::Transport(_) => {
                HandlerError::retryable("target_unreachable", e.to_string())
            }
        })?;
        let status = response.status;
        if (200..300).contains(&status) {
            return result_from(&response.body, response.truncated);
        }
        let message = format!("HTTP {status}: {}", snippet(&response.body));
        if status >= 500 || status == 408 || status == 429 {
            Err(HandlerError::retryable("target_status", message))
        } else {
            Err(HandlerError::permanent("target_status", message))
        }
    }
}
