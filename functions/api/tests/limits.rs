//! Role policy through the HTTP API: rate limits with their headers, and the highest priority
//! a role may submit. In-process limiter here; `redis.rs` runs the shared one.

mod common;

use common::*;
use taskq_core::memory::MemoryRateLimiter;
use taskq_core::rate::RolePolicy;

fn app(rate_limits: &str, max_priority: Option<&str>) -> TestApp {
    let policy = RolePolicy::parse(Some(rate_limits), max_priority).unwrap();
    TestApp::with_state(|service| {
        AppState::new(service, Authenticator::new(Some(SECRET), None, None))
            .with_limits(policy, Arc::new(MemoryRateLimiter::new()))
    })
}

fn with_roles(
    app: &TestApp,
    method: Method,
    uri: &str,
    user: &str,
    roles: &[&str],
    body: Option<Value>,
) -> Request<Body> {
    let roles: Vec<String> = roles.iter().map(|r| r.to_string()).collect();
    let token = taskq_api::auth::mint(SECRET, user, &roles, 600).unwrap();
    let mut req = app.request(method, uri, None, body);
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    req
}

fn header(r: &Reply, name: &str) -> u64 {
    r.headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_burst_then_429_with_retry_after_and_ratelimit_headers_then_refill() {
    let app = app(r#"{"default":{"per_second":4,"burst":3}}"#, None);
    for remaining in [2, 1, 0] {
        let r = app.get("alice", "/v1/tasks").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(
            (header(&r, "ratelimit-limit"), header(&r, "ratelimit-remaining")),
            (3, remaining)
        );
        assert!(header(&r, "ratelimit-reset") >= 1);
    }
    let r = app.get("alice", "/v1/tasks").await;
    assert_problem(&r, 429, None);
    assert_eq!(header(&r, "retry-after"), 1);
    assert_eq!(header(&r, "ratelimit-remaining"), 0);
    assert!(r.body["detail"].as_str().unwrap().contains("3 at once"), "{}", r.body);
    // Another user has a budget of their own.
    assert_eq!(app.get("bob", "/v1/tasks").await.status, StatusCode::OK);
    // 4/s: one request's worth is back after 250 ms.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(app.get("alice", "/v1/tasks").await.status, StatusCode::OK);
}

#[tokio::test]
async fn the_most_generous_role_sets_the_limit_and_public_routes_are_not_limited() {
    let app = app(
        r#"{"default":{"per_second":1,"burst":1},"admin":{"per_second":100,"burst":50}}"#,
        None,
    );
    let admin = app
        .send(with_roles(
            &app,
            Method::GET,
            "/v1/tasks",
            "root",
            &["ops", "admin"],
            None,
        ))
        .await;
    assert_eq!(header(&admin, "ratelimit-limit"), 50);
    let user = app.get("alice", "/v1/tasks").await;
    assert_eq!(header(&user, "ratelimit-limit"), 1);
    for _ in 0..5 {
        let r = app.send(app.request(Method::GET, "/v1/health", None, None)).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.headers.get("ratelimit-limit").is_none());
    }
    // A request that fails authentication spends nobody's budget.
    let r = app.send(app.request(Method::GET, "/v1/tasks", None, None)).await;
    assert_problem(&r, 401, None);
}

#[tokio::test]
async fn a_priority_above_the_role_maximum_is_403_alone_and_per_item_in_a_batch() {
    let app = app(
        r#"{"default":{"per_second":100,"burst":100}}"#,
        Some(r#"{"default":"normal","admin":"high"}"#),
    );
    let r = app
        .submit("alice", json!({"type": "echo", "payload": 1, "priority": "high"}))
        .await;
    assert_problem(&r, 403, None);
    assert!(
        r.body["detail"].as_str().unwrap().contains("at most normal"),
        "{}",
        r.body
    );
    assert_eq!(
        app.queue.stats(Priority::High).await.unwrap().visible,
        0,
        "nothing queued"
    );
    let r = app
        .submit("alice", json!({"type": "echo", "payload": 1, "priority": "low"}))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let r = app
        .send(with_roles(
            &app,
            Method::POST,
            "/v1/tasks",
            "root",
            &["admin"],
            Some(json!({"type": "echo", "payload": 1, "priority": "high"})),
        ))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);

    let batch = json!({"tasks": [
        {"type": "echo", "payload": 1},
        {"type": "echo", "payload": 2, "priority": "high"},
        {"type": "bad type", "payload": 3},
        {"type": "echo", "payload": 4, "priority": "low"},
    ]});
    let r = app
        .send(app.request(Method::POST, "/v1/tasks/batch", Some("alice"), Some(batch)))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let results = r.body["results"].as_array().unwrap();
    assert_eq!(results[0]["task"]["payload"], 1);
    assert_eq!(results[1]["error"]["status"], 403);
    assert!(results[1]["error"]["detail"]
        .as_str()
        .unwrap()
        .contains("tasks[1].priority"));
    assert_eq!(results[2]["error"]["status"], 400);
    assert_eq!(results[3]["task"]["payload"], 4);
}
