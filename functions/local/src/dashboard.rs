//! The web dashboard (`dashboard/` at the repository root), embedded in the binary so
//! `taskq-local` serves it with no files beside it. Only `/` and `/dashboard/...` are routed
//! here; every `/v1/*` path stays with the API Router and its problem+json fallback. In AWS the
//! same files are served from S3 behind CloudFront.

use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use http::{header, HeaderValue};
use taskq_api::ApiError;

const INDEX: &str = include_str!("../../../dashboard/index.html");
const APP_JS: &str = include_str!("../../../dashboard/app.js");
const STYLE: &str = include_str!("../../../dashboard/style.css");

fn file(body: &'static str, content_type: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Files change with the binary; revalidate instead of serving a stale copy after an upgrade.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    r
}

/// The dashboard's routes, to merge with the API Router.
pub fn router() -> Router {
    let index = || async { file(INDEX, "text/html; charset=utf-8") };
    Router::new()
        .route("/", get(index))
        .route("/dashboard", get(index))
        .route("/dashboard/", get(index))
        .route("/dashboard/index.html", get(index))
        .route(
            "/dashboard/app.js",
            get(|| async { file(APP_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/dashboard/style.css",
            get(|| async { file(STYLE, "text/css; charset=utf-8") }),
        )
        // The same problem+json 405 as the API's routes.
        .method_not_allowed_fallback(|| async {
            ApiError::MethodNotAllowed("the dashboard's files answer GET only".into())
        })
}
