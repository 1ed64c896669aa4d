use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::broadcast;

use crate::cache::{self, CacheError, CacheTtl, ChangeWatch, RateLimiter, StatusCache};
use crate::rate::{gcra, Quota, RateDecision};
use crate::task::{Task, TaskId};

/// Entries kept before expired ones are swept out (both adapters below stay bounded).
const MAX_ENTRIES: usize = 100_000;

struct Entry {
    version: u32,
    expires: Instant,
    raw: String,
}

/// A [`StatusCache`] in a map with expiry, and change notifications over a broadcast channel.
pub struct MemoryStatusCache {
    entries: Mutex<HashMap<String, Entry>>,
    changes: broadcast::Sender<String>,
    ttl: CacheTtl,
}

impl MemoryStatusCache {
    pub fn new(ttl: CacheTtl) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            changes: broadcast::channel(1024).0,
            ttl,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
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
            .get(&cache::task_key(user_id, id))
            .filter(|e| e.expires > Instant::now())
            .and_then(|e| cache::decode(user_id, &e.raw)))
    }

    async fn put(&self, task: &Task) -> Result<(), CacheError> {
        let now = Instant::now();
        let mut entries = self.lock();
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, e| e.expires > now);
        }
        let key = cache::task_key(&task.user_id, task.id);
        let version = cache::version(task);
        if entries
            .get(&key)
            .is_some_and(|e| e.expires > now && e.version > version)
        {
            return Ok(());
        }
        entries.insert(
            key,
            Entry {
                version,
                expires: now + self.ttl.of(task.status),
                raw: cache::encode(task),
            },
        );
        Ok(())
    }

    async fn publish(&self, user_id: &str, id: TaskId) -> Result<(), CacheError> {
        // No receivers is not an error: nobody is waiting.
        let _ = self.changes.send(cache::task_key(user_id, id));
        Ok(())
    }

    async fn subscribe(&self, user_id: &str, id: TaskId) -> Result<Box<dyn ChangeWatch>, CacheError> {
        Ok(Box::new(MemoryWatch {
            key: cache::task_key(user_id, id),
            rx: self.changes.subscribe(),
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
    rx: broadcast::Receiver<String>,
}

#[async_trait]
impl ChangeWatch for MemoryWatch {
    async fn changed(&mut self) -> Result<(), CacheError> {
        loop {
            match self.rx.recv().await {
                Ok(k) if k == self.key => return Ok(()),
                Ok(_) => continue,
                // Missed messages may include ours: say "maybe changed".
                Err(broadcast::error::RecvError::Lagged(_)) => return Ok(()),
                Err(broadcast::error::RecvError::Closed) => {
                    return Err(CacheError::Unavailable("change channel closed".into()))
                }
            }
        }
    }
}

/// A [`RateLimiter`] for one process: the same GCRA as the Redis script.
pub struct MemoryRateLimiter {
    epoch: Instant,
    tats: Mutex<HashMap<String, u64>>,
}

impl Default for MemoryRateLimiter {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            tats: Mutex::new(HashMap::new()),
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
        if tats.len() >= MAX_ENTRIES {
            // A TAT in the past is the same as no entry.
            tats.retain(|_, tat| *tat > now);
        }
        let (decision, new_tat) = gcra(tats.get(key).copied(), now, quota);
        if let Some(t) = new_tat {
            tats.insert(key.to_owned(), t);
        }
        Ok(decision)
    }
}
