//! Deliveries to a real receiver on 127.0.0.1 that checks every signature with
//! [`taskq_webhook::verify`], as a user's receiver would; and the stream handler on records
//! shaped like DynamoDB's.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lambda_events::dynamodb::Event;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{json, Value};
use taskq_core::callback::CallbackRules;
use taskq_core::faults::{FaultCounts, FaultPlan, FaultyStore};
use taskq_core::memory::{MemoryTaskQueue, MemoryTaskStore};
use taskq_core::{
    EventKind, NewTask, Snapshot, Status, SubmitRules, Task, TaskFailure, TaskService, TaskStore, Transition,
};
use taskq_webhook::{
    handle, verify, Deliverer, Network, Outcome, Processed, RetryPolicy, SignatureError, Webhooks, DEFAULT_TOLERANCE,
};

const SECRET: &str = "whsec-test-secret-0123456789abcdef";

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
struct Received {
    headers: HeaderMap,
    body: Bytes,
    /// `verify` with the right secret at arrival.
    verified: Result<(), SignatureError>,
}

#[derive(Clone, Default)]
struct Receiver {
    received: Arc<Mutex<Vec<Received>>>,
    /// Statuses to answer with, in order; then 200.
    script: Arc<Mutex<VecDeque<u16>>>,
    /// Delay before answering the first request (a slow receiver).
    first_delay: Arc<Mutex<Option<Duration>>>,
}

impl Receiver {
    async fn start(script: &[u16]) -> (Self, String) {
        let r = Receiver::default();
        r.script.lock().unwrap().extend(script);
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(r.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (r, format!("http://{addr}/hook"))
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let delay = r.first_delay.lock().unwrap().take();
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    let header = headers
        .get("taskq-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let verified = verify(
        SECRET.as_bytes(),
        &header,
        &body,
        chrono::Utc::now().timestamp(),
        DEFAULT_TOLERANCE,
    );
    r.received.lock().unwrap().push(Received {
        headers,
        body,
        verified,
    });
    let status = r.script.lock().unwrap().pop_front().unwrap_or(200);
    StatusCode::from_u16(status).unwrap()
}

fn fast() -> RetryPolicy {
    RetryPolicy {
        attempts: 4,
        base: Duration::from_millis(10),
        cap: Duration::from_millis(40),
        attempt_timeout: Duration::from_secs(2),
    }
}

fn webhooks(store: Arc<dyn TaskStore>, policy: RetryPolicy, network: Network) -> Webhooks {
    Webhooks::new(Deliverer::new(SECRET, policy, network).unwrap(), store)
}

/// A task with `callback` that ran and ended with `end` (succeed or fail).
async fn ended(store: &Arc<MemoryTaskStore>, callback: &str, succeed: bool) -> Task {
    let service = TaskService::new(store.clone(), Arc::new(MemoryTaskQueue::default()));
    let rules = SubmitRules {
        callback: CallbackRules { allow_loopback: true },
        ..SubmitRules::default()
    };
    let new = NewTask::from_json_with(
        &json!({"type": "echo", "payload": {"n": 1}, "callback_url": callback}),
        "",
        &rules,
    )
    .unwrap();
    let task = service.submit("alice", &new, None).await.unwrap().task;
    let now = chrono::Utc::now();
    let start = Transition::Start {
        lease_until: now + chrono::Duration::seconds(60),
    }
    .plan(Snapshot::from(&task), now)
    .unwrap();
    let running = store.apply("alice", task.id, &start).await.unwrap();
    let end = if succeed {
        Transition::Succeed {
            result: json!({"ok": true}),
        }
    } else {
        Transition::Fail {
            error: TaskFailure::new("handler", "boom"),
        }
    };
    let change = end.plan(Snapshot::from(&running), now).unwrap();
    store.apply("alice", task.id, &change).await.unwrap()
}

fn header<'a>(r: &'a Received, name: &str) -> &'a str {
    r.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
}

