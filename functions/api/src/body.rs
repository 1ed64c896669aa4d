//! Reading JSON request bodies: size limit (413), media type (415), syntax (400), all as
//! problem+json through [`ApiError`].

use axum::body::Body;
use http::HeaderMap;
use serde_json::Value;

use crate::error::ApiError;

pub async fn json(headers: &HeaderMap, body: Body, limit: usize) -> Result<Value, ApiError> {
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if !(media == "application/json" || (media.starts_with("application/") && media.ends_with("+json"))) {
        return Err(ApiError::UnsupportedMediaType(if content_type.is_empty() {
            "Content-Type is missing; send application/json".into()
        } else {
            format!("Content-Type {content_type:?} is not JSON; send application/json")
        }));
    }
    if let Some(len) = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
    {
        if len > limit {
            return Err(too_large(limit));
        }
    }
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| too_large(limit))?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::BadJson(e.to_string()))
}

fn too_large(limit: usize) -> ApiError {
    ApiError::TooLarge {
        field: "body".into(),
        detail: format!("the request body is larger than {limit} bytes"),
    }
}
