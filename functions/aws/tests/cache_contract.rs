//! One contract suite for the status cache and the rate limiter, run over the in-memory
//! adapters and over Redis (redis-server). The Redis scripts and the Rust GCRA must agree.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use taskq_aws::RedisCache;
use taskq_core::cache::{CacheTtl, RateLimiter, StatusCache};
use taskq_core::memory::{MemoryRateLimiter, MemoryStatusCache, MemoryTaskQueue, MemoryTaskStore};
use taskq_core::rate::Quota;
use taskq_core::{NewTask, Snapshot, Status, Task, TaskId, TaskService, Transition};

const TTL: CacheTtl = CacheTtl {
    active: Duration::from_millis(400),
    terminal: Duration::from_secs(60),
};

struct Backends {
    cache: Arc<dyn StatusCache>,
    limiter: Arc<dyn RateLimiter>,
}

fn memory() -> Option<Backends> {
    Some(Backends {
        cache: Arc::new(MemoryStatusCache::new(TTL)),
        limiter: Arc::new(MemoryRateLimiter::new()),
    })
}

fn redis(test: &str) -> Option<Backends> {
    let url = taskq_aws::testing::redis_url(test)?;
    let mut settings = taskq_aws::testing::redis_settings(&url);
    settings.ttl = TTL;
    let redis = Arc::new(RedisCache::new(settings).expect("valid URL"));
    Some(Backends {
        cache: redis.clone(),
        limiter: redis,
    })
}

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(#[tokio::test] async fn $name() { if let Some(b) = super::memory() { super::$name(b).await } })*
        }
        mod redis {
            $(#[tokio::test] async fn $name() { if let Some(b) = super::redis(stringify!($name)) { super::$name(b).await } })*
        }
    };
}

contract!(
    a_put_task_reads_back_as_the_same_json_for_its_user_only,
    an_older_version_never_replaces_a_newer_one,
    active_entries_expire_and_terminal_ones_stay,
    subscribers_wake_on_their_task_only,
    limiter_allows_the_burst_then_denies_with_retry_after_then_refills,
    limiter_budgets_are_per_key,
);

fn user() -> String {
    taskq_aws::testing::unique("u")
}

/// A freshly submitted task, as the service builds it.
async fn task(user_id: &str) -> Task {
    let service = TaskService::new(Arc::new(MemoryTaskStore::new()), Arc::new(MemoryTaskQueue::default()));
    let new = NewTask::from_json(&json!({"type": "echo", "payload": {"n": 1, "s": "é"}}), "").unwrap();
    service.submit(user_id, &new, None).await.unwrap().task
}

/// The task after `t`, as a store would return it (history appended).
fn step(task: &Task, t: Transition) -> Task {
    let change = t.plan(Snapshot::from(task), chrono::Utc::now()).unwrap();
    let mut next = task.clone();
    change.apply_to(&mut next);
    next
}

async fn a_put_task_reads_back_as_the_same_json_for_its_user_only(b: Backends) {
    let alice = user();
    let t = task(&alice).await;
    assert!(b.cache.get(&alice, t.id).await.unwrap().is_none());
    b.cache.put(&t).await.unwrap();
    let got = b.cache.get(&alice, t.id).await.unwrap().expect("cached");
    assert_eq!(got.user_id, alice);
    assert_eq!(serde_json::to_string(&got).unwrap(), serde_json::to_string(&t).unwrap());
    assert!(
        b.cache.get(&user(), t.id).await.unwrap().is_none(),
        "another user's key"
    );
}

async fn an_older_version_never_replaces_a_newer_one(b: Backends) {
    let alice = user();
    let queued = task(&alice).await;
    let running = step(
        &queued,
        Transition::Start {
            lease_until: chrono::Utc::now() + chrono::Duration::seconds(60),
        },
    );
    b.cache.put(&running).await.unwrap();
    b.cache.put(&queued).await.unwrap(); // a slow read-through fill
    assert_eq!(
        b.cache.get(&alice, queued.id).await.unwrap().unwrap().status,
        Status::Running
    );
    let done = step(&running, Transition::Succeed { result: json!(1) });
    b.cache.put(&done).await.unwrap();
    assert_eq!(
        b.cache.get(&alice, queued.id).await.unwrap().unwrap().status,
        Status::Succeeded
    );
}

