//! The single-table layout and the mapping between items and tasks.
//!
//! | item        | pk          | sk           |
//! |-------------|-------------|--------------|
//! | task        | `U#<user>`  | `T#<id>`     |
//! | payload     | `U#<user>`  | `P#<id>`     |
//! | idempotency | `U#<user>`  | `I#<key>`    |
//!
//! A payload of more than [`INLINE_PAYLOAD_BYTES`] is written once, to its own item, and the
//! task item holds its size (`payload_bytes`) instead: DynamoDB bills an UpdateItem by the size
//! of the whole item, so a payload inside the task item would be paid again by every state
//! change. Small payloads stay inline, where they cost nothing extra (the task item stays
//! within its first kilobyte).
//!
//! Unfinished tasks also carry `gsi2pk = A#<priority>#<shard>`, `gsi2sk = T#<id>` for the sparse
//! index `active` (terminal tasks drop them), which the sweeper and admin views read. The index
//! projects keys only: a write that changes neither key (a start, a retry) writes nothing to it,
//! so a task's lifecycle costs the index one put and one delete, whatever the task holds. The
//! readers fetch what they need from the table (`BatchGetItem`). Listing by status reads the
//! user's tasks with a filter (reads are cheaper than the writes a status index costs: every
//! transition moved the task between status keys, a delete and a put of the whole item).
//!
//! Finished tasks carry `expires_at` (epoch seconds): the table's TTL deletes them after the
//! retention period. Idempotency records expire through the same attribute.
//!
//! Payload and result are stored as JSON text: DynamoDB's number and map types would not
//! round-trip every JSON value exactly (big integers, key order, empty keys).

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use taskq_core::{Priority, Status, Task, TaskEvent, TaskFailure, TaskId, TaskType};

pub type Item = HashMap<String, AttributeValue>;

pub const ACTIVE_INDEX: &str = "active";

/// What a global secondary index copies from the table (besides its keys and the table's).
#[derive(Debug, Clone, Copy)]
pub enum IndexProjection {
    KeysOnly,
    Include(&'static [&'static str]),
    All,
}

/// A global secondary index of the table, as `bootstrap` creates it and the template declares
/// it; request accounting prices index writes from it.
#[derive(Debug, Clone, Copy)]
pub struct IndexSpec {
    pub name: &'static str,
    pub hash: &'static str,
    pub range: &'static str,
    pub projection: IndexProjection,
}

pub const INDEXES: &[IndexSpec] = &[IndexSpec {
    name: ACTIVE_INDEX,
    hash: "gsi2pk",
    range: "gsi2sk",
    projection: IndexProjection::KeysOnly,
}];
/// The attributes the `active` index's readers fetch from the table (see [`ActiveItem`]).
pub const ACTIVE_ATTRIBUTES: &[&str] = &[
    "id",
    "user_id",
    "priority",
    "status",
    "attempts",
    "runs",
    "max_attempts",
    "timeout_seconds",
    "updated_at",
    "run_at",
    "lease_until",
];

pub fn active_pk(priority: Priority, shard: u8) -> String {
    format!("A#{priority}#{shard}")
}

pub fn pk(user_id: &str) -> String {
    format!("U#{user_id}")
}
pub fn task_sk(id: TaskId) -> String {
    format!("T#{id}")
}
pub fn payload_sk(id: TaskId) -> String {
    format!("P#{id}")
}
pub fn key_sk(key: &str) -> String {
    format!("I#{key}")
}

#[derive(Debug, Serialize, Deserialize)]
struct TaskItem {
    pk: String,
    sk: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gsi2pk: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gsi2sk: Option<String>,
    id: String,
    user_id: String,
    #[serde(rename = "type")]
    task_type: String,
    priority: Priority,
    status: Status,
    /// Absent when the payload has an item of its own (then `payload_bytes` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    payload: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    payload_bytes: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    result: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<TaskFailure>,
    attempts: u32,
    /// Absent on items written before the run count existed: until their first start, their
    /// run count is their attempt count (no redrive could have happened in between).
    #[serde(default)]
    runs: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    write_token: Option<String>,
    max_attempts: u32,
    timeout_seconds: u32,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    finished_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    run_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lease_until: Option<DateTime<Utc>>,
    #[serde(default)]
    cancel_requested: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    callback_url: Option<String>,
    #[serde(default)]
    events: Vec<StoredEvent>,
}

