//! Lambda entry point of the worker: SQS batches in, partial batch failures out.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use taskq_worker::{Registry, Worker, WorkerConfig};

// One thread, as in every taskq function: at 128 MB Lambda gives a function about a fourteenth
// of a vCPU, so a second runtime thread adds no throughput, only cross-thread wake-ups and
// parking (futex and epoll calls) to every SDK call (BENCHMARKS.md, "CPU per message").
// Handlers that compute must use `spawn_blocking`, which runs beside this thread.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    taskq_aws::telemetry::init();
    let config = WorkerConfig::from_env()?;
    let aws = taskq_aws::AwsConfig::from_env()?;
    let registry = Registry::with_builtins();
    // Metrics name these types; any other is counted as "other".
    taskq_core::metrics::set_known_types(registry.types());
    let (store, queue) = aws.adapters().await;
    let worker = Worker::new(Arc::new(store), Arc::new(queue), registry, config);
    run(service_fn(|event: LambdaEvent<SqsEvent>| {
        let worker = worker.clone();
        async move {
            let deadline = to_instant(event.context.deadline);
            Ok::<SqsBatchResponse, Error>(worker.process_batch(event.payload, deadline).await)
        }
    }))
    .await
}

/// The runtime gives the deadline in epoch milliseconds.
fn to_instant(deadline_ms: u64) -> tokio::time::Instant {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    tokio::time::Instant::now() + Duration::from_millis(deadline_ms.saturating_sub(now_ms))
}
