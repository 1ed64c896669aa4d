//! Request accounting: N tasks end to end on moto (DynamoDB, SQS) and redis-server (status
//! cache), with every AWS call counted by operation through an SDK interceptor on the clients.
//! Prints, per phase, operation -> calls, calls per task and estimated capacity units, and
//! asserts the calls per task the design promises, so an extra call is caught as a failure.
//!
//! `cargo test -p taskq-local --test request_accounting -- --nocapture` shows the tables;
//! `TASKQ_ACCOUNTING_TASKS` sets N (default 100).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use taskq_aws::accounting::{OperationCount, RequestCounter};
use taskq_local::{start, Backend, EventSourceConfig, LocalOptions, LocalServer};

const SECRET: &str = "accounting-secret";

/// The two tests here count every call exactly; run side by side on two cores they slow each
/// other's pollers and moto until redeliveries and retries add calls. One at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

type Counts = BTreeMap<String, OperationCount>;

fn delta(after: &Counts, before: &Counts) -> Counts {
    after
        .iter()
        .map(|(op, a)| {
            let b = before.get(op).copied().unwrap_or_default();
            let d = OperationCount {
                calls: a.calls - b.calls,
                read_units: a.read_units - b.read_units,
                write_units: a.write_units - b.write_units,
                index_write_units: a.index_write_units - b.index_write_units,
            };
            (op.clone(), d)
        })
        .filter(|(_, d)| d.calls > 0)
        .collect()
}

fn calls(c: &Counts, op: &str) -> u64 {
    c.get(op).map(|o| o.calls).unwrap_or(0)
}

fn print_table(title: &str, c: &Counts, n: usize) {
    println!("\n{title} (N = {n})");
    println!(
        "{:<32} {:>7} {:>10} {:>9} {:>9}",
        "operation", "calls", "per task", "RCU/task", "WCU/task"
    );
    for (op, o) in c {
        println!(
            "{:<32} {:>7} {:>10.2} {:>9.2} {:>9.2}",
            op,
            o.calls,
            o.calls as f64 / n as f64,
            o.read_units / n as f64,
            o.write_units / n as f64
        );
    }
}

struct Run {
    server: LocalServer,
    counter: RequestCounter,
    http: reqwest::Client,
    token: String,
}

