//! The two ports the service depends on. Adapters: [`crate::memory`] here, DynamoDB and SQS in
//! `taskq-aws`. Both pass one contract suite (`functions/aws/tests/contract.rs`).

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::task::{Priority, Status, Task, TaskEvent, TaskId};
use crate::transition::StateChange;

type Cause = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("task not found")]
    NotFound,
    /// The task is not in the state the change expected. `current` is the task as it is now,
    /// when the store could return it with the failed write (DynamoDB does, at no extra cost).
    #[error("task is not in the expected state")]
    Conflict { current: Option<Box<Task>> },
    #[error("the store is throttling requests")]
    Throttled(#[source] Cause),
    /// The write would make the task's item larger than the store allows (DynamoDB: 400 KB).
    /// It was not applied; trying it again cannot help.
    #[error("the task's item would exceed the store's item size limit")]
    ItemTooLarge,
    #[error("the store failed")]
    Unavailable(#[source] Cause),
}

#[derive(Debug, Error)]
pub enum QueueError {
    #[error("receipt handle is not valid (message deleted or received again)")]
    InvalidReceipt,
    /// The queue refused the request's parameters (SQS `InvalidParameterValue` and the like):
    /// a bug or a misconfiguration, never cured by retrying, and never a sign the queue is down.
    #[error("the queue refused the request as invalid: {0}")]
    Invalid(String),
    #[error("the queue failed")]
    Unavailable(#[source] Cause),
}

/// An idempotency key claimed together with the task it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyClaim {
    pub key: String,
    pub fingerprint: String,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug)]
pub enum Created {
    New(Task),
    /// The key was claimed before: the task it names and whether the request was the same.
    Existing {
        task: Task,
        same_request: bool,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    pub status: Option<Status>,
    pub priority: Option<Priority>,
    pub limit: u32,
    /// Start after this task (newest first: older tasks than this one).
    pub after: Option<TaskId>,
}

#[derive(Debug, Clone)]
pub struct TaskPage {
    pub tasks: Vec<Task>,
    /// Set when more tasks may follow; pass it as `after` for the next page.
    pub next: Option<TaskId>,
}

/// What the index of unfinished tasks holds of each: enough for the sweeper to decide, small
/// enough that keeping the index costs one small write per state change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveTask {
    pub id: TaskId,
    pub user_id: String,
    pub priority: Priority,
    pub status: Status,
    pub attempts: u32,
    pub runs: u32,
    pub max_attempts: u32,
    pub timeout_seconds: u32,
    pub updated_at: DateTime<Utc>,
    pub run_at: Option<DateTime<Utc>>,
    pub lease_until: Option<DateTime<Utc>>,
}

impl From<&Task> for ActiveTask {
    fn from(t: &Task) -> Self {
        Self {
            id: t.id,
            user_id: t.user_id.clone(),
            priority: t.priority,
            status: t.status,
            attempts: t.attempts,
            runs: t.runs,
            max_attempts: t.max_attempts,
            timeout_seconds: t.timeout_seconds,
            updated_at: t.updated_at,
            run_at: t.run_at,
            lease_until: t.lease_until,
        }
    }
}

impl ActiveTask {
    /// See [`crate::task::awaiting_enqueue`].
    pub fn awaiting_enqueue(&self) -> bool {
        crate::task::awaiting_enqueue(self.status, self.run_at, self.updated_at)
    }

    /// See [`Task::send_delay`].
    pub fn send_delay(&self, now: DateTime<Utc>) -> Option<std::time::Duration> {
        crate::task::send_delay(self.run_at, now)
    }

