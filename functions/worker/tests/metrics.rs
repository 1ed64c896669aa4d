//! Task metrics from the service and the worker, recorded by an installed sink. One test in its
//! own binary: the sink is process-wide.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use taskq_core::memory::{MemoryQueueConfig, MemoryTaskQueue, MemoryTaskStore};
use taskq_core::metrics::{self, Counter, Recorder, Timing};
use taskq_core::{NewTask, Priority, Status, Task, TaskQueue, TaskService, TaskStore};
use taskq_worker::{Registry, Worker, WorkerConfig};
use tokio::time::Instant;

struct Env {
    store: Arc<MemoryTaskStore>,
    queue: Arc<MemoryTaskQueue>,
    service: TaskService,
    worker: Worker,
}

impl Env {
    async fn submit(&self, body: Value) -> Task {
        let new = NewTask::from_json(&body, "").unwrap();
        self.service.submit("u1", &new, None).await.unwrap().task
    }

    async fn poll(&self, p: Priority) {
        let got = self.queue.receive(p, 10, Duration::from_millis(50)).await.unwrap();
        let receipts: Vec<(String, String)> = got.iter().map(|d| (d.message_id.clone(), d.receipt.clone())).collect();
        let deadline = Instant::now() + Duration::from_secs(900);
        let res = self
            .worker
            .process_batch(taskq_worker::sqs::event_from(p, got), deadline)
            .await;
        let failed: Vec<String> = res.batch_item_failures.into_iter().map(|f| f.item_identifier).collect();
        for (id, r) in receipts {
            if !failed.contains(&id) {
                self.queue.delete(p, &r).await.unwrap();
            }
        }
    }

    async fn settle(&self, t: &Task) -> Task {
        for _ in 0..100 {
            self.poll(t.priority).await;
            let now = self.store.get("u1", t.id).await.unwrap().unwrap();
            if now.status.is_terminal() {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("task {} did not settle", t.id)
    }
}

#[tokio::test]
async fn every_outcome_is_counted_once_with_its_timings() {
    let recorder = Arc::new(Recorder::default());
    assert!(metrics::install(Box::new(recorder.clone())));
    let store = Arc::new(MemoryTaskStore::new());
    let queue = Arc::new(MemoryTaskQueue::new(MemoryQueueConfig::exact()));
    let config = WorkerConfig {
        retry_base: Duration::from_millis(1),
        retry_cap: Duration::from_millis(5),
        ..WorkerConfig::default()
    };
    let env = Env {
        service: TaskService::new(store.clone(), queue.clone()),
        worker: Worker::new(store.clone(), queue.clone(), Registry::with_builtins(), config),
        store,
        queue,
    };

    let echo = env.submit(json!({"type": "echo", "priority": "high"})).await;
    let flaky = env
        .submit(json!({"type": "fail", "payload": {"times": 1}, "priority": "normal"}))
        .await;
    let doomed = env
        .submit(json!({"type": "fail", "payload": {"times": 5}, "priority": "low", "max_attempts": 2}))
        .await;
    let delayed = env
        .submit(json!({"type": "echo", "priority": "high", "delay_seconds": 1}))
        .await;
    assert_eq!(env.settle(&echo).await.status, Status::Succeeded);
    assert_eq!(env.settle(&flaky).await.status, Status::Succeeded);
    assert_eq!(env.settle(&doomed).await.status, Status::Failed);
    assert_eq!(env.settle(&delayed).await.status, Status::Succeeded);
    // A duplicate delivery of a finished task changes nothing and counts nothing.
    env.queue.send(&echo.message(), Duration::ZERO).await.unwrap();
    env.poll(Priority::High).await;

    let r = recorder.snapshot();
    assert_eq!(r.total(Counter::Submitted), 4);
    assert_eq!(r.total(Counter::Started), 6, "1 + 2 + 2 + 1 attempts");
    assert_eq!(r.total(Counter::Succeeded), 3);
    assert_eq!(r.total(Counter::Retried), 2);
    assert_eq!(r.total(Counter::Failed), 1);
    assert_eq!(r.total(Counter::Dead), 0);
    assert_eq!(r.counts[&(Counter::Failed, "fail".to_owned(), Priority::Low)], 1);
    assert_eq!(r.counts[&(Counter::Succeeded, "echo".to_owned(), Priority::High)], 2);
    assert_eq!(r.counts[&(Counter::Retried, "fail".to_owned(), Priority::Normal)], 1);

    // Queue wait: first attempts only, and measured from the end of the delay, not creation.
    let waits = &r.timings[&Timing::QueueWait];
    assert_eq!(waits.len(), 4);
    assert!(
        waits.iter().all(|w| *w < Duration::from_millis(900)),
        "a 1 s delay is not queue wait: {waits:?}"
    );
    // One run duration per finished run (3 succeeded, 2 retried, 1 failed).
    assert_eq!(r.timings[&Timing::RunDuration].len(), 6);
}
