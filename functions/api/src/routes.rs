//! The v1 routes. Handlers parse, call [`TaskService`](taskq_core::TaskService) and shape the
//! response; errors go through [`ApiError`].

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use serde_json::{json, Value};
use taskq_core::limits::*;
use taskq_core::submit::validate_idempotency_key;
use taskq_core::{FieldError, ListQuery, NewTask, Priority, Status, Submitted, Task, TaskId};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;
use crate::{body, etag, limit, observe, origin, OPENAPI};

pub fn router(state: AppState) -> Router {
    // Authenticated routes go through the rate limiter; `route_layer` keeps unknown paths 404.
    let authenticated = Router::new()
        .route("/v1/tasks", post(submit).get(list))
        .route("/v1/tasks/batch", post(submit_batch))
        .route("/v1/tasks/{id}", get(get_task))
        .route("/v1/tasks/{id}/cancel", post(cancel))
        .route("/v1/tasks/{id}/retry", post(retry))
        .route("/v1/tasks/{id}/events", get(events))
        .route("/v1/types", get(types))
        .route("/v1/admin/queues", get(admin_queues))
        .route("/v1/admin/cache", get(admin_cache))
        .route("/v1/admin/dlq/{priority}/redrive", post(admin_redrive))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), limit::rate_limit));
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/openapi.json", get(openapi))
        .merge(authenticated)
        .fallback(|| async { ApiError::RouteNotFound("no route matches this path".into()) })
        .method_not_allowed_fallback(|| async {
            ApiError::MethodNotAllowed("this route does not accept this method".into())
        })
        .layer(axum::middleware::from_fn_with_state(state.clone(), origin::require))
        .with_state(state)
        .layer(axum::middleware::from_fn(observe::request_span))
}

async fn health() -> Response {
    json_response(StatusCode::OK, &json!({"status": "ok"}))
}

async fn openapi() -> Response {
    let mut r = (StatusCode::OK, OPENAPI).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn json_response(status: StatusCode, value: &impl serde::Serialize) -> Response {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    let mut r = (status, bytes).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// The `Idempotency-Key` header, validated.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = v
        .to_str()
        .map_err(|_| FieldError::new("Idempotency-Key", "must be visible ASCII"))?;
    validate_idempotency_key(key)?;
    Ok(Some(key.to_owned()))
}

/// A role may submit up to its configured priority (`TASKQ_MAX_PRIORITY`).
fn allowed_priority(state: &AppState, caller: &Caller, new: &NewTask, prefix: &str) -> Result<(), ApiError> {
    let max = state.policy.max_priority(&caller.roles);
    // Priorities order high < normal < low: "above the maximum" is "less than" it.
    if new.priority < max {
        return Err(ApiError::Forbidden(format!(
            "{prefix}priority {} is above what your roles may submit (at most {max})",
            new.priority
        )));
    }
    Ok(())
}

fn submitted_response(s: Submitted) -> Response {
    let status = if s.replayed {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    let mut r = json_response(status, &s.task);
    let h = r.headers_mut();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/tasks/{}", s.task.id)) {
        h.insert(header::LOCATION, location);
    }
    if s.replayed {
        h.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    r
}

async fn submit(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let value = body::json(&headers, body, MAX_SUBMIT_BODY_BYTES).await?;
    let new = NewTask::from_json_with(&value, "", &state.submit_rules)?;
    allowed_priority(&state, &caller, &new, "")?;
    let submitted = state.service.submit(&caller.user_id, &new, key.as_deref()).await?;
    observe::record("task_id", &submitted.task.id);
    observe::record("priority", &submitted.task.priority);
    tracing::info!(
        task_type = submitted.task.task_type.as_str(),
        replayed = submitted.replayed,
        "task submitted"
    );
    Ok(submitted_response(submitted))
}

async fn submit_batch(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let value = body::json(&headers, body, MAX_BATCH_BODY_BYTES).await?;
    let items = match value.get("tasks") {
        Some(Value::Array(items)) if !items.is_empty() && items.len() <= MAX_BATCH_ITEMS => items,
        Some(Value::Array(_)) => {
            return Err(FieldError::new("tasks", format!("must hold 1 to {MAX_BATCH_ITEMS} tasks")).into())
        }
        _ => return Err(FieldError::new("tasks", "is required: an array of tasks").into()),
    };
    if let Some(other) = value.as_object().and_then(|o| o.keys().find(|k| *k != "tasks")) {
        return Err(FieldError::new(other.as_str(), "unknown field; the body is {\"tasks\": [...]}").into());
    }
    let parsed = items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let prefix = format!("tasks[{i}].");
            // Each item may carry its own idempotency key next to the task's fields.
            let mut item = item.clone();
            let key = match item.as_object_mut().and_then(|o| o.remove("idempotency_key")) {
                None => None,
                Some(Value::String(k)) => {
                    validate_idempotency_key(&k)
                        .map_err(|e| FieldError::new(format!("{prefix}idempotency_key"), e.message))?;
                    Some(k)
                }
                Some(_) => return Err(FieldError::new(format!("{prefix}idempotency_key"), "must be a string")),
            };
            NewTask::from_json_with(&item, &prefix, &state.submit_rules).map(|t| (t, key))
        })
        .collect::<Vec<_>>();
    // Items above the caller's priority get a 403 problem of their own; the rest are submitted.
    let mut forbidden: Vec<Option<ApiError>> = Vec::with_capacity(parsed.len());
    let mut allowed = Vec::with_capacity(parsed.len());
    for (i, item) in parsed.into_iter().enumerate() {
        match item {
            Ok((new, key)) => match allowed_priority(&state, &caller, &new, &format!("tasks[{i}].")) {
                Ok(()) => {
                    forbidden.push(None);
                    allowed.push(Ok((new, key)));
                }
                Err(e) => forbidden.push(Some(e)),
            },
            Err(e) => {
                forbidden.push(None);
                allowed.push(Err(e));
            }
        }
    }
    let mut submitted = state.service.submit_batch(&caller.user_id, allowed).await.into_iter();
    let results: Vec<Value> = forbidden
        .into_iter()
        .map(|f| match f {
            Some(e) => json!({"error": e.problem()}),
            None => match submitted.next() {
                Some(Ok(s)) => {
                    // One line per task, so a search by task_id finds batch submissions too.
                    tracing::info!(task_id = %s.task.id, priority = %s.task.priority,
                        task_type = s.task.task_type.as_str(), replayed = s.replayed, "task submitted");
                    json!({"task": s.task})
                }
                Some(Err(e)) => json!({"error": ApiError::from(e).problem()}),
                None => json!({"error": ApiError::Internal.problem()}),
            },
        })
        .collect();
    Ok(json_response(StatusCode::ACCEPTED, &json!({"results": results})))
}

