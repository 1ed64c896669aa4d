//! One contract suite for the store and queue ports, run over the in-memory adapters and over
//! DynamoDB and SQS as moto speaks them. A behaviour the service relies on is pinned here once.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::json;
use taskq_core::memory::{MemoryQueueConfig, MemoryTaskQueue, MemoryTaskStore};
use taskq_core::{
    ActiveQuery, Created, EventKind, IdempotencyClaim, ListQuery, NewTask, Priority, RedrivePath, Snapshot, Status,
    StoreError, TaskMessage, TaskQueue, TaskService, TaskStore, Transition, ACTIVE_SHARDS,
};

/// Receives after which a message is dead-lettered, in every backend of this suite.
const MAX_RECEIVES: u32 = 2;

struct Backends {
    store: Arc<dyn TaskStore>,
    queue: Arc<dyn TaskQueue>,
    /// Whether a refused write leaves the item untouched, as in DynamoDB. moto applies part of
    /// an UpdateItem before it refuses it for size; what it leaves is checked on memory only.
    refusals_apply_nothing: bool,
}

fn memory() -> Option<Backends> {
    Some(Backends {
        store: Arc::new(MemoryTaskStore::new()),
        queue: Arc::new(MemoryTaskQueue::new(MemoryQueueConfig {
            visibility_timeout: Duration::from_secs(120),
            max_receive_count: MAX_RECEIVES,
            // Sampled short polls and a delayed redrive move, as in SQS.
            ..MemoryQueueConfig::default()
        })),
        refusals_apply_nothing: true,
    })
}

async fn moto(test: &str) -> Option<Backends> {
    let endpoint = taskq_aws::testing::endpoint(test)?;
    let (sdk, config) = taskq_aws::testing::fresh(&endpoint, MAX_RECEIVES).await;
    let (store, queue) = config.adapters_from(&sdk);
    Some(Backends {
        store: Arc::new(store),
        queue: Arc::new(queue),
        refusals_apply_nothing: false,
    })
}

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(#[tokio::test] async fn $name() { if let Some(b) = super::memory() { super::$name(b).await } })*
        }
        mod moto {
            $(#[tokio::test] async fn $name() { if let Some(b) = super::moto(stringify!($name)).await { super::$name(b).await } })*
        }
    };
}

contract!(
    create_then_get_round_trips_the_task,
    create_refuses_an_existing_id,
    tasks_are_private_to_their_user,
    apply_moves_only_from_the_expected_state_and_returns_the_current_task,
    apply_to_a_missing_task_is_a_conflict_without_current,
    history_is_appended_in_order_with_increasing_seq,
    record_appends_a_note_to_a_terminal_task_at_the_expected_seq_only,
    list_pages_newest_first_with_filters,
    idempotency_keys_replay_or_report_a_different_request,
    a_replay_sends_the_message_a_failed_first_request_did_not,
    a_stale_worker_from_before_a_redrive_cannot_commit_onto_the_new_run,
    a_retried_task_is_queued_again_with_a_message_and_a_stale_run_cannot_commit,
    a_write_retried_after_a_lost_response_is_its_own_success,
    a_write_past_400_kb_is_refused_as_too_large,
    two_sweeps_racing_on_a_resend_write_once,
    a_large_payload_comes_back_from_every_read_and_write,
    queue_sends_receives_and_deletes,
    queue_redelivers_after_visibility_and_counts_receives,
    queue_dead_letters_after_max_receives,
    queue_delays_messages,
    queue_batches_across_priorities,
    queue_rejects_a_stale_receipt,
    queue_refuses_what_sqs_refuses_as_invalid,
    active_index_holds_unfinished_tasks_only,
    dead_letters_are_received_and_redriven,
    queue_stats_count_visible_in_flight_delayed_and_dead,
);

fn new_task(t: &str, priority: &str) -> NewTask {
    NewTask::from_json(
        &json!({"type": t, "payload": {"n": [1, 2.5, "x"]}, "priority": priority}),
        "",
    )
    .unwrap()
}

async fn submit(b: &Backends, user: &str, priority: &str) -> taskq_core::Task {
    let service = TaskService::new(b.store.clone(), b.queue.clone());
    service
        .submit(user, &new_task("echo", priority), None)
        .await
        .unwrap()
        .task
}

async fn create_then_get_round_trips_the_task(b: Backends) {
    let t = submit(&b, "alice", "high").await;
    let got = b.store.get("alice", t.id).await.unwrap().unwrap();
    assert_eq!(got, t);
    assert_eq!(got.history.len(), 1);
    assert_eq!(got.history[0].kind, EventKind::Submitted);
}

async fn create_refuses_an_existing_id(b: Backends) {
    let t = submit(&b, "alice", "normal").await;
    // Another write of the same id (its own token) is refused...
    let mut other = t.clone();
    other.write_token = Some(taskq_core::transition::new_write_token());
    other.payload = json!("someone else's");
    match b.store.create(&other, None).await {
        Err(StoreError::Conflict { current: Some(current) }) => assert_eq!(*current, t),
        other => panic!("expected a conflict with the stored task, got {other:?}"),
    }
    // ...the same write again (a retry after a lost response) is the task it created.
    match b.store.create(&t, None).await {
        Ok(Created::New(again)) => assert_eq!(again, t),
        other => panic!("expected the task the first try created, got {other:?}"),
    }
}