    pub fn message(&self) -> TaskMessage {
        TaskMessage {
            user_id: self.user_id.clone(),
            task_id: self.id,
            priority: self.priority,
            timeout_seconds: self.timeout_seconds,
            run_at: self.run_at,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ActivePage {
    pub tasks: Vec<ActiveTask>,
    pub next: Option<TaskId>,
}

/// Unfinished tasks of one priority and shard, across users, oldest first (sweeper, admin).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveQuery {
    pub priority: Priority,
    pub shard: u8,
    pub limit: u32,
    pub after: Option<TaskId>,
}

#[async_trait]
pub trait TaskStore: Send + Sync + 'static {
    /// Writes a new task (status queued), and its idempotency key when given, atomically.
    async fn create(&self, task: &Task, claim: Option<&IdempotencyClaim>) -> Result<Created, StoreError>;

    /// The task with its history; `None` when the user has no such task.
    async fn get(&self, user_id: &str, id: TaskId) -> Result<Option<Task>, StoreError>;

    /// A user's tasks, newest first.
    async fn list(&self, user_id: &str, query: &ListQuery) -> Result<TaskPage, StoreError>;

    /// Applies `change` if the task is in the state it expects; returns the task after it.
    async fn apply(&self, user_id: &str, id: TaskId, change: &StateChange) -> Result<Task, StoreError>;

    /// Unfinished (queued or running) tasks, from a sparse index that terminal tasks leave.
    async fn active(&self, query: &ActiveQuery) -> Result<ActivePage, StoreError>;

    /// Appends `event` (a note such as a webhook outcome, not a state change: status and the
    /// other fields stay as they are, so a terminal task stays terminal) to a task's history,
    /// if its last event is number `expect_seq`: two racing appends never take one place.
    /// Returns the task after it. A task in another state is `Conflict { current: Some(..) }`,
    /// a missing one `Conflict { current: None }`. The event's own `seq` is ignored (position).
    async fn record(&self, user_id: &str, id: TaskId, expect_seq: u32, event: &TaskEvent) -> Result<Task, StoreError>;
}

/// What a queue message carries: keys only. The payload stays in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskMessage {
    pub user_id: String,
    pub task_id: TaskId,
    pub priority: Priority,
    /// The task's timeout, so a worker can set the attempt's lease in the same write that
    /// starts it (the task itself is not read first).
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u32,
    /// When a delayed task became runnable (its `run_at`), so the worker can measure the queue
    /// wait of a first attempt without a read; absent when the task was runnable at once (its
    /// id, a ULID, holds its creation time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at: Option<DateTime<Utc>>,
}

fn default_timeout() -> u32 {
    crate::limits::MAX_TIMEOUT_SECONDS
}

/// A message as received from a queue.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message_id: String,
    pub receipt: String,
    pub body: String,
    pub receive_count: u32,
    pub sent_at: DateTime<Utc>,
    pub group_id: Option<String>,
    /// The X-Ray trace header the message was sent with (`AWSTraceHeader`), if any.
    pub trace_header: Option<String>,
}

#[async_trait]
pub trait TaskQueue: Send + Sync + 'static {
    async fn send(&self, message: &TaskMessage, delay: Duration) -> Result<(), QueueError>;

    /// Sends many messages (any priorities); one result per message, in order.
    async fn send_batch(&self, messages: &[(TaskMessage, Duration)]) -> Vec<Result<(), QueueError>>;

    /// Makes a received message visible again after `timeout` (retry backoff).
    async fn change_visibility(&self, priority: Priority, receipt: &str, timeout: Duration) -> Result<(), QueueError>;

    /// Receives up to `max` messages, waiting up to `wait` for the first.
    async fn receive(&self, priority: Priority, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError>;

    async fn delete(&self, priority: Priority, receipt: &str) -> Result<(), QueueError>;

    /// Messages on the priority's dead-letter queue (approximate).
    async fn dead_letter_depth(&self, priority: Priority) -> Result<u64, QueueError>;

    /// Receives from the priority's dead-letter queue, hiding what it returns for `visibility`.
    async fn receive_dead_letters(
        &self,
        priority: Priority,
        max: usize,
        visibility: Duration,
    ) -> Result<Vec<Delivery>, QueueError>;

    /// Makes received dead letters visible again at once (the sweeper, done reading them).
    async fn release_dead_letters(&self, priority: Priority, received: &[Delivery]) -> Result<(), QueueError>;

    /// Moves dead letters (the ones given, received with [`receive_dead_letters`]) back to the
    /// priority's queue, and says how.
    ///
    /// [`receive_dead_letters`]: TaskQueue::receive_dead_letters
    async fn redrive(&self, priority: Priority, received: &[Delivery]) -> Result<RedrivePath, QueueError>;

    /// Approximate counts for the admin view.
    async fn stats(&self, priority: Priority) -> Result<QueueStats, QueueError>;
}

/// How a redrive moved messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RedrivePath {
    /// SQS's own `StartMessageMoveTask` (asynchronous, on real SQS).
    StartMessageMoveTask,
    /// Each message sent to the queue and deleted from the DLQ, where the move task failed
    /// (moto answers it with HTTP 500).
    ReceiveAndSend,
    /// The in-memory queue's direct move.
    Memory,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct QueueStats {
    pub visible: u64,
    pub in_flight: u64,
    pub delayed: u64,
    pub dead_letters: u64,
}