#[tokio::test]
async fn a_terminal_task_is_delivered_once_signed_and_recorded() {
    let (receiver, url) = Receiver::start(&[]).await;
    let store = Arc::new(MemoryTaskStore::new());
    let task = ended(&store, &url, true).await;
    let hooks = webhooks(store.clone(), fast(), Network::AllowLoopback);

    let done = hooks.process(&task).await.unwrap();
    assert_eq!(
        done,
        Processed::Done(Outcome::Delivered {
            status: 200,
            attempts: 1
        })
    );
    let got = receiver.received();
    assert_eq!(got.len(), 1);
    let r = &got[0];
    assert_eq!(r.verified, Ok(()), "the receiver verified the signature");
    assert_eq!(header(r, "content-type"), "application/json");
    assert_eq!(header(r, "taskq-event"), "task.succeeded");
    assert_eq!(header(r, "taskq-delivery"), format!("{}-3", task.id));
    assert!(header(r, "taskq-signature").starts_with("t="));
    // The body is the task as the API shows it: no history, no owner.
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body, serde_json::to_value(&task).unwrap());
    assert_eq!(body["status"], "succeeded");
    assert_eq!(body["callback_url"], url.as_str());
    assert!(body.get("history").is_none() && body.get("user_id").is_none());

    // Recorded in the history; the task itself is unchanged (terminal stays terminal).
    let stored = store.get("alice", task.id).await.unwrap().unwrap();
    let last = stored.history.last().unwrap();
    assert_eq!(last.kind, EventKind::WebhookDelivered);
    assert_eq!((last.seq, last.attempt), (4, Some(1)));
    assert_eq!(
        last.detail.as_deref(),
        Some(format!("delivery {}-3: HTTP 200", task.id).as_str())
    );
    assert_eq!(stored.status, Status::Succeeded);
    assert_eq!(stored.updated_at, task.updated_at);

    // The same version again (a duplicate stream record): found recorded, not sent again.
    assert_eq!(hooks.process(&task).await.unwrap(), Processed::AlreadyRecorded);
    // The version the record wrote: not a delivery's cue.
    assert_eq!(hooks.process(&stored).await.unwrap(), Processed::Skipped);
    assert_eq!(receiver.received().len(), 1);
}

#[tokio::test]
async fn a_failing_receiver_is_retried_with_fresh_signatures_and_one_delivery_id() {
    let (receiver, url) = Receiver::start(&[500, 429, 200]).await;
    let store = Arc::new(MemoryTaskStore::new());
    let task = ended(&store, &url, false).await;
    let done = webhooks(store.clone(), fast(), Network::AllowLoopback)
        .process(&task)
        .await
        .unwrap();
    assert_eq!(
        done,
        Processed::Done(Outcome::Delivered {
            status: 200,
            attempts: 3
        })
    );
    let got = receiver.received();
    assert_eq!(got.len(), 3);
    for r in &got {
        assert_eq!(r.verified, Ok(()));
        assert_eq!(header(r, "taskq-event"), "task.failed");
        assert_eq!(header(r, "taskq-delivery"), header(&got[0], "taskq-delivery"));
        assert_eq!(r.body, got[0].body);
    }
    let stored = store.get("alice", task.id).await.unwrap().unwrap();
    assert_eq!(stored.history.last().unwrap().attempt, Some(3));
}

#[tokio::test]
async fn a_4xx_is_permanent_and_exhausted_retries_fail_both_recorded() {
    let (receiver, url) = Receiver::start(&[404]).await;
    let store = Arc::new(MemoryTaskStore::new());
    let task = ended(&store, &url, true).await;
    let done = webhooks(store.clone(), fast(), Network::AllowLoopback)
        .process(&task)
        .await
        .unwrap();
    assert!(
        matches!(&done, Processed::Done(Outcome::Failed { attempts: 1, permanent: true, error }) if error == "HTTP 404"),
        "{done:?}"
    );
    assert_eq!(receiver.received().len(), 1, "no retry after a 404");
    let last = store
        .get("alice", task.id)
        .await
        .unwrap()
        .unwrap()
        .history
        .pop()
        .unwrap();
    assert_eq!(last.kind, EventKind::WebhookFailed);
    assert!(last.detail.unwrap().ends_with("refused: HTTP 404"));

    let (receiver, url) = Receiver::start(&[503, 503, 503]).await;
    let task = ended(&store, &url, true).await;
    let policy = RetryPolicy { attempts: 3, ..fast() };
    let done = webhooks(store.clone(), policy, Network::AllowLoopback)
        .process(&task)
        .await
        .unwrap();
    assert!(
        matches!(
            &done,
            Processed::Done(Outcome::Failed {
                attempts: 3,
                permanent: false,
                ..
            })
        ),
        "{done:?}"
    );
    assert_eq!(receiver.received().len(), 3);
    let last = store
        .get("alice", task.id)
        .await
        .unwrap()
        .unwrap()
        .history
        .pop()
        .unwrap();
    assert_eq!((last.kind, last.attempt), (EventKind::WebhookFailed, Some(3)));
    assert!(last.detail.unwrap().ends_with("gave up: HTTP 503"));
}

