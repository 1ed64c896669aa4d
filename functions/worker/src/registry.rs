//! Task handlers, keyed by task type.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;
use taskq_core::{Task, TaskFailure};

/// What a handler gets: the task as it is for this attempt, and a cancellation signal.
#[derive(Debug, Clone)]
pub struct TaskContext {
    pub task: Task,
    cancel: tokio::sync::watch::Receiver<bool>,
    /// When the worker stops waiting for this attempt (its timeout, or the invocation's end).
    deadline: chrono::DateTime<chrono::Utc>,
}

impl TaskContext {
    /// A context whose cancellation is signalled through `cancel` (the worker's watcher).
    pub fn new(task: Task, cancel: tokio::sync::watch::Receiver<bool>) -> Self {
        let deadline = chrono::Utc::now() + chrono::Duration::seconds(task.timeout_seconds.into());
        Self { task, cancel, deadline }
    }

    /// The same context ending at `deadline` instead of after the task's timeout.
    pub fn with_deadline(mut self, deadline: chrono::DateTime<chrono::Utc>) -> Self {
        self.deadline = deadline;
        self
    }

    /// When the worker stops waiting for this attempt.
    pub fn deadline(&self) -> chrono::DateTime<chrono::Utc> {
        self.deadline
    }

    /// A context that is never cancelled (for calling handlers in tests).
    pub fn detached(task: Task) -> Self {
        let (tx, rx) = tokio::sync::watch::channel(false);
        // The receiver keeps the last value after the sender is gone: never cancelled.
        drop(tx);
        Self::new(task, rx)
    }

    /// Whether the task's owner has asked to cancel it (as of the worker's last check).
    pub fn is_cancel_requested(&self) -> bool {
        *self.cancel.borrow()
    }

    /// Resolves when cancellation is requested; never, if it is not. Long handlers `select!` on
    /// it and return [`HandlerError::cancelled`].
    pub async fn cancelled(&self) {
        let mut rx = self.cancel.clone();
        if rx.wait_for(|c| *c).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

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
    /// The handler stopped because cancellation was requested.
    pub fn cancelled() -> Self {
        Self::permanent("cancelled", "stopped on a cancellation request")
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

    /// The built-in types: `echo`, `sleep`, `fail`, `webhook` (public addresses only).
    pub fn with_builtins() -> Self {
        Self::with_builtins_reaching(taskq_outbound::Network::PublicOnly)
    }

    /// The built-in types, with `webhook` requests reaching what `network` allows (taskq-local's
    /// loopback switch).
    pub fn with_builtins_reaching(network: taskq_outbound::Network) -> Self {
        Self::with_builtins_using(crate::builtin::Webhook::new(network))
    }

    /// The built-in types, with `webhook` tasks sent through `webhook` (tests: a resolver of
    /// their own).
    pub fn with_builtins_using(webhook: crate::builtin::Webhook) -> Self {
        let mut r = Self::new();
        crate::builtin::register(&mut r, webhook);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_list_in_core_names_the_registered_builtins() {
        let r = Registry::with_builtins();
        let mut expected = taskq_core::task::BUILTIN_TYPES.to_vec();
        expected.sort_unstable();
        assert_eq!(r.types(), expected);
    }
}