impl Run {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.base_url())
    }

    async fn post(&self, path: &str, body: Value, key: Option<String>) -> Value {
        let mut req = self.http.post(self.url(path)).bearer_auth(&self.token).json(&body);
        if let Some(k) = key {
            req = req.header("idempotency-key", k);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 202);
        r.json().await.unwrap()
    }

    async fn get(&self, id: &str) -> Value {
        let r = self
            .http
            .get(self.url(&format!("/v1/tasks/{id}")))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }

    /// Waits, without API calls, until the worker has written `writes` more UpdateItems and the
    /// event source mapping has deleted the messages of those `writes / 2` tasks (on a loaded
    /// machine the deletes can trail the last write by more than any fixed pause).
    async fn wait_for_updates(&self, before: &Counts, writes: u64) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let d = delta(&self.counter.snapshot(), before);
            let (done, deleted) = (calls(&d, "DynamoDB.UpdateItem"), calls(&d, "SQS.DeleteMessage"));
            if done >= writes && deleted >= writes / 2 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{done} of {writes} updates, {deleted} of {} deletes after 120 s",
                writes / 2
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_accounting() {
    let _serial = SERIAL.lock().await;
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .try_init();
    let Some(endpoint) = taskq_aws::testing::endpoint("request_accounting") else {
        return;
    };
    let Some(redis) = taskq_aws::testing::redis_url("request_accounting") else {
        return;
    };
    let n: usize = std::env::var("TASKQ_ACCOUNTING_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    assert!(
        n >= 10 && n.is_multiple_of(10),
        "TASKQ_ACCOUNTING_TASKS must be a multiple of 10"
    );
    let (sdk, config) = taskq_aws::testing::fresh(&endpoint, 30).await;
    let counter = RequestCounter::new();
    let (store, queue) = config.adapters_counted(&sdk, &counter);
    let mut o = LocalOptions::new("127.0.0.1:0".parse().unwrap(), SECRET);
    o.backend = Backend::Ports {
        store: Arc::new(store),
        queue: Arc::new(queue),
    };
    o.redis = Some(taskq_aws::testing::redis_settings(&redis));
    o.policy =
        taskq_local::RolePolicy::parse(Some(r#"{"default":{"per_second":100000,"burst":100000}}"#), None).unwrap();
    o.sweep_every = None; // the sweeper's calls are per sweep, not per task
                          // Long polls, as Lambda's pollers make them (SQS takes whole seconds: under 1 s is a short
                          // poll, and the pollers would spin).
    o.event_sources = EventSourceConfig {
        poll_wait: Duration::from_secs(2),
        ..EventSourceConfig::default()
    };
    let run = Run {
        server: start(o).await.unwrap(),
        counter,
        http: reqwest::Client::new(),
        token: taskq_api::auth::mint(SECRET, "accounting-user", &[], 3600).unwrap(),
    };
    let unique = taskq_aws::testing::unique("k");

    // 1. POST /v1/tasks, one task per request, each with an Idempotency-Key (as clients that
    //    retry safely send them), then the worker runs them all.
    // The worker runs while later tasks are still being submitted, so a phase is counted from
    // its first request until the worker has written 2N times; the operations tell submit and
    // worker calls apart.
    let t0 = run.counter.snapshot();
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let priority = ["high", "normal", "low"][i % 3];
        let body = json!({"type": "echo", "payload": {"i": i}, "priority": priority});
        let task = run.post("/v1/tasks", body, Some(format!("{unique}-{i}"))).await;
        ids.push(task["id"].as_str().unwrap().to_owned());
    }
    run.wait_for_updates(&t0, 2 * n as u64).await;
    let t1 = run.counter.snapshot();
    // 2. One status read per finished task.
    for id in &ids {
        assert_eq!(run.get(id).await["status"], "succeeded");
    }
    let t2 = run.counter.snapshot();
    // 3. The same N tasks' worth through POST /v1/tasks/batch (10 per request, no keys).
    for b in 0..n / 10 {
        let tasks: Vec<Value> = (0..10)
            .map(|i| {
                let priority = ["high", "normal", "low"][i % 3];
                json!({"type": "echo", "payload": {"b": b, "i": i}, "priority": priority})
            })
            .collect();
        run.post("/v1/tasks/batch", json!({"tasks": tasks}), None).await;
    }
    run.wait_for_updates(&t2, 2 * n as u64).await;
    let t3 = run.counter.snapshot();

    let single = delta(&t1, &t0);
    let reads = delta(&t2, &t1);
    let batch = delta(&t3, &t2);
    print_table(
        "lifecycle: POST /v1/tasks (with Idempotency-Key) -> worker run -> succeeded",
        &single,
        n,
    );
    print_table("status: GET /v1/tasks/{id} once per finished task", &reads, n);
    print_table(
        "lifecycle: POST /v1/tasks/batch (10 per request) -> worker run -> succeeded",
        &batch,
        n,
    );
    println!("\nReceiveMessage and DeleteMessage are the event source mapping's (Lambda's poller in AWS);");
    println!("ReceiveMessage counts include empty long polls, so they depend on elapsed time, not on N.");

    let n = n as u64;
    // Submit: one transaction (task + key), one message. No read before the write.
    assert_eq!(calls(&single, "DynamoDB.TransactWriteItems"), n);
    assert_eq!(calls(&single, "SQS.SendMessage"), n);
    assert_eq!(calls(&single, "DynamoDB.PutItem"), 0);
    // Batch submit: one PutItem per task; one SendMessageBatch per priority queue the request's
    // tasks go to (each request here holds all three priorities).
    assert_eq!(calls(&batch, "DynamoDB.PutItem"), n);
    assert_eq!(calls(&batch, "SQS.SendMessageBatch"), 3 * n / 10);
    // Worker: queued -> running and running -> succeeded, one conditional UpdateItem each; no
    // read (UpdateItem returns the item); the event source mapping deletes each message.
    for (name, w) in [("single", &single), ("batch", &batch)] {
        assert_eq!(calls(w, "DynamoDB.UpdateItem"), 2 * n, "{name}");
        assert_eq!(calls(w, "DynamoDB.GetItem"), 0, "{name}: {w:?}");
        assert_eq!(calls(w, "SQS.DeleteMessage"), n, "{name}");
        assert_eq!(calls(w, "SQS.ChangeMessageVisibility"), 0, "{name}");
        let other: Vec<&String> = w
            .keys()
            .filter(|op| {
                ![
                    "DynamoDB.TransactWriteItems",
                    "DynamoDB.PutItem",
                    "DynamoDB.UpdateItem",
                    "SQS.SendMessage",
                    "SQS.SendMessageBatch",
                    "SQS.ReceiveMessage",
                    "SQS.DeleteMessage",
                ]
                .contains(&op.as_str())
            })
            .collect();
        assert!(other.is_empty(), "{name}: unexpected calls {other:?}");
    }
    // Status reads of finished tasks come from the cache the writes refreshed.
    assert_eq!(reads.values().map(|o| o.calls).sum::<u64>(), 0, "{reads:?}");
}

/// Returns a small result (the payload's length), whatever the payload: the goal table's "small
/// result".
struct Digest;
#[async_trait::async_trait]
impl taskq_worker::TaskHandler for Digest {
    async fn run(&self, ctx: taskq_worker::TaskContext) -> Result<Value, taskq_worker::HandlerError> {
        Ok(json!({"bytes": ctx.task.payload.to_string().len()}))
    }
}

/// DynamoDB write units per task lifecycle (POST /v1/tasks without a key -> started ->
/// succeeded), by payload size, priced by `taskq_aws::accounting` (DynamoDB's sizing rules,
/// index writes included) from the items the clients actually wrote to moto. Asserts issue 16's
/// goals; prints the table BENCHMARKS.md reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_units_per_task_lifecycle() {
    let _serial = SERIAL.lock().await;
    let Some(endpoint) = taskq_aws::testing::endpoint("write_units_per_task_lifecycle") else {
        return;
    };
    let (sdk, config) = taskq_aws::testing::fresh(&endpoint, 30).await;
    let counter = RequestCounter::new();
    let (store, queue) = config.adapters_counted(&sdk, &counter);
    let mut o = LocalOptions::new("127.0.0.1:0".parse().unwrap(), SECRET);
    o.backend = Backend::Ports {
        store: Arc::new(store),
        queue: Arc::new(queue),
    };
    let mut registry = taskq_worker::Registry::with_builtins();
    registry.register("digest", Digest);
    o.registry = Some(registry);
    o.policy =
        taskq_local::RolePolicy::parse(Some(r#"{"default":{"per_second":100000,"burst":100000}}"#), None).unwrap();
    o.sweep_every = None;
    o.event_sources = EventSourceConfig {
        poll_wait: Duration::from_secs(1),
        ..EventSourceConfig::default()
    };
    let run = Run {
        server: start(o).await.unwrap(),
        counter,
        http: reqwest::Client::new(),
        token: taskq_api::auth::mint(SECRET, "cost-user", &[], 3600).unwrap(),
    };
    const PER_SIZE: usize = 3;
    // (task type, payload bytes, goal in write units per task)
    let cases: [(&str, usize, f64); 6] = [
        ("digest", 100, 5.0),
        ("digest", 1024, 7.0),
        ("digest", 16 * 1024, 25.0),
        ("digest", 200 * 1024, 215.0),
        ("echo", 1024, 8.5),
        ("echo", 16 * 1024, 42.0),
    ];
    println!(
        "\nDynamoDB write units per task lifecycle (submit without a key, start, succeed), N = {PER_SIZE} per row"
    );
    println!(
        "{:<8} {:>9} {:>10} {:>10} {:>8} {:>6}",
        "type", "payload", "WRU/task", "of which", "goal", "met"
    );
    println!("{:<8} {:>9} {:>10} {:>10}", "", "bytes", "", "indexes");
    let mut missed = Vec::new();
    let mut read_units = Vec::new();
    for (kind, bytes, goal) in cases {
        // {"pad":"..."} of exactly `bytes` bytes of JSON.
        let pad = "x".repeat(bytes - r#"{"pad":""}"#.len());
        let before = run.counter.snapshot();
        for _ in 0..PER_SIZE {
            run.post("/v1/tasks", json!({"type": kind, "payload": {"pad": pad}}), None)
                .await;
        }
        run.wait_for_updates(&before, 2 * PER_SIZE as u64).await;
        let d = delta(&run.counter.snapshot(), &before);
        let dynamodb: Vec<&OperationCount> = d
            .iter()
            .filter(|(op, _)| op.starts_with("DynamoDB."))
            .map(|(_, c)| c)
            .collect();
        let wru = dynamodb.iter().map(|c| c.write_units).sum::<f64>() / PER_SIZE as f64;
        let index = dynamodb.iter().map(|c| c.index_write_units).sum::<f64>() / PER_SIZE as f64;
        let met = wru <= goal;
        println!(
            "{kind:<8} {bytes:>9} {wru:>10.1} {index:>10.1} {goal:>8.1} {:>6}",
            if met { "yes" } else { "NO" }
        );
        // A lifecycle is one PutItem and two UpdateItems; a payload over 256 bytes adds its own
        // PutItem, and a GetItem of it after each UpdateItem (the store returns whole tasks).
        let separate = u64::from(bytes > 256);
        let n = PER_SIZE as u64;
        assert_eq!(
            calls(&d, "DynamoDB.PutItem"),
            n * (1 + separate),
            "{kind} {bytes}: {d:?}"
        );
        assert_eq!(calls(&d, "DynamoDB.UpdateItem"), 2 * n, "{kind} {bytes}: {d:?}");
        assert_eq!(calls(&d, "DynamoDB.GetItem"), 2 * n * separate, "{kind} {bytes}: {d:?}");
        let reads = d.get("DynamoDB.GetItem").map(|c| c.read_units).unwrap_or(0.0) / PER_SIZE as f64;
        read_units.push(format!("{kind} {bytes} B: {reads:.1} RRU"));
        if !met {
            missed.push(format!("{kind} at {bytes} B: {wru:.1} WRU per task (goal {goal})"));
        }
    }
    println!("reads the worker's writes add per task (payload items, read back): {read_units:?}");
    assert!(missed.is_empty(), "over the goal: {missed:?}");
}
