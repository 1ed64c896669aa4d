//! Per-user rate limiting as middleware on every authenticated route: authenticate once, take
//! one step of the caller's budget (its roles pick the quota), and put the budget in
//! `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` on the response, 429 or not.

use axum::extract::{FromRequestParts, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::HeaderValue;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

fn ceil_secs(d: std::time::Duration) -> u64 {
    d.as_micros().div_ceil(1_000_000) as u64
}

pub async fn rate_limit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let caller = match Caller::from_request_parts(&mut parts, &state).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    crate::observe::record("user_id", &caller.user_id);
    let quota = state.policy.quota(&caller.roles);
    let decision = match state.limiter.acquire(&caller.user_id, quota).await {
        Ok(d) => Some(d),
        Err(e) => {
            // Only the in-process fallback can get here, and it does not fail; never block on it.
            tracing::error!(error = %e, "rate limiter failed; request let through");
            None
        }
    };
    parts.extensions.insert(caller);
    let mut response = match decision {
        Some(d) if !d.allowed => ApiError::RateLimited {
            limit: d.limit,
            per_second: quota.per_second,
            retry_after: ceil_secs(d.retry_after).max(1),
        }
        .into_response(),
        _ => next.run(Request::from_parts(parts, body)).await,
    };
    if let Some(d) = decision {
        let h = response.headers_mut();
        h.insert("ratelimit-limit", HeaderValue::from(d.limit));
        h.insert("ratelimit-remaining", HeaderValue::from(d.remaining));
        h.insert("ratelimit-reset", HeaderValue::from(ceil_secs(d.reset)));
    }
    response
}