fn task_id(raw: &str) -> Result<TaskId, ApiError> {
    // A malformed id names no task: 404, like any unknown id.
    let id: TaskId = raw.parse().map_err(|_| ApiError::NotFound)?;
    observe::record("task_id", &id);
    Ok(id)
}

/// Rejects query parameters a route does not know, naming them.
fn only(params: &HashMap<String, String>, allowed: &[&str]) -> Result<(), ApiError> {
    match params.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(FieldError::new(
            k.as_str(),
            format!("unknown query parameter; allowed: {}", allowed.join(", ")),
        )
        .into()),
        None => Ok(()),
    }
}

type Params = Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>;

fn params(p: Params) -> Result<HashMap<String, String>, ApiError> {
    p.map(|Query(q)| q)
        .map_err(|e| FieldError::new("query", e.body_text()).into())
}

fn int_param(params: &HashMap<String, String>, name: &str, min: u32, max: u32, default: u32) -> Result<u32, ApiError> {
    match params.get(name) {
        None => Ok(default),
        Some(v) => v
            .parse::<u32>()
            .ok()
            .filter(|n| (min..=max).contains(n))
            .ok_or_else(|| FieldError::new(name, format!("must be an integer from {min} to {max}")).into()),
    }
}

async fn get_task(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    query: Params,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let q = params(query)?;
    only(&q, &["wait"])?;
    let wait = int_param(&q, "wait", 0, MAX_WAIT_SECONDS, 0)?;
    let id = task_id(&id)?;
    let task = if wait > 0 {
        state
            .service
            .wait_terminal(&caller.user_id, id, Duration::from_secs(wait.into()))
            .await?
    } else {
        state.service.status(&caller.user_id, id).await?
    };
    Ok(with_etag(&headers, &task))
}

fn with_etag(headers: &HeaderMap, task: &Task) -> Response {
    let bytes = serde_json::to_vec(task).unwrap_or_default();
    let tag = etag::of(&bytes);
    let not_modified = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| etag::matches(v, &tag));
    let mut r = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = (StatusCode::OK, bytes).into_response();
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        r
    };
    if let Ok(v) = HeaderValue::from_str(&tag) {
        r.headers_mut().insert(header::ETAG, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("private, no-cache"));
    r
}

const CURSOR_PREFIX: &str = "v1:";