/// A history entry as stored: its `seq` is its position in the list.
#[derive(Debug, Serialize, Deserialize)]
pub struct StoredEvent {
    at: DateTime<Utc>,
    #[serde(rename = "type")]
    kind: taskq_core::EventKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    from: Option<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    to: Option<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    attempt: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ItemError {
    #[error("item does not map to a task: {0}")]
    Shape(#[from] serde_dynamo::Error),
    #[error("item field {0} is not valid")]
    Field(&'static str),
}

impl From<&TaskEvent> for StoredEvent {
    fn from(e: &TaskEvent) -> Self {
        Self {
            at: e.at,
            kind: e.kind,
            from: e.from,
            to: e.to,
            attempt: e.attempt,
            detail: e.detail.clone(),
        }
    }
}

pub fn event_value(e: &TaskEvent) -> Result<AttributeValue, ItemError> {
    Ok(serde_dynamo::to_attribute_value(StoredEvent::from(e))?)
}

pub fn json_text(v: &serde_json::Value) -> String {
    // Serializing a Value cannot fail.
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

pub use taskq_core::limits::INLINE_PAYLOAD_BYTES;

/// The task's item and, for a payload of more than [`INLINE_PAYLOAD_BYTES`], the payload's own
/// item (written first, once; it never changes).
pub fn to_items(task: &Task) -> Result<(Item, Option<Item>), ItemError> {
    let payload = json_text(&task.payload);
    if payload.len() <= INLINE_PAYLOAD_BYTES {
        return Ok((to_item(task)?, None));
    }
    let bytes = payload.len();
    let mut payload_item: Item = HashMap::from([
        ("pk".to_owned(), AttributeValue::S(pk(&task.user_id))),
        ("sk".to_owned(), AttributeValue::S(payload_sk(task.id))),
    ]);
    payload_item.insert("payload".into(), AttributeValue::S(payload));
    let mut item = to_item(task)?;
    item.remove("payload");
    item.insert("payload_bytes".into(), AttributeValue::N(bytes.to_string()));
    Ok((item, Some(payload_item)))
}

/// Whether a task item's payload is in its own item (see [`to_items`]).
pub fn payload_is_separate(item: &Item) -> bool {
    !item.contains_key("payload") && item.contains_key("payload_bytes")
}

/// The payload a payload item holds.
pub fn payload_from_item(item: &Item) -> Result<serde_json::Value, ItemError> {
    match item.get("payload") {
        Some(AttributeValue::S(s)) => serde_json::from_str(s).map_err(|_| ItemError::Field("payload")),
        _ => Err(ItemError::Field("payload")),
    }
}

/// The task item alone, payload inline whatever its size (and the stream images in tests).
pub fn to_item(task: &Task) -> Result<Item, ItemError> {
    let item = TaskItem {
        pk: pk(&task.user_id),
        sk: task_sk(task.id),
        gsi2pk: (!task.status.is_terminal()).then(|| active_pk(task.priority, taskq_core::active_shard(task.id))),
        gsi2sk: (!task.status.is_terminal()).then(|| task_sk(task.id)),
        id: task.id.to_string(),
        user_id: task.user_id.clone(),
        task_type: task.task_type.as_str().to_owned(),
        priority: task.priority,
        status: task.status,
        payload: Some(json_text(&task.payload)),
        payload_bytes: None,
        result: task.result.as_ref().map(json_text),
        error: task.error.clone(),
        attempts: task.attempts,
        runs: Some(task.runs),
        write_token: task.write_token.clone(),
        max_attempts: task.max_attempts,
        timeout_seconds: task.timeout_seconds,
        created_at: task.created_at,
        updated_at: task.updated_at,
        started_at: task.started_at,
        finished_at: task.finished_at,
        run_at: task.run_at,
        lease_until: task.lease_until,
        cancel_requested: task.cancel_requested,
        callback_url: task.callback_url.clone(),
        events: task.history.iter().map(StoredEvent::from).collect(),
    };
    Ok(serde_dynamo::to_item(item)?)
}

/// A task as the `active` index projects it.
#[derive(Debug, Deserialize)]
struct ActiveItem {
    id: String,
    user_id: String,
    priority: Priority,
    status: Status,
    attempts: u32,
    #[serde(default)]
    runs: Option<u32>,
    max_attempts: u32,
    timeout_seconds: u32,
    updated_at: DateTime<Utc>,
    #[serde(default)]
    run_at: Option<DateTime<Utc>>,
    #[serde(default)]
    lease_until: Option<DateTime<Utc>>,
}

pub fn active_from_item(item: Item) -> Result<taskq_core::ActiveTask, ItemError> {
    let it: ActiveItem = serde_dynamo::from_item(item)?;
    Ok(taskq_core::ActiveTask {
        id: it.id.parse().map_err(|_| ItemError::Field("id"))?,
        user_id: it.user_id,
        priority: it.priority,
        status: it.status,
        attempts: it.attempts,
        runs: it.runs.unwrap_or(it.attempts),
        max_attempts: it.max_attempts,
        timeout_seconds: it.timeout_seconds,
        updated_at: it.updated_at,
        run_at: it.run_at,
        lease_until: it.lease_until,
    })
}

/// The task an item holds; a payload kept in its own item reads as `null` here (the store
/// fills it in; see [`payload_is_separate`]).
pub fn from_item(item: Item) -> Result<Task, ItemError> {
    let it: TaskItem = serde_dynamo::from_item(item)?;
    let parse_json = |s: &str, f| serde_json::from_str(s).map_err(|_| ItemError::Field(f));
    Ok(Task {
        id: it.id.parse().map_err(|_| ItemError::Field("id"))?,
        task_type: TaskType::parse(&it.task_type).map_err(|_| ItemError::Field("type"))?,
        user_id: it.user_id,
        priority: it.priority,
        status: it.status,
        payload: match &it.payload {
            Some(p) => parse_json(p, "payload")?,
            None if it.payload_bytes.is_some() => serde_json::Value::Null,
            None => return Err(ItemError::Field("payload")),
        },
        result: it.result.as_deref().map(|r| parse_json(r, "result")).transpose()?,
        error: it.error,
        attempts: it.attempts,
        max_attempts: it.max_attempts,
        timeout_seconds: it.timeout_seconds,
        created_at: it.created_at,
        updated_at: it.updated_at,
        started_at: it.started_at,
        finished_at: it.finished_at,
        run_at: it.run_at,
        lease_until: it.lease_until,
        runs: it.runs.unwrap_or(it.attempts),
        write_token: it.write_token,
        cancel_requested: it.cancel_requested,
        callback_url: it.callback_url,
        history: it
            .events
            .into_iter()
            .enumerate()
            .map(|(i, e)| TaskEvent {
                seq: i as u32 + 1,
                at: e.at,
                kind: e.kind,
                from: e.from,
                to: e.to,
                attempt: e.attempt,
                detail: e.detail,
            })
            .collect(),
    })
}

/// A task as the item its stream image holds (the stream consumer's tests build events with it).
pub fn task_to_image(task: &Task) -> Result<Item, ItemError> {
    to_item(task)
}

/// The task in a DynamoDB stream image (`NEW_IMAGE`); `None` for items that are not tasks
/// (idempotency records).
pub fn task_from_image(image: Item) -> Result<Option<Task>, ItemError> {
    match image.get("sk") {
        Some(AttributeValue::S(sk)) if sk.starts_with("T#") => from_item(image).map(Some),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use taskq_core::EventKind;

    fn task() -> Task {
        let now = Utc::now();
        Task {
            id: TaskId::new(),
            user_id: "user-1".into(),
            task_type: TaskType::parse("echo").unwrap(),
            priority: Priority::High,
            status: Status::Running,
            payload: json!({"big": 12345678901234567890u64, "z": [1, "two", null], "a": {"": 1.5}}),
            result: Some(json!("done")),
            error: Some(TaskFailure::new("k", "m")),
            attempts: 2,
            max_attempts: 3,
            timeout_seconds: 60,
            created_at: now,
            updated_at: now,
            started_at: Some(now),
            finished_at: None,
            run_at: None,
            lease_until: Some(now),
            runs: 5,
            write_token: Some("0123456789abcdef".into()),
            cancel_requested: true,
            callback_url: Some("https://hooks.example.com/taskq?x=1".into()),
            history: vec![
                TaskEvent {
                    seq: 1,
                    at: now,
                    kind: EventKind::Submitted,
                    from: None,
                    to: Some(Status::Queued),
                    attempt: None,
                    detail: None,
                },
                TaskEvent {
                    seq: 2,
                    at: now,
                    kind: EventKind::Started,
                    from: Some(Status::Queued),
                    to: Some(Status::Running),
                    attempt: Some(1),
                    detail: Some("d".into()),
                },
            ],
        }
    }

    #[test]
    fn task_round_trips_through_an_item() {
        let t = task();
        let item = to_item(&t).unwrap();
        assert_eq!(item["pk"], AttributeValue::S("U#user-1".into()));
        assert_eq!(
            item["gsi2pk"],
            AttributeValue::S(active_pk(t.priority, taskq_core::active_shard(t.id)))
        );
        assert!(
            !item.contains_key("gsi1pk"),
            "no status index: listing filters the table"
        );
        assert!(!item.contains_key("finished_at"), "absent options are not written");
        assert_eq!(from_item(item).unwrap(), t);
    }

    #[test]
    fn an_item_from_before_the_run_count_reads_its_attempts_as_runs() {
        let mut item = to_item(&task()).unwrap();
        item.remove("runs");
        let t = from_item(item.clone()).unwrap();
        assert_eq!(t.runs, t.attempts);
        let active = active_from_item(item).unwrap();
        assert_eq!(active.runs, active.attempts);
    }

    #[test]
    fn a_corrupt_item_is_an_error_not_a_panic() {
        let mut item = to_item(&task()).unwrap();
        item.insert("payload".into(), AttributeValue::S("{not json".into()));
        assert!(matches!(from_item(item), Err(ItemError::Field("payload"))));
        let mut item = to_item(&task()).unwrap();
        item.remove("status");
        assert!(from_item(item).is_err());
    }
}
