//! The worker's batch handler, called directly with SQS events, on the in-memory backends.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_lambda_events::event::sqs::SqsEvent;
use chrono::Utc;
use serde_json::{json, Value};
use taskq_core::memory::{MemoryQueueConfig, MemoryTaskQueue, MemoryTaskStore};
use taskq_core::{EventKind, NewTask, Priority, Snapshot, Status, Task, TaskQueue, TaskService, TaskStore, Transition};
use taskq_worker::{HandlerError, Registry, TaskContext, TaskHandler, Worker, WorkerConfig};
use tokio::time::Instant;

struct Env {
    store: Arc<MemoryTaskStore>,
    queue: Arc<MemoryTaskQueue>,
    service: TaskService,
    worker: Worker,
}

struct Panics;
#[async_trait]
impl TaskHandler for Panics {
    async fn run(&self, _: TaskContext) -> Result<Value, HandlerError> {
        panic!("handler bug")
    }
}

struct Huge;
#[async_trait]
impl TaskHandler for Huge {
    async fn run(&self, _: TaskContext) -> Result<Value, HandlerError> {
        Ok(Value::String("r".repeat(300 * 1024)))
    }
}

/// Counts runs, to prove duplicates do not run a task twice.
struct Counting(Arc<std::sync::atomic::AtomicU32>);
#[async_trait]
impl TaskHandler for Counting {
    async fn run(&self, _: TaskContext) -> Result<Value, HandlerError> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok(json!("counted"))
    }
}

fn env_with(extra: impl FnOnce(&mut Registry)) -> Env {
    let store = Arc::new(MemoryTaskStore::new());
    let queue = Arc::new(MemoryTaskQueue::new(MemoryQueueConfig::exact()));
    let mut registry = Registry::with_builtins();
    registry.register("panics", Panics).register("huge", Huge);
    extra(&mut registry);
    let config = WorkerConfig {
        retry_base: Duration::from_millis(1),
        retry_cap: Duration::from_millis(5),
        cancel_poll: Duration::from_millis(50),
        ..WorkerConfig::default()
    };
    Env {
        service: TaskService::new(store.clone(), queue.clone()),
        worker: Worker::new(store.clone(), queue.clone(), registry, config),
        store,
        queue,
    }
}

fn env() -> Env {
    env_with(|_| {})
}

fn later() -> Instant {
    Instant::now() + Duration::from_secs(900)
}

impl Env {
    async fn submit(&self, body: Value) -> Task {
        let new = NewTask::from_json(&body, "").unwrap();
        self.service.submit("u1", &new, None).await.unwrap().task
    }

    /// One emulated event source poll: receive what is visible, run the batch, delete what did
    /// not fail. Returns the failed message ids.
    async fn poll(&self, p: Priority) -> Vec<String> {
        let got = self.queue.receive(p, 10, Duration::from_millis(200)).await.unwrap();
        let receipts: Vec<(String, String)> = got.iter().map(|d| (d.message_id.clone(), d.receipt.clone())).collect();
        let res = self
            .worker
            .process_batch(taskq_worker::sqs::event_from(p, got), later())
            .await;
        let failed: Vec<String> = res.batch_item_failures.into_iter().map(|f| f.item_identifier).collect();
        for (id, r) in receipts {
            if !failed.contains(&id) {
                self.queue.delete(p, &r).await.unwrap();
            }
        }
        failed
    }

    async fn task(&self, t: &Task) -> Task {
        self.store.get("u1", t.id).await.unwrap().unwrap()
    }

