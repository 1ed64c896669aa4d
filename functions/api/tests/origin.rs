//! With an origin secret configured (the deployed stack: CloudFront adds it), a request without
//! it, or with a wrong one, is refused before anything else runs: health, unknown routes and
//! authenticated routes alike. Without one (taskq-local, tests), nothing is required.

mod common;
use common::*;

fn app(secret: Option<&str>) -> axum::Router {
    let service = TaskService::new(Arc::new(MemoryTaskStore::new()), Arc::new(MemoryTaskQueue::default()));
    let state = AppState::new(service, Authenticator::new(Some(SECRET), None, None));
    router(match secret {
        Some(s) => state.with_origin_secret(s),
        None => state,
    })
}

async fn status(
    router: &axum::Router,
    method: Method,
    uri: &str,
    origin: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut b = Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer {}", token("alice")));
    if let Some(o) = origin {
        b = b.header("x-taskq-origin-verify", o);
    }
    let req = match body {
        Some(v) => b
            .header("content-type", "application/json")
            .body(Body::from(v.to_string())),
        None => b.body(Body::empty()),
    }
    .unwrap();
    let res = router.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

#[tokio::test]
async fn requests_without_the_origin_secret_are_refused_when_one_is_configured() {
    let secret = "s".repeat(64);
    let r = app(Some(&secret));
    let submit = json!({"type": "echo"});
    for (method, uri, body) in [
        (Method::GET, "/v1/health", None),
        (Method::GET, "/v1/openapi.json", None),
        (Method::GET, "/v1/tasks", None),
        (Method::POST, "/v1/tasks", Some(submit.clone())),
        (Method::GET, "/v1/no-such-route", None),
    ] {
        for wrong in [
            None,
            Some(""),
            Some("s"),
            Some(&secret[..63]),
            Some("t".repeat(64).as_str()),
        ] {
            let (code, problem) = status(&r, method.clone(), uri, wrong, body.clone()).await;
            assert_eq!(code, StatusCode::FORBIDDEN, "{method} {uri} with {wrong:?}");
            assert_eq!(problem["status"], 403);
            assert!(problem["detail"].as_str().unwrap().contains("CloudFront"), "{problem}");
        }
    }
    assert_eq!(
        status(&r, Method::GET, "/v1/health", Some(&secret), None).await.0,
        StatusCode::OK
    );
    assert_eq!(
        status(&r, Method::POST, "/v1/tasks", Some(&secret), Some(submit))
            .await
            .0,
        StatusCode::ACCEPTED
    );
    // Nothing was submitted by the refused requests.
    let (_, list) = status(&r, Method::GET, "/v1/tasks", Some(&secret), None).await;
    assert_eq!(list["tasks"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn no_origin_secret_configured_means_none_is_required() {
    let r = app(None);
    assert_eq!(
        status(&r, Method::GET, "/v1/health", None, None).await.0,
        StatusCode::OK
    );
    assert_eq!(
        status(&r, Method::GET, "/v1/tasks", Some("anything"), None).await.0,
        StatusCode::OK
    );
}
