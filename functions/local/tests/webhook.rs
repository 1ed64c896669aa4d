//! Completion webhooks end to end through taskq-local: submit over HTTP with a callback_url, the
//! worker runs the task, the in-process sender POSTs it to a receiver on 127.0.0.1 that verifies
//! the signature, and the outcome shows in `GET /v1/tasks/{id}/events`. On the embedded backends
//! and on DynamoDB + SQS as moto speaks them.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{json, Value};
use taskq_core::memory::MemoryQueueConfig;
use taskq_local::{start, Backend, LocalOptions, LocalServer, WebhookRetryPolicy};

const SECRET: &str = "webhook-e2e-jwt-secret";
const WEBHOOK_SECRET: &str = "webhook-e2e-signing-secret-0123456789";

type Seen = Arc<Mutex<Vec<(HeaderMap, Bytes, bool)>>>;

/// Whether a request carries a valid signature over its body (as a receiver checks it).
fn verified(headers: &HeaderMap, body: &[u8]) -> bool {
    let sig = headers
        .get("taskq-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let now = chrono::Utc::now().timestamp();
    taskq_webhook::verify(
        WEBHOOK_SECRET.as_bytes(),
        sig,
        body,
        now,
        taskq_webhook::DEFAULT_TOLERANCE,
    )
    .is_ok()
}

/// GET `url` with `token`, as JSON.
async fn get_json(http: &reqwest::Client, url: String, token: &str) -> Value {
    http.get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A receiver that answers 503 to its first request, then 200, and records whether each
/// request's signature verified.
async fn receiver() -> (Seen, String) {
    let seen: Seen = Arc::default();
    async fn hook(State(seen): State<Seen>, headers: HeaderMap, body: Bytes) -> StatusCode {
        let ok = verified(&headers, &body);
        let mut seen = seen.lock().unwrap();
        seen.push((headers, body, ok));
        if seen.len() == 1 {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::NO_CONTENT
        }
    }
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (seen, url)
}

fn options(backend: Backend) -> LocalOptions {
    let mut o = LocalOptions::new("127.0.0.1:0".parse().unwrap(), SECRET);
    o.backend = backend;
    o.callback.allow_loopback = true;
    o.outbound = taskq_local::Network::AllowLoopback;
    o.webhook_secret = WEBHOOK_SECRET.into();
    o.webhook_retry = WebhookRetryPolicy {
        base: Duration::from_millis(50),
        cap: Duration::from_millis(100),
        ..WebhookRetryPolicy::default()
    };
    o.event_sources.poll_wait = Duration::from_millis(500);
    o
}

async fn memory(_: &str) -> Option<LocalServer> {
    Some(
        start(options(Backend::Memory(MemoryQueueConfig::default())))
            .await
            .unwrap(),
    )
}

async fn moto(test: &str) -> Option<LocalServer> {
    let endpoint = taskq_aws::testing::endpoint(test)?;
    let (sdk, config) = taskq_aws::testing::fresh(&endpoint, 30).await;
    let (store, queue) = config.adapters_from(&sdk);
    let backend = Backend::Ports {
        store: Arc::new(store),
        queue: Arc::new(queue),
    };
    Some(start(options(backend)).await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_a_finished_task_is_posted_signed_once_and_recorded() {
    if let Some(server) = memory("memory").await {
        a_finished_task_is_posted_signed_once_and_recorded(server).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_a_finished_task_is_posted_signed_once_and_recorded() {
    if let Some(server) = moto("moto_a_finished_task_is_posted_signed_once_and_recorded").await {
        a_finished_task_is_posted_signed_once_and_recorded(server).await
    }
}

async fn a_finished_task_is_posted_signed_once_and_recorded(server: LocalServer) {
    let (seen, url) = receiver().await;
    let http = reqwest::Client::new();
    let token = taskq_api::auth::mint(SECRET, "hooked", &[], 600).unwrap();
    let base = server.base_url();
    let submitted: Value = http
        .post(format!("{base}/v1/tasks"))
        .bearer_auth(&token)
        .json(&json!({"type": "echo", "payload": {"hello": "hook"}, "callback_url": url}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = submitted["id"].as_str().expect("a task").to_owned();
    assert_eq!(submitted["callback_url"], url.as_str());

    // Wait for the outcome in the history: the task runs, the first POST gets a 503, the
    // retry a 204.
    let deadline = Instant::now() + Duration::from_secs(20);
    let events = loop {
        let events = get_json(&http, format!("{base}/v1/tasks/{id}/events"), &token).await;
        let kinds: Vec<&str> = events["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["type"].as_str())
            .collect();
        if kinds.iter().any(|k| k.starts_with("webhook_")) {
            break events;
        }
        assert!(Instant::now() < deadline, "no webhook outcome recorded: {events}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let list = events["events"].as_array().unwrap();
    let kinds: Vec<&str> = list.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(kinds, ["submitted", "started", "succeeded", "webhook_delivered"]);
    let outcome = list.last().unwrap();
    assert_eq!(outcome["attempt"], 2);
    assert_eq!(outcome["seq"], 4);
    assert_eq!(outcome["detail"], format!("delivery {id}-3: HTTP 204").as_str());

    // Let any (wrong) second delivery arrive before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen.len(),
        2,
        "one 503, one retry; nothing after the outcome was recorded"
    );
    let task = get_json(&http, format!("{base}/v1/tasks/{id}"), &token).await;
    for (headers, body, verified) in &seen {
        assert!(verified, "the receiver verified the signature");
        assert_eq!(headers["taskq-event"], "task.succeeded");
        assert_eq!(headers["taskq-delivery"], format!("{id}-3").as_str());
        let posted: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(posted, task, "the body is the task as GET shows it");
    }
    assert_eq!(task["result"], json!({"hello": "hook"}));
}

/// A configured `http` task type through taskq-local: the API accepts it (and refuses a type
/// not configured), the worker POSTs the task signed with the webhook secret to the target, a
/// 503 is retried, and the target's JSON reply becomes the result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_http_task_type_runs_at_its_target() {
    let seen: Seen = Arc::default();
    async fn target(State(seen): State<Seen>, headers: HeaderMap, body: Bytes) -> (StatusCode, String) {
        let ok = verified(&headers, &body);
        let task: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let mut seen = seen.lock().unwrap();
        seen.push((headers, body, ok));
        if seen.len() == 1 {
            return (StatusCode::SERVICE_UNAVAILABLE, "warming up".into());
        }
        (
            StatusCode::OK,
            json!({"sent_to": task["payload"]["to"], "attempt": task["attempt"]}).to_string(),
        )
    }
    let app = axum::Router::new()
        .route("/run", axum::routing::post(target))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/run", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let mut o = options(Backend::Memory(MemoryQueueConfig::default()));
    o.worker.retry_base = Duration::from_millis(10);
    o.worker.retry_cap = Duration::from_millis(20);
    o.types = taskq_core::Catalog::from_json(
        &json!({"notify": {"target": {"http": url}, "payload_schema": {"type": "object", "required": ["to"]}}})
            .to_string(),
    )
    .unwrap();
    let server = start(o).await.unwrap();
    let http = reqwest::Client::new();
    let token = taskq_api::auth::mint(SECRET, "notifier", &[], 600).unwrap();
    let base = server.base_url();
    let submit = |body: Value| {
        http.post(format!("{base}/v1/tasks"))
            .bearer_auth(&token)
            .json(&body)
            .send()
    };
    assert_eq!(
        submit(json!({"type": "notify", "payload": {}})).await.unwrap().status(),
        400
    );
    assert_eq!(submit(json!({"type": "resize"})).await.unwrap().status(), 400);
    let submitted: Value = submit(json!({"type": "notify", "payload": {"to": "ana"}}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = submitted["id"].as_str().expect("a task").to_owned();
    let task = get_json(&http, format!("{base}/v1/tasks/{id}?wait=20"), &token).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(task["result"], json!({"sent_to": "ana", "attempt": 2}));
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|(_, _, ok)| *ok), "every request verified");
}
