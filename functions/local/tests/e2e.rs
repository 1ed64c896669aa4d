//! End to end over HTTP: taskq-local's API and emulated event source mappings in front of the
//! worker, on the embedded backends and again on DynamoDB + SQS as moto speaks them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use taskq_core::memory::MemoryQueueConfig;
use taskq_core::transition::is_valid_step;
use taskq_core::{Priority, Status, TaskId, TaskMessage};
use taskq_local::{start, Backend, EventSourceConfig, LocalOptions, LocalServer};
use taskq_worker::WorkerConfig;

const SECRET: &str = "e2e-secret";

struct TestApp {
    server: LocalServer,
    http: reqwest::Client,
    token: String,
}

fn options(backend: Backend) -> LocalOptions {
    let mut o = LocalOptions::new("127.0.0.1:0".parse().unwrap(), SECRET);
    o.backend = backend;
    // These tests drive load through one user; rate limits have tests of their own.
    o.policy =
        taskq_local::RolePolicy::parse(Some(r#"{"default":{"per_second":100000,"burst":100000}}"#), None).unwrap();
    o.worker = WorkerConfig {
        retry_base: Duration::from_millis(200),
        retry_cap: Duration::from_millis(400),
        ..WorkerConfig::default()
    };
    o.event_sources = EventSourceConfig {
        poll_wait: Duration::from_millis(500),
        ..EventSourceConfig::default()
    };
    o
}

async fn memory(_: &str) -> Option<TestApp> {
    Some(TestApp::start(options(Backend::Memory(MemoryQueueConfig::default()))).await)
}

/// The AWS shape: DynamoDB and SQS on moto, the status cache and rate limiter on redis-server.
async fn moto(test: &str) -> Option<TestApp> {
    let endpoint = taskq_aws::testing::endpoint(test)?;
    let redis = taskq_aws::testing::redis_url(test)?;
    let (sdk, config) = taskq_aws::testing::fresh(&endpoint, 30).await;
    let (store, queue) = config.adapters_from(&sdk);
    let backend = Backend::Ports {
        store: Arc::new(store),
        queue: Arc::new(queue),
    };
    let mut o = options(backend);
    o.redis = Some(taskq_aws::testing::redis_settings(&redis));
    Some(TestApp::start(o).await)
}

macro_rules! e2e {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
              async fn $name() { if let Some(app) = super::memory(stringify!($name)).await { super::$name(app).await } })*
        }
        mod moto {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
              async fn $name() { if let Some(app) = super::moto(stringify!($name)).await { super::$name(app).await } })*
        }
    };
}

e2e!(
    three_hundred_tasks_across_priorities_all_succeed,
    retries_follow_max_attempts,
    duplicate_deliveries_change_nothing,
    wait_returns_when_the_task_finishes,
);

