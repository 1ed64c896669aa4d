//! Lambda entry point of the worker: SQS batches in, partial batch failures out.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use taskq_worker::targets::{HttpClient, LambdaTarget, TargetClients};
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
    let catalog = taskq_core::Catalog::from_env()?;
    let sdk = taskq_aws::AwsConfig::sdk_config().await;
    let mut clients = TargetClients::default();
    if catalog.uses("lambda") {
        clients.lambda = Some(LambdaTarget::client(&sdk));
    }
    if catalog.uses("http") {
        // The completion webhooks' secret: receivers verify both with one function.
        let id = std::env::var("TASKQ_WEBHOOK_SECRET_ARN")
            .map_err(|_| "TASKQ_WEBHOOK_SECRET_ARN must be set when a task type has an http target")?;
        let secret = taskq_aws::secrets::signing_secret(&sdk, &id).await?;
        clients.http = Some(HttpClient::new(taskq_outbound::Network::PublicOnly, secret));
    }
    let mut registry = Registry::with_builtins();
    taskq_worker::targets::register(&mut registry, &catalog, &clients)?;
    // Metrics name these types; any other is counted as "other".
    taskq_core::metrics::set_known_types(registry.types());
    let (store, queue) = aws.adapters_from(&sdk);
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