#[tokio::test]
async fn a_slow_receiver_times_out_and_is_retried() {
    let (receiver, url) = Receiver::start(&[]).await;
    *receiver.first_delay.lock().unwrap() = Some(Duration::from_secs(3));
    let store = Arc::new(MemoryTaskStore::new());
    let task = ended(&store, &url, true).await;
    let policy = RetryPolicy {
        attempt_timeout: Duration::from_millis(300),
        ..fast()
    };
    let started = std::time::Instant::now();
    let done = webhooks(store.clone(), policy, Network::AllowLoopback)
        .process(&task)
        .await
        .unwrap();
    assert_eq!(
        done,
        Processed::Done(Outcome::Delivered {
            status: 200,
            attempts: 2
        })
    );
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
}

#[tokio::test]
async fn forged_tampered_and_replayed_signatures_are_refused() {
    let (receiver, url) = Receiver::start(&[]).await;
    let store = Arc::new(MemoryTaskStore::new());
    let task = ended(&store, &url, true).await;
    // Signed with another secret: the receiver's check fails.
    let forger = Webhooks::new(
        Deliverer::new("not-the-secret-0123456789abcdef0123", fast(), Network::AllowLoopback).unwrap(),
        store.clone(),
    );
    forger.process(&task).await.unwrap();
    let got = receiver.received();
    assert_eq!(got[0].verified, Err(SignatureError::Mismatch));

    // A genuine request, then replayed later or with a changed body.
    let task = ended(&store, &url, true).await;
    webhooks(store.clone(), fast(), Network::AllowLoopback)
        .process(&task)
        .await
        .unwrap();
    let genuine = receiver.received().pop().unwrap();
    assert_eq!(genuine.verified, Ok(()));
    let h = header(&genuine, "taskq-signature");
    let t: i64 = h.split(',').next().unwrap()[2..].parse().unwrap();
    let s = SECRET.as_bytes();
    assert_eq!(verify(s, h, &genuine.body, t + 299, DEFAULT_TOLERANCE), Ok(()));
    assert!(matches!(
        verify(s, h, &genuine.body, t + 301, DEFAULT_TOLERANCE),
        Err(SignatureError::OutsideWindow { .. })
    ));
    let tampered = String::from_utf8(genuine.body.to_vec())
        .unwrap()
        .replace("succeeded", "failed");
    assert_eq!(
        verify(s, h, tampered.as_bytes(), t, DEFAULT_TOLERANCE),
        Err(SignatureError::Mismatch)
    );
}

#[tokio::test]
async fn only_public_addresses_are_reached_in_production_mode() {
    let (receiver, url) = Receiver::start(&[]).await;
    let port = url.trim_start_matches("http://127.0.0.1:").trim_end_matches("/hook");
    let store = Arc::new(MemoryTaskStore::new());
    let hooks = webhooks(store.clone(), fast(), Network::PublicOnly);
    // An IP literal (checked before sending) and a name that resolves to loopback (refused by
    // the resolver), as if either had been stored: nothing reaches the receiver, no retries.
    for (callback, reason) in [
        (url.replace("http://", "https://"), "not a public address"),
        (
            format!("https://localhost:{port}/hook"),
            "resolves to no public address",
        ),
    ] {
        let task = ended(&store, &callback, true).await;
        let done = hooks.process(&task).await.unwrap();
        match done {
            Processed::Done(Outcome::Failed {
                permanent: true, error, ..
            }) => assert!(error.contains(reason), "{callback}: {error}"),
            other => panic!("{callback}: {other:?}"),
        }
        let last = store
            .get("alice", task.id)
            .await
            .unwrap()
            .unwrap()
            .history
            .pop()
            .unwrap();
        assert_eq!(last.kind, EventKind::WebhookFailed);
    }
    assert!(receiver.received().is_empty());
}

