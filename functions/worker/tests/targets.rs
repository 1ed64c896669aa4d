//! `lambda` and `http` task targets, over the wire: the Lambda target through the SDK against a
//! server that speaks Lambda's Invoke protocol, the HTTP target through the guarded outbound
//! client against a receiver that verifies the signature; then both through the worker.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};
use taskq_core::memory::{MemoryQueueConfig, MemoryTaskQueue, MemoryTaskStore};
use taskq_core::{Catalog, NewTask, Priority, Status, SubmitRules, Task, TaskQueue, TaskService, TaskStore};
use taskq_outbound::signature::{self, SIGNATURE_HEADER};
use taskq_outbound::{Network, Outbound};
use taskq_worker::targets::{self, HttpClient, LambdaTarget, TargetClients, RUN_EVENT};
use taskq_worker::{HandlerError, Registry, TaskContext, Worker, WorkerConfig};

const SECRET: &[u8] = b"a-signing-secret-of-at-least-32-characters";

/// What the stand-in services saw.
#[derive(Default)]
struct Seen {
    lambda: Vec<(String, HeaderMap, Value)>,
    http: Vec<(String, HeaderMap, Vec<u8>)>,
}

type Shared = Arc<Mutex<Seen>>;

fn aws_error(status: StatusCode, kind: &str, message: &str) -> Response {
    (
        status,
        [("x-amzn-errortype", kind), ("content-type", "application/json")],
        json!({ "message": message }).to_string(),
    )
        .into_response()
}

/// Lambda's `Invoke` (`POST /2015-03-31/functions/{name}/invocations`), answering per function
/// name as the service does: a reply, a function error (`X-Amz-Function-Error`), or an error
/// of Invoke itself (`x-amzn-ErrorType`).
async fn invoke(State(seen): State<Shared>, Path(name): Path<String>, headers: HeaderMap, body: String) -> Response {
    let task: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    seen.lock().unwrap().lambda.push((name.clone(), headers, task.clone()));
    let function_error = |kind: &str, error_type: &str| {
        (
            StatusCode::OK,
            [("x-amz-function-error", kind)],
            json!({"errorType": error_type, "errorMessage": "it went wrong", "trace": []}).to_string(),
        )
            .into_response()
    };
    match name.rsplit(':').next().unwrap_or_default() {
        "resize" => (
            StatusCode::OK,
            json!({"resized": task["payload"]["key"], "attempt": task["attempt"]}).to_string(),
        )
            .into_response(),
        "crashes" => function_error("Unhandled", "Runtime.ExitError"),
        "refuses" => function_error("Handled", "BadImagePermanent"),
        "throttled" => aws_error(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequestsException",
            "Rate exceeded",
        ),
        "broken" => aws_error(StatusCode::INTERNAL_SERVER_ERROR, "ServiceException", "internal"),
        "not-json" => (StatusCode::OK, "hello").into_response(),
        "python-resize" => python_runtime(&body).await,
        _ => aws_error(StatusCode::NOT_FOUND, "ResourceNotFoundException", "Function not found"),
    }
}

