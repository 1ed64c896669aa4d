//! The API over Redis (redis-server standing in for ElastiCache): one rate-limit budget shared
//! by API instances, status reads served from the cache and refreshed by every change, `?wait`
//! woken by change messages, and what happens when Redis stops mid-test.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use taskq_aws::{RedisCache, RedisSettings};
use taskq_core::cache::{CacheLayer, FallbackLimiter, RefreshingStore};
use taskq_core::memory::MemoryRateLimiter;
use taskq_core::rate::RolePolicy;
use taskq_core::{Snapshot, TaskId, TaskStore, Transition};

struct RedisApp {
    app: TestApp,
    store: Arc<RefreshingStore>,
}

fn redis_app(settings: RedisSettings, rate_limits: &str, cached_reads: bool) -> RedisApp {
    let redis = Arc::new(RedisCache::new(settings.clone()).unwrap());
    let layer = CacheLayer::new(redis.clone(), settings.guard());
    let store = Arc::new(RefreshingStore::new(Arc::new(MemoryTaskStore::new()), layer.clone()));
    let queue = Arc::new(MemoryTaskQueue::new(taskq_core::memory::MemoryQueueConfig::exact()));
    let mut service = TaskService::new(store.clone(), queue.clone()).with_wait_poll(Duration::from_secs(60));
    if cached_reads {
        service = service.with_cache(layer);
    }
    let limiter = Arc::new(FallbackLimiter::new(
        redis,
        Arc::new(MemoryRateLimiter::new()),
        settings.guard(),
    ));
    let state = AppState::new(service, Authenticator::new(Some(SECRET), None, None))
        .with_limits(RolePolicy::parse(Some(rate_limits), None).unwrap(), limiter);
    RedisApp {
        app: TestApp::from_router(router(state), queue),
        store,
    }
}

const GENEROUS: &str = r#"{"default":{"per_second":100000,"burst":100000}}"#;

fn user() -> String {
    taskq_aws::testing::unique("user")
}