async fn tasks_are_private_to_their_user(b: Backends) {
    let t = submit(&b, "alice", "normal").await;
    assert!(b.store.get("bob", t.id).await.unwrap().is_none());
    let page = b
        .store
        .list(
            "bob",
            &ListQuery {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(page.tasks.is_empty());
    let start = Transition::Start {
        lease_until: Utc::now(),
    }
    .plan(Snapshot::from(&t), Utc::now())
    .unwrap();
    assert!(matches!(
        b.store.apply("bob", t.id, &start).await,
        Err(StoreError::Conflict { current: None })
    ));
}

async fn apply_moves_only_from_the_expected_state_and_returns_the_current_task(b: Backends) {
    let t = submit(&b, "alice", "normal").await;
    let now = Utc::now();
    let start = Transition::Start { lease_until: now }
        .plan(Snapshot::from(&t), now)
        .unwrap();
    let running = b.store.apply("alice", t.id, &start).await.unwrap();
    assert_eq!((running.status, running.attempts), (Status::Running, 1));
    assert!(running.started_at.is_some() && running.lease_until.is_some());
    assert_eq!(running.payload, t.payload, "the write returns the whole task");

    // A duplicate delivery plans its own start: it changes nothing and reports what is there.
    let duplicate = Transition::Start { lease_until: now }
        .plan(Snapshot::from(&t), now)
        .unwrap();
    match b.store.apply("alice", t.id, &duplicate).await {
        Err(StoreError::Conflict { current: Some(current) }) => assert_eq!(*current, running),
        other => panic!("expected a conflict with the current task, got {other:?}"),
    }
    // The very same write again (the SDK retrying after a lost response) is its own success.
    assert_eq!(b.store.apply("alice", t.id, &start).await.unwrap(), running);
    let done = Transition::Succeed {
        result: json!({"ok": true}),
    }
    .plan(Snapshot::from(&running), Utc::now())
    .unwrap();
    let finished = b.store.apply("alice", t.id, &done).await.unwrap();
    assert_eq!(finished.status, Status::Succeeded);
    assert_eq!(finished.result, Some(json!({"ok": true})));
    assert!(finished.finished_at.is_some() && finished.lease_until.is_none());
    // A stale worker's retry is refused.
    let stale = Transition::Retry {
        error: taskq_core::TaskFailure::new("x", "y"),
        run_at: Utc::now(),
    }
    .plan(Snapshot::from(&running), Utc::now())
    .unwrap();
    assert!(matches!(
        b.store.apply("alice", t.id, &stale).await,
        Err(StoreError::Conflict { current: Some(_) })
    ));
    assert_eq!(b.store.get("alice", t.id).await.unwrap().unwrap(), finished);
}

async fn apply_to_a_missing_task_is_a_conflict_without_current(b: Backends) {
    let t = submit(&b, "alice", "normal").await;
    let other = taskq_core::TaskId::new();
    let start = Transition::Start {
        lease_until: Utc::now(),
    }
    .plan(Snapshot::from(&t), Utc::now())
    .unwrap();
    assert!(matches!(
        b.store.apply("alice", other, &start).await,
        Err(StoreError::Conflict { current: None })
    ));
}

async fn history_is_appended_in_order_with_increasing_seq(b: Backends) {
    let mut t = submit(&b, "alice", "low").await;
    let steps = [
        Transition::Start {
            lease_until: Utc::now(),
        },
        Transition::Retry {
            error: taskq_core::TaskFailure::new("boom", "first"),
            run_at: Utc::now(),
        },
        Transition::Start {
            lease_until: Utc::now(),
        },
        Transition::RequestCancel,
        Transition::Cancel { error: None },
    ];
    for step in steps {
        let change = step.plan(Snapshot::from(&t), Utc::now()).unwrap();
        t = b.store.apply("alice", t.id, &change).await.unwrap();
    }
    let kinds: Vec<EventKind> = t.history.iter().map(|e| e.kind).collect();
    use EventKind::*;
    assert_eq!(
        kinds,
        [Submitted, Started, RetryScheduled, Started, CancelRequested, Cancelled]
    );
    let seqs: Vec<u32> = t.history.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);
    assert_eq!(t.history[3].attempt, Some(2));
    assert_eq!((t.status, t.attempts, t.cancel_requested), (Status::Cancelled, 2, true));
    assert_eq!(b.store.get("alice", t.id).await.unwrap().unwrap().history, t.history);
}

async fn record_appends_a_note_to_a_terminal_task_at_the_expected_seq_only(b: Backends) {
    let new = NewTask::from_json(
        &json!({"type": "echo", "callback_url": "https://hooks.example.com/t?x=1"}),
        "",
    )
    .unwrap();
    let service = TaskService::new(b.store.clone(), b.queue.clone());
    let mut t = service.submit("alice", &new, None).await.unwrap().task;
    assert_eq!(t.callback_url.as_deref(), Some("https://hooks.example.com/t?x=1"));
    for step in [
        Transition::Start {
            lease_until: Utc::now(),
        },
        Transition::Succeed { result: json!(1) },
    ] {
        let change = step.plan(Snapshot::from(&t), Utc::now()).unwrap();
        t = b.store.apply("alice", t.id, &change).await.unwrap();
    }
    let note = |detail: &str| taskq_core::TaskEvent {
        seq: 0,
        at: Utc::now(),
        kind: EventKind::WebhookDelivered,
        from: None,
        to: None,
        attempt: Some(2),
        detail: Some(detail.into()),
    };
    let after = b.store.record("alice", t.id, 3, &note("first")).await.unwrap();
    assert_eq!(after.history.len(), 4);
    assert_eq!(after.history[3].seq, 4);
    assert_eq!(after.history[3].kind, EventKind::WebhookDelivered);
    assert_eq!(after.history[3].attempt, Some(2));
    // Nothing else moved: a terminal task stays as it was.
    let mut unchanged = after.clone();
    unchanged.history.truncate(3);
    assert_eq!(unchanged, t);
    // A racing append that expected the same place loses and sees the task as it is now.
    match b.store.record("alice", t.id, 3, &note("second")).await {
        Err(StoreError::Conflict { current: Some(now) }) => assert_eq!(now.history.len(), 4),
        other => panic!("expected a conflict with the current task, got {other:?}"),
    }
    let again = b.store.record("alice", t.id, 4, &note("second")).await.unwrap();
    assert_eq!(again.history[4].detail.as_deref(), Some("second"));
    assert_eq!(b.store.get("alice", t.id).await.unwrap().unwrap(), again);
    // No such task (or another user's): a conflict without a current task.
    let missing = b.store.record("bob", t.id, 5, &note("x")).await;
    assert!(
        matches!(missing, Err(StoreError::Conflict { current: None })),
        "{missing:?}"
    );
    // And it created nothing.
    assert!(b.store.get("bob", t.id).await.unwrap().is_none());
}

async fn list_pages_newest_first_with_filters(b: Backends) {
    let mut ids = Vec::new();
    for i in 0..9 {
        let p = ["high", "normal", "low"][i % 3];
        ids.push(submit(&b, "carol", p).await);
    }
    // Cancel two so the status index has something to find.
    for t in [&ids[1], &ids[4]] {
        let c = Transition::Cancel { error: None }
            .plan(Snapshot::from(t), Utc::now())
            .unwrap();
        b.store.apply("carol", t.id, &c).await.unwrap();
    }
    let all = |q: ListQuery| {
        let store = b.store.clone();
        async move {
            let mut q = q;
            let mut out = Vec::new();
            loop {
                let page = store.list("carol", &q).await.unwrap();
                assert!(page.tasks.len() <= q.limit as usize);
                out.extend(page.tasks.iter().map(|t| t.id));
                match page.next {
                    Some(n) => q.after = Some(n),
                    None => break,
                }
            }
            out
        }
    };
    let expect: Vec<_> = ids.iter().rev().map(|t| t.id).collect();
    assert_eq!(
        all(ListQuery {
            limit: 4,
            ..Default::default()
        })
        .await,
        expect
    );
    assert_eq!(
        all(ListQuery {
            limit: 100,
            ..Default::default()
        })
        .await,
        expect
    );
    let high: Vec<_> = ids
        .iter()
        .rev()
        .filter(|t| t.priority == Priority::High)
        .map(|t| t.id)
        .collect();
    assert_eq!(
        all(ListQuery {
            limit: 2,
            priority: Some(Priority::High),
            ..Default::default()
        })
        .await,
        high
    );
    let cancelled = vec![ids[4].id, ids[1].id];
    assert_eq!(
        all(ListQuery {
            limit: 1,
            status: Some(Status::Cancelled),
            ..Default::default()
        })
        .await,
        cancelled
    );
    let cancelled_normal = vec![ids[4].id, ids[1].id];
    assert_eq!(
        all(ListQuery {
            limit: 5,
            status: Some(Status::Cancelled),
            priority: Some(Priority::Normal),
            ..Default::default()
        })
        .await,
        cancelled_normal
    );
    assert!(all(ListQuery {
        limit: 5,
        status: Some(Status::Running),
        ..Default::default()
    })
    .await
    .is_empty());
}

async fn idempotency_keys_replay_or_report_a_different_request(b: Backends) {
    let service = TaskService::new(b.store.clone(), b.queue.clone());
    let a = new_task("echo", "normal");
    let first = service.submit("dave", &a, Some("key-1")).await.unwrap();
    assert!(!first.replayed);
    let again = service.submit("dave", &a, Some("key-1")).await.unwrap();
    assert!(again.replayed);
    assert_eq!(again.task.id, first.task.id);
    let other = new_task("sleep", "normal");
    assert!(matches!(
        service.submit("dave", &other, Some("key-1")).await,
        Err(taskq_core::ServiceError::IdempotencyMismatch)
    ));
    // Another user's identical key is unrelated.
    assert!(!service.submit("erin", &other, Some("key-1")).await.unwrap().replayed);
    // An expired claim frees the key.
    let t = submit(&b, "dave", "normal").await;
    let mut fresh = t.clone();
    fresh.id = taskq_core::TaskId::new();
    let expired = IdempotencyClaim {
        key: "key-2".into(),
        fingerprint: "f".into(),
        expires_at: Utc::now() - chrono::Duration::seconds(5),
    };
    assert!(matches!(
        b.store.create(&t.clone_with_new_id(), Some(&expired)).await.unwrap(),
        Created::New(_)
    ));
    let claim = IdempotencyClaim {
        key: "key-2".into(),
        fingerprint: "g".into(),
        expires_at: Utc::now() + chrono::Duration::seconds(60),
    };
    assert!(matches!(
        b.store.create(&fresh, Some(&claim)).await.unwrap(),
        Created::New(_)
    ));
}

/// The first request stored the task and failed to send its message (it got a 503); the
/// client replays with the same key. A single submission and a batch item both send the
/// message then, so the task does not wait for the sweeper's stranded rule.
async fn a_replay_sends_the_message_a_failed_first_request_did_not(b: Backends) {
    use taskq_core::faults::{FaultCounts, FaultPlan, FaultyQueue};
    let failing = Arc::new(FaultyQueue::new(
        b.queue.clone(),
        FaultPlan {
            send_fail: 1.0,
            ..FaultPlan::default()
        },
        Arc::new(FaultCounts::default()),
    ));
    let down = TaskService::new(b.store.clone(), failing);
    let up = TaskService::new(b.store.clone(), b.queue.clone());
    let single = new_task("echo", "low");
    assert!(matches!(
        down.submit("rae", &single, Some("single")).await,
        Err(taskq_core::ServiceError::NotEnqueued(..))
    ));
    let batch = new_task("sleep", "low");
    let first = down
        .submit_batch("rae", vec![Ok((batch.clone(), Some("batch".to_owned())))])
        .await;
    assert!(matches!(first[0], Err(taskq_core::ServiceError::NotEnqueued(..))));
    assert!(receive_all(&b, Priority::Low, 0).await.is_empty(), "nothing was sent");

    let replayed_single = up.submit("rae", &single, Some("single")).await.unwrap();
    let replayed_batch = up
        .submit_batch("rae", vec![Ok((batch, Some("batch".to_owned())))])
        .await
        .remove(0)
        .unwrap();
    assert!(replayed_single.replayed && replayed_batch.replayed);
    let mut got: Vec<_> = receive_all(&b, Priority::Low, 2)
        .await
        .iter()
        .map(|d| serde_json::from_str::<TaskMessage>(&d.body).unwrap().task_id)
        .collect();
    got.sort();
    let mut want = vec![replayed_single.task.id, replayed_batch.task.id];
    want.sort();
    assert_eq!(got, want, "each replay sent its task's message");
}

/// A redrive starts `attempts` over; the run count does not, so the (status, attempts) a worker
/// of the first run saw can come back, but its write still cannot land on the second run.
async fn a_retried_task_is_queued_again_with_a_message_and_a_stale_run_cannot_commit(b: Backends) {
    let service = TaskService::new(b.store.clone(), b.queue.clone());
    let t = submit(&b, "rita", "low").await;
    // The submit's message, received and dropped: the first run.
    assert_eq!(receive_all(&b, Priority::Low, 1).await.len(), 1);
    let step = |task: &taskq_core::Task, tr: Transition| tr.plan(Snapshot::from(task), Utc::now()).unwrap();
    let lease = || Transition::Start {
        lease_until: Utc::now() + chrono::Duration::seconds(60),
    };
    let first = b.store.apply("rita", t.id, &step(&t, lease())).await.unwrap();
    let error = taskq_core::TaskFailure::new("boom", "first run");
    let failed: taskq_core::Task = b
        .store
        .apply("rita", t.id, &step(&first, Transition::Fail { error }))
        .await
        .unwrap();
    assert_eq!(failed.status, Status::Failed);
    assert!(!all_active(&b, Priority::Low).await.iter().any(|a| a.id == t.id));

    assert!(matches!(
        service.retry("someone-else", t.id).await,
        Err(taskq_core::ServiceError::NotFound)
    ));
    let retried = service.retry("rita", t.id).await.unwrap();
    assert_eq!((retried.status, retried.attempts, retried.runs), (Status::Queued, 0, 1));
    assert_eq!((retried.error.as_ref(), retried.finished_at), (None, None));
    assert_eq!(retried.history.last().map(|e| e.kind), Some(EventKind::Retried));
    assert_eq!(b.store.get("rita", t.id).await.unwrap().unwrap(), retried);
    assert!(
        all_active(&b, Priority::Low).await.iter().any(|a| a.id == t.id),
        "back in the active index"
    );
    let messages = receive_all(&b, Priority::Low, 1).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(
        serde_json::from_str::<TaskMessage>(&messages[0].body).unwrap().task_id,
        t.id
    );
    // Only once: the task is queued now.
    assert!(service.retry("rita", t.id).await.is_err());

    // A worker of the first run, still holding its lease, cannot finish the second.
    let second = b.store.apply("rita", t.id, &step(&retried, lease())).await.unwrap();
    assert_eq!((second.attempts, second.runs), (1, 2));
    let late = step(&first, Transition::Succeed { result: json!("late") });
    assert!(matches!(
        b.store.apply("rita", t.id, &late).await,
        Err(StoreError::Conflict { .. })
    ));
}

async fn a_stale_worker_from_before_a_redrive_cannot_commit_onto_the_new_run(b: Backends) {
    let t = submit(&b, "sol", "normal").await;
    let step = |task: &taskq_core::Task, tr: Transition| tr.plan(Snapshot::from(task), Utc::now()).unwrap();
    let lease = || Transition::Start {
        lease_until: Utc::now() + chrono::Duration::seconds(60),
    };
    let stale = b.store.apply("sol", t.id, &step(&t, lease())).await.unwrap();
    let dead = b
        .store
        .apply("sol", t.id, &step(&stale, Transition::Dead { detail: "dlq".into() }))
        .await
        .unwrap();
    let revived = b
        .store
        .apply("sol", t.id, &step(&dead, Transition::Revive))
        .await
        .unwrap();
    let second = b.store.apply("sol", t.id, &step(&revived, lease())).await.unwrap();
    assert_eq!(
        (second.status, second.attempts),
        (stale.status, stale.attempts),
        "same (status, attempts)"
    );
    assert_eq!((stale.runs, second.runs), (1, 2));
    let late = step(
        &stale,
        Transition::Succeed {
            result: json!("from the first run"),
        },
    );
    assert!(matches!(
        b.store.apply("sol", t.id, &late).await,
        Err(StoreError::Conflict { current: Some(_) })
    ));
    let now = b.store.get("sol", t.id).await.unwrap().unwrap();
    assert_eq!((now.status, now.result), (Status::Running, None));
}

/// The write landed, its response was lost and the SDK sent it again: the retry's condition
/// fails against the write's own result. Every store call must read that as success: a keyless
/// create (else a 503 and a second task from the client's retry), a keyed one (else "replayed"),
/// a start (else the worker backs off from its own lease) and an end-of-attempt write.
async fn a_write_retried_after_a_lost_response_is_its_own_success(b: Backends) {
    use taskq_core::faults::{FaultCounts, FaultPlan, FaultyStore};
    let counts = Arc::new(FaultCounts::default());
    let store: Arc<dyn TaskStore> = Arc::new(FaultyStore::new(
        b.store.clone(),
        FaultPlan {
            store_retry_after_write: 1.0,
            ..FaultPlan::default()
        },
        counts.clone(),
    ));
    let service = TaskService::new(store.clone(), b.queue.clone());
    let keyless = service.submit("lou", &new_task("echo", "high"), None).await.unwrap();
    assert!(!keyless.replayed);
    let keyed = service
        .submit("lou", &new_task("echo", "high"), Some("k1"))
        .await
        .unwrap();
    assert!(!keyed.replayed, "the first request's own write is not a replay");
    let page = b
        .store
        .list(
            "lou",
            &ListQuery {
                limit: 10,
                ..ListQuery::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(page.tasks.len(), 2, "one task per request");

    let t = keyless.task;
    let start = Transition::Start {
        lease_until: Utc::now() + chrono::Duration::seconds(60),
    }
    .plan(Snapshot::from(&t), Utc::now())
    .unwrap();
    let running = store.apply("lou", t.id, &start).await.unwrap();
    assert_eq!((running.status, running.attempts), (Status::Running, 1));
    let done = Transition::Succeed { result: json!(1) }
        .plan(Snapshot::from(&running), Utc::now())
        .unwrap();
    assert_eq!(store.apply("lou", t.id, &done).await.unwrap().status, Status::Succeeded);
    assert!(
        counts
            .store_retries_after_write
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 4
    );
}

/// DynamoDB refuses an item over 400 KB ("Item size has exceeded the maximum allowed size"),
/// and so must the embedded store: a test of item growth on a store without the limit proves
/// nothing. The refusal is `ItemTooLarge` (not "unavailable": retrying cannot help), and the
/// task is left as it was.
async fn a_write_past_400_kb_is_refused_as_too_large(b: Backends) {
    let service = TaskService::new(b.store.clone(), b.queue.clone());
    // A 250 KB payload has an item of its own; the task's item holds the result and history.
    let big = NewTask::from_json(&json!({"type": "echo", "payload": "p".repeat(250_000)}), "").unwrap();
    let t = service.submit("max", &big, None).await.unwrap().task;
    let running = b
        .store
        .apply(
            "max",
            t.id,
            &Transition::Start {
                lease_until: Utc::now() + chrono::Duration::seconds(60),
            }
            .plan(Snapshot::from(&t), Utc::now())
            .unwrap(),
        )
        .await
        .unwrap();
    let too_big = Transition::Succeed {
        result: json!("r".repeat(405_000)),
    }
    .plan(Snapshot::from(&running), Utc::now())
    .unwrap();
    match b.store.apply("max", t.id, &too_big).await {
        Err(StoreError::ItemTooLarge) => {}
        Err(other) => panic!("expected ItemTooLarge, got {other:?}"),
        Ok(task) => panic!("a {} KB item was written", task.item_bytes() / 1000),
    }
    if !b.refusals_apply_nothing {
        return;
    }
    assert!(
        b.store.get("max", t.id).await.unwrap().unwrap() == running,
        "the refused write changed the task"
    );
    // A result that fits still lands (with the payload it would not fit one item).
    let fits = Transition::Succeed {
        result: json!("r".repeat(200_000)),
    }
    .plan(Snapshot::from(&running), Utc::now())
    .unwrap();
    assert_eq!(
        b.store.apply("max", t.id, &fits).await.unwrap().status,
        Status::Succeeded
    );
}

/// A re-send moves neither status, attempts nor runs; it is conditioned on the `updated_at` its
/// caller read, so of two sweeps that read the same task, one records the re-send (and sends)
/// and the other's write fails. Its own retry after a lost response still counts as applied.
async fn two_sweeps_racing_on_a_resend_write_once(b: Backends) {
    let t = submit(&b, "rex", "normal").await;
    let resend = || {
        Transition::Resend {
            reason: "stranded".into(),
        }
        .plan(Snapshot::from(&t), Utc::now())
        .unwrap()
    };
    let (first, second) = (resend(), resend());
    let applied = b.store.apply("rex", t.id, &first).await.unwrap();
    assert!(matches!(
        b.store.apply("rex", t.id, &second).await,
        Err(StoreError::Conflict { current: Some(_) })
    ));
    assert_eq!(b.store.apply("rex", t.id, &first).await.unwrap(), applied);
    let now = b.store.get("rex", t.id).await.unwrap().unwrap();
    let resent = now
        .history
        .iter()
        .filter(|e| e.kind == EventKind::MessageResent)
        .count();
    assert_eq!(resent, 1);
}

trait CloneWithNewId {
    fn clone_with_new_id(&self) -> Self;
}
impl CloneWithNewId for taskq_core::Task {
    fn clone_with_new_id(&self) -> Self {
        let mut t = self.clone();
        t.id = taskq_core::TaskId::new();
        t
    }
}

/// A payload too big to stay in the task's item (DynamoDB keeps it in an item of its own, so a
/// state change does not pay for it again) comes back whole from get, list, a state change, a
/// conflict, a keyed replay and a retried create; a small one next to it stays as it was.
async fn a_large_payload_comes_back_from_every_read_and_write(b: Backends) {
    let service = TaskService::new(b.store.clone(), b.queue.clone());
    let big = json!({"blob": "b".repeat(10_000), "n": [1, 2.5, null]});
    let new = NewTask::from_json(&json!({"type": "echo", "payload": big}), "").unwrap();
    let t = service.submit("lena", &new, Some("big-key")).await.unwrap().task;
    assert_eq!(t.payload, big);
    // A create retried after its response was lost is the task it created, payload included.
    match b.store.create(&t, None).await {
        Ok(Created::New(again)) => assert!(again.payload == big, "the payload came back"),
        _ => panic!("expected the task the first try created"),
    }
    let small = submit(&b, "lena", "normal").await;
    assert!(
        b.store.get("lena", t.id).await.unwrap().unwrap() == t,
        "get returns the task whole"
    );
    let page = b
        .store
        .list(
            "lena",
            &ListQuery {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(
        page.tasks == vec![small.clone(), t.clone()],
        "list returns both tasks whole"
    );
    // A keyed replay answers with the stored task, payload included.
    let replay = service.submit("lena", &new, Some("big-key")).await.unwrap();
    assert!(replay.task.payload == big, "the payload came back");
    let start = Transition::Start {
        lease_until: Utc::now() + chrono::Duration::seconds(60),
    }
    .plan(Snapshot::from(&t), Utc::now())
    .unwrap();
    let running = b.store.apply("lena", t.id, &start).await.unwrap();
    assert!(running.payload == big, "the payload came back");
    // The same start planned again (another delivery, its own token) finds the task moved on.
    let again = Transition::Start {
        lease_until: Utc::now() + chrono::Duration::seconds(60),
    }
    .plan(Snapshot::from(&t), Utc::now())
    .unwrap();
    match b.store.apply("lena", t.id, &again).await {
        Err(StoreError::Conflict { current: Some(now) }) => assert!(now.payload == big, "the payload came back"),
        _ => panic!("expected a conflict carrying the task"),
    }
}

fn message(user: &str, p: Priority) -> TaskMessage {
    TaskMessage {
        user_id: user.into(),
        task_id: taskq_core::TaskId::new(),
        priority: p,
        timeout_seconds: 60,
        run_at: None,
    }
}

async fn receive_all(b: &Backends, p: Priority, want: usize) -> Vec<taskq_core::Delivery> {
    // Real SQS may return fewer than asked even when more wait: loop until `want` or a quiet poll.
    let mut out = Vec::new();
    for _ in 0..20 {
        let got = b.queue.receive(p, 10, Duration::from_millis(500)).await.unwrap();
        if got.is_empty() && out.len() >= want {
            break;
        }
        out.extend(got);
        if out.len() >= want {
            break;
        }
    }
    out
}

async fn queue_sends_receives_and_deletes(b: Backends) {
    let m = message("frank", Priority::High);
    b.queue.send(&m, Duration::ZERO).await.unwrap();
    let got = receive_all(&b, Priority::High, 1).await;
    assert_eq!(got.len(), 1);
    let parsed: TaskMessage = serde_json::from_str(&got[0].body).unwrap();
    assert_eq!(parsed, m);
    assert_eq!(got[0].receive_count, 1);
    assert_eq!(
        got[0].group_id.as_deref(),
        Some("frank"),
        "MessageGroupId is the user (fair queues)"
    );
    assert!(
        b.queue
            .receive(Priority::Normal, 10, Duration::ZERO)
            .await
            .unwrap()
            .is_empty(),
        "other priorities are other queues"
    );
    b.queue.delete(Priority::High, &got[0].receipt).await.unwrap();
    b.queue
        .change_visibility(Priority::High, &got[0].receipt, Duration::ZERO)
        .await
        .ok();
    assert!(b
        .queue
        .receive(Priority::High, 10, Duration::from_millis(1200))
        .await
        .unwrap()
        .is_empty());
}

async fn queue_redelivers_after_visibility_and_counts_receives(b: Backends) {
    b.queue
        .send(&message("gina", Priority::Normal), Duration::ZERO)
        .await
        .unwrap();
    let first = receive_all(&b, Priority::Normal, 1).await;
    assert!(
        b.queue
            .receive(Priority::Normal, 10, Duration::ZERO)
            .await
            .unwrap()
            .is_empty(),
        "in flight: invisible"
    );
    b.queue
        .change_visibility(Priority::Normal, &first[0].receipt, Duration::from_secs(1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = receive_all(&b, Priority::Normal, 1).await;
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].message_id, first[0].message_id);
    assert_eq!(second[0].receive_count, 2);
    assert_ne!(second[0].receipt, first[0].receipt);
}

async fn queue_dead_letters_after_max_receives(b: Backends) {
    b.queue
        .send(&message("hank", Priority::Low), Duration::ZERO)
        .await
        .unwrap();
    for _ in 0..MAX_RECEIVES {
        let got = receive_all(&b, Priority::Low, 1).await;
        assert_eq!(got.len(), 1);
        b.queue
            .change_visibility(Priority::Low, &got[0].receipt, Duration::ZERO)
            .await
            .unwrap();
    }
    assert!(b
        .queue
        .receive(Priority::Low, 10, Duration::from_millis(500))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(b.queue.dead_letter_depth(Priority::Low).await.unwrap(), 1);
}

async fn queue_delays_messages(b: Backends) {
    b.queue
        .send(&message("ivy", Priority::High), Duration::from_secs(2))
        .await
        .unwrap();
    assert!(b
        .queue
        .receive(Priority::High, 10, Duration::ZERO)
        .await
        .unwrap()
        .is_empty());
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(receive_all(&b, Priority::High, 1).await.len(), 1);
}

async fn queue_batches_across_priorities(b: Backends) {
    let messages: Vec<_> = (0..25)
        .map(|i| (message("jo", Priority::ALL[i % 3]), Duration::ZERO))
        .collect();
    let results = b.queue.send_batch(&messages).await;
    assert_eq!(results.len(), 25);
    assert!(results.iter().all(Result::is_ok));
    for (i, p) in Priority::ALL.iter().enumerate() {
        let want = (0..25).filter(|n| n % 3 == i).count();
        let got = receive_all(&b, *p, want).await;
        assert_eq!(got.len(), want, "{p}");
    }
}

async fn queue_rejects_a_stale_receipt(b: Backends) {
    b.queue
        .send(&message("kim", Priority::Normal), Duration::ZERO)
        .await
        .unwrap();
    let got = receive_all(&b, Priority::Normal, 1).await;
    b.queue.delete(Priority::Normal, &got[0].receipt).await.unwrap();
    assert!(b
        .queue
        .change_visibility(Priority::Normal, &got[0].receipt, Duration::from_secs(5))
        .await
        .is_err_and(|e| matches!(e, taskq_core::QueueError::InvalidReceipt)));
}

/// SQS refuses a `MessageGroupId` over 128 characters or outside ASCII alphanumerics and
/// punctuation, and a delay over 900 s, with `InvalidParameterValue`. Every backend refuses the
/// same, as `QueueError::Invalid` (not "unavailable", not "invalid receipt"), and a batch refuses
/// only the bad entries.
async fn queue_refuses_what_sqs_refuses_as_invalid(b: Backends) {
    use taskq_core::QueueError;
    let long = "x".repeat(129);
    for group in [long.as_str(), "with space", "José", "tab\there", ""] {
        let e = b
            .queue
            .send(&message(group, Priority::Normal), Duration::ZERO)
            .await
            .unwrap_err();
        assert!(matches!(e, QueueError::Invalid(_)), "{group:?}: {e:?}");
    }
    let e = b
        .queue
        .send(&message("ok-user", Priority::Normal), Duration::from_secs(901))
        .await
        .unwrap_err();
    assert!(matches!(e, QueueError::Invalid(_)), "delay 901 s: {e:?}");
    // The longest and most punctuated group id SQS takes goes through.
    let edge = format!("{}{}", "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~", "y".repeat(96));
    assert_eq!(edge.len(), 128);
    b.queue
        .send(&message(&edge, Priority::Normal), Duration::from_secs(900))
        .await
        .unwrap();
    let results = b
        .queue
        .send_batch(&[
            (message("fine", Priority::High), Duration::ZERO),
            (message("not fine", Priority::High), Duration::ZERO),
            (message("also-fine", Priority::High), Duration::ZERO),
        ])
        .await;
    assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
    assert!(matches!(results[1], Err(QueueError::Invalid(_))), "{results:?}");
    assert_eq!(receive_all(&b, Priority::High, 2).await.len(), 2);
}

async fn all_active(b: &Backends, p: Priority) -> Vec<taskq_core::ActiveTask> {
    let mut out = Vec::new();
    for shard in 0..ACTIVE_SHARDS {
        let mut q = ActiveQuery {
            priority: p,
            shard,
            limit: 2,
            after: None,
        };
        loop {
            let page = b.store.active(&q).await.unwrap();
            assert!(page.tasks.windows(2).all(|w| w[0].id < w[1].id), "oldest first");
            out.extend(page.tasks);
            match page.next {
                Some(n) => q.after = Some(n),
                None => break,
            }
        }
    }
    out.sort_by_key(|t| t.id);
    out
}

async fn active_index_holds_unfinished_tasks_only(b: Backends) {
    let mut tasks = Vec::new();
    for user in ["u1", "u2", "u3", "u4", "u5", "u6"] {
        tasks.push(submit(&b, user, "high").await);
    }
    submit(&b, "u1", "low").await;
    // One finished, one running, one dead.
    let now = Utc::now();
    let c = Transition::Cancel { error: None }
        .plan(Snapshot::from(&tasks[0]), now)
        .unwrap();
    b.store.apply("u1", tasks[0].id, &c).await.unwrap();
    let c = Transition::Start { lease_until: now }
        .plan(Snapshot::from(&tasks[1]), now)
        .unwrap();
    let running = b.store.apply("u2", tasks[1].id, &c).await.unwrap();
    let c = Transition::Dead { detail: "dlq".into() }
        .plan(Snapshot::from(&tasks[2]), now)
        .unwrap();
    let dead = b.store.apply("u3", tasks[2].id, &c).await.unwrap();

    let active = all_active(&b, Priority::High).await;
    let ids: Vec<_> = active.iter().map(|t| t.id).collect();
    assert_eq!(ids, [tasks[1].id, tasks[3].id, tasks[4].id, tasks[5].id]);
    let r = &active[0];
    assert_eq!((r.status, r.attempts, r.user_id.as_str()), (Status::Running, 1, "u2"));
    assert_eq!(r.lease_until, running.lease_until);
    assert_eq!(r.message().task_id, running.id);
    assert_eq!(all_active(&b, Priority::Low).await.len(), 1);

    // A redriven task joins the index again.
    let c = Transition::Revive.plan(Snapshot::from(&dead), Utc::now()).unwrap();
    let revived = b.store.apply("u3", dead.id, &c).await.unwrap();
    assert_eq!((revived.status, revived.attempts), (Status::Queued, 0));
    assert!(all_active(&b, Priority::High).await.iter().any(|t| t.id == dead.id));
}

async fn dead_letter(b: &Backends, p: Priority, m: &TaskMessage) {
    b.queue.send(m, Duration::ZERO).await.unwrap();
    for _ in 0..MAX_RECEIVES {
        let got = receive_all(b, p, 1).await;
        b.queue
            .change_visibility(p, &got[0].receipt, Duration::ZERO)
            .await
            .unwrap();
    }
    assert!(b
        .queue
        .receive(p, 10, Duration::from_millis(300))
        .await
        .unwrap()
        .is_empty());
}

async fn dead_letters_are_received_and_redriven(b: Backends) {
    let m = message("lee", Priority::Normal);
    dead_letter(&b, Priority::Normal, &m).await;
    // Dead-letter receives are short polls: SQS may answer one with nothing while a message
    // waits (so does the embedded queue), so a reader asks again.
    let mut dead = Vec::new();
    for _ in 0..50 {
        dead = b
            .queue
            .receive_dead_letters(Priority::Normal, 10, Duration::from_secs(30))
            .await
            .unwrap();
        if !dead.is_empty() {
            break;
        }
    }
    assert_eq!(dead.len(), 1);
    assert_eq!(serde_json::from_str::<TaskMessage>(&dead[0].body).unwrap(), m);
    assert!(
        b.queue
            .receive_dead_letters(Priority::Normal, 10, Duration::from_secs(30))
            .await
            .unwrap()
            .is_empty(),
        "received dead letters are hidden"
    );
    let path = b.queue.redrive(Priority::Normal, &dead).await.unwrap();
    eprintln!("redrive path: {path:?}");
    assert!(matches!(
        path,
        RedrivePath::Memory | RedrivePath::ReceiveAndSend | RedrivePath::StartMessageMoveTask
    ));
    let back = receive_all(&b, Priority::Normal, 1).await;
    assert_eq!(back.len(), 1, "the message is back on its queue");
    assert_eq!(serde_json::from_str::<TaskMessage>(&back[0].body).unwrap(), m);
    assert_eq!(back[0].group_id.as_deref(), Some("lee"));
    assert_eq!(b.queue.dead_letter_depth(Priority::Normal).await.unwrap(), 0);
}

async fn queue_stats_count_visible_in_flight_delayed_and_dead(b: Backends) {
    let p = Priority::Low;
    dead_letter(&b, p, &message("max", p)).await;
    for _ in 0..3 {
        b.queue.send(&message("max", p), Duration::ZERO).await.unwrap();
    }
    b.queue.send(&message("max", p), Duration::from_secs(60)).await.unwrap();
    let got = b.queue.receive(p, 1, Duration::from_millis(500)).await.unwrap();
    assert_eq!(got.len(), 1);
    let stats = b.queue.stats(p).await.unwrap();
    assert_eq!(
        stats,
        taskq_core::QueueStats {
            visible: 2,
            in_flight: 1,
            delayed: 1,
            dead_letters: 1
        }
    );
}