impl TestApp {
    async fn start(options: LocalOptions) -> Self {
        let server = start(options).await.expect("local server starts");
        Self {
            server,
            http: reqwest::Client::new(),
            token: taskq_api::auth::mint(SECRET, "e2e-user", &[], 3600).unwrap(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.base_url())
    }

    async fn submit(&self, body: Value) -> Value {
        let r = self
            .http
            .post(self.url("/v1/tasks"))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        r.json().await.unwrap()
    }

    async fn submit_batch(&self, tasks: Vec<Value>) -> Vec<Value> {
        let r = self
            .http
            .post(self.url("/v1/tasks/batch"))
            .bearer_auth(&self.token)
            .json(&json!({"tasks": tasks}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let body: Value = r.json().await.unwrap();
        body["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["task"].clone())
            .collect()
    }

    async fn get(&self, path: &str) -> Value {
        let r = self
            .http
            .get(self.url(path))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        r.json().await.unwrap()
    }

    async fn task(&self, id: &str) -> Value {
        self.get(&format!("/v1/tasks/{id}")).await
    }

    async fn events(&self, id: &str) -> Vec<Value> {
        self.get(&format!("/v1/tasks/{id}/events")).await["events"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// Waits until every task is terminal, listing by status (one request per page, not per task).
    async fn settle(&self, ids: &[String], within: Duration) -> HashMap<String, Value> {
        let deadline = Instant::now() + within;
        loop {
            let mut all = HashMap::new();
            let mut cursor: Option<String> = None;
            loop {
                let mut path = "/v1/tasks?limit=100".to_owned();
                if let Some(c) = &cursor {
                    path.push_str(&format!("&cursor={c}"));
                }
                let page = self.get(&path).await;
                for t in page["tasks"].as_array().unwrap() {
                    all.insert(t["id"].as_str().unwrap().to_owned(), t.clone());
                }
                match page["next_cursor"].as_str() {
                    Some(c) => cursor = Some(c.to_owned()),
                    None => break,
                }
            }
            let pending = ids
                .iter()
                .filter(|id| all.get(*id).is_none_or(|t| !is_terminal(t)))
                .count();
            if pending == 0 {
                return all;
            }
            assert!(
                Instant::now() < deadline,
                "{pending} of {} tasks not terminal in {within:?}",
                ids.len()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

fn is_terminal(t: &Value) -> bool {
    t["status"]
        .as_str()
        .and_then(|s| s.parse::<Status>().ok())
        .is_some_and(|s| s.is_terminal())
}

/// A history is a valid path of the state machine with seq 1, 2, 3...
fn assert_valid_history(events: &[Value]) {
    let mut state = None;
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["seq"], i + 1, "{events:?}");
        if let Some(to) = e["to"].as_str() {
            let to: Status = to.parse().unwrap();
            match state {
                None => assert_eq!(to, Status::Queued),
                Some(from) => {
                    assert_eq!(e["from"].as_str(), Some(Status::as_str(&from)));
                    assert!(is_valid_step(from, to), "{from} -> {to} in {events:?}");
                }
            }
            state = Some(to);
        }
    }
}

async fn three_hundred_tasks_across_priorities_all_succeed(app: TestApp) {
    let started = Instant::now();
    let mut ids = Vec::new();
    // Half submitted one by one, half in batches of 50.
    for i in 0..150 {
        let p = ["high", "normal", "low"][i % 3];
        ids.push(
            app.submit(json!({"type": "echo", "payload": {"i": i}, "priority": p}))
                .await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    for chunk in 0..3 {
        let tasks = (0..50)
            .map(|i| {
                let p = ["high", "normal", "low"][i % 3];
                json!({"type": "echo", "payload": {"i": 150 + chunk * 50 + i}, "priority": p})
            })
            .collect();
        for t in app.submit_batch(tasks).await {
            ids.push(t["id"].as_str().unwrap().to_owned());
        }
    }
    let all = app.settle(&ids, Duration::from_secs(120)).await;
    let mut by_priority: HashMap<String, usize> = HashMap::new();
    for id in &ids {
        let t = &all[id];
        assert_eq!(t["status"], "succeeded", "{t}");
        assert_eq!(t["result"], t["payload"]);
        assert_eq!(t["attempts"], 1);
        *by_priority
            .entry(t["priority"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(by_priority.values().sum::<usize>(), 300);
    assert_eq!(by_priority.len(), 3);
    // Histories of a sample, in full.
    for id in ids.iter().step_by(37) {
        let events = app.events(id).await;
        let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["submitted", "started", "succeeded"]);
        assert_valid_history(&events);
    }
    eprintln!("300 tasks submitted and succeeded in {:?}", started.elapsed());
}

async fn retries_follow_max_attempts(app: TestApp) {
    let twice = app
        .submit(json!({"type": "fail", "payload": {"times": 2}, "max_attempts": 3}))
        .await;
    let five = app
        .submit(json!({"type": "fail", "payload": {"times": 5}, "max_attempts": 3, "priority": "high"}))
        .await;
    let ids = [
        twice["id"].as_str().unwrap().to_owned(),
        five["id"].as_str().unwrap().to_owned(),
    ];
    app.settle(&ids, Duration::from_secs(60)).await;

    let twice = app.task(&ids[0]).await;
    assert_eq!(
        (twice["status"].as_str(), twice["attempts"].as_u64()),
        (Some("succeeded"), Some(3))
    );
    assert_eq!(twice["result"], json!({"attempt": 3}));
    let events = app.events(&ids[0]).await;
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "submitted",
            "started",
            "retry_scheduled",
            "started",
            "retry_scheduled",
            "started",
            "succeeded"
        ]
    );
    let attempts: Vec<u64> = events.iter().filter_map(|e| e["attempt"].as_u64()).collect();
    assert_eq!(attempts, [1, 1, 2, 2, 3, 3]);
    assert_valid_history(&events);

    let five = app.task(&ids[1]).await;
    assert_eq!(
        (five["status"].as_str(), five["attempts"].as_u64()),
        (Some("failed"), Some(3))
    );
    assert_eq!(five["error"]["kind"], "deliberate_failure");
    let events = app.events(&ids[1]).await;
    assert_eq!(events.last().unwrap()["type"], "failed");
    assert_valid_history(&events);
}

async fn duplicate_deliveries_change_nothing(app: TestApp) {
    let mut ids = Vec::new();
    for i in 0..20 {
        let p = ["high", "low"][i % 2];
        let t = app
            .submit(json!({"type": "sleep", "payload": {"ms": 50}, "priority": p}))
            .await;
        let id = t["id"].as_str().unwrap().to_owned();
        // SQS delivers at least once: send every task's message a second time.
        let message = TaskMessage {
            user_id: "e2e-user".into(),
            task_id: id.parse::<TaskId>().unwrap(),
            priority: t["priority"].as_str().unwrap().parse::<Priority>().unwrap(),
            timeout_seconds: 60,
            run_at: None,
        };
        app.server.queue.send(&message, Duration::ZERO).await.unwrap();
        ids.push((id, message));
    }
    let all_ids: Vec<String> = ids.iter().map(|(i, _)| i.clone()).collect();
    app.settle(&all_ids, Duration::from_secs(60)).await;
    // And once more after they finished.
    for (_, m) in &ids {
        app.server.queue.send(m, Duration::ZERO).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (id, _) in &ids {
        let events = app.events(id).await;
        let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["submitted", "started", "succeeded"], "task {id}");
        assert_eq!(app.task(id).await["attempts"], 1);
    }
}

async fn wait_returns_when_the_task_finishes(app: TestApp) {
    let t = app.submit(json!({"type": "sleep", "payload": {"ms": 700}})).await;
    let id = t["id"].as_str().unwrap();
    let started = Instant::now();
    let done = app.get(&format!("/v1/tasks/{id}?wait=15")).await;
    assert_eq!(done["status"], "succeeded");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "returned on completion, not at the end of the wait"
    );
}
