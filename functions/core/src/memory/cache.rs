use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::broadcast;

use crate::cache::{self, CacheError, CacheTtl, ChangeWatch, RateLimiter, StatusCache};
use crate::rate::{gcra, Quota, RateDecision};
use crate::task::{Task, TaskId};

/// Entries kept before expired ones are swept out (both adapters below stay bounded).
const MAX_ENTRIES: usize = 100_000;
/// A full map is swept at most this often: a map full of live entries must not cost a scan of
/// 100,000 entries per call (taskq-local slowed 18x once it held 115k finished tasks).
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// A map that drops expired entries when it is full, at most once per [`SWEEP_EVERY`].
struct Swept<V> {
    map: HashMap<String, V>,
    next_sweep: Option<Instant>,
}

impl<V> Default for Swept<V> {
    fn default() -> Self {
        Self {
            map: HashMap::new(),
            next_sweep: None,
        }
    }
}

impl<V> Swept<V> {
    /// Whether one more entry fits, after sweeping out the dead ones if it is time to.
    fn room(&mut self, now: Instant, live: impl Fn(&V) -> bool) -> bool {
        if self.map.len() < MAX_ENTRIES {
            return true;
        }
        if self.next_sweep.is_none_or(|t| now >= t) {
            self.map.retain(|_, v| live(v));
            self.next_sweep = Some(now + SWEEP_EVERY);
        }
        self.map.len() < MAX_ENTRIES
    }
}

struct Entry {
    version: u32,
    expires: Instant,
    raw: String,
}

/// A [`StatusCache`] in a map with expiry, and change notifications over a broadcast channel.
pub struct MemoryStatusCache {
    entries: Mutex<Swept<Entry>>,
    /// One channel per watched task, as Redis has one per task: a change wakes only the
    /// requests waiting on that task (one shared channel made every waiter read every change).
    watchers: Arc<Mutex<HashMap<String, broadcast::Sender<()>>>>,
    ttl: CacheTtl,
}