/// A stream record (the AWS fixture's shape) whose new image is `task`.
fn record(event_name: &str, task: &Task, sequence: u32) -> Value {
    let item: serde_dynamo::Item = taskq_aws::task_to_image(task).unwrap().into();
    raw_record(event_name, serde_json::to_value(item).unwrap(), sequence)
}

fn raw_record(event_name: &str, image: Value, sequence: u32) -> Value {
    let fixture: Value =
        serde_json::from_str(include_str!("../../../events/fixtures/example-dynamodb-event.json")).unwrap();
    let mut r = fixture["Records"][0].clone();
    r["eventName"] = json!(event_name);
    r["dynamodb"]["NewImage"] = image;
    r["dynamodb"]["SequenceNumber"] = json!(sequence.to_string());
    r
}

#[tokio::test]
async fn the_stream_handler_delivers_each_terminal_version_once() {
    let (receiver, url) = Receiver::start(&[]).await;
    let store = Arc::new(MemoryTaskStore::new());
    let task = ended(&store, &url, true).await;
    let mut queued = task.clone();
    queued.status = Status::Queued;
    queued.history.truncate(1);
    let hooks = webhooks(store.clone(), fast(), Network::AllowLoopback);
    let batch: Event = serde_json::from_value(json!({"Records": [
        record("INSERT", &queued, 1),
        record("MODIFY", &task, 2),
        // The same record twice in one batch, as a retried shard can deliver it.
        record("MODIFY", &task, 2),
        // Unreadable: logged and dropped, not retried.
        raw_record("MODIFY", json!({"pk": {"S": "U#alice"}, "sk": {"S": "T#junk"}}), 4),
    ]}))
    .unwrap();
    let response = handle(&batch, &hooks).await;
    assert!(response.batch_item_failures.is_empty(), "{response:?}");
    assert_eq!(receiver.received().len(), 1);

    // The record the delivery's history write made, and the whole batch again: nothing sent.
    let after = store.get("alice", task.id).await.unwrap().unwrap();
    let again: Event =
        serde_json::from_value(json!({"Records": [record("MODIFY", &task, 2), record("MODIFY", &after, 3)]})).unwrap();
    assert!(handle(&again, &hooks).await.batch_item_failures.is_empty());
    assert_eq!(receiver.received().len(), 1);
    assert_eq!(
        store
            .get("alice", task.id)
            .await
            .unwrap()
            .unwrap()
            .history
            .iter()
            .filter(|e| e.kind == EventKind::WebhookDelivered)
            .count(),
        1
    );
}

#[tokio::test]
async fn a_store_failure_reports_the_record_for_retry() {
    let (receiver, url) = Receiver::start(&[]).await;
    let memory = Arc::new(MemoryTaskStore::new());
    let task = ended(&memory, &url, true).await;
    let plan = FaultPlan {
        store_throttle: 1.0,
        ..FaultPlan::default()
    };
    let failing = Arc::new(FaultyStore::new(memory.clone(), plan, Arc::new(FaultCounts::default())));
    let hooks = webhooks(failing, fast(), Network::AllowLoopback);
    let batch: Event = serde_json::from_value(json!({"Records": [record("MODIFY", &task, 77)]})).unwrap();
    let response = handle(&batch, &hooks).await;
    assert_eq!(
        serde_json::to_value(&response).unwrap(),
        json!({"batchItemFailures": [{"itemIdentifier": "77"}]})
    );
    assert!(
        receiver.received().is_empty(),
        "nothing is sent before the task could be read"
    );
}

#[test]
fn the_sample_event_holds_a_task_to_deliver() {
    // events/webhook-stream.json: for `cargo lambda invoke taskq-webhook --data-file ...`.
    let event: Event = serde_json::from_str(include_str!("../../../events/webhook-stream.json")).unwrap();
    let task = taskq_webhook::task_of(&event.records[0]).unwrap().expect("a task");
    assert!(taskq_webhook::should_deliver(&task));
    let delivery = taskq_webhook::delivery_for(&task).unwrap();
    assert_eq!(delivery.event, "task.succeeded");
    assert_eq!(delivery.id, "01JD3QX6Z8K2V7M4N5P6R7S8T9-3");
    assert_eq!(delivery.url, "https://hooks.example.com/taskq");
}
