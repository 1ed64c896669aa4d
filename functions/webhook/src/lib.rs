//! Completion webhooks. When a task with a `callback_url` reaches a terminal status, the task's
//! JSON (as `GET /v1/tasks/{id}` returns it) is POSTed there, signed (see [`signature`]), with
//! retries ([`deliver`]); the outcome is appended to the task's history as `webhook_delivered`
//! or `webhook_failed`.
//!
//! The decision ([`should_deliver`]) reads only the task as written, so it works the same on a
//! DynamoDB stream image (the Lambda, [`handle`]) and on the local server's change feed
//! ([`run_feed`]). It asks for the record's last event to be the terminal transition itself: the
//! delivery's own history write is another record of the same task, and must not deliver again.
//!
//! Delivery is at least once. A duplicate stream record, or a retried batch, finds the outcome
//! already in the stored history and is skipped; but when the outcome could not be recorded
//! the record is retried and the receiver may see the same `Taskq-Delivery` id twice.

pub mod deliver;
pub use taskq_outbound::signature;

use std::collections::HashSet;
use std::sync::Arc;

use aws_lambda_events::dynamodb::Event;
use chrono::Utc;
use serde::Serialize;
use taskq_core::cache::version;
use taskq_core::{EventKind, Status, StoreError, Task, TaskEvent, TaskStore};

pub use deliver::{Deliverer, Delivery, Network, Outcome, RetryPolicy};
pub use signature::{verify, SignatureError, DEFAULT_TOLERANCE};

/// How many times an outcome is re-appended when the history moved under it.
const RECORD_RACE_RETRIES: usize = 3;

/// Whether this version of a task calls for a delivery: terminal, with a callback URL, and
/// written by the terminal transition itself (not by a later note such as a webhook outcome).
pub fn should_deliver(task: &Task) -> bool {
    task.status.is_terminal()
        && task.callback_url.is_some()
        && task
            .history
            .last()
            .is_some_and(|e| e.kind.is_transition() && e.to == Some(task.status))
}

/// `task.succeeded`, `task.failed`, `task.cancelled`, `task.dead`.
pub fn event_name(status: Status) -> String {
    format!("task.{status}")
}

/// The delivery id: the task's id and the sequence number of its terminal event (a task
/// redriven from `dead` that ends again gets a new one).
pub fn delivery_id(task: &Task) -> String {
    format!("{}-{}", task.id, version(task))
}

/// What to send for this task, if anything.
pub fn delivery_for(task: &Task) -> Option<Delivery> {
    if !should_deliver(task) {
        return None;
    }
    Some(Delivery {
        id: delivery_id(task),
        event: event_name(task.status),
        url: task.callback_url.clone()?,
        // The task's public JSON (no history, no owner): serializing it cannot fail.
        body: serde_json::to_vec(task).unwrap_or_default(),
    })
}

/// The history entry for an outcome. Its detail starts with `delivery <id>:` so a repeated
/// record can tell the outcome is already there.
pub fn outcome_event(delivery_id: &str, outcome: &Outcome) -> TaskEvent {
    let (kind, attempts, detail) = match outcome {
        Outcome::Delivered { status, attempts } => (
            EventKind::WebhookDelivered,
            *attempts,
            format!("delivery {delivery_id}: HTTP {status}"),
        ),
        Outcome::Failed {
            attempts,
            error,
            permanent,
        } => (
            EventKind::WebhookFailed,
            *attempts,
            format!(
                "delivery {delivery_id}: {}{error}",
                if *permanent { "refused: " } else { "gave up: " }
            ),
        ),
    };
    TaskEvent {
        seq: 0,
        at: Utc::now(),
        kind,
        from: None,
        to: None,
        attempt: (attempts > 0).then_some(attempts),
        // Long error chains are cut: the history item must stay small.
        detail: Some(detail.chars().take(500).collect()),
    }
}

fn recorded(task: &Task, delivery_id: &str) -> bool {
    let prefix = format!("delivery {delivery_id}:");
    task.history
        .iter()
        .any(|e| !e.kind.is_transition() && e.detail.as_deref().is_some_and(|d| d.starts_with(&prefix)))
}

