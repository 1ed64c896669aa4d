//! Emulated SQS event source mappings: per priority, a number of pollers (Lambda's
//! `MaximumConcurrency`) receive batches, hand them to the worker as an `SqsEvent` shaped like
//! Lambda's, and delete the records the batch response did not list as failures. Failed records
//! stay on the queue and come back after their visibility timeout, as in Lambda.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use taskq_core::{Priority, TaskQueue};
use taskq_worker::Worker;
use tokio::task::JoinHandle;
use tracing::{info_span, warn, Instrument};

#[derive(Debug, Clone)]
pub struct EventSourceConfig {
    pub batch_size: usize,
    /// Pollers per priority: high, normal, low. Weighted, so `low` is slower but never starves.
    pub concurrency: [usize; 3],
    /// The emulated function timeout: each batch's invocation deadline.
    pub function_timeout: Duration,
    /// Long-poll wait per receive.
    pub poll_wait: Duration,
}

impl Default for EventSourceConfig {
    fn default() -> Self {
        Self {
            batch_size: 10,
            concurrency: [4, 2, 1],
            function_timeout: Duration::from_secs(900),
            poll_wait: Duration::from_secs(1),
        }
    }
}

pub fn spawn(worker: Worker, queue: Arc<dyn TaskQueue>, config: &EventSourceConfig) -> Vec<JoinHandle<()>> {
    let mut handles = Vec::new();
    for (i, priority) in Priority::ALL.iter().enumerate() {
        for n in 0..config.concurrency[i] {
            let (worker, queue, config, priority) = (worker.clone(), queue.clone(), config.clone(), *priority);
            let span = info_span!("poller", %priority, n);
            handles.push(tokio::spawn(poll(worker, queue, config, priority).instrument(span)));
        }
    }
    handles
}

async fn poll(worker: Worker, queue: Arc<dyn TaskQueue>, config: EventSourceConfig, priority: Priority) {
    loop {
        let deliveries = match queue.receive(priority, config.batch_size, config.poll_wait).await {
            Ok(d) => d,
            Err(e) => {
                warn!(error = %e, "receive failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if deliveries.is_empty() {
            continue;
        }
        let receipts: HashMap<String, String> = deliveries
            .iter()
            .map(|d| (d.message_id.clone(), d.receipt.clone()))
            .collect();
        let event = taskq_worker::sqs::event_from(priority, deliveries);
        let deadline = tokio::time::Instant::now() + config.function_timeout;
        let response = worker.process_batch(event, deadline).await;
        let failed: HashSet<String> = response
            .batch_item_failures
            .into_iter()
            .map(|f| f.item_identifier)
            .collect();
        for (id, receipt) in receipts {
            if !failed.contains(&id) {
                if let Err(e) = queue.delete(priority, &receipt).await {
                    // The message comes back and finds its task finished: a harmless duplicate.
                    warn!(error = %e, message_id = %id, "delete failed");
                }
            }
        }
    }
}
