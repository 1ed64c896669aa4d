//! One SQS batch in, one partial-batch response out. Each record is handled on its own tokio
//! task, so a slow or panicking task neither blocks nor fails the others.

use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use chrono::Utc;
use serde_json::Value;
use taskq_core::limits::max_result_bytes;
use taskq_core::metrics::{self, Counter, Timing};
use taskq_core::{
    Snapshot, StateChange, Status, StoreError, Task, TaskFailure, TaskMessage, TaskQueue, TaskStore, Transition,
};
use tokio::time::Instant;
use tracing::{error, info, info_span, warn, Instrument};

use crate::config::WorkerConfig;
use crate::registry::{HandlerError, Registry, TaskContext};

#[derive(Clone)]
pub struct Worker {
    store: Arc<dyn TaskStore>,
    queue: Arc<dyn TaskQueue>,
    registry: Arc<Registry>,
    config: WorkerConfig,
}

/// What became of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Done with the message: delete it.
    Done,
    /// Leave the message on the queue; it comes back after its visibility timeout.
    Again,
}

/// How many times a start re-plans when its guess of the attempt count was stale.
const START_RACE_RETRIES: usize = 3;

impl Worker {
    pub fn new(store: Arc<dyn TaskStore>, queue: Arc<dyn TaskQueue>, registry: Registry, config: WorkerConfig) -> Self {
        Self {
            store,
            queue,
            registry: Arc::new(registry),
            config,
        }
    }

    /// Handles a batch; `deadline` is when the invocation ends. Records not started before
    /// `deadline - deadline_margin` are reported as failures, untouched, for redelivery.
    pub async fn process_batch(&self, event: SqsEvent, deadline: Instant) -> SqsBatchResponse {
        let mut running = tokio::task::JoinSet::new();
        let mut ids = std::collections::HashMap::new();
        let mut failures = Vec::new();
        for record in event.records {
            let id = record.message_id.clone().unwrap_or_default();
            let worker = self.clone();
            let span = info_span!("record", message_id = %id);
            let handle = running.spawn(async move { worker.process_record(record, deadline).await }.instrument(span));
            ids.insert(handle.id(), id);
        }
        while let Some(joined) = running.join_next_with_id().await {
            match joined {
                Ok((_, Outcome::Done)) => {}
                Ok((task, Outcome::Again)) => failures.extend(ids.remove(&task)),
                Err(e) => {
                    // A panic outside the handler (handlers' own panics are caught in
                    // `execute`) is a bug; keep the message so the task is not lost.
                    error!(error = %e, "record processing panicked");
                    failures.extend(ids.remove(&e.id()));
                }
            }
        }
        let mut response = SqsBatchResponse::default();
        response.batch_item_failures = failures
            .into_iter()
            .map(|id| {
                let mut f = BatchItemFailure::default();
                f.item_identifier = id;
                f
            })
            .collect();
        response
    }

