//! The HTTP contract, through the Router (as `axum::serve` runs it) and through the Lambda
//! adapter with the API Gateway events in `events/` (as `lambda_http::run` runs it).

mod common;

use common::*;

#[tokio::test]
async fn health_and_openapi_need_no_token() {
    let app = TestApp::new();
    let r = app.send(app.request(Method::GET, "/v1/health", None, None)).await;
    assert_eq!((r.status, r.body), (StatusCode::OK, json!({"status": "ok"})));
    let r = app.send(app.request(Method::GET, "/v1/openapi.json", None, None)).await;
    assert_eq!(r.body["openapi"], "3.1.0");
}

#[tokio::test]
async fn openapi_describes_every_route_the_router_serves() {
    let app = TestApp::new();
    let paths: Vec<&String> = app.spec["paths"].as_object().unwrap().keys().collect();
    assert_eq!(paths.len(), 12);
    for (method, path) in [
        ("get", "/v1/health"),
        ("get", "/v1/openapi.json"),
        ("post", "/v1/tasks"),
        ("get", "/v1/tasks"),
        ("post", "/v1/tasks/batch"),
        ("get", "/v1/tasks/{id}"),
        ("post", "/v1/tasks/{id}/cancel"),
        ("post", "/v1/tasks/{id}/retry"),
        ("get", "/v1/tasks/{id}/events"),
        ("get", "/v1/types"),
        ("get", "/v1/admin/queues"),
        ("get", "/v1/admin/cache"),
        ("post", "/v1/admin/dlq/{priority}/redrive"),
    ] {
        assert!(
            app.spec["paths"][path][method].is_object(),
            "{method} {path} missing from the spec"
        );
        // And the router serves it (anything but 404/405 for a well-formed id).
        let uri = path
            .replace("{id}", "01KAXQ6M6V7ZP0Y8QH3F5T2N9R")
            .replace("{priority}", "low");
        let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let r = app.send(app.request(m, &uri, Some("u"), None)).await;
        assert_ne!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        if !path.contains("{id}") {
            assert_ne!(r.status, StatusCode::NOT_FOUND, "{method} {path}");
        }
    }
}

