//! The sweeper: a scheduled reconciler that keeps tasks from being lost or stuck.
//!
//! - A task `queued` for longer than `stranded_after` past when it was due has probably lost its
//!   message (the API stored it but the send failed, or a redrive stopped half-way): its message
//!   is sent again, recorded as a `message_resent` event. A duplicate message is harmless: the
//!   worker's start is conditional.
//! - A task `running` past its lease lost its worker: its message is sent again, and the delivery
//!   takes over as the next attempt (or fails the task when no attempts are left).
//! - A task scheduled (`run_at`) beyond SQS's 15-minute delay has no message yet: once it is
//!   due within 15 minutes, its message is sent with the remaining delay, recorded as an
//!   `enqueued` event (written first, so a second sweep does not send it again).
//! - A task whose message reached a dead-letter queue is marked `dead`. The message stays in the
//!   DLQ (visible again when the sweep ends) so an operator can redrive it.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde::Serialize;
use taskq_core::{
    ActiveQuery, ActiveTask, Priority, Snapshot, Status, StoreError, TaskMessage, TaskQueue, TaskStore, Transition,
    ACTIVE_SHARDS,
};
use tracing::{info, warn};

#[derive(Debug, Clone)]
pub struct SweeperConfig {
    /// How long past due a queued task may wait before its message is presumed lost. Keep it
    /// above the queue backlog you expect: a re-send during a backlog only adds a duplicate.
    /// Also how long a task must have made no progress before a dead letter of its marks it
    /// dead (a live message or attempt may still finish it until then).
    pub stranded_after: Duration,
    /// How long dead letters stay hidden while a sweep reads them; released when it is done,
    /// so an operator's redrive always finds them.
    pub dead_letter_visibility: Duration,
    /// Most dead letters read per priority per sweep.
    pub dead_letter_max: usize,
}

impl Default for SweeperConfig {
    fn default() -> Self {
        Self {
            stranded_after: Duration::from_secs(15 * 60),
            dead_letter_visibility: Duration::from_secs(120),
            dead_letter_max: 500,
        }
    }
}

impl SweeperConfig {
    /// `TASKQ_STRANDED_AFTER_SECONDS` overrides the default.
    pub fn from_env() -> Result<Self, String> {
        let mut c = Self::default();
        if let Ok(v) = std::env::var("TASKQ_STRANDED_AFTER_SECONDS") {
            let secs: u64 = v
                .parse()
                .map_err(|_| format!("TASKQ_STRANDED_AFTER_SECONDS={v:?} is not a number"))?;
            c.stranded_after = Duration::from_secs(secs);
        }
        Ok(c)
    }
}

/// What one sweep did.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct SweepReport {
    pub scanned: u64,
    pub enqueued_scheduled: u64,
    pub resent_stranded: u64,
    pub resent_expired_leases: u64,
    pub dead_letters_seen: u64,
    pub marked_dead: u64,
    /// Dead letters whose task could still finish (a live lease, or recent progress): left for
    /// a later sweep.
    pub dead_letters_deferred: u64,
    pub errors: u64,
}

/// What became of one dead letter's task.
enum Marked {
    Dead,
    Deferred,
    Nothing,
}

#[derive(Clone)]
pub struct Sweeper {
    store: Arc<dyn TaskStore>,
    queue: Arc<dyn TaskQueue>,
    config: SweeperConfig,
}

impl Sweeper {
    pub fn new(store: Arc<dyn TaskStore>, queue: Arc<dyn TaskQueue>, config: SweeperConfig) -> Self {
        Self { store, queue, config }
    }

    /// One pass over every priority. Errors are counted and logged, never fatal: the next
    /// sweep picks up what this one could not do.
    pub async fn sweep(&self) -> SweepReport {
        let mut report = SweepReport::default();
        for p in Priority::ALL {
            // Dead letters first: a quiet task whose message the queue gave up on is marked dead
            // before the stranded rule would send it yet another message.
            if let Err(e) = self.sweep_dead_letters(*p, &mut report).await {
                warn!(priority = %p, error = %e, "sweep of a dead-letter queue stopped");
                report.errors += 1;
            }
            for shard in 0..ACTIVE_SHARDS {
                if let Err(e) = self.sweep_shard(*p, shard, &mut report).await {
                    warn!(priority = %p, shard, error = %e, "sweep of a shard stopped");
                    report.errors += 1;
                }
            }
        }
        info!(?report, "sweep done");
        report
    }

    async fn sweep_shard(&self, priority: Priority, shard: u8, report: &mut SweepReport) -> Result<(), StoreError> {
        let mut query = ActiveQuery {
            priority,
            shard,
            limit: 100,
            after: None,
        };
        let stranded_after = chrono::Duration::from_std(self.config.stranded_after).unwrap_or_default();
        loop {
            let page = self.store.active(&query).await?;
            let now = Utc::now();
            for t in &page.tasks {
                report.scanned += 1;
                if t.awaiting_enqueue() {
                    if let (Some(run_at), Some(delay)) = (t.run_at, t.send_delay(now)) {
                        // A failed send leaves the task queued and due: the stranded rule below
                        // re-sends it `stranded_after` past run_at.
                        let enqueue = Transition::Enqueue { run_at };
                        self.record_then_send(t, enqueue, delay, now, report, |r| r.enqueued_scheduled += 1)
                            .await?;
                    }
                    continue; // else not yet within SQS's reach
                }
                match t.status {
                    Status::Queued if t.run_at.unwrap_or(t.updated_at).max(t.updated_at) + stranded_after < now => {
                        let reason = format!("queued since {} without starting", t.updated_at.to_rfc3339());
                        let resend = Transition::Resend { reason };
                        self.record_then_send(t, resend, Duration::ZERO, now, report, |r| r.resent_stranded += 1)
                            .await?;
                    }
                    Status::Running if t.lease_until.is_some_and(|l| l < now) => {
                        self.send(t.message(), Duration::ZERO, report, |r| r.resent_expired_leases += 1)
                            .await;
                    }
                    _ => {}
                }
            }
            match page.next {
                Some(next) => query.after = Some(next),
                None => return Ok(()),
            }
        }
    }