    /// Polls until the task is terminal (retries come back after their short backoff).
    async fn settle(&self, t: &Task) -> Task {
        for _ in 0..50 {
            self.poll(t.priority).await;
            let now = self.task(t).await;
            if now.status.is_terminal() {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("task did not settle: {:?}", self.task(t).await)
    }
}

fn kinds(t: &Task) -> Vec<EventKind> {
    t.history.iter().map(|e| e.kind).collect()
}

fn fixture(name: &str) -> SqsEvent {
    let path = format!("{}/../../events/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[tokio::test]
async fn the_runtime_projects_sqs_fixture_is_not_a_task_and_is_dropped() {
    // events/fixtures/example-sqs-event.json is aws-lambda-rust-runtime's own fixture.
    let e = env();
    let res = e
        .worker
        .process_batch(fixture("fixtures/example-sqs-event.json"), later())
        .await;
    assert!(res.batch_item_failures.is_empty());
}

#[tokio::test]
async fn sample_events_for_unknown_tasks_are_acknowledged() {
    let e = env();
    for p in ["high", "normal", "low"] {
        let event = fixture(&format!("sqs-{p}.json"));
        assert_eq!(event.records.len(), 2);
        let res = e.worker.process_batch(event, later()).await;
        assert!(res.batch_item_failures.is_empty(), "{p}");
    }
}

#[tokio::test]
async fn echo_succeeds_with_the_payload_as_result() {
    let e = env();
    let t = e
        .submit(json!({"type": "echo", "payload": {"a": [1, 2]}, "priority": "high"}))
        .await;
    assert!(e.poll(Priority::High).await.is_empty());
    let done = e.task(&t).await;
    assert_eq!(done.status, Status::Succeeded);
    assert_eq!(done.result, Some(json!({"a": [1, 2]})));
    assert_eq!(done.attempts, 1);
    assert_eq!(
        kinds(&done),
        [EventKind::Submitted, EventKind::Started, EventKind::Succeeded]
    );
    assert_eq!(e.queue.depth(Priority::High), 0, "the message was deleted");
}

#[tokio::test]
async fn fail_twice_with_three_attempts_succeeds_on_the_third() {
    let e = env();
    let t = e
        .submit(json!({"type": "fail", "payload": {"times": 2}, "max_attempts": 3}))
        .await;
    let done = e.settle(&t).await;
    assert_eq!((done.status, done.attempts), (Status::Succeeded, 3));
    assert_eq!(done.result, Some(json!({"attempt": 3})));
    use EventKind::*;
    assert_eq!(
        kinds(&done),
        [
            Submitted,
            Started,
            RetryScheduled,
            Started,
            RetryScheduled,
            Started,
            Succeeded
        ]
    );
}

#[tokio::test]
async fn fail_five_times_with_three_attempts_fails_after_three() {
    let e = env();
    let t = e
        .submit(json!({"type": "fail", "payload": {"times": 5}, "max_attempts": 3}))
        .await;
    let done = e.settle(&t).await;
    assert_eq!((done.status, done.attempts), (Status::Failed, 3));
    assert_eq!(done.error.as_ref().unwrap().kind, "deliberate_failure");
    assert!(done.finished_at.is_some());
}

#[tokio::test]
async fn a_retry_is_delayed_by_backoff_through_the_message_visibility() {
    let mut e = env();
    e.worker = Worker::new(
        e.store.clone(),
        e.queue.clone(),
        Registry::with_builtins(),
        WorkerConfig {
            retry_base: Duration::from_secs(2),
            ..WorkerConfig::default()
        },
    );
    let t = e.submit(json!({"type": "fail", "payload": {"times": 1}})).await;
    assert_eq!(
        e.poll(Priority::Normal).await.len(),
        1,
        "a retried record is reported as failed"
    );
    let queued = e.task(&t).await;
    assert_eq!(queued.status, Status::Queued);
    let run_at = queued.run_at.unwrap();
    let wait = (run_at - Utc::now()).num_milliseconds();
    assert!((500..=2100).contains(&wait), "first retry 1-2 s away, was {wait} ms");
    assert!(
        e.queue
            .receive(Priority::Normal, 10, Duration::ZERO)
            .await
            .unwrap()
            .is_empty(),
        "hidden until then"
    );
}

#[tokio::test]
async fn a_duplicate_delivery_runs_no_second_transition() {
    let runs = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let r2 = runs.clone();
    let e = env_with(move |r| {
        r.register("count", Counting(r2));
    });
    let t = e.submit(json!({"type": "count"})).await;
    // The same message twice in one batch, as SQS's at-least-once delivery may do.
    let got = e.queue.receive(Priority::Normal, 10, Duration::ZERO).await.unwrap();
    let mut twice = got.clone();
    twice.push(got[0].clone());
    twice[1].message_id = "duplicate".into();
    let res = e
        .worker
        .process_batch(taskq_worker::sqs::event_from(Priority::Normal, twice), later())
        .await;
    assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(
        res.batch_item_failures.len(),
        1,
        "the duplicate backs off while the lease is held"
    );
    let done = e.task(&t).await;
    assert_eq!(
        kinds(&done),
        [EventKind::Submitted, EventKind::Started, EventKind::Succeeded]
    );
    // A late redelivery of a finished task is acknowledged without effect.
    let again = e
        .worker
        .process_batch(taskq_worker::sqs::event_from(Priority::Normal, got), later())
        .await;
    assert!(again.batch_item_failures.is_empty());
    assert_eq!(e.task(&t).await, done);
    assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_as_the_next_attempt() {
    let e = env();
    let t = e.submit(json!({"type": "echo", "payload": 7})).await;
    // A worker started it and died: its lease is in the past.
    let start = Transition::Start {
        lease_until: Utc::now() - chrono::Duration::seconds(1),
    }
    .plan(Snapshot::from(&t), Utc::now())
    .unwrap();
    e.store.apply("u1", t.id, &start).await.unwrap();
    let done = e.settle(&t).await;
    assert_eq!((done.status, done.attempts), (Status::Succeeded, 2));
    use EventKind::*;
    assert_eq!(kinds(&done), [Submitted, Started, LeaseExpired, Succeeded]);
}

#[tokio::test]
async fn a_panicking_handler_fails_its_record_only() {
    let e = env();
    let bad = e.submit(json!({"type": "panics", "max_attempts": 1})).await;
    let good = e.submit(json!({"type": "echo"})).await;
    e.poll(Priority::Normal).await;
    let bad = e.task(&bad).await;
    assert_eq!(bad.status, Status::Failed);
    assert_eq!(bad.error.as_ref().unwrap().kind, "panic");
    assert!(bad.error.as_ref().unwrap().message.contains("handler bug"));
    assert_eq!(e.task(&good).await.status, Status::Succeeded);
}

#[tokio::test]
async fn a_handler_past_its_timeout_is_stopped_and_retried() {
    let e = env();
    let t = e
        .submit(json!({"type": "sleep", "payload": {"ms": 5000}, "timeout_seconds": 1, "max_attempts": 1}))
        .await;
    let started = std::time::Instant::now();
    e.poll(Priority::Normal).await;
    assert!(started.elapsed() < Duration::from_secs(3));
    let done = e.task(&t).await;
    assert_eq!(done.status, Status::Failed);
    assert_eq!(done.error.unwrap().kind, "timeout");
}

#[tokio::test]
async fn bad_payloads_and_unknown_types_fail_at_once_without_retry() {
    let e = env();
    let a = e.submit(json!({"type": "sleep", "payload": {"seconds": 1}})).await;
    let b = e.submit(json!({"type": "no-such-type"})).await;
    let c = e.submit(json!({"type": "huge"})).await;
    e.poll(Priority::Normal).await;
    for (t, kind) in [
        (a, "invalid_payload"),
        (b, "unknown_task_type"),
        (c, "result_too_large"),
    ] {
        let t = e.task(&t).await;
        assert_eq!((t.status, t.attempts), (Status::Failed, 1));
        assert_eq!(t.error.unwrap().kind, kind);
    }
}

#[tokio::test]
async fn records_are_not_started_when_the_deadline_is_near() {
    let e = env();
    let t = e.submit(json!({"type": "echo"})).await;
    let got = e.queue.receive(Priority::Normal, 10, Duration::ZERO).await.unwrap();
    let res = e
        .worker
        .process_batch(
            taskq_worker::sqs::event_from(Priority::Normal, got),
            Instant::now() + Duration::from_secs(1),
        )
        .await;
    assert_eq!(res.batch_item_failures.len(), 1);
    let untouched = e.task(&t).await;
    assert_eq!((untouched.status, untouched.attempts), (Status::Queued, 0));
}

#[tokio::test]
async fn cancellation_requested_while_running_stops_retries() {
    let e = env();
    let t = e.submit(json!({"type": "fail", "payload": {"times": 1}})).await;
    let start = Transition::Start {
        lease_until: Utc::now() + chrono::Duration::seconds(60),
    }
    .plan(Snapshot::from(&t), Utc::now())
    .unwrap();
    let running = e.store.apply("u1", t.id, &start).await.unwrap();
    let (after, cancelled) = e.service.cancel("u1", t.id).await.unwrap();
    assert!(!cancelled && after.cancel_requested);
    // The next delivery finds cancel_requested at its start and cancels instead of running.
    let back = Transition::Retry {
        error: taskq_core::TaskFailure::new("x", "y"),
        run_at: Utc::now(),
    }
    .plan(Snapshot::from(&after), Utc::now())
    .unwrap();
    e.store.apply("u1", running.id, &back).await.unwrap();
    let done = e.settle(&t).await;
    assert_eq!(done.status, Status::Cancelled);
}

#[tokio::test]
async fn a_running_handler_sees_cancellation_and_stops() {
    let e = env();
    let t = e.submit(json!({"type": "sleep", "payload": {"ms": 10_000}})).await;
    let started = std::time::Instant::now();
    let poll = e.poll(Priority::Normal);
    let cancel = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (after, cancelled) = e.service.cancel("u1", t.id).await.unwrap();
        assert!(!cancelled, "a running task is only asked to stop");
        assert!(after.cancel_requested);
    };
    let (failed, ()) = tokio::join!(poll, cancel);
    assert!(failed.is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "stopped early: {:?}",
        started.elapsed()
    );
    let done = e.task(&t).await;
    assert_eq!(done.status, Status::Cancelled);
    assert_eq!(done.error.as_ref().unwrap().kind, "cancelled");
    use EventKind::*;
    assert_eq!(kinds(&done), [Submitted, Started, CancelRequested, Cancelled]);
}

mod webhook {
    use super::*;
    use axum::routing::post;

    async fn receiver() -> String {
        let app = axum::Router::new()
            .route(
                "/ok",
                post(|body: String| async move { axum::Json(json!({"got": body})) }),
            )
            .route("/down", post(|| async { (http_status(503), "try later") }))
            .route("/gone", post(|| async { (http_status(404), "no such hook") }));
        // 127.0.0.2: the one loopback address the test's network allows.
        let listener = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}")
    }

    fn env_reaching_the_receiver() -> Env {
        env_with(|r| {
            let network = taskq_outbound::Network::PublicAnd(vec!["127.0.0.2".parse().unwrap()]);
            r.register("webhook", taskq_worker::builtin::Webhook::new(network));
        })
    }

    fn http_status(n: u16) -> axum::http::StatusCode {
        axum::http::StatusCode::from_u16(n).unwrap()
    }

    #[tokio::test]
    async fn webhook_calls_the_url_and_classifies_failures() {
        let base = receiver().await;
        let e = env_reaching_the_receiver();
        let ok = e
            .submit(json!({"type": "webhook", "payload": {"url": format!("{base}/ok"), "body": {"hi": 1}}}))
            .await;
        let down = e.submit(json!({"type": "webhook", "payload": {"url": format!("{base}/down"), "method": "post"}, "max_attempts": 2})).await;
        let gone = e.submit(json!({"type": "webhook", "payload": {"url": format!("{base}/gone"), "method": "POST"}, "max_attempts": 3})).await;
        let bad = e
            .submit(json!({"type": "webhook", "payload": {"url": "ftp://example.com/x"}}))
            .await;
        for t in [&ok, &down, &gone, &bad] {
            e.settle(t).await;
        }
        let ok = e.task(&ok).await;
        assert_eq!(ok.status, Status::Succeeded);
        assert_eq!(
            ok.result.unwrap(),
            json!({"status": 200, "body": {"got": "{\"hi\":1}"}})
        );
        let down = e.task(&down).await;
        assert_eq!((down.status, down.attempts), (Status::Failed, 2), "5xx is retried");
        assert!(down.error.unwrap().message.contains("503"));
        let gone = e.task(&gone).await;
        assert_eq!((gone.status, gone.attempts), (Status::Failed, 1), "4xx is not");
        assert_eq!(e.task(&bad).await.error.unwrap().kind, "invalid_payload");
    }

    #[tokio::test]
    async fn the_default_registry_refuses_the_runtime_api_and_other_non_public_hosts() {
        let base = receiver().await;
        let e = env();
        let mut tasks = Vec::new();
        for url in [
            format!("{base}/ok"),
            "http://127.0.0.1:9001/2018-06-01/runtime/invocation/next".to_owned(),
            "http://169.254.169.254/latest/meta-data/".to_owned(),
            "http://[fd00:ec2::254]/latest/meta-data/".to_owned(),
        ] {
            tasks.push((
                url.clone(),
                e.submit(json!({"type": "webhook", "payload": {"url": url}, "max_attempts": 3}))
                    .await,
            ));
        }
        for (url, t) in &tasks {
            e.settle(t).await;
            let done = e.task(t).await;
            assert_eq!(
                (done.status, done.attempts),
                (Status::Failed, 1),
                "{url}: refused at once"
            );
            assert_eq!(done.error.unwrap().kind, "webhook_refused", "{url}");
        }
    }
}

/// Every store write's response is lost and the write sent again (the SDK's retry): the start
/// must not back off from its own lease, and with one attempt the task must run once and
/// succeed, not fail `attempts_exhausted` without running.
#[tokio::test]
async fn a_start_retried_after_a_lost_response_runs_the_task_once() {
    use taskq_core::faults::{FaultCounts, FaultPlan, FaultyStore};
    let memory = Arc::new(MemoryTaskStore::new());
    let queue = Arc::new(MemoryTaskQueue::new(MemoryQueueConfig::exact()));
    let counts = Arc::new(FaultCounts::default());
    let store: Arc<dyn TaskStore> = Arc::new(FaultyStore::new(
        memory.clone(),
        FaultPlan {
            store_retry_after_write: 1.0,
            ..FaultPlan::default()
        },
        counts.clone(),
    ));
    let runs = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let mut registry = Registry::new();
    registry.register("counting", Counting(runs.clone()));
    let e = Env {
        service: TaskService::new(store.clone(), queue.clone()),
        worker: Worker::new(store, queue.clone(), registry, WorkerConfig::default()),
        store: memory,
        queue,
    };
    let t = e.submit(json!({"type": "counting", "max_attempts": 1})).await;
    assert!(e.poll(Priority::Normal).await.is_empty());
    let done = e.task(&t).await;
    assert_eq!((done.status, done.attempts), (Status::Succeeded, 1), "{done:?}");
    assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(
        kinds(&done),
        [EventKind::Submitted, EventKind::Started, EventKind::Succeeded]
    );
    assert!(
        counts
            .store_retries_after_write
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 3
    );
}

/// Throttles the first `n` writes that end an attempt, then passes everything through.
struct ThrottlesOutcomes {
    inner: Arc<MemoryTaskStore>,
    left: std::sync::atomic::AtomicU32,
}

#[async_trait]
impl TaskStore for ThrottlesOutcomes {
    async fn create(
        &self,
        task: &Task,
        claim: Option<&taskq_core::IdempotencyClaim>,
    ) -> Result<taskq_core::Created, taskq_core::StoreError> {
        self.inner.create(task, claim).await
    }
    async fn get(&self, user_id: &str, id: taskq_core::TaskId) -> Result<Option<Task>, taskq_core::StoreError> {
        self.inner.get(user_id, id).await
    }
    async fn list(
        &self,
        user_id: &str,
        query: &taskq_core::ListQuery,
    ) -> Result<taskq_core::TaskPage, taskq_core::StoreError> {
        self.inner.list(user_id, query).await
    }
    async fn apply(
        &self,
        user_id: &str,
        id: taskq_core::TaskId,
        change: &taskq_core::StateChange,
    ) -> Result<Task, taskq_core::StoreError> {
        let ends_attempt = change.expect_status == Status::Running && change.status != Status::Running;
        let left = &self.left;
        if ends_attempt
            && left
                .fetch_update(
                    std::sync::atomic::Ordering::SeqCst,
                    std::sync::atomic::Ordering::SeqCst,
                    |n| n.checked_sub(1),
                )
                .is_ok()
        {
            return Err(taskq_core::StoreError::Throttled("throttled".into()));
        }
        self.inner.apply(user_id, id, change).await
    }
    async fn active(&self, query: &taskq_core::ActiveQuery) -> Result<taskq_core::ActivePage, taskq_core::StoreError> {
        self.inner.active(query).await
    }
    async fn record(
        &self,
        user_id: &str,
        id: taskq_core::TaskId,
        expect_seq: u32,
        event: &taskq_core::TaskEvent,
    ) -> Result<Task, taskq_core::StoreError> {
        self.inner.record(user_id, id, expect_seq, event).await
    }
}

/// The handler succeeded, then the outcome write was throttled three times: the worker tries
/// the write again instead of leaving the message, so the task succeeds after one run. Before,
/// the outcome was dropped, the message came back, and with one attempt the task ended
/// `attempts_exhausted` although its only run succeeded.
#[tokio::test]
async fn a_throttled_outcome_write_is_tried_again_and_the_run_counts() {
    let memory = Arc::new(MemoryTaskStore::new());
    let queue = Arc::new(MemoryTaskQueue::new(MemoryQueueConfig::exact()));
    let store: Arc<dyn TaskStore> = Arc::new(ThrottlesOutcomes {
        inner: memory.clone(),
        left: 3.into(),
    });
    let runs = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let mut registry = Registry::new();
    registry.register("counting", Counting(runs.clone()));
    let e = Env {
        service: TaskService::new(store.clone(), queue.clone()),
        worker: Worker::new(store, queue.clone(), registry, WorkerConfig::default()),
        store: memory,
        queue,
    };
    let t = e.submit(json!({"type": "counting", "max_attempts": 1})).await;
    assert!(e.poll(Priority::Normal).await.is_empty(), "the message is done with");
    let done = e.task(&t).await;
    assert_eq!((done.status, done.attempts), (Status::Succeeded, 1));
    assert_eq!(done.result, Some(json!("counted")));
    assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// Fails its first two attempts with a 200,000-character error message, then succeeds with a
/// 60 KB result; counts its runs.
struct Bloat(Arc<std::sync::atomic::AtomicU32>);
#[async_trait]
impl TaskHandler for Bloat {
    async fn run(&self, ctx: TaskContext) -> Result<Value, HandlerError> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if ctx.attempt() <= 2 {
            return Err(HandlerError::retryable("noisy", "e".repeat(200_000)));
        }
        Ok(Value::String("r".repeat(60_000)))
    }
}

/// A 200 KB payload, two failures with huge error texts, then a 60 KB result: unbounded error
/// texts in the error and the history would pass DynamoDB's 400 KB item limit (which the
/// embedded store enforces), the success write would never land and the handler would re-run
/// until its attempts ran out. Error texts are cut, and the task succeeds on its third attempt,
/// having run three times.
#[tokio::test]
async fn huge_error_texts_are_cut_so_the_item_stays_under_400_kb_and_the_task_succeeds() {
    let runs = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let r = runs.clone();
    let e = env_with(move |reg| {
        reg.register("bloat", Bloat(r));
    });
    let t = e
        .submit(json!({"type": "bloat", "payload": "p".repeat(200_000), "max_attempts": 3}))
        .await;
    let done = e.settle(&t).await;
    assert_eq!((done.status, done.attempts), (Status::Succeeded, 3), "{:?}", done.error);
    assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 3);
    for event in &done.history {
        assert!(
            event.detail.as_deref().unwrap_or("").chars().count() <= 1100,
            "{:?}",
            event.kind
        );
    }
    assert!(done.item_bytes() <= taskq_core::limits::MAX_ITEM_BYTES);
}

/// A result that does not fit what the item has left fails the task once, clearly, with
/// `result_too_large`; the handler is not run again.
#[tokio::test]
async fn a_result_that_cannot_fit_fails_the_task_once() {
    let runs = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let r = runs.clone();
    let e = env_with(move |reg| {
        reg.register("counting", Counting(r));
        reg.register("echo_twice", EchoTwice);
    });
    // 250 KB payload; echo_twice returns 500 KB.
    let t = e
        .submit(json!({"type": "echo_twice", "payload": "p".repeat(250_000), "max_attempts": 3}))
        .await;
    let done = e.settle(&t).await;
    assert_eq!((done.status, done.attempts), (Status::Failed, 1));
    assert_eq!(done.error.as_ref().unwrap().kind, "result_too_large");
    assert_eq!(
        kinds(&done),
        [EventKind::Submitted, EventKind::Started, EventKind::Failed]
    );
    assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// Returns its payload twice over.
struct EchoTwice;
#[async_trait]
impl TaskHandler for EchoTwice {
    async fn run(&self, ctx: TaskContext) -> Result<Value, HandlerError> {
        Ok(json!([ctx.payload(), ctx.payload()]))
    }
}

/// The admin redrive revives the tasks of the dead letters it saw, but SQS's move task moves
/// every dead letter, later. A moved message whose task is still `dead` (the queue gave up on
/// it) revives the task, recorded as `redriven`, and runs it; before, the worker acknowledged
/// it and the task stayed dead with no message left to redrive.
#[tokio::test]
async fn a_redriven_message_revives_a_dead_task_the_redrive_did_not_see() {
    let e = env();
    let t = e
        .submit(json!({"type": "echo", "payload": {"n": 1}, "max_attempts": 2}))
        .await;
    // First run: started, then the queue gave up on its message (the sweeper marked it dead).
    let got = e.queue.receive(Priority::Normal, 10, Duration::ZERO).await.unwrap();
    let running = e
        .store
        .apply(
            "u1",
            t.id,
            &Transition::Start {
                lease_until: Utc::now() - chrono::Duration::seconds(1),
            }
            .plan(Snapshot::from(&t), Utc::now())
            .unwrap(),
        )
        .await
        .unwrap();
    e.store
        .apply(
            "u1",
            t.id,
            &Transition::Dead {
                detail: "its message reached the normal dead-letter queue".into(),
            }
            .plan(Snapshot::from(&running), Utc::now())
            .unwrap(),
        )
        .await
        .unwrap();
    e.queue.delete(Priority::Normal, &got[0].receipt).await.unwrap();
    // The move task brings the message back.
    e.queue.send(&t.message(), Duration::ZERO).await.unwrap();
    assert!(e.poll(Priority::Normal).await.is_empty());
    let done = e.task(&t).await;
    assert_eq!((done.status, done.attempts, done.runs), (Status::Succeeded, 1, 2));
    use EventKind::*;
    assert_eq!(kinds(&done), [Submitted, Started, Dead, Redriven, Started, Succeeded]);
}

/// A message for a task that ended any other way (succeeded, failed, cancelled, or dead for a
/// reason other than the queue giving up) is acknowledged and changes nothing.
#[tokio::test]
async fn a_late_message_for_a_finished_task_changes_nothing() {
    let e = env();
    let t = e.submit(json!({"type": "echo"})).await;
    assert!(e.poll(Priority::Normal).await.is_empty());
    let done = e.task(&t).await;
    e.queue.send(&t.message(), Duration::ZERO).await.unwrap();
    assert!(e.poll(Priority::Normal).await.is_empty());
    assert_eq!(e.task(&t).await, done);
    assert_eq!(e.queue.depth(Priority::Normal), 0);
}
