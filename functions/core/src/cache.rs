//! The status cache and the rate limiter as ports, and the guard that keeps them optional: a
//! cache or limiter that is slow or down costs at most its timeout, then is skipped for a while,
//! and the request goes on against the store (cache) or an in-process limiter (rate limits).
//!
//! Adapters: [`crate::memory`] (local server, tests) and Redis in `taskq-aws` (ElastiCache in
//! AWS). Both pass one contract suite (`functions/aws/tests/cache_contract.rs`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::ports::{ActivePage, ActiveQuery, Created, IdempotencyClaim, ListQuery, StoreError, TaskPage, TaskStore};
use crate::rate::{Quota, RateDecision};
use crate::task::{Status, Task, TaskEvent, TaskId};
use crate::transition::StateChange;

type Cause = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Error)]
pub enum CacheError {
    #[error("the cache did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the cache is skipped after a recent failure")]
    Skipped,
    #[error("the cache failed")]
    Unavailable(#[source] Cause),
}

/// Task status by (user, id). Entries carry the task's version (its last history sequence
/// number) so a slow writer never replaces a newer entry with an older one.
#[async_trait]
pub trait StatusCache: Send + Sync {
    /// The cached task (its `history` empty), if there is a live entry.
    async fn get(&self, user_id: &str, id: TaskId) -> Result<Option<Task>, CacheError>;
    /// Stores the task unless a newer version is cached; entry lifetime per [`CacheTtl`].
    async fn put(&self, task: &Task) -> Result<(), CacheError>;
    /// Drops the task's entry: the task is gone (the table's TTL deleted it).
    async fn remove(&self, user_id: &str, id: TaskId) -> Result<(), CacheError>;
    /// Wakes whoever [`subscribe`](Self::subscribe)d to this task. At most once: waiters poll too.
    async fn publish(&self, user_id: &str, id: TaskId) -> Result<(), CacheError>;
    /// Starts listening for changes of one task; returns once listening.
    async fn subscribe(&self, user_id: &str, id: TaskId) -> Result<Box<dyn ChangeWatch>, CacheError>;
    /// Round trip to the cache (admin status).
    async fn ping(&self) -> Result<Duration, CacheError>;
}

/// A subscription to one task's changes.
#[async_trait]
pub trait ChangeWatch: Send {
    /// Returns when the task changed (or may have).
    async fn changed(&mut self) -> Result<(), CacheError>;
}

/// Rate limiting shared by every API instance: one atomic step per request.
#[async_trait]
pub trait RateLimiter: Send + Sync {
    async fn acquire(&self, key: &str, quota: Quota) -> Result<RateDecision, CacheError>;
}

/// How long entries live. Terminal tasks never change, except `dead` ones an admin redrives,
/// so they live long; the others, and `dead`, live `active`. With no refresh at all (no change
/// feed) a read is never staler than `active`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheTtl {
    pub active: Duration,
    pub terminal: Duration,
}

impl Default for CacheTtl {
    fn default() -> Self {
        Self {
            active: Duration::from_secs(2),
            terminal: Duration::from_secs(3600),
        }
    }
}

impl CacheTtl {
    pub fn of(&self, status: Status) -> Duration {
        if status.is_terminal() && status != Status::Dead {
            self.terminal
        } else {
            self.active
        }
    }
}

/// A task's version: its last event's sequence number. Every state change appends an event.
pub fn version(task: &Task) -> u32 {
    task.history.last().map(|e| e.seq).unwrap_or(0)
}

#[derive(Serialize, Deserialize)]
struct Entry<T> {
    v: u32,
    task: T,
}

/// The cached form: `{"v":<version>,"task":<the task's JSON>}`. The version comes first so the
/// Redis script can compare it without parsing JSON.
pub fn encode(task: &Task) -> String {
    serde_json::to_string(&Entry { v: version(task), task }).unwrap_or_default()
}

/// The task from its cached form; `None` when the entry is unreadable (then it is a miss).
pub fn decode(user_id: &str, raw: &str) -> Option<Task> {
    let entry: Entry<Task> = serde_json::from_str(raw).ok()?;
    let mut task = entry.task;
    task.user_id = user_id.to_owned();
    Some(task)
}

