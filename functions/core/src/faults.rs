//! A fault injector around the ports, for tests and for `taskq-local --faults`: throttling and
//! failures before a call, failures after a write succeeded (the response was lost), a crash of
//! the worker between its handler and its status write, failed, duplicated and delayed sends.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

use crate::ports::{
    ActivePage, ActiveQuery, Created, Delivery, IdempotencyClaim, ListQuery, QueueError, QueueStats, RedrivePath,
    StoreError, TaskMessage, TaskPage, TaskQueue, TaskStore,
};
use crate::task::{Priority, Status, Task, TaskEvent, TaskId};
use crate::transition::StateChange;

/// Probabilities (0.0-1.0) of each fault per call, and the longest injected send delay.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultPlan {
    /// A store call fails with a throttling error before doing anything.
    pub store_throttle: f64,
    /// A store write succeeds, then the caller gets an error (a lost response).
    pub store_error_after_write: f64,
    /// A store write succeeds, its response is lost, and the client tries the same write again
    /// (what the AWS SDK does on a timeout or a 5xx): the caller gets the retry's answer.
    pub store_retry_after_write: f64,
    /// A worker's end-of-attempt write never happens: the worker "crashed" after its handler
    /// ran. Every later try of that write fails too (a dead worker writes nothing).
    pub crash_before_status_write: f64,
    /// A worker stalls for `stall` before its end-of-attempt write (a frozen or paused
    /// process): the handler's attempt outlives its lease, and another delivery may take over.
    pub stall_before_status_write: f64,
    pub stall: Duration,
    /// A send fails; nothing is queued.
    pub send_fail: f64,
    /// A send is delivered twice.
    pub send_duplicate: f64,
    /// Sends wait up to this long first, so messages arrive out of order.
    pub send_delay_max: Duration,
    /// A receive fails (the poller backs off; the messages stay where they are).
    pub receive_fail: f64,
    /// A delete fails: the message comes back after its visibility timeout, a duplicate.
    pub delete_fail: f64,
    /// A ChangeMessageVisibility fails: a retry's backoff is lost, or a duplicate's delay.
    pub visibility_fail: f64,
}

impl FaultPlan {
    /// Parses `name=value,...`, e.g. `store_throttle=0.05,send_fail=0.02,send_delay_max_ms=50`.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut plan = FaultPlan::default();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected name=value"))?;
            let number: f64 = value
                .parse()
                .map_err(|_| format!("{name}: {value:?} is not a number"))?;
            let rate = || {
                if (0.0..=1.0).contains(&number) {
                    Ok(number)
                } else {
                    Err(format!("{name}: a rate must be between 0 and 1"))
                }
            };
            match name {
                "store_throttle" => plan.store_throttle = rate()?,
                "store_error_after_write" => plan.store_error_after_write = rate()?,
                "store_retry_after_write" => plan.store_retry_after_write = rate()?,
                "crash_before_status_write" => plan.crash_before_status_write = rate()?,
                "stall_before_status_write" => plan.stall_before_status_write = rate()?,
                "stall_ms" => plan.stall = Duration::from_millis(number as u64),
                "send_fail" => plan.send_fail = rate()?,
                "send_duplicate" => plan.send_duplicate = rate()?,
                "send_delay_max_ms" => plan.send_delay_max = Duration::from_millis(number as u64),
                "receive_fail" => plan.receive_fail = rate()?,
                "delete_fail" => plan.delete_fail = rate()?,
                "visibility_fail" => plan.visibility_fail = rate()?,
                other => return Err(format!("unknown fault {other:?}")),
            }
        }
        Ok(plan)
    }
}

/// How many faults of each kind were injected.
#[derive(Debug, Default, Serialize)]
pub struct FaultCounts {
    pub store_throttled: AtomicU64,
    pub store_errors_after_write: AtomicU64,
    pub store_retries_after_write: AtomicU64,
    pub crashes_before_status_write: AtomicU64,
    pub stalls_before_status_write: AtomicU64,
    pub sends_failed: AtomicU64,
    pub sends_duplicated: AtomicU64,
    pub sends_delayed: AtomicU64,
    pub receives_failed: AtomicU64,
    pub deletes_failed: AtomicU64,
    pub visibility_changes_failed: AtomicU64,
    /// The crashed attempts, as (task, run): their outcomes were never written.
    #[serde(skip)]
    pub crashed_runs: std::sync::Mutex<std::collections::HashSet<(TaskId, u32)>>,
    /// The attempts that stalled before their outcome write, as (task, run).
    #[serde(skip)]
    pub stalled_runs: std::sync::Mutex<std::collections::HashSet<(TaskId, u32)>>,
    /// The tokens of the crashed writes: a retry of one fails as the first try did.
    #[serde(skip)]
    crashed_tokens: std::sync::Mutex<std::collections::HashSet<String>>,
}

