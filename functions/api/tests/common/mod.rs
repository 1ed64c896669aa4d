//! Helpers shared by the API test files: an app over in-memory ports, requests with tokens,
//! and the check that every response is one the OpenAPI document lists.
// Each test file uses a different part of these helpers and re-exports.
#![allow(dead_code, unused_imports)]

pub use std::sync::Arc;

pub use axum::body::Body;
pub use base64::Engine;
pub use http::{Method, Request, StatusCode};
pub use http_body_util::BodyExt;
pub use serde_json::{json, Value};
pub use taskq_api::{router, AppState, Authenticator};
pub use taskq_core::memory::{MemoryTaskQueue, MemoryTaskStore};
pub use taskq_core::{Priority, TaskQueue, TaskService};
pub use tower::ServiceExt;

pub const SECRET: &str = "test-secret";

pub struct TestApp {
    pub router: axum::Router,
    pub queue: Arc<MemoryTaskQueue>,
    pub spec: Value,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Value,
}

pub fn token(sub: &str) -> String {
    taskq_api::auth::mint(SECRET, sub, &[], 600).unwrap()
}

impl TestApp {
    pub fn new() -> Self {
        Self::with_auth(Authenticator::new(Some(SECRET), None, None))
    }

    pub fn with_auth(auth: Authenticator) -> Self {
        Self::with_state(|service| AppState::new(service, auth))
    }

    /// An app over fresh in-memory ports; `state` builds the rest of its state.
    pub fn with_state(state: impl FnOnce(TaskService) -> AppState) -> Self {
        let queue = Arc::new(MemoryTaskQueue::new(taskq_core::memory::MemoryQueueConfig::exact()));
        let service = TaskService::new(Arc::new(MemoryTaskStore::new()), queue.clone());
        Self::from_router(router(state(service)), queue)
    }

    pub fn from_router(router: axum::Router, queue: Arc<MemoryTaskQueue>) -> Self {
        Self {
            router,
            queue,
            spec: serde_json::from_str(taskq_api::OPENAPI).unwrap(),
        }
    }

    pub async fn send(&self, req: Request<Body>) -> Reply {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let res = self.router.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        self.assert_documented(&method, &path, status, &headers);
        Reply { status, headers, body }
    }

    /// Every response the tests see must be one the OpenAPI document lists for its route.
    pub fn assert_documented(&self, method: &Method, path: &str, status: StatusCode, headers: &http::HeaderMap) {
        let Some(template) = spec_path(&self.spec, path) else {
            assert_eq!(status, StatusCode::NOT_FOUND, "{path} is not in the spec");
            return;
        };
        let Some(op) = self.spec["paths"][&template].get(method.as_str().to_lowercase()) else {
            assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {template}");
            return;
        };
        assert!(
            op["responses"].get(status.as_str()).is_some(),
            "{method} {template} answered {status}, which the spec does not list"
        );
        if status.is_client_error() || status.is_server_error() {
            assert_eq!(headers["content-type"], "application/problem+json");
        }
    }

    pub fn request(&self, method: Method, uri: &str, user: Option<&str>, body: Option<Value>) -> Request<Body> {
        let mut b = Request::builder().method(method).uri(uri);
        if let Some(u) = user {
            b = b.header("authorization", format!("Bearer {}", token(u)));
        }
        match body {
            Some(v) => b
                .header("content-type", "application/json")
                .body(Body::from(v.to_string()))
                .unwrap(),
            None => b.body(Body::empty()).unwrap(),
        }
    }

    pub async fn submit(&self, user: &str, body: Value) -> Reply {
        self.send(self.request(Method::POST, "/v1/tasks", Some(user), Some(body)))
            .await
    }

    pub async fn get(&self, user: &str, uri: &str) -> Reply {
        self.send(self.request(Method::GET, uri, Some(user), None)).await
    }

    pub async fn post(&self, user: &str, uri: &str) -> Reply {
        self.send(self.request(Method::POST, uri, Some(user), None)).await
    }
}

/// The spec's path template matching a concrete path.
pub fn spec_path(spec: &Value, path: &str) -> Option<String> {
    let parts: Vec<&str> = path.split('/').collect();
    spec["paths"]
        .as_object()?
        .keys()
        .find(|t| {
            let tp: Vec<&str> = t.split('/').collect();
            tp.len() == parts.len() && tp.iter().zip(&parts).all(|(a, b)| a.starts_with('{') || a == b)
        })
        .filter(|t| !(t.contains("{id}") && parts.get(3) == Some(&"batch")))
        .cloned()
}

pub fn assert_problem(r: &Reply, status: u16, field: Option<&str>) {
    assert_eq!(r.status.as_u16(), status, "{}", r.body);
    for key in ["type", "title", "status", "detail"] {
        assert!(r.body.get(key).is_some(), "problem without {key}: {}", r.body);
    }
    assert_eq!(r.body["status"], status);
    if let Some(f) = field {
        assert_eq!(r.body["field"], f, "{}", r.body);
        assert!(r.body["detail"].as_str().unwrap().contains(f));
    }
}
