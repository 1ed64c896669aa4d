//! Fairness between users, through taskq-local's emulated event source mappings: one user's
//! 10,000 queued tasks must not hold back another user's single task by more than about one
//! batch per poller. SQS fair queues do this in AWS (`MessageGroupId` = the user, asserted in
//! the queue contract suite); the embedded queue applies the same rule.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use taskq_local::{start, EventSourceConfig, LocalOptions};

const SECRET: &str = "fairness-secret";
const NOISY_TASKS: usize = 10_000;

fn at(task: &Value, field: &str) -> Option<DateTime<Utc>> {
    task[field].as_str().and_then(|s| s.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_users_backlog_does_not_delay_another_users_task() {
    let mut options = LocalOptions::new("127.0.0.1:0".parse().unwrap(), SECRET);
    options.policy =
        taskq_local::RolePolicy::parse(Some(r#"{"default":{"per_second":100000,"burst":100000}}"#), None).unwrap();
    options.sweep_every = None;
    options.event_sources = EventSourceConfig {
        poll_wait: Duration::from_millis(200),
        ..EventSourceConfig::default()
    };
    let pollers = options.event_sources.concurrency[1];
    let batch = options.event_sources.batch_size;
    let server = start(options).await.expect("local server starts");
    let http = reqwest::Client::new();
    let url = |p: &str| format!("{}{p}", server.base_url());
    let noisy = taskq_api::auth::mint(SECRET, "noisy", &[], 3600).unwrap();
    let quiet = taskq_api::auth::mint(SECRET, "quiet", &[], 3600).unwrap();

    // 10,000 tasks of 50 ms each on the normal queue: at 2 pollers x 10 records, ~25 s of work.
    let item = json!({"type": "sleep", "payload": {"ms": 50}, "priority": "normal"});
    for _ in 0..NOISY_TASKS / 100 {
        let r = http
            .post(url("/v1/tasks/batch"))
            .bearer_auth(&noisy)
            .json(&json!({"tasks": vec![item.clone(); 100]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }

    let r = http
        .post(url("/v1/tasks"))
        .bearer_auth(&quiet)
        .json(&json!({"type": "echo", "payload": {"hi": 1}, "priority": "normal"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let waited = Instant::now();
    let done: Value = http
        .get(url(&format!("/v1/tasks/{id}?wait=20")))
        .bearer_auth(&quiet)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(done["status"], "succeeded", "{done}");
    let waited = waited.elapsed();
    let (created, started) = (at(&done, "created_at").unwrap(), at(&done, "started_at").unwrap());

    // Which of the noisy user's tasks started between the quiet task's submission and its start?
    let mut ahead = 0;
    let mut still_queued = 0;
    let mut cursor: Option<String> = None;
    loop {
        let mut path = "/v1/tasks?limit=100".to_owned();
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page: Value = http
            .get(url(&path))
            .bearer_auth(&noisy)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for t in page["tasks"].as_array().unwrap() {
            match at(t, "started_at") {
                Some(s) if s > created && s < started => ahead += 1,
                None => still_queued += 1,
                _ => {}
            }
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let bound = 2 * pollers * batch;
    println!(
        "fairness: quiet task queued {} ms (answered {} ms after submission); {ahead} noisy tasks \
         started in between (bound {bound}); {still_queued} of {NOISY_TASKS} noisy tasks not yet started",
        (started - created).num_milliseconds(),
        waited.as_millis(),
    );
    assert!(
        still_queued > NOISY_TASKS / 2,
        "the backlog drained too fast to test anything ({still_queued} left)"
    );
    assert!(
        ahead <= bound,
        "{ahead} noisy tasks started ahead of the quiet one (bound {bound})"
    );
}
