//! The sweeper on the in-memory backends (the end-to-end fault test runs it on moto too).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::json;
use taskq_core::memory::{MemoryQueueConfig, MemoryTaskQueue, MemoryTaskStore};
use taskq_core::{EventKind, NewTask, Priority, Snapshot, Status, Task, TaskQueue, TaskService, TaskStore, Transition};
use taskq_sweeper::{Sweeper, SweeperConfig};

struct Env {
    store: Arc<MemoryTaskStore>,
    queue: Arc<MemoryTaskQueue>,
    sweeper: Sweeper,
}

fn env() -> Env {
    let store = Arc::new(MemoryTaskStore::new());
    let queue = Arc::new(MemoryTaskQueue::new(MemoryQueueConfig {
        visibility_timeout: Duration::from_secs(60),
        max_receive_count: 1,
        // These tests are about the sweeper's decisions, read from a queue they inspect; the
        // sampled short polls and the delayed moves of SQS are in the contract suite and the
        // fault run.
        ..MemoryQueueConfig::exact()
    }));
    let config = SweeperConfig {
        stranded_after: Duration::from_millis(300),
        ..SweeperConfig::default()
    };
    Env {
        sweeper: Sweeper::new(store.clone(), queue.clone(), config),
        store,
        queue,
    }
}

/// A task stored with no message, as when the API's send failed after its write.
async fn stranded(e: &Env, priority: &str) -> Task {
    let new = NewTask::from_json(&json!({"type": "echo", "priority": priority}), "").unwrap();
    let service = TaskService::new(e.store.clone(), e.queue.clone());
    let t = service.submit("u", &new, None).await.unwrap().task;
    let got = e.queue.receive(t.priority, 10, Duration::ZERO).await.unwrap();
    e.queue.delete(t.priority, &got[0].receipt).await.unwrap();
    t
}

#[tokio::test]
async fn a_queued_task_without_a_message_is_resent_once_it_is_overdue() {
    let e = env();
    let t = stranded(&e, "high").await;
    assert_eq!(e.sweeper.sweep().await.resent_stranded, 0, "not overdue yet");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let report = e.sweeper.sweep().await;
    assert_eq!((report.scanned, report.resent_stranded), (1, 1));
    assert_eq!(e.queue.depth(Priority::High), 1);
    let after = e.store.get("u", t.id).await.unwrap().unwrap();
    assert_eq!(after.history.last().unwrap().kind, EventKind::MessageResent);
    assert_eq!(
        e.sweeper.sweep().await.resent_stranded,
        0,
        "the re-send restarted the clock"
    );
}

#[tokio::test]
async fn a_running_task_past_its_lease_gets_its_message_back() {
    let e = env();
    let t = stranded(&e, "low").await;
    let start = Transition::Start {
        lease_until: Utc::now() - chrono::Duration::seconds(1),
    }
    .plan(Snapshot::from(&t), Utc::now())
    .unwrap();
    e.store.apply("u", t.id, &start).await.unwrap();
    let report = e.sweeper.sweep().await;
    assert_eq!(report.resent_expired_leases, 1);
    assert_eq!(e.queue.depth(Priority::Low), 1);
}

#[tokio::test]
async fn dead_letters_mark_their_tasks_dead_and_redrive_brings_them_back() {
    let e = env();
    let new = NewTask::from_json(&json!({"type": "echo"}), "").unwrap();
    let service = TaskService::new(e.store.clone(), e.queue.clone());
    let t = service.submit("u", &new, None).await.unwrap().task;
    dead_letter_the_normal_message(&e).await;

    // Just submitted, the task may still be started by another message: the dead letter waits.
    let report = e.sweeper.sweep().await;
    assert_eq!(
        (
            report.dead_letters_seen,
            report.marked_dead,
            report.dead_letters_deferred
        ),
        (1, 0, 1)
    );
    // Quiet for stranded_after (300 ms here): the queue gave up on it.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let report = e.sweeper.sweep().await;
    assert_eq!((report.dead_letters_seen, report.marked_dead), (1, 1));
    assert_eq!(report.resent_stranded, 0, "marked dead, not sent yet another message");
    let dead = e.store.get("u", t.id).await.unwrap().unwrap();
    assert_eq!(dead.status, Status::Dead);
    assert_eq!(dead.error.unwrap().kind, "dead");
    assert_eq!(e.sweeper.sweep().await.marked_dead, 0, "a dead task is marked once");

    // The sweep released the letter: a redrive finds it and brings the task back.
    let report = redrive_now(&e).await;
    assert_eq!((report.moved, report.revived), (1, 1));
    assert_eq!(e.store.get("u", t.id).await.unwrap().unwrap().status, Status::Queued);
}

/// Receives the one message on the normal queue twice without deleting it: with
/// max_receive_count 1 the second receive moves it to the DLQ.
async fn dead_letter_the_normal_message(e: &Env) {
    let got = e.queue.receive(Priority::Normal, 10, Duration::ZERO).await.unwrap();
    e.queue
        .change_visibility(Priority::Normal, &got[0].receipt, Duration::ZERO)
        .await
        .unwrap();
    assert!(e
        .queue
        .receive(Priority::Normal, 10, Duration::ZERO)
        .await
        .unwrap()
        .is_empty());
}

async fn redrive_now(e: &Env) -> taskq_core::admin::RedriveReport {
    taskq_core::admin::redrive(e.store.as_ref(), e.queue.as_ref(), Priority::Normal)
        .await
        .unwrap()
}

