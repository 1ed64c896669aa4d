//! The DynamoDB stream consumer: for every task write, store the new version in the status
//! cache and publish a change message that wakes `GET /v1/tasks/{id}?wait=N`. It runs inside
//! the VPC next to the cache; workers and the sweeper need not reach Redis.
//!
//! Refreshing is best effort. A record whose refresh fails is not retried: retrying would hold
//! up the shard behind a cache outage, and the entry it would have replaced expires within the
//! active TTL anyway (terminal entries are written once and do not change).

use std::collections::HashMap;

use aws_lambda_events::dynamodb::{Event, EventRecord};
use aws_sdk_dynamodb::types::AttributeValue;
use serde::Serialize;
use taskq_core::cache::CacheLayer;
use taskq_core::{Task, TaskId};

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct StreamReport {
    pub refreshed: usize,
    /// Tasks whose payload is in its own item: their entries were dropped, not refreshed.
    pub invalidated: usize,
    /// Tasks the table's TTL deleted (retention): their cache entries were dropped.
    pub removed: usize,
    /// Records of other items (idempotency keys, and their removals).
    pub ignored: usize,
    /// Images that did not read as a task: logged and skipped.
    pub unreadable: usize,
}

/// What a stream record means for the cache.
#[derive(Debug, PartialEq)]
pub enum Change {
    /// A task was written: its new version.
    Written(Box<Task>),
    /// A task whose payload is in its own item was written: the image lacks the payload, so the
    /// entry is dropped (the next read fills it from the table) and waiters are woken.
    WrittenWithoutPayload(String, TaskId),
    /// A task was deleted (its retention ended): (user, id).
    Removed(String, TaskId),
    /// Not a task (an idempotency record).
    Other,
}

/// What a record means: a REMOVE carries only the keys (`U#<user>`, `T#<id>`).
pub fn change_of(record: &EventRecord) -> Result<Change, String> {
    if record.event_name == "REMOVE" {
        let keys: HashMap<String, AttributeValue> = record.change.keys.clone().into();
        let text = |name: &str| match keys.get(name) {
            Some(AttributeValue::S(s)) => Some(s.as_str()),
            _ => None,
        };
        let (Some(pk), Some(sk)) = (text("pk"), text("sk")) else {
            return Ok(Change::Other);
        };
        let (Some(user), Some(id)) = (pk.strip_prefix("U#"), sk.strip_prefix("T#")) else {
            return Ok(Change::Other);
        };
        let id: TaskId = id
            .parse()
            .map_err(|_| format!("a REMOVE record with a bad task id {sk:?}"))?;
        return Ok(Change::Removed(user.to_owned(), id));
    }
    let image: HashMap<String, AttributeValue> = record.change.new_image.clone().into();
    if taskq_aws::payload_is_separate(&image) {
        return Ok(match task_of(record)? {
            Some(t) => Change::WrittenWithoutPayload(t.user_id, t.id),
            None => Change::Other,
        });
    }
    Ok(task_of(record)?.map_or(Change::Other, |t| Change::Written(Box::new(t))))
}

/// The task a record's new image holds, if it holds one.
pub fn task_of(record: &EventRecord) -> Result<Option<Task>, String> {
    if record.event_name == "REMOVE" {
        return Ok(None);
    }
    let image: HashMap<String, AttributeValue> = record.change.new_image.clone().into();
    if image.is_empty() {
        return Err("the record has no new image: the stream must be NEW_IMAGE or NEW_AND_OLD_IMAGES".into());
    }
    taskq_aws::task_from_image(image).map_err(|e| e.to_string())
}

pub async fn handle(event: &Event, cache: &CacheLayer) -> StreamReport {
    let mut report = StreamReport::default();
    for record in &event.records {
        match change_of(record) {
            Ok(Change::Written(task)) => {
                cache.refresh(&task).await;
                report.refreshed += 1;
            }
            Ok(Change::WrittenWithoutPayload(user, id)) => {
                cache.invalidate(&user, id).await;
                report.invalidated += 1;
            }
            Ok(Change::Removed(user, id)) => {
                cache.forget(&user, id).await;
                report.removed += 1;
            }
            Ok(Change::Other) => report.ignored += 1,
            Err(e) => {
                tracing::error!(error = %e, event_id = %record.event_id, "stream record is not a readable task");
                report.unreadable += 1;
            }
        }
    }
    report
}
