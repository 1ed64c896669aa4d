use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::ports::{
    ActivePage, ActiveQuery, ActiveTask, Created, IdempotencyClaim, ListQuery, StoreError, TaskPage, TaskStore,
};
use crate::task::{active_shard, Priority, Task, TaskEvent, TaskId};
use crate::transition::StateChange;

#[derive(Default)]
struct UserTasks {
    tasks: BTreeMap<TaskId, Task>,
    /// key -> (fingerprint, task id, expiry)
    keys: HashMap<String, (String, TaskId, DateTime<Utc>)>,
}

/// A [`TaskStore`] in a map, one lock for all users (a test and dev backend, not a database).
#[derive(Default)]
pub struct MemoryTaskStore {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    users: HashMap<String, UserTasks>,
    /// The tasks that are not terminal, by (priority, shard, id) -> user: the sparse active
    /// index the DynamoDB adapter keeps as a GSI. Without it every page of [`TaskStore::active`]
    /// (the sweeper reads them all, once a minute in taskq-local) scanned and sorted every task
    /// ever stored, finished ones included, under the lock every worker and request needs.
    active: BTreeMap<(Priority, u8, TaskId), String>,
}

impl State {
    /// Keeps `task`'s entry in the active index in step with its status.
    fn index(&mut self, task: &Task) {
        let key = (task.priority, active_shard(task.id), task.id);
        if task.status.is_terminal() {
            self.active.remove(&key);
        } else {
            self.active.entry(key).or_insert_with(|| task.user_id.clone());
        }
    }
}

impl MemoryTaskStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-written task: every write below
        // is a single assignment. So a poisoned lock is safe to keep using.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl TaskStore for MemoryTaskStore {
    async fn create(&self, task: &Task, claim: Option<&IdempotencyClaim>) -> Result<Created, StoreError> {
        let mut state = self.lock();
        let user = state.users.entry(task.user_id.clone()).or_default();
        if let Some(claim) = claim {
            if let Some((fingerprint, id, expires_at)) = user.keys.get(&claim.key) {
                if *expires_at > Utc::now() {
                    if let Some(existing) = user.tasks.get(id) {
                        // As the DynamoDB store: the key names this very task, so an earlier try
                        // of this create was applied (its response lost).
                        if existing.id == task.id {
                            return Ok(Created::New(existing.clone()));
                        }
                        return Ok(Created::Existing {
                            task: existing.clone(),
                            same_request: *fingerprint == claim.fingerprint,
                        });
                    }
                }
            }
        }
        if task.item_bytes() > crate::limits::MAX_ITEM_BYTES {
            return Err(StoreError::ItemTooLarge);
        }
        if let Some(existing) = user.tasks.get(&task.id) {
            // The same create tried again after its response was lost: it was applied.
            if existing.write_token.is_some() && existing.write_token == task.write_token {
                return Ok(Created::New(existing.clone()));
            }
            return Err(StoreError::Conflict {
                current: Some(Box::new(existing.clone())),
            });
        }
        user.tasks.insert(task.id, task.clone());
        if let Some(claim) = claim {
            user.keys.insert(
                claim.key.clone(),
                (claim.fingerprint.clone(), task.id, claim.expires_at),
            );
        }
        state.index(task);
        Ok(Created::New(task.clone()))
    }

    async fn get(&self, user_id: &str, id: TaskId) -> Result<Option<Task>, StoreError> {
        Ok(self.lock().users.get(user_id).and_then(|u| u.tasks.get(&id)).cloned())
    }

    async fn list(&self, user_id: &str, query: &ListQuery) -> Result<TaskPage, StoreError> {
        let state = self.lock();
        let Some(user) = state.users.get(user_id) else {
            return Ok(TaskPage {
                tasks: vec![],
                next: None,
            });
        };
        let range = match query.after {
            Some(after) => user.tasks.range(..after),
            None => user.tasks.range(..),
        };
        let limit = query.limit.max(1) as usize;
        let mut matching = range
            .rev()
            .map(|(_, t)| t)
            .filter(|t| query.status.is_none_or(|s| t.status == s) && query.priority.is_none_or(|p| t.priority == p));
        let tasks: Vec<Task> = matching.by_ref().take(limit).cloned().collect();
        // Like DynamoDB, a full page says "there may be more" without looking further.
        let next = (tasks.len() == limit).then(|| tasks[limit - 1].id);
        Ok(TaskPage { tasks, next })
    }

    async fn apply(&self, user_id: &str, id: TaskId, change: &StateChange) -> Result<Task, StoreError> {
        let mut state = self.lock();
        let task = state
            .users
            .get_mut(user_id)
            .and_then(|u| u.tasks.get_mut(&id))
            .ok_or(StoreError::Conflict { current: None })?;
        if !change.matches(task) {
            // As the DynamoDB store: a retry of a write that was applied finds its own token.
            if change.applied_in(task) {
                return Ok(task.clone());
            }
            return Err(StoreError::Conflict {
                current: Some(Box::new(task.clone())),
            });
        }
        // DynamoDB refuses an update whose result exceeds 400 KB; so does this store.
        let mut after = task.clone();
        change.apply_to(&mut after);
        if after.item_bytes() > crate::limits::MAX_ITEM_BYTES {
            return Err(StoreError::ItemTooLarge);
        }
        *task = after;
        let task = task.clone();
        state.index(&task);
        Ok(task)
    }

    async fn record(&self, user_id: &str, id: TaskId, expect_seq: u32, event: &TaskEvent) -> Result<Task, StoreError> {
        let mut state = self.lock();
        let task = state
            .users
            .get_mut(user_id)
            .and_then(|u| u.tasks.get_mut(&id))
            .ok_or(StoreError::Conflict { current: None })?;
        if crate::cache::version(task) != expect_seq {
            return Err(StoreError::Conflict {
                current: Some(Box::new(task.clone())),
            });
        }
        let mut after = task.clone();
        after.history.push(TaskEvent {
            seq: expect_seq + 1,
            ..event.clone()
        });
        if after.item_bytes() > crate::limits::MAX_ITEM_BYTES {
            return Err(StoreError::ItemTooLarge);
        }
        *task = after;
        Ok(task.clone())
    }

    async fn active(&self, query: &ActiveQuery) -> Result<ActivePage, StoreError> {
        let state = self.lock();
        let limit = query.limit.max(1) as usize;
        let start = match query.after {
            Some(after) => Bound::Excluded((query.priority, query.shard, after)),
            None => Bound::Included((query.priority, query.shard, TaskId::from_ulid(ulid::Ulid::nil()))),
        };
        let tasks: Vec<ActiveTask> = state
            .active
            .range((start, Bound::Unbounded))
            .take_while(|((priority, shard, _), _)| *priority == query.priority && *shard == query.shard)
            .filter_map(|((_, _, id), user)| state.users.get(user).and_then(|u| u.tasks.get(id)))
            .take(limit)
            .map(ActiveTask::from)
            .collect();
        let next = (tasks.len() == limit).then(|| tasks[limit - 1].id);
        Ok(ActivePage { tasks, next })
    }
}
