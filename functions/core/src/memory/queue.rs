use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use tokio::sync::Notify;

use crate::ports::{Delivery, QueueError, QueueStats, RedrivePath, TaskMessage, TaskQueue};
use crate::task::Priority;

#[derive(Debug, Clone, Copy)]
pub struct MemoryQueueConfig {
    /// How long a received message stays invisible unless its visibility is changed.
    pub visibility_timeout: Duration,
    /// Receives after which a message moves to the dead-letter queue instead (SQS redrive).
    pub max_receive_count: u32,
}

impl Default for MemoryQueueConfig {
    fn default() -> Self {
        Self {
            visibility_timeout: Duration::from_secs(120),
            max_receive_count: 30,
        }
    }
}

struct Message {
    id: u64,
    body: String,
    group_id: String,
    /// `AWSTraceHeader`, as SQS keeps it with the message.
    trace_header: Option<String>,
    sent_at: chrono::DateTime<Utc>,
    visible_at: Instant,
    receive_count: u32,
    /// The receipt of the latest receive; older receipts are no longer valid.
    receipt: Option<String>,
}

#[derive(Default)]
struct Queue {
    messages: VecDeque<Message>,
    dead: VecDeque<Message>,
}

impl Message {
    fn deliver(&mut self, now: Instant, visibility: Duration) -> Delivery {
        self.receive_count += 1;
        self.visible_at = now + visibility;
        let receipt = format!("{}-{}", self.id, self.receive_count);
        self.receipt = Some(receipt.clone());
        Delivery {
            message_id: self.id.to_string(),
            receipt,
            body: self.body.clone(),
            receive_count: self.receive_count,
            sent_at: self.sent_at,
            group_id: Some(self.group_id.clone()),
            trace_header: self.trace_header.clone(),
        }
    }
}

/// Three standard queues and their DLQs in memory, with SQS's at-least-once semantics.
pub struct MemoryTaskQueue {
    config: MemoryQueueConfig,
    queues: [Mutex<Queue>; 3],
    notify: [Notify; 3],
    next_id: std::sync::atomic::AtomicU64,
}

fn index(p: Priority) -> usize {
    match p {
        Priority::High => 0,
        Priority::Normal => 1,
        Priority::Low => 2,
    }
}

impl MemoryTaskQueue {
    pub fn new(config: MemoryQueueConfig) -> Self {
        Self {
            config,
            queues: Default::default(),
            notify: Default::default(),
            next_id: Default::default(),
        }
    }

    fn lock(&self, p: Priority) -> std::sync::MutexGuard<'_, Queue> {
        // Every mutation below completes before any call that could panic.
        self.queues[index(p)].lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, message: &TaskMessage, delay: Duration) -> Result<(), QueueError> {
        let body = serde_json::to_string(message).map_err(|e| QueueError::Unavailable(e.into()))?;
        let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.lock(message.priority).messages.push_back(Message {
            id,
            body,
            group_id: message.user_id.clone(),
            trace_header: crate::trace::current(),
            sent_at: Utc::now(),
            visible_at: Instant::now() + delay,
            receive_count: 0,
            receipt: None,
        });
        self.notify[index(message.priority)].notify_waiters();
        Ok(())
    }

    /// Takes what is visible now; `None` means nothing was, with the instant something will be.
    fn take_visible(&self, p: Priority, max: usize) -> (Vec<Delivery>, Option<Instant>) {
        let now = Instant::now();
        let mut q = self.lock(p);
        let mut out = Vec::new();
        let mut next_visible: Option<Instant> = None;
        let mut i = 0;
        while i < q.messages.len() && out.len() < max {
            let m = &mut q.messages[i];
            if m.visible_at > now {
                next_visible = Some(next_visible.map_or(m.visible_at, |n| n.min(m.visible_at)));
                i += 1;
                continue;
            }
            if m.receive_count >= self.config.max_receive_count {
                // SQS moves a message to the DLQ when a receive would exceed maxReceiveCount.
                if let Some(mut dead) = q.messages.remove(i) {
                    // A DLQ is a queue of its own: its receive count starts over.
                    dead.receive_count = 0;
                    dead.receipt = None;
                    dead.visible_at = now;
                    q.dead.push_back(dead);
                }
                continue;
            }
            out.push(m.deliver(now, self.config.visibility_timeout));
            i += 1;
        }
        (out, next_visible)
    }

    /// Number of messages on the queue, visible or not (for tests and the local server).
    pub fn depth(&self, p: Priority) -> usize {
        self.lock(p).messages.len()
    }
}

