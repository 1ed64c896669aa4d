//! The API Router on the embedded (in-memory) backends, called as lambda_http calls it (one
//! `oneshot` per request): what the service itself costs per request, without the network.
//! Run: `cargo bench -p taskq-api --bench router`.

use std::sync::Arc;

use axum::body::Body;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use taskq_api::{router, AppState, Authenticator};
use taskq_core::memory::{MemoryRateLimiter, MemoryTaskQueue, MemoryTaskStore};
use taskq_core::rate::RolePolicy;
use taskq_core::TaskService;
use tower::ServiceExt;

const SECRET: &str = "bench-secret";

fn new_app() -> axum::Router {
    let service = TaskService::new(Arc::new(MemoryTaskStore::new()), Arc::new(MemoryTaskQueue::default()));
    // The limiter runs on every request, as in production, but never refuses the benchmark.
    let policy =
        RolePolicy::parse(Some(r#"{"default":{"per_second":1000000,"burst":1000000}}"#), None).expect("a valid policy");
    let state = AppState::new(service, Authenticator::new(Some(SECRET), None, None))
        .with_limits(policy, Arc::new(MemoryRateLimiter::new()));
    router(state)
}

async fn call(app: &axum::Router, req: Request<Body>, expect: StatusCode) -> Value {
    let res = app.clone().oneshot(req).await.expect("the router is infallible");
    assert_eq!(res.status(), expect);
    let bytes = res.into_body().collect().await.expect("a body").to_bytes();
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

fn post(token: &str, path: &str, body: &Value) -> Request<Body> {
    Request::post(path)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("a valid request")
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let token = taskq_api::auth::mint(SECRET, "bench-user", &[], 3600).expect("a token");
    let task = json!({"type": "echo", "payload": {"hello": "world", "n": [1, 2, 3]}});
    let mut group = c.benchmark_group("router");

    let app = new_app();
    group.throughput(Throughput::Elements(1));
    group.bench_function("submit", |b| {
        b.to_async(&rt)
            .iter(|| call(&app, post(&token, "/v1/tasks", &task), StatusCode::ACCEPTED))
    });

    let app = new_app();
    let batch = json!({"tasks": vec![task.clone(); 100]});
    group.throughput(Throughput::Elements(100));
    group.bench_function("submit_batch_100", |b| {
        b.to_async(&rt)
            .iter(|| call(&app, post(&token, "/v1/tasks/batch", &batch), StatusCode::ACCEPTED))
    });

    let app = new_app();
    let created = rt.block_on(call(&app, post(&token, "/v1/tasks", &task), StatusCode::ACCEPTED));
    let path = format!("/v1/tasks/{}", created["id"].as_str().expect("a task id"));
    group.throughput(Throughput::Elements(1));
    group.bench_function("get", |b| {
        b.to_async(&rt).iter(|| {
            let req = Request::get(&path)
                .header("authorization", format!("Bearer {token}"))
                .body(Body::empty())
                .expect("a valid request");
            call(&app, req, StatusCode::OK)
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