fn roll(p: f64) -> bool {
    p > 0.0 && fastrand::f64() < p
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

pub struct FaultyStore {
    inner: Arc<dyn TaskStore>,
    plan: FaultPlan,
    pub counts: Arc<FaultCounts>,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn TaskStore>, plan: FaultPlan, counts: Arc<FaultCounts>) -> Self {
        Self { inner, plan, counts }
    }

    fn throttle(&self) -> Result<(), StoreError> {
        if roll(self.plan.store_throttle) {
            bump(&self.counts.store_throttled);
            return Err(StoreError::Throttled("injected throttling".into()));
        }
        Ok(())
    }

    /// Whether this write's response is lost and the write sent again.
    fn retried(&self) -> bool {
        let retry = roll(self.plan.store_retry_after_write);
        if retry {
            bump(&self.counts.store_retries_after_write);
        }
        retry
    }

    /// Whether this end-of-attempt write is a crashed worker's: rolled the first time, then
    /// the same for every retry of the write.
    fn crashed(&self, id: TaskId, change: &StateChange) -> bool {
        let mut tokens = self.counts.crashed_tokens.lock().unwrap_or_else(|e| e.into_inner());
        if tokens.contains(&change.token) {
            return true;
        }
        if !roll(self.plan.crash_before_status_write) {
            return false;
        }
        bump(&self.counts.crashes_before_status_write);
        tokens.insert(change.token.clone());
        let mut runs = self.counts.crashed_runs.lock().unwrap_or_else(|e| e.into_inner());
        runs.insert((id, change.expect_runs));
        true
    }

    fn lost_response<T>(&self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        if r.is_ok() && roll(self.plan.store_error_after_write) {
            bump(&self.counts.store_errors_after_write);
            return Err(StoreError::Unavailable("injected: write applied, response lost".into()));
        }
        r
    }
}

#[async_trait]
impl TaskStore for FaultyStore {
    async fn create(&self, task: &Task, claim: Option<&IdempotencyClaim>) -> Result<Created, StoreError> {
        self.throttle()?;
        let mut r = self.inner.create(task, claim).await;
        if r.is_ok() && self.retried() {
            r = self.inner.create(task, claim).await;
        }
        self.lost_response(r)
    }

    async fn get(&self, user_id: &str, id: TaskId) -> Result<Option<Task>, StoreError> {
        self.throttle()?;
        self.inner.get(user_id, id).await
    }

    async fn list(&self, user_id: &str, query: &ListQuery) -> Result<TaskPage, StoreError> {
        self.throttle()?;
        self.inner.list(user_id, query).await
    }

    async fn apply(&self, user_id: &str, id: TaskId, change: &StateChange) -> Result<Task, StoreError> {
        self.throttle()?;
        let ends_attempt = change.expect_status == Status::Running && change.status != Status::Running;
        if ends_attempt {
            if self.crashed(id, change) {
                return Err(StoreError::Unavailable(
                    "injected: worker crashed before its status write".into(),
                ));
            }
            if roll(self.plan.stall_before_status_write) {
                bump(&self.counts.stalls_before_status_write);
                self.counts
                    .stalled_runs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert((id, change.expect_runs));
                tokio::time::sleep(self.plan.stall).await;
            }
        }
        let mut r = self.inner.apply(user_id, id, change).await;
        if r.is_ok() && self.retried() {
            r = self.inner.apply(user_id, id, change).await;
        }
        self.lost_response(r)
    }

    async fn active(&self, query: &ActiveQuery) -> Result<ActivePage, StoreError> {
        self.throttle()?;
        self.inner.active(query).await
    }

