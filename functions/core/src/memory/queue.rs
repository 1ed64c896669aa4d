use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
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
    /// The share of visible messages a short poll (a receive that does not wait, and every
    /// dead-letter receive) sees. SQS samples a subset of its servers on a short poll: it can
    /// return fewer messages than are visible, or none. 1.0 sees all (for tests that inspect
    /// the queue rather than code that reads it).
    pub short_poll_share: f64,
    /// How long after a redrive its move starts. `StartMessageMoveTask` moves every dead letter,
    /// asynchronously, including ones the caller never received; so does this queue.
    pub move_delay: Duration,
}

impl MemoryQueueConfig {
    /// Short polls see every visible message and a redrive's move runs at once: for tests that
    /// inspect the queue itself. Code that reads the queue is tested with the default, which
    /// samples short polls and moves dead letters later, as SQS does.
    pub fn exact() -> Self {
        Self {
            short_poll_share: 1.0,
            move_delay: Duration::ZERO,
            ..Self::default()
        }
    }
}

impl Default for MemoryQueueConfig {
    fn default() -> Self {
        Self {
            visibility_timeout: Duration::from_secs(120),
            max_receive_count: 30,
            short_poll_share: 0.5,
            move_delay: Duration::from_secs(2),
        }
    }
}

struct Message {
    /// Send order, and the key the message is filed under (its receipts start with it).
    /// A redriven message gets a new one: it goes to the back, like a new send.
    seq: u64,
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

/// One queue. Messages are filed by `seq` and indexed by group, so a receive looks at the
/// groups in turn instead of scanning the queue: with fewer groups than a batch holds, the old
/// scan went to the end of the queue on every receive (a 300k backlog of 8 users drained at
/// ~1,400 tasks/s), and a delete or visibility change scanned for its receipt.
#[derive(Default)]
struct Queue {
    messages: BTreeMap<u64, Message>,
    /// Each group's messages, in send order.
    groups: HashMap<String, BTreeSet<u64>>,
    /// Each group once, keyed by its oldest message: the order groups take turns in.
    heads: BTreeMap<u64, String>,
    dead: VecDeque<Message>,
    /// When the pending dead-letter move runs (see [`MemoryQueueConfig::move_delay`]).
    move_at: Option<Instant>,
}

impl Queue {
    fn insert(&mut self, m: Message) {
        let set = self.groups.entry(m.group_id.clone()).or_default();
        let old_head = set.first().copied();
        set.insert(m.seq);
        if old_head.is_none_or(|h| m.seq < h) {
            if let Some(h) = old_head {
                self.heads.remove(&h);
            }
            self.heads.insert(m.seq, m.group_id.clone());
        }
        self.messages.insert(m.seq, m);
    }

    fn remove(&mut self, seq: u64) -> Option<Message> {
        let m = self.messages.remove(&seq)?;
        if let Some(set) = self.groups.get_mut(&m.group_id) {
            let was_head = set.first() == Some(&seq);
            set.remove(&seq);
            if was_head {
                self.heads.remove(&seq);
                match set.first() {
                    Some(&head) => {
                        self.heads.insert(head, m.group_id.clone());
                    }
                    None => {
                        self.groups.remove(&m.group_id);
                    }
                }
            }
        }
        Some(m)
    }

    /// The message whose latest receipt is `receipt` (receipts are `{seq}-{receive count}`).
    fn by_receipt(&mut self, receipt: &str) -> Option<&mut Message> {
        let seq: u64 = receipt.split_once('-')?.0.parse().ok()?;
        self.messages
            .get_mut(&seq)
            .filter(|m| m.receipt.as_deref() == Some(receipt))
    }
}

impl Message {
    fn deliver(&mut self, now: Instant, visibility: Duration) -> Delivery {
        self.receive_count += 1;
        self.visible_at = now + visibility;
        let receipt = format!("{}-{}", self.seq, self.receive_count);
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

    /// The queue, with a dead-letter move that has come due carried out first.
    fn lock(&self, p: Priority) -> std::sync::MutexGuard<'_, Queue> {
        // Every mutation below completes before any call that could panic.
        let mut q = self.queues[index(p)].lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if q.move_at.is_some_and(|at| at <= now) {
            q.move_at = None;
            // Every dead letter, received by someone or not; it goes to the back, like a send.
            for mut m in std::mem::take(&mut q.dead) {
                m.seq = self.next_seq();
                m.receive_count = 0;
                m.receipt = None;
                m.visible_at = now;
                q.insert(m);
            }
            self.notify[index(p)].notify_waiters();
        }
        q
    }

