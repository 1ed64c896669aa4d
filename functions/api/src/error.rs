//! The one place errors become HTTP: `application/problem+json` (RFC 9457). Bodies of 5xx say
//! little; their cause is logged once, here.

use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};
use serde_json::json;
use taskq_core::{FieldError, ServiceError};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ApiError {
    #[error("{0}")]
    BadJson(String),
    #[error("{0}")]
    Invalid(FieldError),
    #[error("{field}: {detail}")]
    TooLarge { field: String, detail: String },
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("no such task")]
    NotFound,
    #[error("{0}")]
    RouteNotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the Idempotency-Key was already used with a different request body")]
    IdempotencyMismatch,
    #[error("too many requests: at most {limit} at once and {per_second}/s for your role; retry in {retry_after} s")]
    RateLimited {
        limit: u32,
        per_second: f64,
        retry_after: u64,
    },
    #[error("{detail}")]
    Unavailable { detail: String, retry_after: u32 },
    #[error("internal error")]
    Internal,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadJson(_) | ApiError::Invalid(_) => StatusCode::BAD_REQUEST,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound | ApiError::RouteNotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::IdempotencyMismatch => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn slug_and_title(&self) -> (&'static str, &'static str) {
        match self {
            ApiError::BadJson(_) => ("bad-json", "Request body is not valid JSON"),
            ApiError::Invalid(_) => ("invalid-field", "Invalid request field"),
            ApiError::TooLarge { .. } => ("too-large", "Request too large"),
            ApiError::UnsupportedMediaType(_) => ("unsupported-media-type", "Unsupported media type"),
            ApiError::Unauthorized(_) => ("unauthorized", "Missing or invalid bearer token"),
            ApiError::Forbidden(_) => ("forbidden", "Not allowed for your role"),
            ApiError::NotFound => ("task-not-found", "Task not found"),
            ApiError::RouteNotFound(_) => ("route-not-found", "No such route"),
            ApiError::MethodNotAllowed(_) => ("method-not-allowed", "Method not allowed"),
            ApiError::Conflict(_) => ("state-conflict", "Task is not in a state that allows this"),
            ApiError::IdempotencyMismatch => (
                "idempotency-key-reused",
                "Idempotency-Key reused with a different request",
            ),
            ApiError::RateLimited { .. } => ("rate-limited", "Too many requests"),
            ApiError::Unavailable { .. } => ("unavailable", "Service temporarily unavailable"),
            ApiError::Internal => ("internal", "Internal error"),
        }
    }

    /// The problem object, also used for per-item errors of a batch.
    pub fn problem(&self) -> serde_json::Value {
        let (slug, title) = self.slug_and_title();
        let mut p = json!({
            "type": format!("https://taskq.dev/problems/{slug}"),
            "title": title,
            "status": self.status().as_u16(),
            "detail": self.to_string(),
        });
        match self {
            ApiError::Invalid(f) => p["field"] = json!(f.field),
            ApiError::TooLarge { field, .. } => p["field"] = json!(field),
            _ => {}
        }
        p
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        if e.too_large {
            ApiError::TooLarge {
                detail: e.to_string(),
                field: e.field,
            }
        } else {
            ApiError::Invalid(e)
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Invalid(f) => f.into(),
            ServiceError::NotFound => ApiError::NotFound,
            ServiceError::Conflict(c) => ApiError::Conflict(c.to_string()),
            ServiceError::IdempotencyMismatch => ApiError::IdempotencyMismatch,
            // The queue refused the message itself: retrying will not help, so no 503. Input
            // cannot cause this (identities are checked at the edge); it is a bug, logged.
            ServiceError::NotEnqueued(id, cause @ taskq_core::QueueError::Invalid(_)) => {
                tracing::error!(task_id = %id, error = %cause, "task stored but its message was refused by the queue");
                ApiError::Internal
            }
            ServiceError::NotEnqueued(id, cause) => {
                tracing::error!(task_id = %id, error = %cause, cause = ?std::error::Error::source(&cause), "task stored but not enqueued");
                ApiError::Unavailable {
                    detail: format!(
                        "task {id} was stored but could not be queued; repeat the request with the same Idempotency-Key to queue it"
                    ),
                    retry_after: 1,
                }
            }
            ServiceError::Throttled(cause) => {
                tracing::warn!(error = %cause, "store throttled");
                ApiError::Unavailable {
                    detail: "storage is busy; retry shortly".into(),
                    retry_after: 1,
                }
            }
            ServiceError::Store(cause) => {
                tracing::error!(error = %cause, cause = ?std::error::Error::source(&cause), "store failed");
                ApiError::Unavailable {
                    detail: "storage is unavailable; retry shortly".into(),
                    retry_after: 2,
                }
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = serde_json::to_vec(&self.problem()).unwrap_or_default();
        let mut response = (status, body).into_response();
        let h = response.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        match &self {
            ApiError::Unauthorized(_) => {
                h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::Unavailable { retry_after, .. } => {
                h.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            ApiError::RateLimited { retry_after, .. } => {
                h.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            _ => {}
        }
        response
    }
}