/// The key of a task's entry and of its change channel.
pub fn task_key(user_id: &str, id: TaskId) -> String {
    format!("taskq:t:{user_id}:{id}")
}

/// Bounds every call to a cache or limiter: at most `timeout` each, and after a failure the
/// next `pause` of calls are skipped at once, so a dead Redis costs one timeout per `pause`,
/// not one per request.
pub struct Guard {
    timeout: Duration,
    pause: Duration,
    epoch: Instant,
    /// Milliseconds since `epoch` until which calls are skipped.
    skip_until_ms: AtomicU64,
}

impl Guard {
    pub fn new(timeout: Duration, pause: Duration) -> Self {
        Self {
            timeout,
            pause,
            epoch: Instant::now(),
            skip_until_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub async fn run<T, F>(&self, call: F) -> Result<T, CacheError>
    where
        F: std::future::Future<Output = Result<T, CacheError>>,
    {
        if self.now_ms() < self.skip_until_ms.load(Ordering::Relaxed) {
            return Err(CacheError::Skipped);
        }
        let outcome = match tokio::time::timeout(self.timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(CacheError::Timeout(self.timeout)),
        };
        if let Err(e) = &outcome {
            tracing::warn!(error = %e, pause_ms = self.pause.as_millis() as u64, "cache call failed; skipping the cache for a while");
            self.skip_until_ms
                .store(self.now_ms() + self.pause.as_millis() as u64, Ordering::Relaxed);
        }
        outcome
    }
}

/// A cache behind its guard, as the service uses it.
#[derive(Clone)]
pub struct CacheLayer {
    pub cache: Arc<dyn StatusCache>,
    pub guard: Arc<Guard>,
}

impl CacheLayer {
    pub fn new(cache: Arc<dyn StatusCache>, guard: Guard) -> Self {
        Self {
            cache,
            guard: Arc::new(guard),
        }
    }

    /// After a state change: store the new version, then wake waiters. Best effort: a failure
    /// leaves at worst an entry that expires within [`CacheTtl::active`] (or the terminal TTL
    /// for an immutable terminal task, which is then still right).
    pub async fn refresh(&self, task: &Task) {
        if self.guard.run(self.cache.put(task)).await.is_ok() {
            let _ = self.guard.run(self.cache.publish(&task.user_id, task.id)).await;
        }
    }
}

impl CacheLayer {
    /// After the task was deleted (retention): drop its entry. Best effort: a failure leaves an
    /// entry that expires within its TTL.
    pub async fn forget(&self, user_id: &str, id: TaskId) {
        let _ = self.guard.run(self.cache.remove(user_id, id)).await;
    }

    /// After a state change whose new version the caller cannot store (the stream image of a
    /// task whose payload is in its own item lacks it): drop the entry, so the next read fills
    /// it from the table, and wake waiters.
    pub async fn invalidate(&self, user_id: &str, id: TaskId) {
        if self.guard.run(self.cache.remove(user_id, id)).await.is_ok() {
            let _ = self.guard.run(self.cache.publish(user_id, id)).await;
        }
    }
}

/// Rate limiting with a fallback: when the shared limiter fails, this instance limits alone
/// with the same quotas (fail-open to a per-instance budget, never to no limit at all).
pub struct FallbackLimiter {
    shared: Arc<dyn RateLimiter>,
    local: Arc<dyn RateLimiter>,
    guard: Guard,
}

impl FallbackLimiter {
    pub fn new(shared: Arc<dyn RateLimiter>, local: Arc<dyn RateLimiter>, guard: Guard) -> Self {
        Self { shared, local, guard }
    }
}

#[async_trait]
impl RateLimiter for FallbackLimiter {
    async fn acquire(&self, key: &str, quota: Quota) -> Result<RateDecision, CacheError> {
        match self.guard.run(self.shared.acquire(key, quota)).await {
            Ok(d) => Ok(d),
            Err(_) => self.local.acquire(key, quota).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_guard_times_out_then_skips_for_its_pause() {
        let guard = Guard::new(Duration::from_millis(20), Duration::from_millis(200));
        let slow = guard
            .run(async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok::<_, CacheError>(())
            })
            .await;
        assert!(matches!(slow, Err(CacheError::Timeout(_))));
        let skipped = guard.run(async { Ok::<_, CacheError>(1) }).await;
        assert!(matches!(skipped, Err(CacheError::Skipped)));
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(guard.run(async { Ok::<_, CacheError>(2) }).await.unwrap(), 2);
    }
}

/// A store that refreshes the cache after each write it makes: the change feed of the local
/// server. In AWS the same [`CacheLayer::refresh`] runs from the DynamoDB stream instead
/// (`taskq-stream`), which also sees writes made by other processes.
pub struct RefreshingStore {
    inner: Arc<dyn TaskStore>,
    cache: CacheLayer,
    /// Store reads, for the cache's accounting (`reads()`).
    reads: AtomicU64,
    /// Every task as written, for the local stand-ins of the other stream consumers (webhooks).
    changes: Option<tokio::sync::mpsc::UnboundedSender<Task>>,
}

impl RefreshingStore {
    pub fn new(inner: Arc<dyn TaskStore>, cache: CacheLayer) -> Self {
        Self {
            inner,
            cache,
            reads: AtomicU64::new(0),
            changes: None,
        }
    }

    /// Also sends every task it writes (the new version, like a stream's NEW_IMAGE) to `feed`.
    pub fn with_changes(mut self, feed: tokio::sync::mpsc::UnboundedSender<Task>) -> Self {
        self.changes = Some(feed);
        self
    }

    async fn changed(&self, task: &Task) {
        self.cache.refresh(task).await;
        if let Some(feed) = &self.changes {
            // A closed feed (its reader stopped) only means nobody listens any more.
            let _ = feed.send(task.clone());
        }
    }

    /// How many single-task reads reached the inner store.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl TaskStore for RefreshingStore {
    async fn create(&self, task: &Task, claim: Option<&IdempotencyClaim>) -> Result<Created, StoreError> {
        let created = self.inner.create(task, claim).await?;
        if let Created::New(t) = &created {
            self.changed(t).await;
        }
        Ok(created)
    }

    async fn get(&self, user_id: &str, id: TaskId) -> Result<Option<Task>, StoreError> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.inner.get(user_id, id).await
    }

    async fn list(&self, user_id: &str, query: &ListQuery) -> Result<TaskPage, StoreError> {
        self.inner.list(user_id, query).await
    }

    async fn apply(&self, user_id: &str, id: TaskId, change: &StateChange) -> Result<Task, StoreError> {
        let after = self.inner.apply(user_id, id, change).await?;
        self.changed(&after).await;
        Ok(after)
    }

    async fn active(&self, query: &ActiveQuery) -> Result<ActivePage, StoreError> {
        self.inner.active(query).await
    }

    async fn record(&self, user_id: &str, id: TaskId, expect_seq: u32, event: &TaskEvent) -> Result<Task, StoreError> {
        let after = self.inner.record(user_id, id, expect_seq, event).await?;
        self.changed(&after).await;
        Ok(after)
    }
}

/// What the admin cache route reports about the cache deployment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CacheDescription {
    /// `serverless`, `replication_group`, `cache_cluster` or `embedded`.
    pub kind: String,
    pub name: String,
    pub status: Option<String>,
    pub endpoint: Option<String>,
    pub engine: Option<String>,
    pub engine_version: Option<String>,
    /// ElastiCache Serverless usage limits (`data_storage_gb`, `ecpu_per_second`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_limits: Option<serde_json::Value>,
    /// The describe calls made, in order, and how each went: which path answered.
    pub described_by: Vec<String>,
}

/// Describes the cache deployment (ElastiCache describe calls in `taskq-aws`).
#[async_trait]
pub trait CacheDescriber: Send + Sync {
    async fn describe(&self) -> Result<CacheDescription, CacheError>;
}

/// The local server's embedded cache describes itself.
pub struct EmbeddedCache;

#[async_trait]
impl CacheDescriber for EmbeddedCache {
    async fn describe(&self) -> Result<CacheDescription, CacheError> {
        Ok(CacheDescription {
            kind: "embedded".into(),
            name: "in-process".into(),
            status: Some("available".into()),
            endpoint: None,
            engine: None,
            engine_version: None,
            usage_limits: None,
            described_by: vec![],
        })
    }
}
