//! Requests reach the API only through CloudFront when the deployment says so. API Gateway's
//! `execute-api` endpoint cannot be turned off without a custom domain, so CloudFront adds a
//! secret header to every request it forwards (an origin custom header, which replaces any
//! header of that name a viewer sends) and the API refuses requests without it: WAF, which sits
//! on CloudFront, cannot be walked around.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::state::AppState;

/// The header CloudFront sets (template.yaml, origin `api`).
pub const ORIGIN_HEADER: &str = "x-taskq-origin-verify";

/// Refuses (403) a request whose origin header is missing or wrong, when a secret is configured.
pub async fn require(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if let Some(secret) = &state.origin_secret {
        let given = request
            .headers()
            .get(ORIGIN_HEADER)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        // Constant time: the comparison must not tell how much of a guess was right.
        if aws_lc_rs::constant_time::verify_slices_are_equal(given, secret.as_bytes()).is_err() {
            return ApiError::Forbidden("requests must come through the CloudFront distribution".into())
                .into_response();
        }
    }
    next.run(request).await
}