    fn snapshot(t: &ActiveTask) -> Snapshot {
        Snapshot {
            priority: t.priority,
            status: t.status,
            attempts: t.attempts,
            runs: t.runs,
            max_attempts: t.max_attempts,
            cancel_requested: false,
            updated_at: Some(t.updated_at),
        }
    }

    /// Records `transition` on the task, then sends its message. Recording first moves
    /// `updated_at` (so the next sweep waits before trying again) and makes two sweeps racing on
    /// one task send once: the loser's conditional write fails and it sends nothing.
    async fn record_then_send(
        &self,
        t: &ActiveTask,
        transition: Transition,
        delay: Duration,
        now: chrono::DateTime<Utc>,
        report: &mut SweepReport,
        counted: impl Fn(&mut SweepReport),
    ) -> Result<(), StoreError> {
        let Ok(change) = transition.plan(Self::snapshot(t), now) else {
            return Ok(());
        };
        match self.store.apply(&t.user_id, t.id, &change).await {
            Ok(_) => {}
            Err(StoreError::Conflict { .. }) => return Ok(()),
            Err(e) => return Err(e),
        }
        self.send(t.message(), delay, report, counted).await;
        Ok(())
    }

    async fn send(
        &self,
        message: TaskMessage,
        delay: Duration,
        report: &mut SweepReport,
        counted: impl Fn(&mut SweepReport),
    ) {
        match self.queue.send(&message, delay).await {
            Ok(()) => counted(report),
            Err(e) => {
                warn!(task_id = %message.task_id, error = %e, "send failed; the next sweep retries");
                report.errors += 1;
            }
        }
    }

    async fn sweep_dead_letters(&self, priority: Priority, report: &mut SweepReport) -> Result<(), StoreError> {
        let mut received = Vec::new();
        let result = self.read_dead_letters(priority, report, &mut received).await;
        if let Err(e) = self.queue.release_dead_letters(priority, &received).await {
            warn!(error = %e, "could not release dead letters; they reappear after their visibility timeout");
        }
        result
    }

    async fn read_dead_letters(
        &self,
        priority: Priority,
        report: &mut SweepReport,
        received: &mut Vec<taskq_core::Delivery>,
    ) -> Result<(), StoreError> {
        let mut seen = 0;
        while seen < self.config.dead_letter_max {
            let batch = self
                .queue
                .receive_dead_letters(priority, 10, self.config.dead_letter_visibility)
                .await
                .map_err(|e| StoreError::Unavailable(Box::new(e)))?;
            if batch.is_empty() {
                return Ok(());
            }
            seen += batch.len();
            received.extend(batch.iter().cloned());
            for d in batch {
                report.dead_letters_seen += 1;
                let Ok(message) = serde_json::from_str::<TaskMessage>(&d.body) else {
                    warn!(message_id = %d.message_id, "dead letter is not a task message");
                    continue;
                };
                match self.mark_dead(&message, d.receive_count).await? {
                    Marked::Dead => report.marked_dead += 1,
                    Marked::Deferred => report.dead_letters_deferred += 1,
                    Marked::Nothing => {}
                }
            }
        }
        Ok(())
    }

    /// Marks the task of a dead letter dead, unless something can still finish it: an attempt
    /// under a live lease (its result would be dropped), or progress within `stranded_after` (a
    /// start, a retry, a re-send: another message or attempt is at work; duplicates are normal).
    /// A deferred dead letter is released and looked at again by a later sweep.
    async fn mark_dead(&self, message: &TaskMessage, receives: u32) -> Result<Marked, StoreError> {
        let Some(mut task) = self.store.get(&message.user_id, message.task_id).await? else {
            return Ok(Marked::Nothing);
        };
        let quiet = chrono::Duration::from_std(self.config.stranded_after).unwrap_or_default();
        for _ in 0..3 {
            if task.status.is_terminal() {
                return Ok(Marked::Nothing);
            }
            let now = Utc::now();
            let live_lease = task.status == Status::Running && task.lease_until.is_some_and(|l| l > now);
            if live_lease || task.updated_at + quiet > now {
                return Ok(Marked::Deferred);
            }
            let detail = format!("its message reached the {} dead-letter queue", task.priority);
            let change = match (Transition::Dead { detail }).plan(Snapshot::from(&task), Utc::now()) {
                Ok(c) => c,
                Err(_) => return Ok(Marked::Nothing),
            };
            match self.store.apply(&task.user_id, task.id, &change).await {
                Ok(dead) => {
                    info!(task_id = %task.id, user_id = %task.user_id, priority = %task.priority, receives, "marked dead");
                    taskq_core::metrics::record(taskq_core::metrics::Counter::Dead, &dead, None);
                    return Ok(Marked::Dead);
                }
                Err(StoreError::Conflict { current: Some(now) }) => task = *now,
                Err(StoreError::Conflict { current: None }) => return Ok(Marked::Nothing),
                Err(e) => return Err(e),
            }
        }
        Ok(Marked::Nothing)
    }
}