    async fn record(&self, user_id: &str, id: TaskId, expect_seq: u32, event: &TaskEvent) -> Result<Task, StoreError> {
        self.throttle()?;
        let r = self.inner.record(user_id, id, expect_seq, event).await;
        self.lost_response(r)
    }
}

pub struct FaultyQueue {
    inner: Arc<dyn TaskQueue>,
    plan: FaultPlan,
    pub counts: Arc<FaultCounts>,
}

impl FaultyQueue {
    pub fn new(inner: Arc<dyn TaskQueue>, plan: FaultPlan, counts: Arc<FaultCounts>) -> Self {
        Self { inner, plan, counts }
    }

    async fn faulty_send(&self, message: &TaskMessage, delay: Duration) -> Result<(), QueueError> {
        if roll(self.plan.send_fail) {
            bump(&self.counts.sends_failed);
            return Err(QueueError::Unavailable("injected send failure".into()));
        }
        if !self.plan.send_delay_max.is_zero() {
            bump(&self.counts.sends_delayed);
            tokio::time::sleep(self.plan.send_delay_max.mul_f64(fastrand::f64())).await;
        }
        self.inner.send(message, delay).await?;
        if roll(self.plan.send_duplicate) {
            bump(&self.counts.sends_duplicated);
            self.inner.send(message, delay).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl TaskQueue for FaultyQueue {
    async fn send(&self, message: &TaskMessage, delay: Duration) -> Result<(), QueueError> {
        self.faulty_send(message, delay).await
    }

    async fn send_batch(&self, messages: &[(TaskMessage, Duration)]) -> Vec<Result<(), QueueError>> {
        let mut out = Vec::with_capacity(messages.len());
        for (m, d) in messages {
            out.push(self.faulty_send(m, *d).await);
        }
        out
    }

    async fn change_visibility(&self, p: Priority, receipt: &str, timeout: Duration) -> Result<(), QueueError> {
        if roll(self.plan.visibility_fail) {
            bump(&self.counts.visibility_changes_failed);
            return Err(QueueError::Unavailable(
                "injected ChangeMessageVisibility failure".into(),
            ));
        }
        self.inner.change_visibility(p, receipt, timeout).await
    }

    async fn receive(&self, p: Priority, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        if roll(self.plan.receive_fail) {
            bump(&self.counts.receives_failed);
            return Err(QueueError::Unavailable("injected ReceiveMessage failure".into()));
        }
        self.inner.receive(p, max, wait).await
    }

    async fn delete(&self, p: Priority, receipt: &str) -> Result<(), QueueError> {
        if roll(self.plan.delete_fail) {
            bump(&self.counts.deletes_failed);
            return Err(QueueError::Unavailable("injected DeleteMessage failure".into()));
        }
        self.inner.delete(p, receipt).await
    }

    async fn dead_letter_depth(&self, p: Priority) -> Result<u64, QueueError> {
        self.inner.dead_letter_depth(p).await
    }

    async fn receive_dead_letters(&self, p: Priority, max: usize, v: Duration) -> Result<Vec<Delivery>, QueueError> {
        self.inner.receive_dead_letters(p, max, v).await
    }

    async fn release_dead_letters(&self, p: Priority, received: &[Delivery]) -> Result<(), QueueError> {
        self.inner.release_dead_letters(p, received).await
    }

    async fn redrive(&self, p: Priority, received: &[Delivery]) -> Result<RedrivePath, QueueError> {
        self.inner.redrive(p, received).await
    }

    async fn stats(&self, p: Priority) -> Result<QueueStats, QueueError> {
        self.inner.stats(p).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_parse_and_refuse_nonsense() {
        let p = FaultPlan::parse("store_throttle=0.1, send_duplicate=0.5,send_delay_max_ms=20").unwrap();
        assert_eq!(p.store_throttle, 0.1);
        assert_eq!(p.send_duplicate, 0.5);
        assert_eq!(p.send_delay_max, Duration::from_millis(20));
        assert!(FaultPlan::parse("store_throttle=2").is_err());
        assert!(FaultPlan::parse("nope=0.1").is_err());
        assert!(FaultPlan::parse("send_fail").is_err());
        assert_eq!(FaultPlan::parse("").unwrap(), FaultPlan::default());
    }
}
