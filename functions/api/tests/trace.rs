//! The X-Ray trace header travels from the request to the task's queue message: from Lambda's
//! invocation context behind API Gateway, from `X-Amzn-Trace-Id` elsewhere.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::Request;
use lambda_http::request::LambdaRequest;
use lambda_http::{Adapter, Context, LambdaEvent, Service};
use serde_json::{json, Value};
use taskq_api::{router, AppState, Authenticator};
use taskq_core::memory::{MemoryTaskQueue, MemoryTaskStore};
use taskq_core::{Priority, TaskQueue, TaskService};
use tower::ServiceExt;

const SECRET: &str = "trace-secret";
const TRACE: &str = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";

fn app() -> (axum::Router, Arc<MemoryTaskQueue>) {
    let queue = Arc::new(MemoryTaskQueue::new(taskq_core::memory::MemoryQueueConfig::exact()));
    let service = TaskService::new(Arc::new(MemoryTaskStore::new()), queue.clone());
    let state = AppState::new(service, Authenticator::new(Some(SECRET), None, None));
    (router(state), queue)
}

async fn trace_of_next_message(queue: &MemoryTaskQueue, p: Priority) -> Option<String> {
    let d = queue.receive(p, 10, Duration::ZERO).await.unwrap();
    assert_eq!(d.len(), 1, "one message queued");
    d[0].trace_header.clone()
}

#[tokio::test]
async fn behind_api_gateway_the_invocation_trace_id_goes_with_the_message() {
    let (router, queue) = app();
    let path = format!("{}/../../events/api-create.json", env!("CARGO_MANIFEST_DIR"));
    let event: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let request: LambdaRequest = serde_json::from_value(event).unwrap();
    let mut context = Context::default();
    context.xray_trace_id = Some(TRACE.into());
    let response = Adapter::from(router)
        .call(LambdaEvent::new(request, context))
        .await
        .unwrap();
    assert_eq!(serde_json::to_value(&response).unwrap()["statusCode"], 202);
    assert_eq!(
        trace_of_next_message(&queue, Priority::High).await.as_deref(),
        Some(TRACE)
    );
}

async fn submit(router: axum::Router, trace: Option<&[u8]>, path: &str, body: Value) -> u16 {
    let token = taskq_api::auth::mint(SECRET, "alice", &[], 600).unwrap();
    let mut req = Request::post(path)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json");
    if let Some(t) = trace {
        req = req.header("x-amzn-trace-id", http::HeaderValue::from_bytes(t).unwrap());
    }
    let res = router
        .oneshot(req.body(Body::from(body.to_string())).unwrap())
        .await
        .unwrap();
    res.status().as_u16()
}

#[tokio::test]
async fn over_plain_http_the_trace_header_is_taken_from_x_amzn_trace_id() {
    let (router, queue) = app();
    let status = submit(
        router.clone(),
        Some(TRACE.as_bytes()),
        "/v1/tasks",
        json!({"type": "echo"}),
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(
        trace_of_next_message(&queue, Priority::Normal).await.as_deref(),
        Some(TRACE)
    );

    let status = submit(router.clone(), None, "/v1/tasks", json!({"type": "echo"})).await;
    assert_eq!(status, 202);
    assert_eq!(
        trace_of_next_message(&queue, Priority::Normal).await,
        None,
        "no header, no trace"
    );

    // A header that is not visible ASCII is ignored, not an error.
    let status = submit(router, Some(b"Root=\xff"), "/v1/tasks", json!({"type": "echo"})).await;
    assert_eq!(status, 202);
    assert_eq!(trace_of_next_message(&queue, Priority::Normal).await, None);
}

#[tokio::test]
async fn a_batch_carries_the_trace_header_on_every_message() {
    let (router, queue) = app();
    let tasks: Vec<Value> = (0..3).map(|_| json!({"type": "echo", "priority": "low"})).collect();
    let status = submit(
        router,
        Some(TRACE.as_bytes()),
        "/v1/tasks/batch",
        json!({"tasks": tasks}),
    )
    .await;
    assert_eq!(status, 202);
    let d = queue.receive(Priority::Low, 10, Duration::ZERO).await.unwrap();
    assert_eq!(d.len(), 3);
    assert!(d.iter().all(|m| m.trace_header.as_deref() == Some(TRACE)));
}