async fn submitted(app: &TestApp, user: &str) -> TaskId {
    let r = app.submit(user, json!({"type": "echo", "payload": {"x": 1}})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    r.body["id"].as_str().unwrap().parse().unwrap()
}

/// Moves the task through `t` the way a worker would (through the refreshing store).
async fn step(store: &RefreshingStore, user: &str, id: TaskId, t: Transition) {
    let task = store.get(user, id).await.unwrap().unwrap();
    let change = t.plan(Snapshot::from(&task), chrono::Utc::now()).unwrap();
    store.apply(user, id, &change).await.unwrap();
}

fn start() -> Transition {
    Transition::Start {
        lease_until: chrono::Utc::now() + chrono::Duration::seconds(300),
    }
}

#[tokio::test]
async fn two_api_instances_share_one_budget() {
    let Some(url) = taskq_aws::testing::redis_url("two_api_instances_share_one_budget") else {
        return;
    };
    let limits = r#"{"default":{"per_second":0.2,"burst":4}}"#;
    let a = redis_app(taskq_aws::testing::redis_settings(&url), limits, true);
    let b = redis_app(taskq_aws::testing::redis_settings(&url), limits, true);
    let alice = user();
    let mut allowed = 0;
    for i in 0..8 {
        let app = if i % 2 == 0 { &a.app } else { &b.app };
        let r = app.get(&alice, "/v1/tasks").await;
        match r.status {
            StatusCode::OK => allowed += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert!(r.headers.get("retry-after").is_some());
                assert_eq!(r.headers["ratelimit-remaining"], "0");
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(allowed, 4, "the two instances must share one burst of 4");
}

#[tokio::test]
async fn status_polls_hit_the_cache_and_every_change_refreshes_it() {
    let Some(url) = taskq_aws::testing::redis_url("status_polls_hit_the_cache_and_every_change_refreshes_it") else {
        return;
    };
    let mut counts = Vec::new();
    for cached in [true, false] {
        let r = redis_app(taskq_aws::testing::redis_settings(&url), GENEROUS, cached);
        let alice = user();
        let id = submitted(&r.app, &alice).await;
        let uri = format!("/v1/tasks/{id}");
        // Another user never gets the entry, warm or not.
        assert_eq!(r.app.get(&user(), &uri).await.status, StatusCode::NOT_FOUND);

        step(&r.store, &alice, id, start()).await;
        assert_eq!(
            r.app.get(&alice, &uri).await.body["status"],
            "running",
            "stale after start"
        );
        // 1,000 polls of a running task over about 6 s: clients polling every 6 ms.
        let before = r.store.reads();
        let t0 = Instant::now();
        for _ in 0..1000 {
            let p = r.app.get(&alice, &uri).await;
            assert_eq!(p.status, StatusCode::OK);
            tokio::time::sleep(Duration::from_millis(6)).await;
        }
        let running_reads = r.store.reads() - before;
        let running_secs = t0.elapsed().as_secs_f64();

        step(&r.store, &alice, id, Transition::Succeed { result: json!("done") }).await;
        assert_eq!(
            r.app.get(&alice, &uri).await.body["status"],
            "succeeded",
            "stale after finish"
        );
        let before = r.store.reads();
        for _ in 0..1000 {
            assert_eq!(r.app.get(&alice, &uri).await.status, StatusCode::OK);
        }
        let finished_reads = r.store.reads() - before;
        println!(
            "cache {}: store reads per 1,000 polls: running task {running_reads} (over {running_secs:.1} s), finished task {finished_reads}",
            if cached { "on" } else { "off" }
        );
        counts.push((running_reads, finished_reads, running_secs));
    }
    let (on, off) = (counts[0], counts[1]);
    assert_eq!(
        (off.0, off.1),
        (1000, 1000),
        "without the cache every poll reads the store"
    );
    assert_eq!(on.1, 0, "a finished task's polls all hit the cache");
    // Running entries live 2 s: one read per expiry, plus slack for a slow machine.
    let expected = (on.2 / 2.0).ceil() as u64 + 2;
    assert!(on.0 <= expected, "running task: {} reads over {:.1} s", on.0, on.2);
}

#[tokio::test]
async fn wait_wakes_on_the_change_message() {
    let Some(url) = taskq_aws::testing::redis_url("wait_wakes_on_the_change_message") else {
        return;
    };
    let r = redis_app(taskq_aws::testing::redis_settings(&url), GENEROUS, true);
    let alice = user();
    let id = submitted(&r.app, &alice).await;
    let store = r.store.clone();
    let owner = alice.clone();
    let finisher = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        step(&store, &owner, id, start()).await;
        step(&store, &owner, id, Transition::Succeed { result: json!(1) }).await;
    });
    let t0 = Instant::now();
    let reply = r.app.get(&alice, &format!("/v1/tasks/{id}?wait=15")).await;
    let waited = t0.elapsed();
    finisher.await.unwrap();
    assert_eq!(reply.body["status"], "succeeded");
    // The safety re-read is every 60 s here and the wait 15 s: only the message explains this.
    assert!(waited < Duration::from_secs(10), "woke after {waited:?}");
    assert!(
        waited >= Duration::from_millis(400),
        "returned before the task finished"
    );
}

/// A redis-server of this test's own, on a free port, so it can be stopped and started.
struct OwnRedis {
    port: u16,
    child: Child,
}

impl OwnRedis {
    fn start(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be on PATH (scripts/test installs it)");
        // Owned from here on: Drop kills and reaps it on every path, panics included.
        let redis = Self { port, child };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return redis;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not start on port {port}");
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test]
async fn redis_stopping_mid_test_costs_no_errors_and_its_return_is_picked_up() {
    if taskq_aws::testing::redis_url("redis_stopping_mid_test_costs_no_errors_and_its_return_is_picked_up").is_none() {
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut redis = OwnRedis::start(port);
    let mut settings = taskq_aws::testing::redis_settings(&format!("redis://127.0.0.1:{}", redis.port));
    settings.timeout = Duration::from_millis(50);
    settings.pause = Duration::from_millis(300);
    let r = redis_app(settings, r#"{"default":{"per_second":1000,"burst":1000}}"#, true);
    let alice = user();
    let id = submitted(&r.app, &alice).await;
    let uri = format!("/v1/tasks/{id}");
    let before = r.store.reads();
    assert_eq!(r.app.get(&alice, &uri).await.status, StatusCode::OK);
    assert_eq!(r.store.reads(), before, "served from the cache while Redis is up");

    redis.stop();
    let t0 = Instant::now();
    for round in 0..3 {
        let got = r.app.get(&alice, &uri).await;
        assert_eq!(got.status, StatusCode::OK, "round {round}: {}", got.body);
        assert_eq!(got.body["status"], "queued");
        let list = r.app.get(&alice, "/v1/tasks").await;
        assert_eq!(list.status, StatusCode::OK);
        assert!(
            list.headers.get("ratelimit-limit").is_some(),
            "the local fallback limits too"
        );
        let new = r.app.submit(&alice, json!({"type": "echo", "payload": round})).await;
        assert_eq!(new.status, StatusCode::ACCEPTED);
        let waited = r.app.get(&alice, &format!("{uri}?wait=1")).await;
        assert_eq!(waited.status, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(350)).await;
    }
    let outage = t0.elapsed();
    assert!(r.store.reads() > before, "reads fell back to the store");
    let admin = {
        let token = taskq_api::auth::mint(SECRET, "root", &["admin".into()], 600).unwrap();
        let mut req = r.app.request(Method::GET, "/v1/admin/cache", None, None);
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        r.app.send(req).await
    };
    assert_eq!(admin.status, StatusCode::OK);
    assert!(admin.body["ping_error"].is_string(), "{}", admin.body);
    println!("Redis down: 3 rounds of get, list, submit and wait=1 took {outage:?}");

    // Redis comes back: the cache is used again without a restart.
    let _redis = OwnRedis::start(port);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mark = r.store.reads();
        for _ in 0..5 {
            assert_eq!(r.app.get(&alice, &uri).await.status, StatusCode::OK);
        }
        if r.store.reads() - mark <= 1 {
            break; // one fill, then hits
        }
        assert!(
            Instant::now() < deadline,
            "the cache was not used again after Redis returned"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
