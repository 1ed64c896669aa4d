//! What the shared rate limiter adds to a request: the same GET through the Router with the
//! in-process limiter and with the Redis one, and the bare GCRA script round trip.
//!
//!     cargo run --release -p taskq-api --example limiter_latency -- redis://127.0.0.1:6379 [requests]

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use http::Request;
use taskq_api::{router, AppState, Authenticator};
use taskq_core::cache::RateLimiter;
use taskq_core::memory::{MemoryRateLimiter, MemoryTaskQueue, MemoryTaskStore};
use taskq_core::rate::{Quota, RolePolicy};
use taskq_core::TaskService;
use tower::ServiceExt;

fn summary(name: &str, mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    println!(
        "{name:<34} n={:<6} mean {:>8.1} µs  p50 {:>8.1} µs  p99 {:>8.1} µs",
        samples.len(),
        mean.as_secs_f64() * 1e6,
        at(0.5).as_secs_f64() * 1e6,
        at(0.99).as_secs_f64() * 1e6
    );
    at(0.5)
}

async fn through_router(limiter: Arc<dyn RateLimiter>, requests: usize) -> Vec<Duration> {
    let service = TaskService::new(Arc::new(MemoryTaskStore::new()), Arc::new(MemoryTaskQueue::default()));
    let policy = RolePolicy::parse(Some(r#"{"default":{"per_second":1000000,"burst":1000000}}"#), None).unwrap();
    let app =
        router(AppState::new(service, Authenticator::new(Some("bench"), None, None)).with_limits(policy, limiter));
    let token = taskq_api::auth::mint("bench", &format!("bench-{}", std::process::id()), &[], 3600).unwrap();
    let mut samples = Vec::with_capacity(requests);
    for i in 0..requests + 200 {
        let req = Request::get("/v1/tasks?limit=1")
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        let t = Instant::now();
        let res = app.clone().oneshot(req).await.unwrap();
        assert!(res.status().is_success(), "{}", res.status());
        if i >= 200 {
            samples.push(t.elapsed()); // after warm-up
        }
    }
    samples
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let requests: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(5000);
    let settings = taskq_aws::testing::redis_settings(&url);
    let redis = Arc::new(taskq_aws::RedisCache::new(settings).unwrap());

    let quota = Quota {
        per_second: 1e6,
        burst: 1_000_000,
    };
    let mut script = Vec::with_capacity(requests);
    for _ in 0..requests {
        let t = Instant::now();
        redis.acquire("bench-script", quota).await.unwrap();
        script.push(t.elapsed());
    }
    summary("GCRA script round trip (Redis)", script);
    let local = summary(
        "GET /v1/tasks, in-process limiter",
        through_router(Arc::new(MemoryRateLimiter::new()), requests).await,
    );
    let shared = summary("GET /v1/tasks, Redis limiter", through_router(redis, requests).await);
    println!(
        "added by the Redis limiter at p50: {:.1} µs",
        (shared.as_secs_f64() - local.as_secs_f64()) * 1e6
    );
}