impl MemoryStatusCache {
    pub fn new(ttl: CacheTtl) -> Self {
        Self {
            entries: Mutex::new(Swept::default()),
            watchers: Arc::default(),
            ttl,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Swept<Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Default for MemoryStatusCache {
    fn default() -> Self {
        Self::new(CacheTtl::default())
    }
}

#[async_trait]
impl StatusCache for MemoryStatusCache {
    async fn get(&self, user_id: &str, id: TaskId) -> Result<Option<Task>, CacheError> {
        let entries = self.lock();
        Ok(entries
            .map
            .get(&cache::task_key(user_id, id))
            .filter(|e| e.expires > Instant::now())
            .and_then(|e| cache::decode(user_id, &e.raw)))
    }

    async fn put(&self, task: &Task) -> Result<(), CacheError> {
        let now = Instant::now();
        let mut entries = self.lock();
        let key = cache::task_key(&task.user_id, task.id);
        if !entries.map.contains_key(&key) && !entries.room(now, |e| e.expires > now) {
            // Full of live entries: this task is not cached; its reads go to the store.
            return Ok(());
        }
        let version = cache::version(task);
        if entries
            .map
            .get(&key)
            .is_some_and(|e| e.expires > now && e.version > version)
        {
            return Ok(());
        }
        entries.map.insert(
            key,
            Entry {
                version,
                expires: now + self.ttl.of(task.status),
                raw: cache::encode(task),
            },
        );
        Ok(())
    }

    async fn remove(&self, user_id: &str, id: TaskId) -> Result<(), CacheError> {
        self.lock().map.remove(&cache::task_key(user_id, id));
        Ok(())
    }

    async fn publish(&self, user_id: &str, id: TaskId) -> Result<(), CacheError> {
        // No receivers is not an error: nobody is waiting.
        let watchers = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = watchers.get(&cache::task_key(user_id, id)) {
            let _ = tx.send(());
        }
        Ok(())
    }

    async fn subscribe(&self, user_id: &str, id: TaskId) -> Result<Box<dyn ChangeWatch>, CacheError> {
        Ok(Box::new(MemoryWatch {
            key: cache::task_key(user_id, id),
            rx: {
                let mut watchers = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
                watchers
                    .entry(cache::task_key(user_id, id))
                    .or_insert_with(|| broadcast::channel(4).0)
                    .subscribe()
            },
            watchers: self.watchers.clone(),
        }))
    }

    async fn ping(&self) -> Result<Duration, CacheError> {
        let start = Instant::now();
        drop(self.lock());
        Ok(start.elapsed())
    }
}

struct MemoryWatch {
    key: String,
    rx: broadcast::Receiver<()>,
    watchers: Arc<Mutex<HashMap<String, broadcast::Sender<()>>>>,
}

#[async_trait]
impl ChangeWatch for MemoryWatch {
    async fn changed(&mut self) -> Result<(), CacheError> {
        match self.rx.recv().await {
            // Missed messages are changes too: "maybe changed" either way.
            Ok(()) | Err(broadcast::error::RecvError::Lagged(_)) => Ok(()),
            Err(broadcast::error::RecvError::Closed) => Err(CacheError::Unavailable("change channel closed".into())),
        }
    }
}

impl Drop for MemoryWatch {
    /// The last watcher of a task removes its channel, so the map holds only watched tasks.
    fn drop(&mut self) {
        let mut watchers = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        if watchers.get(&self.key).is_some_and(|tx| tx.receiver_count() <= 1) {
            watchers.remove(&self.key);
        }
    }
}

/// A [`RateLimiter`] for one process: the same GCRA as the Redis script.
pub struct MemoryRateLimiter {
    epoch: Instant,
    tats: Mutex<Swept<u64>>,
}

impl Default for MemoryRateLimiter {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            tats: Mutex::new(Swept::default()),
        }
    }
}

impl MemoryRateLimiter {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl RateLimiter for MemoryRateLimiter {
    async fn acquire(&self, key: &str, quota: Quota) -> Result<RateDecision, CacheError> {
        let now = self.epoch.elapsed().as_micros() as u64;
        let mut tats = self.tats.lock().unwrap_or_else(|p| p.into_inner());
        if !tats.map.contains_key(key) {
            // A TAT in the past is the same as no entry. Still full: the new key is tracked
            // anyway (limits must hold); TATs expire within a burst, so sweeps keep it bounded.
            tats.room(Instant::now(), |tat| *tat > now);
        }
        let (decision, new_tat) = gcra(tats.map.get(key).copied(), now, quota);
        if let Some(t) = new_tat {
            tats.map.insert(key.to_owned(), t);
        }
        Ok(decision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{MemoryTaskQueue, MemoryTaskStore};
    use crate::{NewTask, TaskService};
    use std::sync::Arc;

    #[tokio::test]
    async fn a_cache_full_of_live_entries_stays_bounded_and_keeps_serving() {
        let service = TaskService::new(Arc::new(MemoryTaskStore::new()), Arc::new(MemoryTaskQueue::default()));
        let new = NewTask::from_json(&serde_json::json!({"type": "echo"}), "").unwrap();
        let mut task = service.submit("u", &new, None).await.unwrap().task;
        let cache = MemoryStatusCache::default();
        let first = task.id;
        cache.put(&task).await.unwrap();
        for _ in 1..MAX_ENTRIES {
            task.id = TaskId::new();
            cache.put(&task).await.unwrap();
        }
        assert_eq!(cache.lock().map.len(), MAX_ENTRIES);
        // Full of live entries: new keys are not cached (one sweep, then none for a second)...
        let mut extra = task.clone();
        for _ in 0..1_000 {
            extra.id = TaskId::new();
            cache.put(&extra).await.unwrap();
        }
        assert_eq!(cache.lock().map.len(), MAX_ENTRIES);
        assert!(cache.get("u", extra.id).await.unwrap().is_none());
        assert!(cache.lock().next_sweep.is_some());
        // ...while the cached ones are still served.
        assert_eq!(cache.get("u", first).await.unwrap().map(|t| t.id), Some(first));
    }

    #[tokio::test]
    async fn a_change_wakes_only_its_own_watchers_and_unwatched_tasks_cost_nothing() {
        let cache = MemoryStatusCache::default();
        let (a, b) = (TaskId::new(), TaskId::new());
        let mut watch_a = cache.subscribe("u", a).await.unwrap();
        let mut watch_b = cache.subscribe("u", b).await.unwrap();
        cache.publish("u", a).await.unwrap();
        let wait = Duration::from_millis(50);
        assert!(tokio::time::timeout(wait, watch_a.changed()).await.is_ok());
        assert!(
            tokio::time::timeout(wait, watch_b.changed()).await.is_err(),
            "b did not change"
        );
        // Publishing a task nobody watches creates nothing; dropping the last watcher cleans up.
        cache.publish("u", TaskId::new()).await.unwrap();
        assert_eq!(cache.watchers.lock().unwrap().len(), 2);
        drop(watch_a);
        drop(watch_b);
        assert!(cache.watchers.lock().unwrap().is_empty());
    }
}