#[tokio::test]
async fn submit_returns_202_with_location_and_the_task_and_queues_it() {
    let app = TestApp::new();
    let r = app
        .submit(
            "alice",
            json!({"type": "echo", "payload": {"x": 1}, "priority": "high", "max_attempts": 5, "timeout_seconds": 10}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let id = r.body["id"].as_str().unwrap();
    assert_eq!(r.headers["location"], format!("/v1/tasks/{id}").as_str());
    assert_eq!(r.body["status"], "queued");
    assert_eq!(r.body["priority"], "high");
    assert_eq!(r.body["payload"], json!({"x": 1}));
    assert_eq!(
        (
            r.body["attempts"].as_u64(),
            r.body["max_attempts"].as_u64(),
            r.body["timeout_seconds"].as_u64()
        ),
        (Some(0), Some(5), Some(10))
    );
    assert!(
        r.body.get("user_id").is_none(),
        "the owner is not part of the task JSON"
    );
    assert_eq!(app.queue.depth(Priority::High), 1);
    assert_eq!(app.queue.depth(Priority::Normal), 0);
}

#[tokio::test]
async fn delayed_submission_sets_run_at() {
    let app = TestApp::new();
    let r = app.submit("alice", json!({"type": "echo", "delay_seconds": 60})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert!(r.body["run_at"].is_string());
    let got = app
        .queue
        .receive(Priority::Normal, 10, std::time::Duration::ZERO)
        .await
        .unwrap();
    assert!(got.is_empty(), "a delayed message is not visible yet");
}

#[tokio::test]
async fn run_at_schedules_up_to_seven_days_ahead() {
    let app = TestApp::new();
    let at = |d: chrono::Duration| (chrono::Utc::now() + d).to_rfc3339();
    // Two days ahead: accepted, stored with its run_at, no message yet (SQS delays 15 min at most).
    let r = app
        .submit(
            "alice",
            json!({"type": "echo", "run_at": at(chrono::Duration::days(2))}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    assert!(r.body["run_at"].is_string());
    let stats = app.queue.stats(Priority::Normal).await.unwrap();
    assert_eq!((stats.visible, stats.delayed), (0, 0));
    // Five minutes ahead: sent now, with the delay.
    let r = app
        .submit(
            "alice",
            json!({"type": "echo", "run_at": at(chrono::Duration::minutes(5))}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(app.queue.stats(Priority::Normal).await.unwrap().delayed, 1);
    for body in [
        json!({"type": "echo", "run_at": at(chrono::Duration::days(8))}),
        json!({"type": "echo", "run_at": at(chrono::Duration::days(-1))}),
        json!({"type": "echo", "run_at": "next tuesday"}),
        json!({"type": "echo", "run_at": at(chrono::Duration::hours(1)), "delay_seconds": 10}),
    ] {
        assert_problem(&app.submit("alice", body).await, 400, Some("run_at"));
    }
}

#[tokio::test]
async fn submit_rejects_bad_input_with_a_problem_naming_the_field() {
    let app = TestApp::new();
    let bad_json = app
        .send(
            Request::post("/v1/tasks")
                .header("authorization", format!("Bearer {}", token("a")))
                .header("content-type", "application/json")
                .body(Body::from("{\"type\": "))
                .unwrap(),
        )
        .await;
    assert_problem(&bad_json, 400, None);

    for (body, field) in [
        (json!({"payload": 1}), "type"),
        (json!({"type": "Echo!"}), "type"),
        (json!({"type": "echo", "priority": "urgent"}), "priority"),
        (json!({"type": "echo", "delay_seconds": 901}), "delay_seconds"),
        (json!({"type": "echo", "max_attempts": 26}), "max_attempts"),
        (json!({"type": "echo", "timeout_seconds": 0}), "timeout_seconds"),
        (json!({"type": "echo", "user_id": "mallory"}), "user_id"),
        (json!([1, 2]), "body"),
    ] {
        assert_problem(&app.submit("a", body).await, 400, Some(field));
    }
}

#[tokio::test]
async fn callback_url_is_https_only_and_never_a_private_address() {
    let app = TestApp::new();
    let ok = app
        .submit(
            "a",
            json!({"type": "echo", "callback_url": "https://Hooks.Example.com/taskq?k=v"}),
        )
        .await;
    assert_eq!(ok.status, StatusCode::ACCEPTED, "{}", ok.body);
    assert_eq!(ok.body["callback_url"], "https://hooks.example.com/taskq?k=v");
    let id = ok.body["id"].as_str().unwrap();
    let got = app.get("a", &format!("/v1/tasks/{id}")).await;
    assert_eq!(got.body["callback_url"], "https://hooks.example.com/taskq?k=v");
    let none = app.submit("a", json!({"type": "echo", "callback_url": null})).await;
    assert_eq!(none.status, StatusCode::ACCEPTED);
    assert!(none.body.get("callback_url").is_none());

    let long = format!("https://example.com/{}", "a".repeat(2048));
    for bad in [
        json!("http://example.com/hook"),
        json!("not a url"),
        json!("https://"),
        json!("https://user:secret@example.com/"),
        json!("https://127.0.0.1:9001/2018-06-01/runtime/invocation/next"),
        json!("http://127.0.0.1:9001/"),
        json!("https://localhost/"),
        json!("https://169.254.169.254/latest/meta-data/"),
        json!("https://[fd00::1]/"),
        json!(long),
        json!(42),
    ] {
        let r = app.submit("a", json!({"type": "echo", "callback_url": bad})).await;
        assert_problem(&r, 400, Some("callback_url"));
    }
    // Batch items name their own field.
    let batch = app
        .send(app.request(
            Method::POST,
            "/v1/tasks/batch",
            Some("a"),
            Some(json!({"tasks": [{"type": "echo", "callback_url": "http://example.com/"}, {"type": "echo"}]})),
        ))
        .await;
    assert_eq!(batch.status, StatusCode::ACCEPTED);
    assert_eq!(batch.body["results"][0]["error"]["field"], "tasks[0].callback_url");
    assert!(batch.body["results"][1]["task"].is_object());
}

#[tokio::test]
async fn loopback_callbacks_are_accepted_only_when_the_deployment_allows_them() {
    let local = TestApp::with_state(|service| {
        AppState::new(service, Authenticator::new(Some(SECRET), None, None)).with_submit_rules(
            taskq_core::SubmitRules {
                callback: taskq_core::callback::CallbackRules { allow_loopback: true },
                ..Default::default()
            },
        )
    });
    for url in [
        "http://127.0.0.1:8081/hook",
        "http://localhost:3000/",
        "https://[::1]/x",
    ] {
        let r = local.submit("a", json!({"type": "echo", "callback_url": url})).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{url}: {}", r.body);
        let strict = TestApp::new()
            .submit("a", json!({"type": "echo", "callback_url": url}))
            .await;
        assert_problem(&strict, 400, Some("callback_url"));
    }
    // Private ranges and plain http elsewhere stay refused.
    for url in ["http://example.com/", "http://10.0.0.8/", "https://192.168.1.1/"] {
        let r = local.submit("a", json!({"type": "echo", "callback_url": url})).await;
        assert_problem(&r, 400, Some("callback_url"));
    }
}

#[tokio::test]
async fn submit_returns_413_when_payload_or_body_is_too_large() {
    let app = TestApp::new();
    let payload = "x".repeat(256 * 1024);
    assert_problem(
        &app.submit("a", json!({"type": "echo", "payload": payload})).await,
        413,
        Some("payload"),
    );
    let body = "y".repeat(300 * 1024);
    assert_problem(
        &app.submit("a", json!({"type": "echo", "payload": body})).await,
        413,
        Some("body"),
    );
    // Just under the limit is fine.
    let ok = "z".repeat(256 * 1024 - 2);
    assert_eq!(
        app.submit("a", json!({"type": "echo", "payload": ok})).await.status,
        StatusCode::ACCEPTED
    );
}

#[tokio::test]
async fn submit_returns_415_when_not_json() {
    let app = TestApp::new();
    for ct in [Some("text/plain"), Some("application/x-www-form-urlencoded"), None] {
        let mut b = Request::post("/v1/tasks").header("authorization", format!("Bearer {}", token("a")));
        if let Some(ct) = ct {
            b = b.header("content-type", ct);
        }
        let r = app.send(b.body(Body::from("{\"type\":\"echo\"}")).unwrap()).await;
        assert_problem(&r, 415, None);
    }
    let r = app
        .send(
            Request::post("/v1/tasks")
                .header("authorization", format!("Bearer {}", token("a")))
                .header("content-type", "application/json; charset=utf-8")
                .body(Body::from("{\"type\":\"echo\"}"))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
}

fn b64(v: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

#[tokio::test]
async fn tokens_missing_expired_forged_or_unsigned_get_401() {
    let app = TestApp::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let unsigned = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&json!({"sub": "a", "exp": now + 600}))
    );
    let hs384 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS384),
        &json!({"sub": "a", "exp": now + 600}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let no_exp = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "a"}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let cases = [
        None,
        Some("Basic dXNlcjpwYXNz".to_owned()),
        Some("Bearer not-a-jwt".to_owned()),
        Some(format!(
            "Bearer {}",
            taskq_api::auth::mint("wrong-secret", "a", &[], 600).unwrap()
        )),
        Some(format!("Bearer {unsigned}")),
        Some(format!("Bearer {hs384}")),
        Some(format!("Bearer {no_exp}")),
    ];
    for (i, auth) in cases.into_iter().enumerate() {
        let mut b = Request::get("/v1/tasks");
        if let Some(a) = &auth {
            b = b.header("authorization", a);
        }
        let r = app.send(b.body(Body::empty()).unwrap()).await;
        assert_problem(&r, 401, None);
        assert_eq!(r.headers["www-authenticate"], "Bearer", "case {i}");
    }
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "a", "exp": now - 3600}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let r = app
        .send(
            Request::get("/v1/tasks")
                .header("authorization", format!("Bearer {expired}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_problem(&r, 401, None);
}

#[tokio::test]
async fn issuer_and_audience_are_checked_when_configured() {
    let app = TestApp::with_auth(Authenticator::new(Some(SECRET), Some("https://issuer"), Some("taskq")));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let sign = |claims: Value| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    for (claims, ok) in [
        (
            json!({"sub": "a", "exp": now + 60, "iss": "https://issuer", "aud": "taskq"}),
            true,
        ),
        (
            json!({"sub": "a", "exp": now + 60, "iss": "https://other", "aud": "taskq"}),
            false,
        ),
        (
            json!({"sub": "a", "exp": now + 60, "iss": "https://issuer", "aud": "other"}),
            false,
        ),
        (json!({"sub": "a", "exp": now + 60}), false),
    ] {
        let r = app
            .send(
                Request::get("/v1/tasks")
                    .header("authorization", format!("Bearer {}", sign(claims.clone())))
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(r.status == StatusCode::OK, ok, "{claims}");
    }
}

#[tokio::test]
async fn get_returns_the_task_with_an_etag_and_304_when_unchanged() {
    let app = TestApp::new();
    let id = app.submit("alice", json!({"type": "echo"})).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = app.get("alice", &format!("/v1/tasks/{id}")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["id"], id.as_str());
    let etag = r.headers["etag"].to_str().unwrap().to_owned();
    let again = app
        .send(
            Request::get(format!("/v1/tasks/{id}"))
                .header("authorization", format!("Bearer {}", token("alice")))
                .header("if-none-match", &etag)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    assert_eq!(again.headers["etag"], etag.as_str());
    // After a change the old ETag no longer matches.
    app.post("alice", &format!("/v1/tasks/{id}/cancel")).await;
    let changed = app
        .send(
            Request::get(format!("/v1/tasks/{id}"))
                .header("authorization", format!("Bearer {}", token("alice")))
                .header("if-none-match", &etag)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(changed.status, StatusCode::OK);
    assert_eq!(changed.body["status"], "cancelled");
}

#[tokio::test]
async fn another_users_task_is_404_everywhere_and_never_listed() {
    let app = TestApp::new();
    let id = app.submit("alice", json!({"type": "echo"})).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_problem(&app.get("bob", &format!("/v1/tasks/{id}")).await, 404, None);
    assert_problem(&app.get("bob", &format!("/v1/tasks/{id}/events")).await, 404, None);
    assert_problem(&app.post("bob", &format!("/v1/tasks/{id}/cancel")).await, 404, None);
    assert_problem(&app.post("bob", &format!("/v1/tasks/{id}/retry")).await, 404, None);
    assert_eq!(app.get("bob", "/v1/tasks").await.body["tasks"], json!([]));
    assert_eq!(
        app.get("alice", &format!("/v1/tasks/{id}")).await.body["status"],
        "queued",
        "bob's cancel did nothing"
    );
    // Unknown and malformed ids are 404 too.
    assert_problem(
        &app.get("alice", "/v1/tasks/01KAXQ6M6V7ZP0Y8QH3F5T2N9R").await,
        404,
        None,
    );
    assert_problem(&app.get("alice", "/v1/tasks/not-an-id").await, 404, None);
}

#[tokio::test]
async fn list_pages_newest_first_and_filters() {
    let app = TestApp::new();
    let mut ids = Vec::new();
    for i in 0..7 {
        let p = if i % 2 == 0 { "low" } else { "high" };
        ids.push(
            app.submit("alice", json!({"type": "echo", "priority": p})).await.body["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    app.post("alice", &format!("/v1/tasks/{}/cancel", ids[3])).await;
    let mut seen = Vec::new();
    let mut uri = "/v1/tasks?limit=3".to_owned();
    loop {
        let r = app.get("alice", &uri).await;
        assert_eq!(r.status, StatusCode::OK);
        let page = r.body["tasks"].as_array().unwrap();
        assert!(page.len() <= 3);
        seen.extend(page.iter().map(|t| t["id"].as_str().unwrap().to_owned()));
        match r.body["next_cursor"].as_str() {
            Some(c) => uri = format!("/v1/tasks?limit=3&cursor={c}"),
            None => break,
        }
    }
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first);

    let low = app.get("alice", "/v1/tasks?priority=low").await.body;
    assert_eq!(low["tasks"].as_array().unwrap().len(), 4);
    let cancelled = app.get("alice", "/v1/tasks?status=cancelled").await.body;
    assert_eq!(cancelled["tasks"][0]["id"], ids[3].as_str());
    assert_eq!(cancelled["tasks"].as_array().unwrap().len(), 1);
    let both = app.get("alice", "/v1/tasks?status=queued&priority=high").await.body;
    assert_eq!(both["tasks"].as_array().unwrap().len(), 2);

    for (q, field) in [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=ten", "limit"),
        ("status=done", "status"),
        ("priority=urgent", "priority"),
        ("cursor=bm9wZQ", "cursor"),
        ("colour=red", "colour"),
    ] {
        assert_problem(&app.get("alice", &format!("/v1/tasks?{q}")).await, 400, Some(field));
    }
}

#[tokio::test]
async fn cancel_of_a_queued_task_is_immediate_and_of_a_terminal_one_409() {
    let app = TestApp::new();
    let id = app.submit("alice", json!({"type": "echo"})).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = app.post("alice", &format!("/v1/tasks/{id}/cancel")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["status"], "cancelled");
    assert!(r.body["finished_at"].is_string());
    assert_problem(&app.post("alice", &format!("/v1/tasks/{id}/cancel")).await, 409, None);
    let events = app.get("alice", &format!("/v1/tasks/{id}/events")).await.body;
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["submitted", "cancelled"]);
    assert_eq!(events["events"][1]["seq"], 2);
    assert_eq!(events["events"][1]["from"], "queued");
}

#[tokio::test]
async fn retry_queues_a_cancelled_task_again_with_its_history_and_refuses_an_unfinished_one() {
    let app = TestApp::new();
    let id = app.submit("alice", json!({"type": "echo"})).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Queued: nothing to retry.
    assert_problem(&app.post("alice", &format!("/v1/tasks/{id}/retry")).await, 409, None);
    app.post("alice", &format!("/v1/tasks/{id}/cancel")).await;
    let before = app.queue.depth(Priority::Normal);
    let r = app.post("alice", &format!("/v1/tasks/{id}/retry")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["status"], "queued");
    assert_eq!(r.body["attempts"], 0);
    assert!(r.body.get("finished_at").is_none_or(Value::is_null), "{}", r.body);
    assert_eq!(app.queue.depth(Priority::Normal), before + 1, "a new message");
    let events = app.get("alice", &format!("/v1/tasks/{id}/events")).await.body;
    let steps: Vec<(&str, &str)> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["type"].as_str().unwrap(), e["to"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(
        steps,
        [
            ("submitted", "queued"),
            ("cancelled", "cancelled"),
            ("retried", "queued")
        ]
    );
    // Queued again: a second retry is refused, and says why.
    let again = app.post("alice", &format!("/v1/tasks/{id}/retry")).await;
    assert_problem(&again, 409, None);
    assert!(
        again.body["detail"].as_str().unwrap().contains("retried"),
        "{}",
        again.body
    );
}

#[tokio::test]
async fn idempotent_replay_returns_the_original_and_a_different_body_422() {
    let app = TestApp::new();
    let send = |body: Value, key: &str| {
        Request::post("/v1/tasks")
            .header("authorization", format!("Bearer {}", token("alice")))
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    let first = app.send(send(json!({"type": "echo", "payload": 1}), "k-1")).await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    let replay = app
        .send(send(json!({"payload": 1, "type": "echo", "priority": "normal"}), "k-1"))
        .await;
    assert_eq!(replay.status, StatusCode::OK);
    assert_eq!(replay.headers["idempotent-replayed"], "true");
    assert_eq!(replay.body["id"], first.body["id"]);
    assert_problem(
        &app.send(send(json!({"type": "echo", "payload": 2}), "k-1")).await,
        422,
        None,
    );
    // The key is per user: bob's k-1 is his own.
    let bob = app
        .send(
            Request::post("/v1/tasks")
                .header("authorization", format!("Bearer {}", token("bob")))
                .header("content-type", "application/json")
                .header("idempotency-key", "k-1")
                .body(Body::from(json!({"type": "echo", "payload": 2}).to_string()))
                .unwrap(),
        )
        .await;
    assert_eq!(bob.status, StatusCode::ACCEPTED);
    let long = "k".repeat(256);
    assert_problem(
        &app.send(send(json!({"type": "echo"}), &long)).await,
        400,
        Some("Idempotency-Key"),
    );
}

#[tokio::test]
async fn batch_returns_one_result_per_item_in_order() {
    let app = TestApp::new();
    let body = json!({"tasks": [
        {"type": "echo", "priority": "high"},
        {"type": "echo", "priority": "urgent"},
        {"type": "sleep", "payload": {"ms": 1}, "priority": "low", "idempotency_key": "b-1"},
        {"payload": 1},
    ]});
    let r = app
        .send(app.request(Method::POST, "/v1/tasks/batch", Some("alice"), Some(body.clone())))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let results = r.body["results"].as_array().unwrap();
    assert_eq!(results.len(), 4);
    assert_eq!(results[0]["task"]["priority"], "high");
    assert_eq!(results[1]["error"]["status"], 400);
    assert_eq!(results[1]["error"]["field"], "tasks[1].priority");
    assert_eq!(results[2]["task"]["type"], "sleep");
    assert_eq!(results[3]["error"]["field"], "tasks[3].type");
    assert_eq!(
        (app.queue.depth(Priority::High), app.queue.depth(Priority::Low)),
        (1, 1)
    );
    // The item's own key makes it idempotent.
    let again = app
        .send(app.request(Method::POST, "/v1/tasks/batch", Some("alice"), Some(body)))
        .await;
    assert_eq!(again.body["results"][2]["task"]["id"], results[2]["task"]["id"]);

    for (body, field) in [
        (json!({"tasks": []}), "tasks"),
        (json!({"tasks": vec![json!({"type": "echo"}); 101]}), "tasks"),
        (json!({"items": []}), "tasks"),
        (json!({"tasks": [{"type": "echo"}], "extra": 1}), "extra"),
    ] {
        let r = app
            .send(app.request(Method::POST, "/v1/tasks/batch", Some("alice"), Some(body)))
            .await;
        assert_problem(&r, 400, Some(field));
    }
}

#[tokio::test]
async fn unknown_routes_and_methods_get_problems() {
    let app = TestApp::new();
    assert_problem(&app.get("a", "/v2/tasks").await, 404, None);
    let r = app
        .send(app.request(Method::DELETE, "/v1/tasks", Some("a"), None))
        .await;
    assert_problem(&r, 405, None);
}

#[tokio::test]
async fn wait_parameter_is_validated_and_returns_a_queued_task_after_the_wait() {
    let app = TestApp::new();
    let id = app.submit("alice", json!({"type": "echo"})).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_problem(
        &app.get("alice", &format!("/v1/tasks/{id}?wait=21")).await,
        400,
        Some("wait"),
    );
    let started = std::time::Instant::now();
    let r = app.get("alice", &format!("/v1/tasks/{id}?wait=1")).await;
    assert_eq!(r.body["status"], "queued");
    assert!(started.elapsed() >= std::time::Duration::from_secs(1));
}

fn admin_request(method: Method, uri: &str, roles: &[&str]) -> Request<Body> {
    let roles: Vec<String> = roles.iter().map(|r| r.to_string()).collect();
    Request::builder()
        .method(method)
        .uri(uri)
        .header(
            "authorization",
            format!("Bearer {}", taskq_api::auth::mint(SECRET, "ops", &roles, 600).unwrap()),
        )
        .body(Body::empty())
        .unwrap()
}

#[tokio::test]
async fn admin_routes_are_for_the_admin_role_only() {
    let app = TestApp::new();
    for roles in [&[][..], &["ops"][..], &["administrator"][..]] {
        assert_problem(
            &app.send(admin_request(Method::GET, "/v1/admin/queues", roles)).await,
            403,
            None,
        );
        let r = app
            .send(admin_request(Method::POST, "/v1/admin/dlq/high/redrive", roles))
            .await;
        assert_problem(&r, 403, None);
    }
    app.submit("alice", json!({"type": "echo", "priority": "low"})).await;
    let r = app
        .send(admin_request(Method::GET, "/v1/admin/queues", &["ops", "admin"]))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let queues = r.body["queues"].as_array().unwrap();
    assert_eq!(queues.len(), 3);
    assert_eq!(queues[2]["priority"], "low");
    assert_eq!(queues[2]["visible"], 1);
    assert!(queues[2]["oldest_queued_age_seconds"].is_number());
    assert!(queues[0]["oldest_queued_age_seconds"].is_null());
    let r = app
        .send(admin_request(Method::POST, "/v1/admin/dlq/urgent/redrive", &["admin"]))
        .await;
    assert_problem(&r, 400, Some("priority"));
    let r = app
        .send(admin_request(Method::POST, "/v1/admin/dlq/high/redrive", &["admin"]))
        .await;
    assert_eq!(
        r.body,
        json!({"priority": "high", "moved": 0, "revived": 0, "path": null})
    );
}

mod lambda {
    //! The same Router behind the adapter `lambda_http::run` uses, fed API Gateway events.
    use super::*;
    use lambda_http::request::LambdaRequest;
    use lambda_http::{Adapter, Context, LambdaEvent, Service};

    fn event(name: &str) -> Value {
        let path = format!("{}/../../events/{name}", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))).unwrap()
    }

    async fn invoke(app: &TestApp, event: Value) -> (u16, Value) {
        let request: LambdaRequest = serde_json::from_value(event).expect("event parses as an API Gateway request");
        let mut adapter = Adapter::from(app.router.clone());
        let response = adapter
            .call(LambdaEvent::new(request, Context::default()))
            .await
            .unwrap();
        let v = serde_json::to_value(&response).unwrap();
        let status = v["statusCode"].as_u64().unwrap() as u16;
        let body = v["body"]
            .as_str()
            .map(|b| serde_json::from_str(b).unwrap())
            .unwrap_or(Value::Null);
        (status, body)
    }

    fn with_task_id(mut ev: Value, id: &str) -> Value {
        for ptr in ["/rawPath", "/requestContext/http/path"] {
            let p = ev
                .pointer(ptr)
                .unwrap()
                .as_str()
                .unwrap()
                .replace("01KAXQ6M6V7ZP0Y8QH3F5T2N9R", id);
            *ev.pointer_mut(ptr).unwrap() = json!(p);
        }
        ev
    }

    #[tokio::test]
    async fn events_drive_every_route_with_authorizer_claims() {
        let app = TestApp::new();
        let (status, task) = invoke(&app, event("api-create.json")).await;
        assert_eq!(status, 202, "{task}");
        assert_eq!(task["priority"], "high");
        let id = task["id"].as_str().unwrap();

        // The authorizer's `sub` owns the task: a token for user-1 sees it over plain HTTP.
        assert_eq!(
            app.get("user-1", &format!("/v1/tasks/{id}")).await.status,
            StatusCode::OK
        );
        assert_eq!(
            app.get("user-2", &format!("/v1/tasks/{id}")).await.status,
            StatusCode::NOT_FOUND
        );

        let (status, got) = invoke(&app, with_task_id(event("api-get.json"), id)).await;
        assert_eq!((status, got["id"].as_str()), (200, Some(id)));
        let (status, list) = invoke(&app, event("api-list.json")).await;
        assert_eq!(
            (status, list["tasks"].as_array().map(Vec::len)),
            (200, Some(0)),
            "no task succeeded yet"
        );
        let (status, events) = invoke(&app, with_task_id(event("api-events.json"), id)).await;
        assert_eq!((status, events["events"][0]["type"].as_str()), (200, Some("submitted")));
        let (status, cancelled) = invoke(&app, with_task_id(event("api-cancel.json"), id)).await;
        assert_eq!((status, cancelled["status"].as_str()), (200, Some("cancelled")));
        let (status, missing) = invoke(&app, event("api-get.json")).await;
        assert_eq!((status, missing["status"].as_u64()), (404, Some(404)));
    }

    #[tokio::test]
    async fn authorizer_groups_in_api_gateway_string_form_grant_the_admin_role() {
        let app = TestApp::new();
        // api-list.json carries `cognito:groups: "[admin ops]"`, as the JWT authorizer sends it.
        let mut ev = event("api-list.json");
        ev["rawPath"] = json!("/v1/admin/queues");
        ev["rawQueryString"] = json!("");
        ev["queryStringParameters"] = json!({});
        ev["requestContext"]["http"]["path"] = json!("/v1/admin/queues");
        let (status, body) = invoke(&app, ev.clone()).await;
        assert_eq!((status, body["queues"].as_array().map(Vec::len)), (200, Some(3)));
        ev["requestContext"]["authorizer"]["jwt"]["claims"]["cognito:groups"] = json!("[ops]");
        assert_eq!(invoke(&app, ev).await.0, 403);
    }

    #[tokio::test]
    async fn bad_input_and_missing_auth_events_get_problems() {
        let app = TestApp::new();
        let (status, problem) = invoke(&app, event("api-bad-input.json")).await;
        assert_eq!((status, problem["field"].as_str()), (400, Some("priority")));
        let (status, problem) = invoke(&app, event("api-no-auth.json")).await;
        assert_eq!((status, problem["status"].as_u64()), (401, Some(401)));
    }

    /// `events/fixtures/` are aws-lambda-rust-runtime's own fixtures (aws_lambda_events crate).
    #[tokio::test]
    async fn the_runtime_projects_jwt_authorizer_fixture() {
        let app = TestApp::new();
        let fixture = event("fixtures/example-apigw-v2-request-jwt-authorizer.json");
        let (status, problem) = invoke(&app, fixture.clone()).await;
        assert_eq!(
            (status, problem["status"].as_u64()),
            (404, Some(404)),
            "its /my/path is no route of ours"
        );

        // Pointed at our list route, its claims are what authenticate: without `sub`, 401.
        let mut ours = fixture;
        ours["rawPath"] = json!("/v1/tasks");
        ours["rawQueryString"] = json!("");
        ours["queryStringParameters"] = json!({});
        ours["requestContext"]["http"]["method"] = json!("GET");
        ours["requestContext"]["http"]["path"] = json!("/v1/tasks");
        let (status, _) = invoke(&app, ours.clone()).await;
        assert_eq!(status, 401);
        ours["requestContext"]["authorizer"]["jwt"]["claims"]["sub"] = json!("fixture-user");
        let (status, list) = invoke(&app, ours).await;
        assert_eq!((status, list["tasks"].clone()), (200, json!([])));

        // Without an authorizer context, the bearer token is verified by the service itself.
        let mut bare = event("fixtures/example-apigw-v2-request-no-authorizer.json");
        bare["rawPath"] = json!("/v1/tasks");
        bare["rawQueryString"] = json!("");
        bare["queryStringParameters"] = json!({});
        bare["requestContext"]["http"]["method"] = json!("GET");
        bare["requestContext"]["http"]["path"] = json!("/v1/tasks");
        let (status, _) = invoke(&app, bare.clone()).await;
        assert_eq!(status, 401);
        bare["headers"]["authorization"] = json!(format!("Bearer {}", token("bearer-user")));
        let (status, _) = invoke(&app, bare).await;
        assert_eq!(status, 200);
    }
}

fn with_types(config: Value) -> TestApp {
    let types = taskq_core::Catalog::from_json(&config.to_string()).unwrap();
    TestApp::with_state(move |service| {
        AppState::new(service, Authenticator::new(Some(SECRET), None, None)).with_submit_rules(
            taskq_core::SubmitRules {
                types,
                ..Default::default()
            },
        )
    })
}

#[tokio::test]
async fn an_unknown_type_is_refused_at_submit_naming_it_and_never_queued() {
    let app = TestApp::new();
    let r = app.submit("a", json!({"type": "resize", "payload": {}})).await;
    assert_problem(&r, 400, Some("type"));
    assert!(
        r.body["detail"]
            .as_str()
            .unwrap()
            .contains("unknown task type \"resize\""),
        "{}",
        r.body
    );
    let batch = app
        .send(app.request(
            Method::POST,
            "/v1/tasks/batch",
            Some("a"),
            Some(json!({"tasks": [{"type": "echo"}, {"type": "resize"}]})),
        ))
        .await;
    assert_eq!(batch.status, StatusCode::ACCEPTED);
    assert!(batch.body["results"][0]["task"].is_object());
    assert_eq!(batch.body["results"][1]["error"]["field"], "tasks[1].type");
    let listed = app.get("a", "/v1/tasks").await;
    assert_eq!(
        listed.body["tasks"].as_array().unwrap().len(),
        1,
        "only the echo task exists"
    );
}

#[tokio::test]
async fn configured_types_apply_their_limits_priority_and_schema() {
    let app = with_types(json!({
        "resize": {"target": {"lambda": "arn:aws:lambda:eu-west-1:123456789012:function:resize"},
                   "timeout_seconds": {"default": 120, "max": 600}, "max_attempts": {"default": 5, "max": 6},
                   "max_priority": "normal",
                   "payload_schema": {"type": "object", "required": ["key"], "additionalProperties": false,
                                      "properties": {"key": {"type": "string"},
                                                     "widths": {"type": "array", "items": {"type": "integer", "maximum": 4096}}}}},
        "fail": null
    }));
    let r = app
        .submit("a", json!({"type": "resize", "payload": {"key": "a.png"}}))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    assert_eq!(
        (r.body["timeout_seconds"].as_u64(), r.body["max_attempts"].as_u64()),
        (Some(120), Some(5))
    );
    let r = app
        .submit(
            "a",
            json!({"type": "resize", "payload": {"key": "a.png", "widths": [64, 5000]}}),
        )
        .await;
    assert_problem(&r, 400, Some("payload.widths[1]"));
    let r = app
        .submit("a", json!({"type": "resize", "payload": {"widths": []}}))
        .await;
    assert_problem(&r, 400, Some("payload"));
    let r = app
        .submit(
            "a",
            json!({"type": "resize", "payload": {"key": "k"}, "priority": "high"}),
        )
        .await;
    assert_problem(&r, 400, Some("priority"));
    let r = app
        .submit(
            "a",
            json!({"type": "resize", "payload": {"key": "k"}, "timeout_seconds": 900}),
        )
        .await;
    assert_problem(&r, 400, Some("timeout_seconds"));
    // A removed built-in is refused like any unknown type.
    assert_problem(
        &app.submit("a", json!({"type": "fail", "payload": {"times": 1}})).await,
        400,
        Some("type"),
    );
}

#[tokio::test]
async fn types_lists_what_may_be_submitted_without_saying_where_it_runs() {
    let app = with_types(json!({
        "resize": {"target": {"lambda": "arn:aws:lambda:eu-west-1:123456789012:function:secret-name"},
                   "description": "Resizes one image"},
        "notify": {"target": {"http": "https://internal.example.com/hook"}}
    }));
    let r = app.get("a", "/v1/types").await;
    assert_eq!(r.status, StatusCode::OK);
    let names: Vec<&str> = r.body["types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["echo", "fail", "notify", "resize", "sleep", "webhook"]);
    let text = r.body.to_string();
    assert!(
        !text.contains("secret-name") && !text.contains("internal.example.com"),
        "{text}"
    );
    let resize = r.body["types"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "resize")
        .unwrap();
    assert_eq!(resize["target"], "lambda");
    assert_eq!(resize["description"], "Resizes one image");
    assert_eq!(resize["timeout_seconds"], json!({"default": 60, "max": 900}));
    // A token is required; query parameters are not taken.
    let anonymous = app.send(app.request(Method::GET, "/v1/types", None, None)).await;
    assert_problem(&anonymous, 401, None);
    assert_problem(&app.get("a", "/v1/types?limit=1").await, 400, Some("limit"));
}
