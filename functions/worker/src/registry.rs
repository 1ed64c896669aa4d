//! Task handlers, keyed by task type.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;
use taskq_core::{Task, TaskFailure};

/// What a handler gets: the task as it is for this attempt.
#[derive(Debug, Clone)]
pub struct TaskContext {
    pub task: Task,
}

impl TaskContext {
    pub fn payload(&self) -> &Value {
        &self.task.payload
    }
    /// This attempt's number, from 1.
    pub fn attempt(&self) -> u32 {
        self.task.attempts
    }
}

/// Why a handler failed. Retryable failures are retried with backoff up to `max_attempts`;
/// permanent ones fail the task at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct HandlerError {
    pub kind: String,
    pub message: String,
    pub retryable: bool,
}

impl HandlerError {
    pub fn retryable(kind: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            message: message.into(),
            retryable: true,
        }
    }
    pub fn permanent(kind: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            message: message.into(),
            retryable: false,
        }
    }
    pub fn failure(&self) -> TaskFailure {
        TaskFailure::new(&self.kind, &self.message)
    }
}

#[async_trait]
pub trait TaskHandler: Send + Sync + 'static {
    async fn run(&self, ctx: TaskContext) -> Result<Value, HandlerError>;
}

/// Handlers by task type.
#[derive(Clone, Default)]
pub struct Registry {
    handlers: HashMap<String, Arc<dyn TaskHandler>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// The built-in types: `echo`, `sleep`, `fail`, `webhook`.
    pub fn with_builtins() -> Self {
        let mut r = Self::new();
        crate::builtin::register(&mut r);
        r
    }

    pub fn register(&mut self, task_type: &str, handler: impl TaskHandler) -> &mut Self {
        self.handlers.insert(task_type.to_owned(), Arc::new(handler));
        self
    }

    pub fn get(&self, task_type: &str) -> Option<Arc<dyn TaskHandler>> {
        self.handlers.get(task_type).cloned()
    }

    pub fn types(&self) -> Vec<&str> {
        let mut t: Vec<&str> = self.handlers.keys().map(String::as_str).collect();
        t.sort_unstable();
        t
    }
}