    async fn process_record(&self, record: SqsMessage, deadline: Instant) -> Outcome {
        let Some(receipt) = record.receipt_handle.clone() else {
            warn!("record without receipt handle");
            return Outcome::Again;
        };
        let message: TaskMessage = match record.body.as_deref().map(serde_json::from_str) {
            Some(Ok(m)) => m,
            _ => {
                // Not a taskq message: it can never succeed, and it names no task to fail.
                error!(body = ?record.body, "dropping a message that is not a task message");
                return Outcome::Done;
            }
        };
        // Every line about this task carries its ids, and the X-Ray trace header the API sent
        // the message with, so one task reads as one trace from submit to finish.
        let trace_header = record.attributes.get("AWSTraceHeader").map(String::as_str);
        let span = info_span!(
            "task",
            task_id = %message.task_id,
            user_id = %message.user_id,
            priority = %message.priority,
            trace_header,
            task_type = tracing::field::Empty,
        );
        async {
            if deadline.saturating_duration_since(Instant::now()) < self.config.deadline_margin {
                info!("invocation deadline near: not starting");
                return Outcome::Again;
            }
            let receive_count = record
                .attributes
                .get("ApproximateReceiveCount")
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(1);
            match self.run(&message, &receipt, receive_count, deadline).await {
                Ok(outcome) => outcome,
                Err(e) => {
                    // Store or queue trouble: leave the message for redelivery. Nothing was
                    // written that a later delivery cannot pick up from.
                    warn!(error = %e, cause = ?std::error::Error::source(&e), "record failed; will be redelivered");
                    Outcome::Again
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn run(
        &self,
        message: &TaskMessage,
        receipt: &str,
        receive_count: u32,
        deadline: Instant,
    ) -> Result<Outcome, StoreError> {
        let Some(task) = self.start(message, receipt, receive_count).await? else {
            return Ok(Outcome::Done);
        };
        let task = match task {
            Started::Run(task) => task,
            Started::Backoff => return Ok(Outcome::Again),
        };
        tracing::Span::current().record("task_type", task.task_type.as_str());
        metrics::record(
            Counter::Started,
            &task,
            queue_wait(message, &task).map(|w| (Timing::QueueWait, w)),
        );
        if task.cancel_requested {
            self.finish(&task, Transition::Cancel { error: None }, None).await?;
            return Ok(Outcome::Done);
        }
        let began = Instant::now();
        let (outcome, cancel_seen) = self.execute(&task, deadline).await;
        let ran = Some((Timing::RunDuration, began.elapsed()));
        let cancel_requested = task.cancel_requested || cancel_seen;
        let transition = match outcome {
            Ok(result) => {
                let size = serde_json::to_vec(&result).map(|v| v.len()).unwrap_or(usize::MAX);
                // Budgeted against what the item holds now (payload, history, error texts).
                let limit = max_result_bytes(task.item_bytes());
                if size > limit {
                    Transition::Fail {
                        error: TaskFailure::new(
                            "result_too_large",
                            format!("the result is {size} bytes; this task's limit is {limit}"),
                        ),
                    }
                } else {
                    Transition::Succeed { result }
                }
            }
            Err(e) if cancel_requested => Transition::Cancel {
                error: Some(e.failure()),
            },
            Err(e) if e.retryable && task.attempts < task.max_attempts => {
                let backoff = self.config.backoff(task.attempts);
                let run_at = Utc::now() + chrono::Duration::from_std(backoff).unwrap_or_default();
                info!(attempt = task.attempts, backoff_ms = backoff.as_millis() as u64, error = %e, "retrying");
                let after = self
                    .finish(
                        &task,
                        Transition::Retry {
                            error: e.failure(),
                            run_at,
                        },
                        ran,
                    )
                    .await?;
                if after.as_ref().is_some_and(|t| t.status.is_terminal()) {
                    // The retry could not be recorded (the item is full) and the task failed.
                    return Ok(Outcome::Done);
                }
                if let Some(after) = after.filter(|t| t.cancel_requested) {
                    // Cancellation was asked for while this attempt ran: honour it, no retry.
                    self.finish(
                        &after,
                        Transition::Cancel {
                            error: after.error.clone(),
                        },
                        None,
                    )
                    .await?;
                    return Ok(Outcome::Done);
                }
                if let Err(e) = self.queue.change_visibility(message.priority, receipt, backoff).await {
                    // The message still comes back, after the queue's visibility timeout.
                    warn!(error = %e, "could not set retry backoff");
                }
                return Ok(Outcome::Again);
            }
            Err(e) => Transition::Fail { error: e.failure() },
        };
        self.finish(&task, transition, ran).await?;
        Ok(Outcome::Done)
    }

    /// queued -> running with one conditional write. The attempt count is guessed from the
    /// receive count (and the run count with it: they are equal until a redrive); a wrong guess
    /// costs one more write, never a read (the failed write returns the current item).
    async fn start(
        &self,
        message: &TaskMessage,
        receipt: &str,
        receive_count: u32,
    ) -> Result<Option<Started>, StoreError> {
        let mut current = Snapshot {
            priority: message.priority,
            status: Status::Queued,
            attempts: receive_count.saturating_sub(1),
            runs: receive_count.saturating_sub(1),
            max_attempts: u32::MAX,
            cancel_requested: false,
            updated_at: None,
        };
        // Set when the task turns out to be dead because the queue gave up on a message.
        let mut given_up = false;
        for _ in 0..START_RACE_RETRIES {
            let now = Utc::now();
            let transition = match current.status {
                Status::Queued => Transition::Start {
                    lease_until: now + self.lease(message.timeout_seconds),
                },
                Status::Running => Transition::TakeOver {
                    lease_until: now + self.lease(message.timeout_seconds),
                },
                // A message for a task the queue gave up on: it was redriven from the dead-letter
                // queue (StartMessageMoveTask moves every dead letter, later, whether or not the
                // redrive call saw it). Revive the task here, recorded in its history, and start
                // it; acknowledging the message would leave the task dead for good.
                Status::Dead if given_up => Transition::Revive,
                _ => return Ok(None),
            };
            let change = match transition.plan(current, now) {
                Ok(c) => c,
                Err(e) => {
                    // max_attempts reached: a queued task with no attempts left, or an expired
                    // lease on the last attempt. Either way the task has failed.
                    info!(reason = %e, "no attempts left");
                    let fail = Transition::Fail {
                        error: TaskFailure::new(
                            "attempts_exhausted",
                            "the last attempt's worker stopped before it finished",
                        ),
                    };
                    if let Ok(change) = fail.plan(current, now) {
                        match self.store.apply(&message.user_id, message.task_id, &change).await {
                            Ok(failed) => metrics::record(Counter::Failed, &failed, None),
                            Err(StoreError::Conflict { .. }) => {}
                            Err(e) => return Err(e),
                        }
                    }
                    return Ok(None);
                }
            };
            match self.store.apply(&message.user_id, message.task_id, &change).await {
                Ok(task) if task.status == Status::Queued => {
                    info!(runs = task.runs, "redriven message: task revived from dead");
                    given_up = false;
                    current = Snapshot::from(&task);
                }
                Ok(task) => {
                    info!(attempt = task.attempts, "started");
                    return Ok(Some(Started::Run(Box::new(task))));
                }
                Err(StoreError::Conflict { current: None }) => {
                    warn!("message for a task that does not exist");
                    return Ok(None);
                }
                Err(StoreError::ItemTooLarge) => {
                    // The task's item has no room left for another attempt's history: no write
                    // can ever start it (see limits::ITEM_RESERVE_BYTES). Acknowledged, loudly.
                    error!("the task's item is full; it cannot be started");
                    return Ok(None);
                }
                Err(StoreError::Conflict { current: Some(task) }) => {
                    if task.status == Status::Running {
                        let lease_left = task
                            .lease_until
                            .map(|l| (l - Utc::now()).to_std().unwrap_or_default())
                            .unwrap_or_default();
                        if !lease_left.is_zero() {
                            // Another delivery holds the lease: come back when it would expire.
                            info!(
                                lease_left_ms = lease_left.as_millis() as u64,
                                "duplicate delivery while running"
                            );
                            let wait = lease_left + Duration::from_secs(1);
                            if let Err(e) = self.queue.change_visibility(message.priority, receipt, wait).await {
                                warn!(error = %e, "could not delay the duplicate");
                            }
                            return Ok(Some(Started::Backoff));
                        }
                        info!(attempt = task.attempts, "lease expired: taking over");
                    }
                    given_up = task.status == Status::Dead && task.error.as_ref().is_some_and(|e| e.kind == "dead");
                    current = Snapshot::from(task.as_ref());
                }
                Err(e) => return Err(e),
            }
        }
        warn!("task kept changing under the start; leaving it for redelivery");
        Ok(Some(Started::Backoff))
    }

    fn lease(&self, timeout_seconds: u32) -> chrono::Duration {
        let timeout = Duration::from_secs(timeout_seconds.into());
        chrono::Duration::from_std(timeout + self.config.lease_grace).unwrap_or_default()
    }

    /// Runs the task's handler under its timeout (and the invocation's), catching panics, while
    /// a watcher re-reads the task for a cancellation request. Returns whether one was seen.
    async fn execute(&self, task: &Task, deadline: Instant) -> (Result<Value, HandlerError>, bool) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let watcher = tokio::spawn({
            let (store, poll, user_id, id) = (
                self.store.clone(),
                self.config.cancel_poll,
                task.user_id.clone(),
                task.id,
            );
            async move {
                loop {
                    tokio::time::sleep(poll).await;
                    if let Ok(Some(t)) = store.get(&user_id, id).await {
                        if t.cancel_requested {
                            let _ = tx.send(true);
                            return;
                        }
                    }
                }
            }
        });
        let result = self.run_handler(task, deadline, rx.clone()).await;
        watcher.abort();
        let seen = *rx.borrow();
        (result, seen)
    }

    async fn run_handler(
        &self,
        task: &Task,
        deadline: Instant,
        cancel: tokio::sync::watch::Receiver<bool>,
    ) -> Result<Value, HandlerError> {
        let Some(handler) = self.registry.get(task.task_type.as_str()) else {
            return Err(HandlerError::permanent(
                "unknown_task_type",
                format!(
                    "no handler is registered for type {:?}; known types: {}",
                    task.task_type.as_str(),
                    self.registry.types().join(", ")
                ),
            ));
        };
        let own_timeout = Duration::from_secs(task.timeout_seconds.into());
        let left = deadline
            .saturating_duration_since(Instant::now())
            .saturating_sub(self.config.deadline_margin);
        let limit = own_timeout.min(left);
        let ctx = TaskContext::new(task.clone(), cancel)
            .with_deadline(chrono::Utc::now() + chrono::Duration::from_std(limit).unwrap_or_default());
        let mut join = tokio::spawn(async move { handler.run(ctx).await });
        match tokio::time::timeout(limit, &mut join).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) if e.is_panic() => Err(HandlerError::retryable("panic", panic_message(e.into_panic()))),
            Ok(Err(e)) => Err(HandlerError::retryable("aborted", e.to_string())),
            Err(_) => {
                join.abort();
                if limit < own_timeout {
                    Err(HandlerError::retryable(
                        "invocation_deadline",
                        format!(
                            "stopped after {} ms: the worker invocation was ending",
                            limit.as_millis()
                        ),
                    ))
                } else {
                    Err(HandlerError::retryable(
                        "timeout",
                        format!("did not finish within {} s", task.timeout_seconds),
                    ))
                }
            }
        }
    }

    /// Writes the end of an attempt. A conflict means the task moved on without this worker
    /// (its lease expired and another delivery took over): this attempt's outcome is dropped.
    /// `ran` is how long the handler ran, when this ends a run (a metric of the outcome).
    /// Writes the end of an attempt. An outcome that does not fit the task's item (400 KB) fails
    /// the task instead, once, with `item_too_large`.
    async fn finish(
        &self,
        task: &Task,
        transition: Transition,
        ran: Option<(Timing, Duration)>,
    ) -> Result<Option<Task>, StoreError> {
        let failing_for_size = matches!(&transition, Transition::Fail { error } if error.kind == "item_too_large");
        let change = match transition.plan(Snapshot::from(task), Utc::now()) {
            Ok(c) => c,
            Err(e) => {
                error!(error = %e, "invalid transition planned");
                return Ok(None);
            }
        };
        match self.apply_outcome(task, &change).await {
            // The outcome does not fit the item (400 KB): fail the task once, saying so, rather
            // than retrying a write that can never land (and re-running the handler).
            Err(StoreError::ItemTooLarge) if !failing_for_size => {
                warn!(to = %change.status, "the outcome does not fit the task's item; failing the task");
                let fail = Transition::Fail {
                    error: TaskFailure::new(
                        "item_too_large",
                        format!(
                            "the {} outcome of this attempt does not fit the task's 400 KB item",
                            change.status
                        ),
                    ),
                };
                Box::pin(self.finish(task, fail, ran)).await
            }
            Ok(after) => {
                info!(status = %after.status, attempt = after.attempts, "attempt finished");
                // Counted once the write landed: a duplicate delivery's outcome is not counted.
                let counter = match after.status {
                    Status::Succeeded => Some(Counter::Succeeded),
                    Status::Failed => Some(Counter::Failed),
                    Status::Queued => Some(Counter::Retried),
                    _ => None,
                };
                if let Some(counter) = counter {
                    metrics::record(counter, &after, ran);
                }
                Ok(Some(after))
            }
            Err(StoreError::Conflict { .. }) => {
                warn!("task moved on while this attempt ran; outcome dropped");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

impl Worker {
    /// Writes an attempt's outcome, trying again on throttling and transient failures. The
    /// handler's work is worth more than a few writes: given up, the message comes back, the
    /// handler runs again (if attempts are left: a task whose last run succeeded would end
    /// `attempts_exhausted`). Trying the same change again is safe: the store recognises a
    /// try that already landed by its token (`StateChange::applied_in`).
    async fn apply_outcome(&self, task: &Task, change: &StateChange) -> Result<Task, StoreError> {
        let mut pause = OUTCOME_RETRY_PAUSE;
        let mut tries = 1;
        loop {
            match self.store.apply(&task.user_id, task.id, change).await {
                Err(e @ (StoreError::Throttled(_) | StoreError::Unavailable(_))) if tries < OUTCOME_TRIES => {
                    warn!(error = %e, tries, "outcome write failed; trying again");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                    tries += 1;
                }
                r => return r,
            }
        }
    }
}

/// Tries of an outcome write, and the pause before the second (doubling after): about 1.5 s in
/// all, well inside the lease's grace.
const OUTCOME_TRIES: u32 = 6;
const OUTCOME_RETRY_PAUSE: Duration = Duration::from_millis(50);

/// How long a first attempt waited in its queue: from when the task became runnable (submitted,
/// or its delay ended) to its start. Retries are not measured: their wait is the backoff the
/// worker chose, and would hide the queueing this metric is for.
fn queue_wait(message: &TaskMessage, task: &Task) -> Option<Duration> {
    if task.attempts != 1 {
        return None;
    }
    let runnable = message.run_at.unwrap_or(task.created_at).max(task.created_at);
    let started = task.started_at?;
    (started - runnable).to_std().ok()
}

enum Started {
    Run(Box<Task>),
    Backoff,
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "handler panicked".into())
}
