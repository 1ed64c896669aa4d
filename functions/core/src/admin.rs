//! Operator actions over the ports: the queue overview and the dead-letter redrive.

use std::time::Duration;

use chrono::Utc;
use serde::Serialize;
use tracing::warn;

use crate::ports::{ActiveQuery, QueueStats, RedrivePath, StoreError, TaskMessage, TaskQueue, TaskStore};
use crate::task::{Priority, Status, ACTIVE_SHARDS};
use crate::transition::{Snapshot, Transition};
use crate::ServiceError;

/// How long redrive keeps the dead letters it is working on hidden from others.
const REDRIVE_VISIBILITY: Duration = Duration::from_secs(300);
/// Most dead letters one redrive call moves (run it again for more).
const REDRIVE_MAX: usize = 1000;

#[derive(Debug, Serialize)]
pub struct QueueOverview {
    pub priority: Priority,
    #[serde(flatten)]
    pub stats: QueueStats,
    /// Age of the oldest task still queued (from the store's index of unfinished tasks).
    pub oldest_queued_age_seconds: Option<i64>,
}

pub async fn overview(store: &dyn TaskStore, queue: &dyn TaskQueue) -> Result<Vec<QueueOverview>, ServiceError> {
    let mut out = Vec::new();
    for p in Priority::ALL {
        let stats = queue
            .stats(*p)
            .await
            .map_err(|e| ServiceError::Store(StoreError::Unavailable(Box::new(e))))?;
        let mut oldest = None;
        for shard in 0..ACTIVE_SHARDS {
            let page = store
                .active(&ActiveQuery {
                    priority: *p,
                    shard,
                    limit: 100,
                    after: None,
                })
                .await?;
            if let Some(t) = page.tasks.iter().find(|t| t.status == Status::Queued) {
                let created = t.id.ulid().datetime();
                let age = std::time::SystemTime::now()
                    .duration_since(created)
                    .unwrap_or_default()
                    .as_secs() as i64;
                oldest = Some(oldest.map_or(age, |o: i64| o.max(age)));
            }
        }
        out.push(QueueOverview {
            priority: *p,
            stats,
            oldest_queued_age_seconds: oldest,
        });
    }
    Ok(out)
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct RedriveReport {
    pub priority: Priority,
    /// Messages moved back to the queue.
    pub moved: usize,
    /// Tasks reset from dead to queued.
    pub revived: usize,
    pub path: Option<RedrivePath>,
}

/// Moves a priority's dead letters back to its queue, first resetting the task of each one it
/// received from `dead` to `queued` (attempts start over). SQS's move task moves every dead
/// letter, later, including ones this call never saw (short polls return a sample): the worker
/// revives the task of any such message when it arrives (`taskq-worker`, recorded as
/// `redriven`), so no task is left dead with its message gone.
pub async fn redrive(
    store: &dyn TaskStore,
    queue: &dyn TaskQueue,
    priority: Priority,
) -> Result<RedriveReport, ServiceError> {
    let unavailable = |e| ServiceError::Store(StoreError::Unavailable(Box::new(e)));
    let mut received = Vec::new();
    while received.len() < REDRIVE_MAX {
        let batch = queue
            .receive_dead_letters(priority, 10, REDRIVE_VISIBILITY)
            .await
            .map_err(unavailable)?;
        if batch.is_empty() {
            break;
        }
        received.extend(batch);
    }
    let mut revived = 0;
    for d in &received {
        let Ok(message) = serde_json::from_str::<TaskMessage>(&d.body) else {
            warn!(message_id = %d.message_id, "dead letter is not a task message; moved as is");
            continue;
        };
        let Some(task) = store.get(&message.user_id, message.task_id).await? else {
            continue;
        };
        if task.status == Status::Dead {
            let change = Transition::Revive.plan(Snapshot::from(&task), Utc::now())?;
            match store.apply(&message.user_id, message.task_id, &change).await {
                Ok(_) => revived += 1,
                Err(StoreError::Conflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    let path = if received.is_empty() {
        None
    } else {
        Some(queue.redrive(priority, &received).await.map_err(unavailable)?)
    };
    Ok(RedriveReport {
        priority,
        moved: received.len(),
        revived,
        path,
    })
}