/// The README's Python handler (`examples/python/lambda_handler.py`) run as Lambda's Python
/// runtime runs it: the event in, the return value out as JSON, an exception reported as a
/// function error whose `errorType` is the exception's class name.
async fn python_runtime(event: &str) -> Response {
    const SHIM: &str = r#"
import json, sys
sys.path.insert(0, "examples/python")
import lambda_handler
try:
    print(json.dumps({"ok": lambda_handler.handler(json.loads(sys.stdin.read()), None)}))
except Exception as e:
    print(json.dumps({"errorType": type(e).__name__, "errorMessage": str(e)}))
"#;
    let event = event.to_owned();
    let out = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = std::process::Command::new("python3")
            .args(["-c", SHIM])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 runs the README's handler");
        child.stdin.take().unwrap().write_all(event.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let reply: Value = serde_json::from_slice(&out.stdout).expect("the shim prints JSON");
    match reply.get("ok") {
        Some(result) => (StatusCode::OK, result.to_string()).into_response(),
        None => (
            StatusCode::OK,
            [("x-amz-function-error", "Unhandled")],
            reply.to_string(),
        )
            .into_response(),
    }
}

/// An `http` target's receiver: verifies every request's signature as the README tells users
/// to, then answers per path.
async fn receive(
    State(seen): State<Shared>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    seen.lock()
        .unwrap()
        .http
        .push((path.clone(), headers.clone(), body.to_vec()));
    let header = headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let now = chrono::Utc::now().timestamp();
    if signature::verify(SECRET, header, &body, now, signature::DEFAULT_TOLERANCE).is_err() {
        return (StatusCode::UNAUTHORIZED, "bad signature").into_response();
    }
    let task: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    match path.as_str() {
        "ok" => (StatusCode::OK, json!({"processed": task["id"]}).to_string()).into_response(),
        "busy" => (StatusCode::SERVICE_UNAVAILABLE, "try later").into_response(),
        "limited" => (StatusCode::TOO_MANY_REQUESTS, "slow down").into_response(),
        "bad" => (StatusCode::UNPROCESSABLE_ENTITY, "no such image").into_response(),
        "text" => (StatusCode::OK, "done").into_response(),
        "moved" => (StatusCode::FOUND, [("location", "/ok")], "").into_response(),
        "slow" => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            (StatusCode::OK, "{}").into_response()
        }
        _ => (StatusCode::NOT_FOUND, "").into_response(),
    }
}

async fn serve(seen: Shared) -> SocketAddr {
    let app = Router::new()
        .route("/2015-03-31/functions/{name}/invocations", post(invoke))
        .route("/hooks/{path}", post(receive))
        .with_state(seen);
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

async fn clients(addr: SocketAddr) -> TargetClients {
    let sdk = taskq_aws::testing::sdk_config(&format!("http://{addr}")).await;
    TargetClients {
        lambda: Some(LambdaTarget::client(&sdk)),
        // This receiver's address and nothing else on loopback.
        http: Some(HttpClient::new(
            Network::PublicAnd(vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]),
            SECRET,
        )),
    }
}

fn catalog(addr: SocketAddr) -> Catalog {
    let mut config = serde_json::Map::new();
    for f in [
        "resize",
        "crashes",
        "refuses",
        "throttled",
        "broken",
        "not-json",
        "gone",
        "python-resize",
    ] {
        let function = format!("arn:aws:lambda:us-east-1:123456789012:function:{f}");
        config.insert(format!("fn-{f}"), json!({"target": {"lambda": function}}));
    }
    for p in ["ok", "busy", "limited", "bad", "text", "moved", "slow"] {
        config.insert(
            format!("hook-{p}"),
            json!({"target": {"http": format!("http://127.0.0.1:{}/hooks/{p}", addr.port())}}),
        );
    }
    Catalog::from_json(&Value::Object(config).to_string()).unwrap()
}

/// The task as submitted through the service under `catalog`.
async fn task(catalog: &Catalog, body: Value) -> Task {
    let rules = SubmitRules {
        types: catalog.clone(),
        ..SubmitRules::default()
    };
    let new = NewTask::from_json_with(&body, "", &rules).unwrap();
    let service = TaskService::new(
        Arc::new(MemoryTaskStore::new()),
        Arc::new(MemoryTaskQueue::new(MemoryQueueConfig::exact())),
    );
    service.submit("u1", &new, None).await.unwrap().task
}

async fn run(registry: &Registry, catalog: &Catalog, body: Value) -> Result<Value, HandlerError> {
    let t = task(catalog, body).await;
    let handler = registry.get(t.task_type.as_str()).expect("registered");
    let mut t = t;
    t.attempts = 1;
    handler.run(TaskContext::detached(t)).await
}