    fn next_seq(&self) -> u64 {
        self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    fn push(&self, message: &TaskMessage, delay: Duration) -> Result<(), QueueError> {
        // SQS refuses these; so does the embedded queue, or a test here would pass on input that
        // fails in AWS.
        crate::identity::check_message_group_id(&message.user_id).map_err(QueueError::Invalid)?;
        if delay.as_secs_f64().ceil() > f64::from(crate::limits::MAX_DELAY_SECONDS) {
            return Err(QueueError::Invalid(format!(
                "DelaySeconds must be 0-{}, got {}",
                crate::limits::MAX_DELAY_SECONDS,
                delay.as_secs_f64().ceil()
            )));
        }
        let body = serde_json::to_string(message).map_err(|e| QueueError::Unavailable(e.into()))?;
        let id = self.next_seq();
        self.lock(message.priority).insert(Message {
            seq: id,
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
    ///
    /// Like SQS fair queues (`MessageGroupId` = the user on standard queues), one group's backlog
    /// does not hold back the others: a receive takes the oldest visible message of each group in
    /// turn (groups ordered by their oldest message), then the second of each, and so on. So a
    /// user's single task waits at most about one batch behind another user's 10,000.
    /// `share` is the chance each visible message is seen (see
    /// [`MemoryQueueConfig::short_poll_share`]).
    fn take_visible(&self, p: Priority, max: usize, share: f64) -> (Vec<Delivery>, Option<Instant>) {
        let mut q = self.lock(p);
        let now = Instant::now();
        let mut next_visible: Option<Instant> = q.move_at;
        let mut dead: Vec<u64> = Vec::new();
        let mut groups: Vec<Vec<u64>> = Vec::new();
        // `max` groups fill a batch in the first round, so later groups are not looked at. A
        // group is walked past its in-flight and delayed messages to at most `max` visible ones.
        for group in q.heads.values() {
            if groups.len() >= max {
                break;
            }
            let mut visible = Vec::new();
            for seq in q.groups.get(group).into_iter().flatten() {
                if visible.len() >= max {
                    break;
                }
                let Some(m) = q.messages.get(seq) else { continue };
                if m.visible_at > now {
                    next_visible = Some(next_visible.map_or(m.visible_at, |n| n.min(m.visible_at)));
                } else if m.receive_count >= self.config.max_receive_count {
                    // SQS moves a message to the DLQ when a receive would exceed maxReceiveCount.
                    dead.push(*seq);
                } else if share >= 1.0 || fastrand::f64() < share {
                    visible.push(*seq);
                }
            }
            if !visible.is_empty() {
                groups.push(visible);
            }
        }
        let mut picked = Vec::with_capacity(max);
        for round in 0..max {
            let before = picked.len();
            picked.extend(groups.iter().filter_map(|g| g.get(round).copied()));
            if picked.len() >= max || picked.len() == before {
                break;
            }
        }
        picked.truncate(max);
        let visibility = self.config.visibility_timeout;
        let out = picked
            .into_iter()
            .filter_map(|seq| q.messages.get_mut(&seq).map(|m| m.deliver(now, visibility)))
            .collect();
        for seq in dead {
            if let Some(mut m) = q.remove(seq) {
                // A DLQ is a queue of its own: its receive count starts over.
                m.receive_count = 0;
                m.receipt = None;
                m.visible_at = now;
                q.dead.push_back(m);
            }
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
        let m = q.by_receipt(receipt).ok_or(QueueError::InvalidReceipt)?;
        m.visible_at = Instant::now() + timeout;
        drop(q);
        self.notify[index(p)].notify_waiters();
        Ok(())
    }

    async fn receive(&self, p: Priority, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        let deadline = Instant::now() + wait;
        loop {
            let notified = self.notify[index(p)].notified();
            let share = if wait.is_zero() {
                self.config.short_poll_share
            } else {
                1.0
            };
            let (got, next_visible) = self.take_visible(p, max.clamp(1, 10), share);
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
        let seq = q.by_receipt(receipt).ok_or(QueueError::InvalidReceipt)?.seq;
        q.remove(seq);
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
        let share = self.config.short_poll_share;
        let mut q = self.lock(p);
        let now = Instant::now();
        // Always a short poll, as the callers make it on SQS: a sample of what is visible.
        Ok(q.dead
            .iter_mut()
            .filter(|m| m.visible_at <= now && (share >= 1.0 || fastrand::f64() < share))
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

    /// Like `StartMessageMoveTask`: every dead letter moves, after `move_delay`, whether or not
    /// `received` holds it.
    async fn redrive(&self, p: Priority, _received: &[Delivery]) -> Result<RedrivePath, QueueError> {
        let at = Instant::now() + self.config.move_delay;
        let mut q = self.lock(p);
        q.move_at = Some(q.move_at.map_or(at, |t| t.min(at)));
        drop(q);
        // A long poll waiting on this queue wakes to re-plan its wait around the move.
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
        for m in q.messages.values() {
            match (m.visible_at <= now, m.receipt.is_some()) {
                (true, _) => stats.visible += 1,
                (false, true) => stats.in_flight += 1,
                (false, false) => stats.delayed += 1,
            }
        }
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::TaskId;

    fn message(user: &str) -> TaskMessage {
        TaskMessage {
            user_id: user.to_owned(),
            task_id: TaskId::new(),
            priority: Priority::Normal,
            timeout_seconds: 60,
            run_at: None,
        }
    }

    fn users(batch: &[Delivery]) -> Vec<String> {
        batch
            .iter()
            .map(|d| {
                serde_json::from_str::<TaskMessage>(&d.body)
                    .map(|m| m.user_id)
                    .unwrap_or_default()
            })
            .collect()
    }

    #[tokio::test]
    async fn a_backlog_of_one_user_does_not_hold_back_another() {
        let q = MemoryTaskQueue::new(MemoryQueueConfig::exact());
        for _ in 0..10_000 {
            q.send(&message("noisy"), Duration::ZERO).await.unwrap();
        }
        q.send(&message("quiet"), Duration::ZERO).await.unwrap();
        let batch = q.receive(Priority::Normal, 10, Duration::ZERO).await.unwrap();
        let who = users(&batch);
        assert_eq!(who.len(), 10);
        assert_eq!(who.iter().filter(|u| *u == "quiet").count(), 1, "{who:?}");
        // Groups take turns in the order of their oldest message: the noisy user's oldest first.
        assert_eq!(who[0], "noisy");
        assert_eq!(who[1], "quiet");
    }

    #[tokio::test]
    async fn receipts_find_their_message_and_a_group_keeps_its_turn_after_deletes() {
        let q = MemoryTaskQueue::new(MemoryQueueConfig::exact());
        for user in ["a", "b", "a"] {
            q.send(&message(user), Duration::ZERO).await.unwrap();
        }
        let first = q.receive(Priority::Normal, 10, Duration::ZERO).await.unwrap();
        assert_eq!(users(&first), ["a", "b", "a"]);
        // Deleting a's oldest makes its second message the group's head; b keeps its place.
        q.delete(Priority::Normal, &first[0].receipt).await.unwrap();
        assert!(matches!(
            q.delete(Priority::Normal, &first[0].receipt).await,
            Err(QueueError::InvalidReceipt)
        ));
        assert!(matches!(
            q.delete(Priority::Normal, "not-a-receipt").await,
            Err(QueueError::InvalidReceipt)
        ));
        for d in &first[1..] {
            q.change_visibility(Priority::Normal, &d.receipt, Duration::ZERO)
                .await
                .unwrap();
        }
        let again = q.receive(Priority::Normal, 10, Duration::ZERO).await.unwrap();
        assert_eq!(users(&again), ["b", "a"]);
        assert!(again.iter().all(|d| d.receive_count == 2));
        // The first receive's receipts are stale now.
        assert!(q.delete(Priority::Normal, &first[1].receipt).await.is_err());
        for d in &again {
            q.delete(Priority::Normal, &d.receipt).await.unwrap();
        }
        assert_eq!(q.depth(Priority::Normal), 0);
    }

    #[tokio::test]
    async fn within_a_group_messages_keep_their_order_and_groups_share_batches() {
        let q = MemoryTaskQueue::new(MemoryQueueConfig::exact());
        let mut sent = Vec::new();
        for i in 0..6 {
            let m = message(if i % 3 == 0 { "b" } else { "a" });
            sent.push(m.task_id);
            q.send(&m, Duration::ZERO).await.unwrap();
        }
        // b: 0, 3; a: 1, 2, 4, 5. Groups in the order of their oldest message (b, then a), one
        // message of each per round: b0 a1, b3 a2, a4, a5.
        let batch = q.receive(Priority::Normal, 10, Duration::ZERO).await.unwrap();
        let order: Vec<TaskId> = batch
            .iter()
            .map(|d| serde_json::from_str::<TaskMessage>(&d.body).unwrap().task_id)
            .collect();
        let expected: Vec<TaskId> = [0, 1, 3, 2, 4, 5].iter().map(|&i| sent[i]).collect();
        assert_eq!(order, expected);
        // Nothing visible is left; nothing is delivered twice.
        assert!(q
            .receive(Priority::Normal, 10, Duration::ZERO)
            .await
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn short_polls_see_a_sample_and_long_polls_see_all() {
        let q = MemoryTaskQueue::new(MemoryQueueConfig {
            visibility_timeout: Duration::ZERO,
            ..MemoryQueueConfig::default()
        });
        for _ in 0..3 {
            q.send(&message("a"), Duration::ZERO).await.unwrap();
        }
        let mut sizes = Vec::new();
        for _ in 0..40 {
            sizes.push(q.receive(Priority::Normal, 10, Duration::ZERO).await.unwrap().len());
        }
        // Each message is seen with probability 1/2: 40 full answers in a row would be 1 in 2^120.
        assert!(sizes.iter().any(|&n| n < 3), "{sizes:?}");
        assert!(sizes.iter().all(|&n| n <= 3));
        let long = q
            .receive(Priority::Normal, 10, Duration::from_millis(10))
            .await
            .unwrap();
        assert_eq!(long.len(), 3);
    }

    #[tokio::test]
    async fn a_redrive_moves_every_dead_letter_later_seen_or_not() {
        let q = MemoryTaskQueue::new(MemoryQueueConfig {
            visibility_timeout: Duration::ZERO,
            max_receive_count: 1,
            short_poll_share: 1.0,
            move_delay: Duration::from_millis(300),
        });
        for _ in 0..3 {
            q.send(&message("a"), Duration::ZERO).await.unwrap();
        }
        assert_eq!(q.receive(Priority::Normal, 10, Duration::ZERO).await.unwrap().len(), 3);
        // The second receive finds them over their receive count: dead-lettered.
        assert!(q
            .receive(Priority::Normal, 10, Duration::ZERO)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(q.dead_letter_depth(Priority::Normal).await.unwrap(), 3);
        let seen = q
            .receive_dead_letters(Priority::Normal, 1, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(seen.len(), 1);
        q.redrive(Priority::Normal, &seen).await.unwrap();
        // Not yet: the move is asynchronous.
        assert_eq!(q.dead_letter_depth(Priority::Normal).await.unwrap(), 3);
        assert_eq!(q.depth(Priority::Normal), 0);
        // A long poll waiting on the queue is woken by the move.
        let moved = q.receive(Priority::Normal, 10, Duration::from_secs(5)).await.unwrap();
        assert_eq!(moved.len(), 3, "every dead letter moves, not only the one received");
        assert!(moved.iter().all(|d| d.receive_count == 1));
        assert_eq!(q.dead_letter_depth(Priority::Normal).await.unwrap(), 0);
    }
}
