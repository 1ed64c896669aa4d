//! What the API does, over the ports: submit, read, list, cancel.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use thiserror::Error;

use crate::cache::CacheLayer;
use crate::limits::IDEMPOTENCY_TTL_SECONDS;
use crate::metrics::{self, Counter};
use crate::ports::{Created, IdempotencyClaim, ListQuery, QueueError, StoreError, TaskPage, TaskQueue, TaskStore};
use crate::submit::{FieldError, NewTask};
use crate::task::{EventKind, Status, Task, TaskEvent, TaskId};
use crate::transition::{InvalidTransition, Snapshot, Transition};

#[derive(Debug, Error)]
pub enum ServiceError {
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error("task not found")]
    NotFound,
    #[error(transparent)]
    Conflict(#[from] InvalidTransition),
    #[error("the Idempotency-Key was already used with a different request")]
    IdempotencyMismatch,
    /// The task is stored but its queue message could not be sent.
    #[error("task {0} was stored but could not be enqueued")]
    NotEnqueued(TaskId, #[source] QueueError),
    #[error("storage is throttling requests")]
    Throttled(#[source] StoreError),
    #[error("storage failed")]
    Store(#[source] StoreError),
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ServiceError::NotFound,
            StoreError::Throttled(_) => ServiceError::Throttled(e),
            other => ServiceError::Store(other),
        }
    }
}

/// The result of a submission: the task, and whether it was an idempotent replay.
#[derive(Debug)]
pub struct Submitted {
    pub task: Task,
    pub replayed: bool,
}

#[derive(Clone)]
pub struct TaskService {
    store: Arc<dyn TaskStore>,
    queue: Arc<dyn TaskQueue>,
    cache: Option<CacheLayer>,
    wait_poll: Duration,
}

/// While waiting on a subscription, the task is still re-read this often (by default): change
/// messages are at most once, and a lost one must not turn a 1 s task into a 20 s wait.
pub const WAIT_SAFETY_POLL: Duration = Duration::from_secs(2);

/// How many times a cancel or a retry re-reads the task when it moved under it.
const USER_MOVE_RACE_RETRIES: usize = 5;

impl TaskService {
    pub fn new(store: Arc<dyn TaskStore>, queue: Arc<dyn TaskQueue>) -> Self {
        Self {
            store,
            queue,
            cache: None,
            wait_poll: WAIT_SAFETY_POLL,
        }
    }

    /// How often a subscribed `?wait` re-reads the task anyway (default [`WAIT_SAFETY_POLL`]).
    pub fn with_wait_poll(mut self, every: Duration) -> Self {
        self.wait_poll = every;
        self
    }

    /// Serves status reads from `cache` and wakes `?wait` callers on its change messages.
    pub fn with_cache(mut self, cache: CacheLayer) -> Self {
        self.cache = Some(cache);
        self
    }

    pub fn cache(&self) -> Option<&CacheLayer> {
        self.cache.as_ref()
    }

    pub fn store(&self) -> &Arc<dyn TaskStore> {
        &self.store
    }

    pub fn queue(&self) -> &Arc<dyn TaskQueue> {
        &self.queue
    }

    fn build(user_id: &str, new: &NewTask) -> Task {
        let now = Utc::now();
        let run_at = new
            .run_at
            .or_else(|| (new.delay_seconds > 0).then(|| now + chrono::Duration::seconds(new.delay_seconds.into())));
        Task {
            id: TaskId::new(),
            user_id: user_id.to_owned(),
            task_type: new.task_type.clone(),
            priority: new.priority,
            status: Status::Queued,
            payload: new.payload.clone(),
            result: None,
            error: None,
            attempts: 0,
            max_attempts: new.max_attempts,
            timeout_seconds: new.timeout_seconds,
            created_at: now,
            updated_at: now,
            started_at: None,
            finished_at: None,
            run_at,
            cancel_requested: false,
            callback_url: new.callback_url.clone(),
            lease_until: None,
            runs: 0,
            write_token: Some(crate::transition::new_write_token()),
            history: vec![TaskEvent {
                seq: 1,
                at: now,
                kind: EventKind::Submitted,
                from: None,
                to: Some(Status::Queued),
                attempt: None,
                detail: None,
            }],
        }
    }

    fn claim(new: &NewTask, key: Option<&str>) -> Option<IdempotencyClaim> {
        key.map(|key| IdempotencyClaim {
            key: key.to_owned(),
            fingerprint: new.fingerprint(),
            expires_at: Utc::now() + chrono::Duration::seconds(IDEMPOTENCY_TTL_SECONDS),
        })
    }

    /// Whether a replayed submission's task may still be waiting for its first message: queued
    /// and never started.
    fn may_lack_its_message(task: &Task) -> bool {
        task.status == Status::Queued && task.attempts == 0
    }

    /// Stores the task first, then sends its message: a task is never queued without a record.
    pub async fn submit(
        &self,
        user_id: &str,
        new: &NewTask,
        idempotency_key: Option<&str>,
    ) -> Result<Submitted, ServiceError> {
        let task = Self::build(user_id, new);
        let claim = Self::claim(new, idempotency_key);
        match self.store.create(&task, claim.as_ref()).await? {
            Created::Existing { task, same_request } => {
                if !same_request {
                    return Err(ServiceError::IdempotencyMismatch);
                }
                if Self::may_lack_its_message(&task) {
                    // The first request may have failed between the write and the send (it got
                    // a 503): send again. A duplicate message is harmless, the start is
                    // conditional; a missing one would strand the task.
                    if let Some(delay) = task.send_delay(Utc::now()) {
                        self.queue
                            .send(&task.message(), delay)
                            .await
                            .map_err(|e| ServiceError::NotEnqueued(task.id, e))?;
                    }
                }
                Ok(Submitted { task, replayed: true })
            }
            Created::New(task) => {
                // Due beyond SQS's delay: the sweeper sends the message when it is near.
                if let Some(delay) = task.send_delay(Utc::now()) {
                    self.queue
                        .send(&task.message(), delay)
                        .await
                        .map_err(|e| ServiceError::NotEnqueued(task.id, e))?;
                }
                metrics::record(Counter::Submitted, &task, None);
                Ok(Submitted { task, replayed: false })
            }
        }
    }

    /// Submits many tasks; one result per item, in order. Valid items are stored concurrently
    /// and their messages sent in SQS batches of up to ten.
    pub async fn submit_batch(
        &self,
        user_id: &str,
        items: Vec<Result<(NewTask, Option<String>), FieldError>>,
    ) -> Vec<Result<Submitted, ServiceError>> {
        let mut results: Vec<Option<Result<Submitted, ServiceError>>> = Vec::with_capacity(items.len());
        let mut pending = tokio::task::JoinSet::new();
        for (i, item) in items.into_iter().enumerate() {
            match item {
                Err(e) => results.push(Some(Err(e.into()))),
                Ok((new, key)) => {
                    results.push(None);
                    let store = self.store.clone();
                    let user_id = user_id.to_owned();
                    pending.spawn(async move {
                        let task = Self::build(&user_id, &new);
                        let claim = Self::claim(&new, key.as_deref());
                        (i, store.create(&task, claim.as_ref()).await)
                    });
                }
            }
        }
        let mut to_send = Vec::new();
        while let Some(joined) = pending.join_next().await {
            let Ok((i, created)) = joined else {
                continue; // a panicked store call leaves its slot None: reported below
            };
            results[i] = Some(match created {
                Err(e) => Err(e.into()),
                Ok(Created::Existing {
                    task,
                    same_request: true,
                }) => {
                    // As a replayed single submission: the first request may have stored the
                    // task and failed before its message was sent, so send one again.
                    if Self::may_lack_its_message(&task) {
                        if let Some(delay) = task.send_delay(Utc::now()) {
                            to_send.push((i, task.message(), delay, true));
                        }
                    }
                    Ok(Submitted { task, replayed: true })
                }
                Ok(Created::Existing { .. }) => Err(ServiceError::IdempotencyMismatch),
                Ok(Created::New(task)) => {
                    match task.send_delay(Utc::now()) {
                        Some(delay) => to_send.push((i, task.message(), delay, false)),
                        // Scheduled past SQS's delay: stored is submitted (the sweeper enqueues it).
                        None => metrics::record(Counter::Submitted, &task, None),
                    }
                    Ok(Submitted { task, replayed: false })
                }
            });
        }
        let messages: Vec<_> = to_send.iter().map(|(_, m, d, _)| (m.clone(), *d)).collect();
        let sent = self.queue.send_batch(&messages).await;
        for ((i, message, _, replayed), outcome) in to_send.into_iter().zip(sent) {
            match outcome {
                Err(e) => results[i] = Some(Err(ServiceError::NotEnqueued(message.task_id, e))),
                Ok(()) if !replayed => {
                    if let Some(Ok(s)) = &results[i] {
                        metrics::record(Counter::Submitted, &s.task, None);
                    }
                }
                Ok(()) => {}
            }
        }
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(ServiceError::Store(StoreError::Unavailable(
                        "store call panicked".into(),
                    )))
                })
            })
            .collect()
    }

    pub async fn get(&self, user_id: &str, id: TaskId) -> Result<Task, ServiceError> {
        self.store.get(user_id, id).await?.ok_or(ServiceError::NotFound)
    }

    /// The task as `GET /v1/tasks/{id}` shows it (`history` may be empty): from the cache when it
    /// has the task, else from the store, filling the cache. A failing cache is skipped.
    pub async fn status(&self, user_id: &str, id: TaskId) -> Result<Task, ServiceError> {
        let Some(layer) = &self.cache else {
            return self.get(user_id, id).await;
        };
        if let Ok(Some(task)) = layer.guard.run(layer.cache.get(user_id, id)).await {
            return Ok(task);
        }
        let task = self.get(user_id, id).await?;
        // Fill: the cache keeps the newer version if a change landed meanwhile.
        let _ = layer.guard.run(layer.cache.put(&task)).await;
        Ok(task)
    }

    /// Returns the task once it is terminal or `wait` has passed. With a cache, wakes on the
    /// task's change messages (re-reading every [`WAIT_SAFETY_POLL`] too); without one, or when
    /// subscribing fails, polls the store with a growing interval.
    pub async fn wait_terminal(&self, user_id: &str, id: TaskId, wait: Duration) -> Result<Task, ServiceError> {
        let deadline = tokio::time::Instant::now() + wait;
        if let Some(layer) = &self.cache {
            // Subscribe before the first read, so a change between the two is not missed.
            if let Ok(mut watch) = layer.guard.run(layer.cache.subscribe(user_id, id)).await {
                loop {
                    let task = self.status(user_id, id).await?;
                    let now = tokio::time::Instant::now();
                    if task.status.is_terminal() || now >= deadline {
                        return Ok(task);
                    }
                    let nap = self.wait_poll.min(deadline - now);
                    tokio::select! {
                        woke = watch.changed() => if woke.is_err() {
                            // The subscription broke: finish by polling.
                            break;
                        },
                        _ = tokio::time::sleep(nap) => {}
                    }
                }
            }
        }
        self.poll_terminal(user_id, id, deadline).await
    }

    async fn poll_terminal(
        &self,
        user_id: &str,
        id: TaskId,
        deadline: tokio::time::Instant,
    ) -> Result<Task, ServiceError> {
        let mut interval = Duration::from_millis(50);
        loop {
            let task = self.status(user_id, id).await?;
            let now = tokio::time::Instant::now();
            if task.status.is_terminal() || now >= deadline {
                return Ok(task);
            }
            tokio::time::sleep(interval.min(deadline - now)).await;
            interval = (interval * 2).min(Duration::from_secs(1));
        }
    }

    pub async fn list(&self, user_id: &str, query: &ListQuery) -> Result<TaskPage, ServiceError> {
        Ok(self.store.list(user_id, query).await?)
    }

    /// Queues a failed, dead or cancelled task again with a fresh attempt budget; its history
    /// goes on (a `retried` event) and its run count never repeats, so a worker still holding
    /// a message of an earlier run cannot commit onto the new one. The message is sent after
    /// the write: when the send fails the caller gets [`ServiceError::NotEnqueued`] and the task
    /// is queued without a message, which the sweeper re-sends (as for a submit).
    pub async fn retry(&self, user_id: &str, id: TaskId) -> Result<Task, ServiceError> {
        let after = self
            .apply_racing(user_id, id, "retried", |_| Ok(Some(Transition::Rerun)))
            .await?;
        if let Some(delay) = after.send_delay(Utc::now()) {
            self.queue
                .send(&after.message(), delay)
                .await
                .map_err(|e| ServiceError::NotEnqueued(id, e))?;
        }
        Ok(after)
    }

    /// Cancels a queued task at once, or asks a running one to stop. The returned flag is true
    /// when the task was cancelled, false when cancellation was only requested.
    pub async fn cancel(&self, user_id: &str, id: TaskId) -> Result<(Task, bool), ServiceError> {
        let after = self
            .apply_racing(user_id, id, "cancelled", |task| match task.status {
                Status::Queued => Ok(Some(Transition::Cancel { error: None })),
                Status::Running if task.cancel_requested => Ok(None),
                Status::Running => Ok(Some(Transition::RequestCancel)),
                _ => Err(InvalidTransition {
                    from: task.status,
                    action: "be cancelled",
                }),
            })
            .await?;
        let cancelled = after.status == Status::Cancelled;
        Ok((after, cancelled))
    }

    /// A user's request to move a task: `choose` picks the move from the task as last read (or
    /// `None`: nothing to write, the task is returned as it is). When another writer moved the
    /// task first, it is read again and the move chosen anew, a few times.
    async fn apply_racing(
        &self,
        user_id: &str,
        id: TaskId,
        what: &str,
        choose: impl Fn(&Task) -> Result<Option<Transition>, InvalidTransition>,
    ) -> Result<Task, ServiceError> {
        let mut task = self.get(user_id, id).await?;
        for _ in 0..USER_MOVE_RACE_RETRIES {
            let Some(transition) = choose(&task)? else {
                return Ok(task);
            };
            let change = transition.plan(Snapshot::from(&task), Utc::now())?;
            match self.store.apply(user_id, id, &change).await {
                Ok(after) => return Ok(after),
                Err(StoreError::Conflict { current: Some(now) }) => task = *now,
                Err(StoreError::Conflict { current: None }) => task = self.get(user_id, id).await?,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ServiceError::Store(StoreError::Unavailable(
            format!("task kept changing while being {what}").into(),
        )))
    }
}