async fn setup() -> (Shared, SocketAddr, Catalog, Registry) {
    let seen = Shared::default();
    let addr = serve(seen.clone()).await;
    let catalog = catalog(addr);
    let mut registry = Registry::with_builtins();
    targets::register(&mut registry, &catalog, &clients(addr).await).unwrap();
    (seen, addr, catalog, registry)
}

#[tokio::test]
async fn a_lambda_target_is_invoked_synchronously_with_the_task_and_its_reply_is_the_result() {
    let (seen, _, catalog, registry) = setup().await;
    let result = run(
        &registry,
        &catalog,
        json!({"type": "fn-resize", "payload": {"key": "a.png"}}),
    )
    .await;
    assert_eq!(result.unwrap(), json!({"resized": "a.png", "attempt": 1}));
    let seen = seen.lock().unwrap();
    let (name, headers, sent) = &seen.lambda[0];
    assert_eq!(name, "arn:aws:lambda:us-east-1:123456789012:function:resize");
    // Signed by the SDK, and synchronous (RequestResponse is the default: no header, or it).
    let auth = headers["authorization"].to_str().unwrap();
    assert!(
        auth.starts_with("AWS4-HMAC-SHA256 ") && auth.contains("/lambda/aws4_request"),
        "{auth}"
    );
    assert!(headers
        .get("x-amz-invocation-type")
        .is_none_or(|v| v == "RequestResponse"));
    assert_eq!(sent["type"], "fn-resize");
    assert_eq!(sent["payload"], json!({"key": "a.png"}));
    assert_eq!(
        (sent["attempt"].as_u64(), sent["max_attempts"].as_u64()),
        (Some(1), Some(3))
    );
    assert!(sent["id"].as_str().unwrap().len() == 26);
    let deadline = chrono::DateTime::parse_from_rfc3339(sent["deadline"].as_str().unwrap()).unwrap();
    let ahead = deadline.timestamp() - chrono::Utc::now().timestamp();
    assert!((55..=60).contains(&ahead), "deadline {ahead} s ahead");
}

#[tokio::test]
async fn lambda_failures_follow_the_documented_retry_rule() {
    let (seen, _, catalog, registry) = setup().await;
    for (t, retryable, kind, words) in [
        ("fn-crashes", true, "function_error", "Runtime.ExitError: it went wrong"),
        ("fn-refuses", false, "function_error", "BadImagePermanent"),
        ("fn-throttled", true, "invoke_failed", "TooManyRequestsException"),
        ("fn-broken", true, "invoke_failed", "ServiceException"),
        ("fn-gone", false, "invoke_failed", "ResourceNotFoundException"),
        ("fn-not-json", false, "target_reply", "not JSON"),
    ] {
        let e = run(&registry, &catalog, json!({"type": t})).await.unwrap_err();
        assert_eq!((e.retryable, e.kind.as_str()), (retryable, kind), "{t}: {e}");
        assert!(e.message.contains(words), "{t}: {e}");
    }
    // One Invoke per attempt: the SDK does not retry on its own (a retry of a lost response
    // would run the function twice under one attempt).
    assert_eq!(seen.lock().unwrap().lambda.len(), 6);
}

#[tokio::test]
async fn an_http_target_gets_a_signed_post_and_its_json_reply_is_the_result() {
    let (seen, _, catalog, registry) = setup().await;
    let result = run(&registry, &catalog, json!({"type": "hook-ok", "payload": [1, 2]}))
        .await
        .unwrap();
    let seen = seen.lock().unwrap();
    let (_, headers, body) = &seen.http[0];
    let sent: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(result, json!({"processed": sent["id"]}));
    assert_eq!(sent["payload"], json!([1, 2]));
    assert_eq!(headers["taskq-event"], RUN_EVENT);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(
        headers["taskq-delivery"].to_str().unwrap(),
        format!("{}.1", sent["id"].as_str().unwrap())
    );
}

