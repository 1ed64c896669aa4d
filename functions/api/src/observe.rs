//! Per-request telemetry: a `request` span carrying the request id (API Gateway's, else the
//! caller's `X-Request-Id`, else a fresh one), filled in with `user_id`, `task_id` and
//! `priority` as the handler learns them, and the X-Ray trace header made current for the queue
//! adapter (see [`taskq_core::trace`]), so the task's message continues the request's trace.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use lambda_http::request::RequestContext;
use lambda_http::RequestExt;
use tracing::field::Empty;
use tracing::Instrument;

pub async fn request_span(request: Request, next: Next) -> Response {
    let trace = trace_header(&request);
    let span = tracing::info_span!(
        "request",
        request_id = %request_id(&request),
        trace_header = trace.as_deref(),
        user_id = Empty,
        task_id = Empty,
        priority = Empty,
    );
    taskq_core::trace::scope(trace, next.run(request))
        .instrument(span)
        .await
}

/// Records a field of the current request's span (a no-op outside one).
pub fn record(field: &str, value: &dyn std::fmt::Display) {
    tracing::Span::current().record(field, tracing::field::display(value));
}

fn request_id(request: &Request) -> String {
    if let Some(RequestContext::ApiGatewayV2(ctx)) = request.request_context_ref() {
        if let Some(id) = ctx.request_id.as_deref().filter(|id| !id.is_empty()) {
            return id.to_owned();
        }
    }
    header(request, "x-request-id", 128).unwrap_or_else(|| taskq_core::TaskId::new().to_string())
}

/// Lambda's trace header for this invocation (`Root=...;Parent=...;Sampled=...`), else the
/// caller's `X-Amzn-Trace-Id` (an ALB or a local client may send one).
fn trace_header(request: &Request) -> Option<String> {
    request
        .lambda_context_ref()
        .and_then(|c| c.xray_trace_id.clone())
        .filter(|t| !t.is_empty())
        .or_else(|| header(request, "x-amzn-trace-id", 256))
}

/// A header of visible ASCII up to `max` bytes; anything else is ignored, never an error.
fn header(request: &Request, name: &str, max: usize) -> Option<String> {
    let v = request.headers().get(name)?.to_str().ok()?;
    (!v.is_empty() && v.len() <= max && v.bytes().all(|b| (0x20..=0x7e).contains(&b))).then(|| v.to_owned())
}