async fn active_entries_expire_and_terminal_ones_stay(b: Backends) {
    let alice = user();
    let queued = task(&alice).await;
    let mut done = task(&alice).await;
    done = step(&done, Transition::Cancel { error: None });
    b.cache.put(&queued).await.unwrap();
    b.cache.put(&done).await.unwrap();
    tokio::time::sleep(TTL.active + Duration::from_millis(200)).await;
    assert!(
        b.cache.get(&alice, queued.id).await.unwrap().is_none(),
        "active entry outlived its TTL"
    );
    assert!(
        b.cache.get(&alice, done.id).await.unwrap().is_some(),
        "terminal entry expired early"
    );
}

async fn subscribers_wake_on_their_task_only(b: Backends) {
    let alice = user();
    let (mine, other) = (TaskId::new(), TaskId::new());
    let mut watch = b.cache.subscribe(&alice, mine).await.unwrap();
    b.cache.publish(&alice, other).await.unwrap();
    b.cache.publish(&user(), mine).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), watch.changed())
            .await
            .is_err(),
        "woke on another task's change"
    );
    b.cache.publish(&alice, mine).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), watch.changed())
        .await
        .expect("no wake-up within 5 s")
        .unwrap();
}

async fn limiter_allows_the_burst_then_denies_with_retry_after_then_refills(b: Backends) {
    let key = user();
    let quota = Quota {
        per_second: 5.0,
        burst: 3,
    };
    let start = Instant::now();
    for remaining in [2, 1, 0] {
        let d = b.limiter.acquire(&key, quota).await.unwrap();
        assert!(d.allowed);
        assert_eq!((d.limit, d.remaining), (3, remaining));
    }
    let denied = b.limiter.acquire(&key, quota).await.unwrap();
    assert!(!denied.allowed);
    assert_eq!(denied.remaining, 0);
    // One request refills every 200 ms: the wait is at most that, less the time spent so far.
    let elapsed = start.elapsed();
    assert!(
        denied.retry_after <= Duration::from_millis(200),
        "{:?}",
        denied.retry_after
    );
    assert!(
        denied.retry_after + elapsed >= Duration::from_millis(190),
        "{:?}",
        denied.retry_after
    );
    assert!(denied.reset <= Duration::from_millis(600) && denied.reset > Duration::from_millis(300));
    tokio::time::sleep(denied.retry_after + Duration::from_millis(20)).await;
    assert!(b.limiter.acquire(&key, quota).await.unwrap().allowed, "no refill");
}

async fn limiter_budgets_are_per_key(b: Backends) {
    let quota = Quota {
        per_second: 1.0,
        burst: 1,
    };
    let (k1, k2) = (user(), user());
    assert!(b.limiter.acquire(&k1, quota).await.unwrap().allowed);
    assert!(!b.limiter.acquire(&k1, quota).await.unwrap().allowed);
    assert!(b.limiter.acquire(&k2, quota).await.unwrap().allowed);
}

/// A first connection slower than a cache call's budget (TCP + TLS + cluster discovery with
/// ElastiCache) still ends with a working cache: the calls made while it is under way time out,
/// but the attempt goes on in its own task and a later call uses it. Here a proxy holds the
/// first connection back 300 ms against a 20 ms budget.
#[tokio::test]
async fn a_first_connection_slower_than_the_call_budget_still_connects() {
    use taskq_core::cache::{CacheError, Guard};
    let Some(url) = taskq_aws::testing::redis_url("slow_first_connection") else {
        return;
    };
    let target = url
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .expect("host:port")
        .to_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let proxy = listener.local_addr().expect("addr");
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let accepted = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let target = target.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                if let Ok(mut server) = tokio::net::TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    let mut settings = taskq_aws::testing::redis_settings(&format!("redis://{proxy}"));
    settings.ttl = TTL;
    let redis = RedisCache::new(settings).expect("valid URL");
    let guard = Guard::new(Duration::from_millis(20), Duration::from_millis(50));
    let user = user();
    let task = task(&user).await;

    let first = guard.run(redis.put(&task)).await;
    assert!(matches!(first, Err(CacheError::Timeout(_))), "{first:?}");
    // Calls keep failing fast (timeout, then skipped) until the connection is made ...
    let start = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(60)).await;
        if guard.run(redis.put(&task)).await.is_ok() {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "the cache never connected");
    }
    // ... and then it works, over the one connection the first call started.
    let read = guard
        .run(redis.get(&user, task.id))
        .await
        .expect("a connected cache answers");
    assert_eq!(read.map(|t| t.id), Some(task.id));
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 1);
}