#[tokio::test]
async fn http_failures_follow_the_documented_retry_rule() {
    let (seen, _, catalog, registry) = setup().await;
    for (t, retryable, kind) in [
        ("hook-busy", true, "target_status"),
        ("hook-limited", true, "target_status"),
        ("hook-bad", false, "target_status"),
        ("hook-text", false, "target_reply"),
        // A configured target does not redirect elsewhere: the 302 is the answer.
        ("hook-moved", false, "target_status"),
    ] {
        let e = run(&registry, &catalog, json!({"type": t})).await.unwrap_err();
        assert_eq!((e.retryable, e.kind.as_str()), (retryable, kind), "{t}: {e}");
    }
    assert!(
        seen.lock().unwrap().http.iter().all(|(p, _, _)| p != "ok"),
        "the redirect was not followed"
    );
    // The worker's timeout stops a slow receiver; the handler itself would wait for it.
    let slow = tokio::time::timeout(
        Duration::from_millis(300),
        run(&registry, &catalog, json!({"type": "hook-slow"})),
    )
    .await;
    assert!(slow.is_err());
}

#[tokio::test]
async fn an_http_target_reaches_no_address_the_outbound_guard_refuses() {
    let seen = Shared::default();
    let addr = serve(seen.clone()).await;
    // As deployed: public addresses only, https only. A target on loopback (or the Runtime API,
    // or instance metadata) is refused before any connection.
    let mut registry = Registry::with_builtins();
    let clients = TargetClients {
        lambda: None,
        http: Some(HttpClient::with_outbound(
            Outbound::new(HttpClient::policy(Network::PublicOnly)),
            SECRET,
        )),
    };
    let only_http = Catalog::from_json(
        &json!({
            "hook-ok": {"target": {"http": format!("http://127.0.0.1:{}/hooks/ok", addr.port())}},
            "metadata": {"target": {"http": "https://169.254.169.254/latest/meta-data/"}},
            "runtime": {"target": {"http": "https://127.0.0.1:9001/2018-06-01/runtime/invocation/next"}}
        })
        .to_string(),
    )
    .unwrap();
    targets::register(&mut registry, &only_http, &clients).unwrap();
    for t in ["hook-ok", "metadata", "runtime"] {
        let e = run(&registry, &only_http, json!({"type": t})).await.unwrap_err();
        assert_eq!((e.retryable, e.kind.as_str()), (false, "target_refused"), "{t}: {e}");
    }
    assert!(seen.lock().unwrap().http.is_empty());
}

#[tokio::test]
async fn a_worker_without_a_client_a_target_needs_does_not_start() {
    let (_, _, catalog, _) = setup().await;
    let e = targets::register(&mut Registry::with_builtins(), &catalog, &TargetClients::default()).unwrap_err();
    assert!(
        e.contains("fn-resize (lambda: no Lambda client)") && e.contains("hook-ok (http: no signing secret)"),
        "{e}"
    );
}