/// What became of one task version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Processed {
    /// Not a delivery's cue (not terminal, no callback, or a later note).
    Skipped,
    /// Its outcome is already in the task's history (a duplicate record).
    AlreadyRecorded,
    /// The task no longer exists (expired by TTL).
    Gone,
    Done(Outcome),
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("reading the task failed")]
    Read(#[source] StoreError),
    #[error("recording the outcome failed (the delivery was made: {0:?})")]
    Record(Outcome, #[source] StoreError),
}

/// Deliveries over a store: read, deliver, record.
#[derive(Clone)]
pub struct Webhooks {
    deliverer: Deliverer,
    store: Arc<dyn TaskStore>,
}

impl Webhooks {
    pub fn new(deliverer: Deliverer, store: Arc<dyn TaskStore>) -> Self {
        Self { deliverer, store }
    }

    /// Handles one written version of a task (a stream image or a local change).
    pub async fn process(&self, task: &Task) -> Result<Processed, WebhookError> {
        let Some(delivery) = delivery_for(task) else {
            return Ok(Processed::Skipped);
        };
        // One consistent read spares the receiver a duplicate when this version comes again
        // (streams deliver records at least once, and a failed batch is retried).
        let Some(current) = self
            .store
            .get(&task.user_id, task.id)
            .await
            .map_err(WebhookError::Read)?
        else {
            return Ok(Processed::Gone);
        };
        if recorded(&current, &delivery.id) {
            return Ok(Processed::AlreadyRecorded);
        }
        let outcome = self.deliverer.deliver(&delivery).await;
        match &outcome {
            Outcome::Delivered { status, attempts } => {
                tracing::info!(task_id = %task.id, delivery = %delivery.id, status, attempts, "webhook delivered")
            }
            Outcome::Failed { attempts, error, .. } => {
                tracing::warn!(task_id = %task.id, delivery = %delivery.id, attempts, error = %error, "webhook failed")
            }
        }
        let event = outcome_event(&delivery.id, &outcome);
        let mut expect = version(&current);
        for _ in 0..RECORD_RACE_RETRIES {
            match self.store.record(&task.user_id, task.id, expect, &event).await {
                Ok(_) => return Ok(Processed::Done(outcome)),
                // Another event was appended meanwhile (a redrive, or a duplicate of this
                // record that got there first): append after it, unless it is this outcome.
                Err(StoreError::Conflict { current: Some(now) }) => {
                    if recorded(&now, &delivery.id) {
                        return Ok(Processed::Done(outcome));
                    }
                    expect = version(&now);
                }
                Err(StoreError::Conflict { current: None }) => return Ok(Processed::Gone),
                // The task's item is full: the outcome cannot be recorded, ever. Retrying the
                // record would only deliver the webhook again.
                Err(StoreError::ItemTooLarge) => {
                    tracing::error!(task_id = %task.id, delivery = %delivery.id, "webhook outcome not recorded: the task's item is full");
                    return Ok(Processed::Done(outcome));
                }
                Err(e) => return Err(WebhookError::Record(outcome, e)),
            }
        }
        Err(WebhookError::Record(outcome, StoreError::Conflict { current: None }))
    }
}

/// The Lambda's answer: the records to retry (`FunctionResponseTypes: ReportBatchItemFailures`).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct BatchResponse {
    #[serde(rename = "batchItemFailures")]
    pub batch_item_failures: Vec<BatchItemFailure>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BatchItemFailure {
    /// The record's stream sequence number.
    #[serde(rename = "itemIdentifier")]
    pub item_identifier: String,
}

/// The task a record's new image holds (shared with the cache refresher, which reads the same
/// stream).
pub use taskq_stream::task_of;

/// Handles a batch of stream records. Deliveries run concurrently (one slow receiver must not
/// hold up the others for its 30 s); the records of one task version count once. Only records
/// whose outcome could not be read or recorded are retried; an unreadable image is logged and
/// dropped (retrying cannot make it readable).
pub async fn handle(event: &Event, webhooks: &Webhooks) -> BatchResponse {
    let mut seen = HashSet::new();
    let mut work = Vec::new();
    for record in &event.records {
        match task_of(record) {
            Ok(Some(task)) if should_deliver(&task) => {
                if seen.insert(delivery_id(&task)) {
                    work.push((record.change.sequence_number.clone(), task));
                }
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, event_id = %record.event_id, "stream record is not a readable task"),
        }
    }
    let results = futures_util::future::join_all(work.iter().map(|(_, task)| webhooks.process(task))).await;
    let mut response = BatchResponse::default();
    for ((sequence, task), result) in work.iter().zip(results) {
        if let Err(e) = result {
            tracing::error!(task_id = %task.id, error = %e, cause = ?std::error::Error::source(&e), "webhook record will be retried");
            response.batch_item_failures.push(BatchItemFailure {
                item_identifier: sequence.clone().unwrap_or_default(),
            });
        }
    }
    response
}

/// The local server's stand-in for the stream trigger: every task version written comes in on
/// `changes`; each one that calls for a delivery is processed on a task of its own.
pub async fn run_feed(mut changes: tokio::sync::mpsc::UnboundedReceiver<Task>, webhooks: Webhooks) {
    while let Some(task) = changes.recv().await {
        if !should_deliver(&task) {
            continue;
        }
        let webhooks = webhooks.clone();
        tokio::spawn(async move {
            if let Err(e) = webhooks.process(&task).await {
                tracing::error!(task_id = %task.id, error = %e, "webhook could not be recorded");
            }
        });
    }
}