fn encode_cursor(id: TaskId) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{CURSOR_PREFIX}{id}"))
}

fn decode_cursor(cursor: &str) -> Result<TaskId, ApiError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.strip_prefix(CURSOR_PREFIX).and_then(|id| id.parse().ok()))
        .ok_or_else(|| FieldError::new("cursor", "is not a cursor this API returned").into())
}

async fn list(State(state): State<AppState>, caller: Caller, query: Params) -> Result<Response, ApiError> {
    let q = params(query)?;
    only(&q, &["status", "priority", "limit", "cursor"])?;
    let status = q
        .get("status")
        .map(|s| s.parse::<Status>().map_err(|m| FieldError::new("status", m)))
        .transpose()?;
    let priority = q
        .get("priority")
        .map(|s| s.parse::<Priority>().map_err(|m| FieldError::new("priority", m)))
        .transpose()?;
    let query = ListQuery {
        status,
        priority,
        limit: int_param(&q, "limit", 1, MAX_LIST_LIMIT, DEFAULT_LIST_LIMIT)?,
        after: q.get("cursor").map(|c| decode_cursor(c)).transpose()?,
    };
    let page = state.service.list(&caller.user_id, &query).await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"tasks": page.tasks, "next_cursor": page.next.map(encode_cursor)}),
    ))
}

async fn cancel(State(state): State<AppState>, caller: Caller, Path(id): Path<String>) -> Result<Response, ApiError> {
    let (task, cancelled) = state.service.cancel(&caller.user_id, task_id(&id)?).await?;
    let status = if cancelled {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok(json_response(status, &task))
}

async fn retry(State(state): State<AppState>, caller: Caller, Path(id): Path<String>) -> Result<Response, ApiError> {
    let task = state.service.retry(&caller.user_id, task_id(&id)?).await?;
    Ok(json_response(StatusCode::OK, &task))
}

/// The types this deployment accepts, with their limits and payload schemas (not their targets'
/// addresses).
async fn types(State(state): State<AppState>, _caller: Caller, query: Params) -> Result<Response, ApiError> {
    only(&params(query)?, &[])?;
    let types: Vec<Value> = state.submit_rules.types.types().map(|t| t.public_json()).collect();
    Ok(json_response(StatusCode::OK, &json!({ "types": types })))
}

async fn events(State(state): State<AppState>, caller: Caller, Path(id): Path<String>) -> Result<Response, ApiError> {
    let task = state.service.get(&caller.user_id, task_id(&id)?).await?;
    Ok(json_response(StatusCode::OK, &json!({"events": task.history})))
}

/// The role admin routes need.
pub const ADMIN_ROLE: &str = "admin";

fn require_admin(caller: &Caller) -> Result<(), ApiError> {
    if caller.roles.iter().any(|r| r == ADMIN_ROLE) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!("this route needs the {ADMIN_ROLE} role")))
    }
}

async fn admin_queues(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    require_admin(&caller)?;
    let queues = taskq_core::admin::overview(state.service.store().as_ref(), state.service.queue().as_ref()).await?;
    Ok(json_response(StatusCode::OK, &json!({ "queues": queues })))
}

async fn admin_redrive(
    State(state): State<AppState>,
    caller: Caller,
    Path(priority): Path<String>,
) -> Result<Response, ApiError> {
    require_admin(&caller)?;
    let priority: Priority = priority.parse().map_err(|m| FieldError::new("priority", m))?;
    let report =
        taskq_core::admin::redrive(state.service.store().as_ref(), state.service.queue().as_ref(), priority).await?;
    Ok(json_response(StatusCode::OK, &report))
}

/// The cache deployment (ElastiCache describe calls) and a live PING round trip.
async fn admin_cache(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    require_admin(&caller)?;
    let (description, describe_error) = match &state.cache_info {
        None => (None, Some("no cache is configured (TASKQ_CACHE_NAME unset)".to_owned())),
        Some(info) => match info.describe().await {
            Ok(d) => (Some(d), None),
            Err(e) => (
                None,
                Some(format!(
                    "{e}: {}",
                    std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default()
                )),
            ),
        },
    };
    let (ping_ms, ping_error) = match state.service.cache() {
        None => (None, Some("no status cache in use".to_owned())),
        Some(layer) => match layer.guard.run(layer.cache.ping()).await {
            Ok(d) => (Some(d.as_secs_f64() * 1000.0), None),
            Err(e) => (None, Some(e.to_string())),
        },
    };
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "cache": description,
            "describe_error": describe_error,
            "ping_ms": ping_ms,
            "ping_error": ping_error,
        }),
    ))
}