#[tokio::test]
async fn both_targets_through_the_worker_from_submit_to_succeeded() {
    let (seen, _, catalog, registry) = setup().await;
    let store = Arc::new(MemoryTaskStore::new());
    let queue = Arc::new(MemoryTaskQueue::new(MemoryQueueConfig::exact()));
    let service = TaskService::new(store.clone(), queue.clone());
    let worker = Worker::new(store.clone(), queue.clone(), registry, WorkerConfig::default());
    let rules = SubmitRules {
        types: catalog.clone(),
        ..SubmitRules::default()
    };
    let mut ids = Vec::new();
    for body in [
        json!({"type": "fn-resize", "payload": {"key": "b.png"}}),
        json!({"type": "hook-ok"}),
        json!({"type": "fn-refuses"}),
    ] {
        let new = NewTask::from_json_with(&body, "", &rules).unwrap();
        ids.push(service.submit("u1", &new, None).await.unwrap().task.id);
    }
    let got = queue
        .receive(Priority::Normal, 10, Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(got.len(), 3);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let response = worker
        .process_batch(taskq_worker::sqs::event_from(Priority::Normal, got), deadline)
        .await;
    assert!(response.batch_item_failures.is_empty());
    let resize = store.get("u1", ids[0]).await.unwrap().unwrap();
    assert_eq!(
        (resize.status, resize.result.clone()),
        (Status::Succeeded, Some(json!({"resized": "b.png", "attempt": 1})))
    );
    let hook = store.get("u1", ids[1]).await.unwrap().unwrap();
    assert_eq!(hook.status, Status::Succeeded);
    assert_eq!(hook.result.unwrap()["processed"], ids[1].to_string());
    let refused = store.get("u1", ids[2]).await.unwrap().unwrap();
    assert_eq!(refused.status, Status::Failed);
    assert_eq!(refused.error.unwrap().kind, "function_error");
    // The deadline sent is the worker's: at most the task's timeout from when it started.
    let sent = &seen.lock().unwrap().lambda[0].2;
    let deadline = chrono::DateTime::parse_from_rfc3339(sent["deadline"].as_str().unwrap()).unwrap();
    assert!(deadline.timestamp() - chrono::Utc::now().timestamp() <= 60);
}

#[tokio::test]
async fn the_readme_python_lambda_handler_follows_the_contract() {
    let (_, _, catalog, registry) = setup().await;
    let ok = run(
        &registry,
        &catalog,
        json!({"type": "fn-python-resize", "payload": {"key": "a.png"}}),
    )
    .await;
    assert_eq!(ok.unwrap(), json!({"thumbnail": "thumbs/a.png", "attempt": 1}));
    let busy = run(
        &registry,
        &catalog,
        json!({"type": "fn-python-resize", "payload": {"key": "busy/b.png"}}),
    )
    .await
    .unwrap_err();
    assert_eq!((busy.retryable, busy.kind.as_str()), (true, "function_error"), "{busy}");
    assert!(busy.message.starts_with("RuntimeError: storage is busy"), "{busy}");
    let bad = run(
        &registry,
        &catalog,
        json!({"type": "fn-python-resize", "payload": {"key": 7}}),
    )
    .await
    .unwrap_err();
    assert_eq!((bad.retryable, bad.kind.as_str()), (false, "function_error"), "{bad}");
}

/// Kills the receiver when the test ends, however it ends.
struct Child(std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_readme_python_http_receiver_takes_signed_tasks_and_refuses_forged_ones() {
    let port = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _receiver = Child(
        std::process::Command::new("python3")
            .arg("examples/python/http_receiver.py")
            .env("PORT", port.to_string())
            .env("TASKQ_SIGNING_SECRET", std::str::from_utf8(SECRET).unwrap())
            .spawn()
            .expect("python3 runs the README's receiver"),
    );
    let started = std::time::Instant::now();
    while tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))
        .await
        .is_err()
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the receiver did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let catalog =
        Catalog::from_json(&json!({"py": {"target": {"http": format!("http://127.0.0.1:{port}/run")}}}).to_string())
            .unwrap();
    let network = Network::PublicAnd(vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]);
    for (secret, accepted) in [(SECRET, true), (&b"somebody-else-entirely-with-32-chars!!"[..], false)] {
        let mut registry = Registry::with_builtins();
        let clients = TargetClients {
            lambda: None,
            http: Some(HttpClient::new(network.clone(), secret)),
        };
        targets::register(&mut registry, &catalog, &clients).unwrap();
        let t = task(&catalog, json!({"type": "py", "payload": {"n": 1}})).await;
        let id = t.id.to_string();
        let handler = registry.get("py").unwrap();
        let outcome = handler.run(TaskContext::detached(t)).await;
        if accepted {
            assert_eq!(outcome.unwrap(), json!({"handled": id, "payload": {"n": 1}}));
        } else {
            let e = outcome.unwrap_err();
            assert_eq!((e.retryable, e.kind.as_str()), (false, "target_status"), "{e}");
            assert!(e.message.starts_with("HTTP 401"), "{e}");
        }
    }
}
