//! The X-Ray trace header of the request being served, carried from the API to the queue
//! message (`AWSTraceHeader`), so one task is one trace from submit to finish.
//!
//! A task-local, not a parameter: the header is request context that only the queue adapter
//! reads, and threading it through every service call would put transport detail into the
//! domain API. The API's request middleware sets it around each request.

use std::future::Future;

tokio::task_local! {
    static TRACE_HEADER: Option<String>;
}

/// Runs `f` with `header` as the current trace header.
pub async fn scope<F: Future>(header: Option<String>, f: F) -> F::Output {
    TRACE_HEADER.scope(header, f).await
}

/// The trace header of the current request: the one set by [`scope`], else the
/// `_X_AMZN_TRACE_ID` that `lambda_runtime` sets per invocation (sequential mode), else none.
pub fn current() -> Option<String> {
    match TRACE_HEADER.try_with(|h| h.clone()) {
        Ok(scoped) => scoped,
        Err(_) => std::env::var("_X_AMZN_TRACE_ID").ok().filter(|v| !v.is_empty()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn scope_sets_the_header_for_its_future_only() {
        let inside = scope(Some("Root=1-abc".into()), async { current() }).await;
        assert_eq!(inside.as_deref(), Some("Root=1-abc"));
        let none = scope(None, async { current() }).await;
        assert_eq!(none, None, "an explicit None is not replaced by the environment");
    }
}