#[tokio::test]
async fn redrive_revives_dead_tasks_and_requeues_their_messages() {
    let e = env();
    let new = NewTask::from_json(&json!({"type": "echo"}), "").unwrap();
    let service = TaskService::new(e.store.clone(), e.queue.clone());
    let t = service.submit("u", &new, None).await.unwrap().task;
    let got = e.queue.receive(Priority::Normal, 10, Duration::ZERO).await.unwrap();
    e.queue
        .change_visibility(Priority::Normal, &got[0].receipt, Duration::ZERO)
        .await
        .unwrap();
    assert!(e
        .queue
        .receive(Priority::Normal, 10, Duration::ZERO)
        .await
        .unwrap()
        .is_empty());
    let dead = Transition::Dead { detail: "dlq".into() }
        .plan(Snapshot::from(&t), Utc::now())
        .unwrap();
    e.store.apply("u", t.id, &dead).await.unwrap();

    let report = redrive_now(&e).await;
    assert_eq!((report.moved, report.revived), (1, 1));
    assert_eq!(report.path, Some(taskq_core::RedrivePath::Memory));
    let back = e.store.get("u", t.id).await.unwrap().unwrap();
    assert_eq!((back.status, back.attempts), (Status::Queued, 0));
    assert_eq!(back.history.last().unwrap().kind, EventKind::Redriven);
    assert_eq!(e.queue.depth(Priority::Normal), 1);
    assert_eq!(e.queue.dead_letter_depth(Priority::Normal).await.unwrap(), 0);
}

#[tokio::test]
async fn a_task_scheduled_days_ahead_waits_in_the_table_and_is_enqueued_when_near() {
    let e = env();
    let service = TaskService::new(e.store.clone(), e.queue.clone());
    let submit = |secs: i64| {
        let run_at = (Utc::now() + chrono::Duration::seconds(secs)).to_rfc3339();
        NewTask::from_json(&json!({"type": "echo", "priority": "normal", "run_at": run_at}), "").unwrap()
    };

    // Three days ahead: no message (SQS holds one at most 15 minutes), and no sweep sends one.
    let far = service.submit("u", &submit(3 * 24 * 3600), None).await.unwrap().task;
    assert!(far.run_at.is_some());
    assert_eq!(e.queue.depth(Priority::Normal), 0);
    let report = e.sweeper.sweep().await;
    assert_eq!((report.enqueued_scheduled, report.resent_stranded), (0, 0));
    assert_eq!(e.queue.depth(Priority::Normal), 0);

    // 10 minutes ahead: within SQS's reach, sent at once with the delay.
    service.submit("u", &submit(600), None).await.unwrap();
    let stats = e.queue.stats(Priority::Normal).await.unwrap();
    assert_eq!((stats.visible, stats.delayed), (0, 1));

    // Just past SQS's reach at submission: kept back; two seconds later the sweep enqueues it
    // with the remaining delay (about 15 minutes, never more) and records it.
    let near = service.submit("u", &submit(901), None).await.unwrap().task;
    assert_eq!(e.queue.stats(Priority::Normal).await.unwrap().delayed, 1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = e.sweeper.sweep().await;
    assert_eq!(report.enqueued_scheduled, 1, "{report:?}");
    let stats = e.queue.stats(Priority::Normal).await.unwrap();
    assert_eq!((stats.visible, stats.delayed), (0, 2));
    let after = e.store.get("u", near.id).await.unwrap().unwrap();
    let last = after.history.last().unwrap();
    assert_eq!(last.kind, EventKind::Enqueued);
    assert_eq!(after.status, Status::Queued);
    assert!(!taskq_core::ActiveTask::from(&after).awaiting_enqueue());

    // The next sweep does not send it again, and the far task still waits.
    let report = e.sweeper.sweep().await;
    assert_eq!((report.enqueued_scheduled, report.resent_stranded), (0, 0));
    assert_eq!(e.queue.stats(Priority::Normal).await.unwrap().delayed, 2);
    let far = e.store.get("u", far.id).await.unwrap().unwrap();
    assert!(taskq_core::ActiveTask::from(&far).awaiting_enqueue());
}

/// A duplicate of a running task's message reaches the DLQ (duplicates are normal: replays,
/// re-sends) while the attempt holds a live lease. Marking the task dead would drop the
/// attempt's result and tell the user `dead`; the dead letter is left for a later sweep, and the
/// attempt's success lands.
#[tokio::test]
async fn a_dead_letter_does_not_kill_a_task_running_under_a_live_lease() {
    let e = env();
    let new = NewTask::from_json(&json!({"type": "echo"}), "").unwrap();
    let service = TaskService::new(e.store.clone(), e.queue.clone());
    let t = service.submit("u", &new, None).await.unwrap().task;
    let running = e
        .store
        .apply(
            "u",
            t.id,
            &Transition::Start {
                lease_until: Utc::now() + chrono::Duration::seconds(60),
            }
            .plan(Snapshot::from(&t), Utc::now())
            .unwrap(),
        )
        .await
        .unwrap();
    dead_letter_the_normal_message(&e).await;
    tokio::time::sleep(Duration::from_millis(400)).await;

    let report = e.sweeper.sweep().await;
    assert_eq!(
        (
            report.dead_letters_seen,
            report.marked_dead,
            report.dead_letters_deferred
        ),
        (1, 0, 1)
    );
    let done = e
        .store
        .apply(
            "u",
            t.id,
            &Transition::Succeed { result: json!("done") }
                .plan(Snapshot::from(&running), Utc::now())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(done.status, Status::Succeeded);
    assert_eq!(
        e.sweeper.sweep().await.marked_dead,
        0,
        "a finished task is never marked dead"
    );
}