impl Default for MemoryTaskQueue {
    fn default() -> Self {
        Self::new(MemoryQueueConfig::default())
    }
}

#[async_trait]
impl TaskQueue for MemoryTaskQueue {
    async fn send(&self, message: &TaskMessage, delay: Duration) -> Result<(), QueueError> {
        self.push(message, delay)
    }

    async fn send_batch(&self, messages: &[(TaskMessage, Duration)]) -> Vec<Result<(), QueueError>> {
        messages.iter().map(|(m, d)| self.push(m, *d)).collect()
    }

    async fn change_visibility(&self, p: Priority, receipt: &str, timeout: Duration) -> Result<(), QueueError> {
        let mut q = self.lock(p);
        let m = q
            .messages
            .iter_mut()
            .find(|m| m.receipt.as_deref() == Some(receipt))
            .ok_or(QueueError::InvalidReceipt)?;
        m.visible_at = Instant::now() + timeout;
        drop(q);
        self.notify[index(p)].notify_waiters();
        Ok(())
    }

    async fn receive(&self, p: Priority, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        let deadline = Instant::now() + wait;
        loop {
            let notified = self.notify[index(p)].notified();
            let (got, next_visible) = self.take_visible(p, max.clamp(1, 10));
            let now = Instant::now();
            if !got.is_empty() || now >= deadline {
                return Ok(got);
            }
            let until = next_visible.map_or(deadline, |n| n.min(deadline));
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(until.saturating_duration_since(now)) => {}
            }
        }
    }

    async fn delete(&self, p: Priority, receipt: &str) -> Result<(), QueueError> {
        let mut q = self.lock(p);
        // Like SQS, deleting with a stale receipt of a message still present is accepted only
        // for the latest receipt; an unknown receipt is an error.
        let pos = q
            .messages
            .iter()
            .position(|m| m.receipt.as_deref() == Some(receipt))
            .ok_or(QueueError::InvalidReceipt)?;
        q.messages.remove(pos);
        Ok(())
    }

    async fn dead_letter_depth(&self, p: Priority) -> Result<u64, QueueError> {
        Ok(self.lock(p).dead.len() as u64)
    }

    async fn receive_dead_letters(
        &self,
        p: Priority,
        max: usize,
        visibility: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        let now = Instant::now();
        let mut q = self.lock(p);
        Ok(q.dead
            .iter_mut()
            .filter(|m| m.visible_at <= now)
            .take(max.clamp(1, 10))
            .map(|m| m.deliver(now, visibility))
            .collect())
    }

    async fn release_dead_letters(&self, p: Priority, received: &[Delivery]) -> Result<(), QueueError> {
        let now = Instant::now();
        let mut q = self.lock(p);
        for m in q.dead.iter_mut() {
            if received
                .iter()
                .any(|d| m.receipt.as_deref() == Some(d.receipt.as_str()))
            {
                m.visible_at = now;
            }
        }
        Ok(())
    }

    async fn redrive(&self, p: Priority, received: &[Delivery]) -> Result<RedrivePath, QueueError> {
        let now = Instant::now();
        let mut q = self.lock(p);
        for d in received {
            if let Some(pos) = q
                .dead
                .iter()
                .position(|m| m.receipt.as_deref() == Some(d.receipt.as_str()))
            {
                if let Some(mut m) = q.dead.remove(pos) {
                    m.receive_count = 0;
                    m.receipt = None;
                    m.visible_at = now;
                    q.messages.push_back(m);
                }
            }
        }
        drop(q);
        self.notify[index(p)].notify_waiters();
        Ok(RedrivePath::Memory)
    }

    async fn stats(&self, p: Priority) -> Result<QueueStats, QueueError> {
        let now = Instant::now();
        let q = self.lock(p);
        let mut stats = QueueStats {
            dead_letters: q.dead.len() as u64,
            ..QueueStats::default()
        };
        for m in &q.messages {
            match (m.visible_at <= now, m.receipt.is_some()) {
                (true, _) => stats.visible += 1,
                (false, true) => stats.in_flight += 1,
                (false, false) => stats.delayed += 1,
            }
        }
        Ok(stats)
    }
}
