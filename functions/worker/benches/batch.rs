//! The worker's batch handler on the embedded (in-memory) backends: a 10-record SQS batch of
//! `echo` tasks, each started, run and finished with its conditional writes. Only
//! `process_batch` is timed; submitting and receiving the tasks is set-up.
//! Run: `cargo bench -p taskq-worker --bench batch`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::json;
use taskq_core::memory::{MemoryQueueConfig, MemoryTaskQueue, MemoryTaskStore};
use taskq_core::{NewTask, Priority, TaskQueue, TaskService};
use taskq_worker::{Registry, Worker, WorkerConfig};

const BATCH: usize = 10;

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let store = Arc::new(MemoryTaskStore::new());
    let queue = Arc::new(MemoryTaskQueue::new(MemoryQueueConfig::exact()));
    let service = TaskService::new(store.clone(), queue.clone());
    let worker = Worker::new(store, queue.clone(), Registry::with_builtins(), WorkerConfig::default());
    let new = NewTask::from_json(&json!({"type": "echo", "payload": {"hello": "world"}}), "").expect("a valid task");

    let mut group = c.benchmark_group("worker");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("process_batch_10", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let (service, queue, worker, new) = (service.clone(), queue.clone(), worker.clone(), new.clone());
            async move {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    for _ in 0..BATCH {
                        service.submit("bench-user", &new, None).await.expect("submitted");
                    }
                    let deliveries = queue
                        .receive(Priority::Normal, BATCH, Duration::ZERO)
                        .await
                        .expect("received");
                    assert_eq!(deliveries.len(), BATCH);
                    let receipts: Vec<String> = deliveries.iter().map(|d| d.receipt.clone()).collect();
                    let event = taskq_worker::sqs::event_from(Priority::Normal, deliveries);
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(900);
                    let start = Instant::now();
                    let response = worker.process_batch(event, deadline).await;
                    timed += start.elapsed();
                    assert!(response.batch_item_failures.is_empty());
                    // The event source mapping deletes a successful batch; so does the bench,
                    // untimed, so the queue does not grow.
                    for receipt in &receipts {
                        queue.delete(Priority::Normal, receipt).await.expect("deleted");
                    }
                }
                timed
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
