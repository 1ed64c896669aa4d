//! The fault-injection end-to-end test: 2,000 tasks through the service, the emulated event
//! source mappings, the worker and the sweeper, with faults injected into every port call, on
//! the embedded backends and on moto; clients cancel queued and running tasks, an operator
//! redrives the dead-letter queues while workers and sweeps run, some tasks are scheduled a
//! minute or more ahead, and some workers stall past their lease before writing an outcome.
//! At the end every task is terminal, none is lost, each run has one terminal transition, no
//! handler ran twice under one run number or on a task that was terminal, a task whose last
//! handler run succeeded (and was written) ended `succeeded`, and every history is a valid
//! path of the state machine.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{json, Value};
use taskq_core::faults::FaultPlan;
use taskq_core::memory::{MemoryQueueConfig, MemoryTaskQueue, MemoryTaskStore};
use taskq_core::transition::is_valid_step;
use taskq_core::{
    ListQuery, NewTask, Priority, ServiceError, Status, Task, TaskId, TaskMessage, TaskQueue, TaskService, TaskStore,
};
use taskq_local::{start, Backend, EventSourceConfig, LocalOptions, SweeperConfig};
use taskq_worker::{HandlerError, Registry, TaskContext, TaskHandler, WorkerConfig};

/// Tasks per run on the embedded backends; `TASKQ_FAULT_TASKS` overrides it (scripts/bench runs
/// 10,000).
const TASKS: usize = 2000;
/// Tasks per run on moto, which serialises every DynamoDB request (scripts/moto_server.py):
/// fewer, so the test command stays within its time.
const MOTO_TASKS: usize = 1000;

fn tasks_from_env(default: usize) -> usize {
    std::env::var("TASKQ_FAULT_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
const USERS: usize = 10;
/// Receives before a message is dead-lettered: low, so the DLQ path is exercised too.
const MAX_RECEIVES: u32 = 8;

/// Every handler run per task: its run number and whether it succeeded.
type Runs = Arc<Mutex<HashMap<TaskId, Vec<(u32, bool)>>>>;

/// Records every handler run per task around the real handler.
struct Counted {
    inner: Arc<dyn TaskHandler>,
    runs: Runs,
}

#[async_trait]
impl TaskHandler for Counted {
    async fn run(&self, ctx: TaskContext) -> Result<Value, HandlerError> {
        let (id, run) = (ctx.task.id, ctx.task.runs);
        // Recorded before it runs (a panicking handler never returns), marked when it succeeds.
        self.runs.lock().unwrap().entry(id).or_default().push((run, false));
        let result = self.inner.run(ctx).await;
        if result.is_ok() {
            if let Some(r) = self
                .runs
                .lock()
                .unwrap()
                .get_mut(&id)
                .and_then(|v| v.iter_mut().rfind(|r| r.0 == run))
            {
                r.1 = true;
            }
        }
        result
    }
}

struct Poison;
#[async_trait]
impl TaskHandler for Poison {
    async fn run(&self, _: TaskContext) -> Result<Value, HandlerError> {
        panic!("poison task")
    }
}

fn registry(runs: &Runs) -> Registry {
    let builtins = Registry::with_builtins();
    let mut r = Registry::new();
    for t in ["echo", "sleep", "fail"] {
        r.register(
            t,
            Counted {
                inner: builtins.get(t).unwrap(),
                runs: runs.clone(),
            },
        );
    }
    r.register(
        "poison",
        Counted {
            inner: Arc::new(Poison),
            runs: runs.clone(),
        },
    );
    r
}

fn plan(send_delay_max: Duration) -> FaultPlan {
    FaultPlan {
        store_throttle: 0.03,
        store_error_after_write: 0.02,
        store_retry_after_write: 0.03,
        crash_before_status_write: 0.03,
        send_fail: 0.03,
        send_duplicate: 0.05,
        send_delay_max,
        receive_fail: 0.01,
        delete_fail: 0.03,
        visibility_fail: 0.03,
        // Past the lease of a 1-second task (timeout + 1 s grace), and past stranded_after, so a
        // sweep may re-send, another delivery take over, or the dead-letter path act meanwhile.
        stall_before_status_write: 0.01,
        stall: Duration::from_millis(3500),
    }
}

fn options(backend: Backend, runs: &Runs, send_delay_max: Duration) -> LocalOptions {
    let mut o = LocalOptions::new("127.0.0.1:0".parse().unwrap(), "faults");
    o.backend = backend;
    // These tests drive load through one user; rate limits have tests of their own.
    o.policy =
        taskq_local::RolePolicy::parse(Some(r#"{"default":{"per_second":100000,"burst":100000}}"#), None).unwrap();
    o.registry = Some(registry(runs));
    o.faults = Some(plan(send_delay_max));
    o.worker = WorkerConfig {
        retry_base: Duration::from_millis(50),
        retry_cap: Duration::from_millis(200),
        lease_grace: Duration::from_secs(1),
        cancel_poll: Duration::from_secs(1),
        ..WorkerConfig::default()
    };
    o.event_sources = EventSourceConfig {
        poll_wait: Duration::from_millis(300),
        function_timeout: Duration::from_secs(60),
        ..EventSourceConfig::default()
    };
    o.sweep_every = Some(Duration::from_secs(1));
    o.sweeper = SweeperConfig {
        stranded_after: Duration::from_secs(3),
        dead_letter_visibility: Duration::from_secs(30),
        ..SweeperConfig::default()
    };
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_tasks_survive_injected_faults() {
    let store = Arc::new(MemoryTaskStore::new());
    let queue = Arc::new(MemoryTaskQueue::new(MemoryQueueConfig {
        visibility_timeout: Duration::from_secs(2),
        max_receive_count: MAX_RECEIVES,
        ..MemoryQueueConfig::default()
    }));
    let backend = Backend::Ports {
        store: store.clone(),
        queue: queue.clone(),
    };
    let tasks = tasks_from_env(TASKS);
    run(
        backend,
        store,
        queue,
        Duration::from_millis(20),
        // Five minutes for the default run (tasks are scheduled up to 90 s ahead; it settles in
        // about 95 s on an idle 2-core machine, and the moto run shares the CPU), a minute more
        // per 2,000 tasks beyond it. Only a failure waits this long.
        Duration::from_secs(300 + 60 * (tasks.saturating_sub(TASKS) / 2000) as u64),
        9,
        Checks {
            tasks,
            atomic_store: true,
            clock_ordered: true,
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_tasks_survive_injected_faults() {
    let Some(endpoint) = taskq_aws::testing::endpoint("moto_tasks_survive_injected_faults") else {
        return;
    };
    // moto implements TransactWriteItems by copying every table it holds, so earlier tests'
    // tables would make each keyed submission slower: start from an empty server (cargo runs
    // test binaries one after another, and no other test in this binary uses moto).
    reqwest::Client::new()
        .post(format!("{endpoint}/moto-api/reset"))
        .send()
        .await
        .unwrap();
    let sdk = taskq_aws::testing::sdk_config(&endpoint).await;
    let mut plan = taskq_aws::bootstrap::Plan::named(&format!("faults{}", std::process::id()));
    plan.visibility_timeout_seconds = 2;
    plan.max_receive_count = MAX_RECEIVES;
    let config = taskq_aws::bootstrap::ensure(&sdk, &plan).await.unwrap();
    let (store, queue) = config.adapters_from(&sdk);
    let (store, queue): (Arc<dyn TaskStore>, Arc<dyn TaskQueue>) = (Arc::new(store), Arc::new(queue));
    let backend = Backend::Ports {
        store: store.clone(),
        queue: queue.clone(),
    };
    run(
        backend,
        store,
        queue,
        Duration::from_millis(5),
        Duration::from_secs(600),
        // Keyed clients on moto too (3 in 10: a keyed submission is a TransactWriteItems, and
        // moto copies every table it touched for each one, so they are slow there). scripts/test
        // runs moto through scripts/moto_server.py, which makes DynamoDB's item operations
        // atomic as in DynamoDB: with plain moto_server a cancelled transaction's rollback
        // erased other requests' writes, and two racing conditional writes could both pass.
        3,
        Checks {
            tasks: MOTO_TASKS,
            // Conditional writes are atomic on that server: the invariants are asserted, not
            // reported.
            atomic_store: true,
            // Event times are not checked for order here (see assert_valid_history).
            clock_ordered: false,
        },
    )
    .await;
}

async fn run(
    backend: Backend,
    store: Arc<dyn TaskStore>,
    queue: Arc<dyn TaskQueue>,
    send_delay_max: Duration,
    within: Duration,
    keyed_in_ten: usize,
    checks: Checks,
) {
    let Checks {
        tasks: task_count,
        atomic_store,
        clock_ordered,
    } = checks;
    quiet_poison_panics();
    let started = Instant::now();
    let runs: Runs = Arc::default();
    let server = start(options(backend, &runs, send_delay_max)).await.unwrap();
    // The client side goes through the same faulty ports as the server.
    let service = TaskService::new(server.store.clone(), server.queue.clone());

    // Poison messages: bodies that are no task message at all.
    for p in Priority::ALL {
        for i in 0..5 {
            let junk = TaskMessage {
                user_id: format!("junk-{i}"),
                task_id: TaskId::new(),
                priority: *p,
                timeout_seconds: 1,
                run_at: None,
            };
            queue.send(&junk, Duration::ZERO).await.unwrap();
        }
    }

    // Ten clients (one per user) submit concurrently.
    let mut clients = tokio::task::JoinSet::new();
    for u in 0..USERS {
        let service = service.clone();
        clients.spawn(async move { submit_as(&service, u, keyed_in_ten, task_count).await });
    }
    // An operator redrives every dead-letter queue every two seconds while all this runs.
    let redriving = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let redriver = tokio::spawn(redrive_while(
        server.store.clone(),
        server.queue.clone(),
        redriving.clone(),
    ));
    let mut known: Vec<(String, TaskId)> = Vec::new();
    let mut client_gave_up = 0;
    let mut submit_errors: HashMap<&'static str, u32> = HashMap::new();
    let mut cancels = Vec::new();
    while let Some(r) = clients.join_next().await {
        let outcome = r.unwrap();
        known.extend(outcome.known);
        client_gave_up += outcome.gave_up;
        for (kind, n) in outcome.errors {
            *submit_errors.entry(kind).or_default() += n;
        }
        cancels.extend(outcome.cancels);
    }
    known.sort();
    known.dedup();
    let submitted_in = started.elapsed();
    let mut cancelled_at_once: Vec<TaskId> = Vec::new();
    let mut cancel_outcomes: HashMap<&'static str, u32> = HashMap::new();
    for c in cancels {
        let (id, outcome) = c.await.unwrap();
        *cancel_outcomes.entry(outcome).or_default() += 1;
        if outcome == "cancelled" {
            cancelled_at_once.push(id);
        }
    }

    // Wait until the index of unfinished tasks is empty (cheap to poll); then stop the
    // redrives, let the last move land (moved messages revive their tasks), wait again, and
    // read everything.
    let deadline = Instant::now() + within;
    settle(store.as_ref(), deadline, within).await;
    redriving.store(false, std::sync::atomic::Ordering::Relaxed);
    let redrives = redriver.await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    settle(store.as_ref(), deadline, within).await;
    let tasks = all_tasks(store.as_ref()).await;
    assert!(
        tasks.iter().all(|t| t.status.is_terminal()),
        "the index and the tasks disagree"
    );
    let settled_in = started.elapsed();

    // None lost: every id a client was given is in the store (and, above, terminal).
    let by_id: HashMap<TaskId, &Task> = tasks.iter().map(|t| (t.id, t)).collect();
    let lost: Vec<_> = known.iter().filter(|(_, id)| !by_id.contains_key(id)).collect();
    assert!(lost.is_empty(), "lost tasks: {lost:?}");

    let runs = runs.lock().unwrap().clone();
    let counts = server.faults.clone().expect("faults are injected");
    let crashed = counts.crashed_runs.lock().unwrap().clone();
    let stalled = counts.stalled_runs.lock().unwrap().clone();
    let mut statuses: HashMap<Status, u32> = HashMap::new();
    let (mut resent, mut takeovers, mut total_runs, mut max_seq) = (0, 0, 0, 0);
    let (mut revived, mut last_run_succeeded, mut last_run_unwritten) = (0, 0, 0);
    // Invariants that hold only on a store whose conditional writes are atomic.
    let mut races: Vec<String> = Vec::new();
    let mut check = |ok: bool, problem: String| {
        if !ok {
            assert!(!atomic_store, "{problem}");
            races.push(problem);
        }
    };
    for t in &tasks {
        *statuses.entry(t.status).or_default() += 1;
        let terminal_transitions = t
            .history
            .iter()
            .filter(|e| e.to.is_some_and(|s| s.is_terminal()))
            .count();
        // A redrive revives a dead task: each run of the task (between revives) ends once.
        let revives = t
            .history
            .iter()
            .filter(|e| e.kind == taskq_core::EventKind::Redriven)
            .count();
        revived += revives;
        check(
            terminal_transitions == 1 + revives,
            format!(
                "task {} has {terminal_transitions} terminal transitions and {revives} revives",
                t.id
            ),
        );
        let task_runs = runs.get(&t.id).cloned().unwrap_or_default();
        let mut numbers: Vec<u32> = task_runs.iter().map(|r| r.0).collect();
        numbers.sort();
        numbers.dedup();
        // A run number is one conditional start: a handler starts under it once, and only
        // from a non-terminal state (so never on a task already finished, unless revived).
        check(
            numbers.len() == task_runs.len() && numbers.last().is_none_or(|&n| n <= t.runs),
            format!(
                "task {}: handler runs {task_runs:?}, the task records {} runs",
                t.id, t.runs
            ),
        );
        if let Some(&(last, ok)) = task_runs.iter().max_by_key(|r| r.0) {
            if ok && !t.cancel_requested {
                if crashed.contains(&(t.id, last)) || stalled.contains(&(t.id, last)) {
                    // The worker died or froze past its lease before writing the outcome:
                    // another delivery may have failed the task meanwhile.
                    last_run_unwritten += 1;
                } else {
                    last_run_succeeded += 1;
                    check(
                        t.status == Status::Succeeded,
                        format!(
                            "task {}: its last run ({last}) succeeded, but it ended {}",
                            t.id, t.status
                        ),
                    );
                }
            }
        }
        total_runs += task_runs.len();
        if atomic_store {
            assert_valid_history(t, clock_ordered);
        }
        max_seq = max_seq.max(t.history.len());
        resent += t
            .history
            .iter()
            .filter(|e| e.kind == taskq_core::EventKind::MessageResent)
            .count();
        takeovers += t
            .history
            .iter()
            .filter(|e| e.kind == taskq_core::EventKind::LeaseExpired)
            .count();
        if t.task_type.as_str() == "echo" && t.status == Status::Succeeded {
            assert_eq!(t.result.as_ref(), Some(&t.payload));
        }
    }
    for id in &cancelled_at_once {
        let t = by_id[id];
        assert_eq!(t.status, Status::Cancelled, "task {id} was cancelled while queued");
    }
    let faults = server
        .faults
        .as_ref()
        .map(|f| serde_json::to_value(f.as_ref()).unwrap());
    eprintln!(
        "fault run: {} tasks in the store, {} known to clients, {} clients gave up after errors; \
         submitted in {submitted_in:?}, all terminal after {settled_in:?}\n  \
         statuses: {statuses:?}\n  handler runs: {total_runs}; sweeper re-sends: {resent}; lease takeovers: {takeovers}; \
         longest history: {max_seq} events\n  submit errors seen by clients: {submit_errors:?}\n  faults injected: {}\n  \
         cancels: {cancel_outcomes:?}; redrives: {redrives:?}; tasks revived: {revived}\n  \
         last run succeeded and written: {last_run_succeeded} (all ended succeeded); \
         last run succeeded, outcome never written (crash or stall): {last_run_unwritten}\n  \
         store races (non-atomic conditional writes, moto only): {races:?}",
        tasks.len(),
        known.len(),
        client_gave_up,
        faults.map(|f| f.to_string()).unwrap_or_default(),
    );
    assert!(tasks.len() >= task_count - client_gave_up as usize);
    assert!(statuses.get(&Status::Succeeded).copied().unwrap_or(0) as usize > task_count / 2);
    assert!(
        statuses.get(&Status::Failed).copied().unwrap_or(0) > 0,
        "poison tasks fail"
    );
    drop(server);
}

/// Poison tasks panic by design; their backtraces would bury the test's output.
fn quiet_poison_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<&str>() != Some(&"poison task") {
                default(info)
            }
        }));
    });
}

/// What one client did: the ids it was told, how many submissions it gave up on, the errors it
/// saw, and its cancel requests (each resolves to the task and what the cancel did).
struct ClientOutcome {
    known: Vec<(String, TaskId)>,
    gave_up: u32,
    errors: HashMap<&'static str, u32>,
    cancels: Vec<tokio::task::JoinHandle<(TaskId, &'static str)>>,
}

/// One user's client: submits its share of the tasks, retrying with an idempotency key
/// (`keyed_in_ten` in ten) or firing and forgetting (the rest), and cancels some of them later:
/// long sleeps while they run, and half the tasks scheduled a minute or more ahead while they
/// wait.
async fn submit_as(service: &TaskService, u: usize, keyed_in_ten: usize, task_count: usize) -> ClientOutcome {
    let user = format!("user-{u}");
    let mut out = ClientOutcome {
        known: Vec::new(),
        gave_up: 0,
        errors: HashMap::new(),
        cancels: Vec::new(),
    };
    for i in (u..task_count).step_by(USERS) {
        let priority = ["high", "normal", "low"][i % 3];
        // (body, cancel this long after submitting it)
        let (body, cancel_after) = match (i % 20, i % 100) {
            (0, _) => (
                json!({"type": "poison", "priority": priority, "max_attempts": 2, "timeout_seconds": 1}),
                None,
            ),
            (_, 6) => (
                json!({"type": "echo", "payload": {"i": i}, "priority": priority, "timeout_seconds": 1,
                       "delay_seconds": 60 + i % 31}),
                (i % 200 == 6).then(|| Duration::from_millis(fastrand::u64(0..20_000))),
            ),
            // More attempts than the queue's receive count: its message reaches the dead-letter
            // queue while the task waits for a retry; the sweeper marks it dead and the redrives
            // bring it back, until they stop.
            (_, 7) => (
                json!({"type": "fail", "payload": {"times": 100}, "priority": priority, "timeout_seconds": 1,
                       "max_attempts": 20}),
                None,
            ),
            (1 | 2, _) => (
                json!({"type": "fail", "payload": {"times": 1}, "priority": priority, "timeout_seconds": 1}),
                None,
            ),
            (3 | 4, _) => (
                json!({"type": "sleep", "payload": {"ms": 20}, "priority": priority, "timeout_seconds": 1}),
                None,
            ),
            (5, _) => (
                json!({"type": "sleep", "payload": {"ms": 1500}, "priority": priority, "timeout_seconds": 3}),
                Some(Duration::from_millis(fastrand::u64(0..2500))),
            ),
            _ => (
                json!({"type": "echo", "payload": {"i": i}, "priority": priority, "timeout_seconds": 1}),
                None,
            ),
        };
        let new = NewTask::from_json(&body, "").unwrap();
        let key = ((i / USERS) % 10 < keyed_in_ten).then(|| format!("k-{i}"));
        let mut tries = 0;
        loop {
            tries += 1;
            match service.submit(&user, &new, key.as_deref()).await {
                Ok(s) => {
                    out.known.push((user.clone(), s.task.id));
                    if let Some(after) = cancel_after {
                        out.cancels.push(tokio::spawn(cancel_later(
                            service.clone(),
                            user.clone(),
                            s.task.id,
                            after,
                        )));
                    }
                    break;
                }
                Err(e) => {
                    let last = key.is_none() || tries >= 5;
                    let kind = match &e {
                        ServiceError::NotEnqueued(id, _) => {
                            // The task exists and the client was told its id.
                            if last {
                                out.known.push((user.clone(), *id));
                            }
                            "not_enqueued"
                        }
                        ServiceError::Throttled(_) => "throttled",
                        _ => "store_failed",
                    };
                    *out.errors.entry(kind).or_default() += 1;
                    if last {
                        out.gave_up += 1;
                        break;
                    }
                }
            }
        }
    }
    out
}

/// Cancels a task after a while, trying again on store errors: "cancelled" (it was queued),
/// "requested" (it was running), "refused" (already finished) or "failed".
async fn cancel_later(service: TaskService, user: String, id: TaskId, after: Duration) -> (TaskId, &'static str) {
    tokio::time::sleep(after).await;
    for _ in 0..5 {
        match service.cancel(&user, id).await {
            Ok((_, true)) => return (id, "cancelled"),
            Ok((_, false)) => return (id, "requested"),
            Err(ServiceError::Conflict(_)) => return (id, "refused"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    (id, "failed")
}

/// Redrives every priority's dead-letter queue every two seconds until `go` is cleared.
/// Returns (messages moved, tasks revived by the redrive itself, calls that failed).
async fn redrive_while(
    store: Arc<dyn TaskStore>,
    queue: Arc<dyn TaskQueue>,
    go: Arc<std::sync::atomic::AtomicBool>,
) -> (usize, usize, usize) {
    let (mut moved, mut revived, mut failed) = (0, 0, 0);
    while go.load(std::sync::atomic::Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_secs(2)).await;
        for p in Priority::ALL {
            match taskq_core::admin::redrive(store.as_ref(), queue.as_ref(), *p).await {
                Ok(r) => {
                    moved += r.moved;
                    revived += r.revived;
                }
                Err(_) => failed += 1,
            }
        }
    }
    (moved, revived, failed)
}

/// Waits until the index of unfinished tasks is empty.
async fn settle(store: &dyn TaskStore, deadline: Instant, within: Duration) {
    loop {
        let unfinished = unfinished(store).await;
        if unfinished == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{unfinished} tasks still not terminal after {within:?}"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn unfinished(store: &dyn TaskStore) -> usize {
    let mut n = 0;
    for p in Priority::ALL {
        for shard in 0..taskq_core::ACTIVE_SHARDS {
            let mut q = taskq_core::ActiveQuery {
                priority: *p,
                shard,
                limit: 100,
                after: None,
            };
            loop {
                let page = store.active(&q).await.unwrap();
                n += page.tasks.len();
                match page.next {
                    Some(next) => q.after = Some(next),
                    None => break,
                }
            }
        }
    }
    n
}

async fn all_tasks(store: &dyn TaskStore) -> Vec<Task> {
    let mut out = Vec::new();
    for u in 0..USERS {
        let user = format!("user-{u}");
        let mut q = ListQuery {
            limit: 100,
            ..Default::default()
        };
        loop {
            let page = store.list(&user, &q).await.unwrap();
            out.extend(page.tasks);
            match page.next {
                Some(n) => q.after = Some(n),
                None => break,
            }
        }
    }
    out
}

/// `clock_ordered`: also check that events' times never go back. An event's time is when its
/// writer planned it; a write that is slow to land (moto serialises every DynamoDB request, and
/// under load a queue of them builds) can land after one planned later by another writer when
/// both conditions hold in either order (a worker's start and a sweeper's re-send of a queued
/// task). `seq` is the order; times are checked where planning and writing are adjacent.
/// What a run asserts besides no task lost and every task terminal.
struct Checks {
    /// How many tasks the clients submit.
    tasks: usize,
    /// One terminal transition per task, runs <= attempts, valid histories (else reported).
    atomic_store: bool,
    /// Event times never go back (see [`assert_valid_history`]).
    clock_ordered: bool,
}

fn assert_valid_history(t: &Task, clock_ordered: bool) {
    let mut state: Option<Status> = None;
    for (i, e) in t.history.iter().enumerate() {
        assert_eq!(e.seq as usize, i + 1, "task {}", t.id);
        if clock_ordered && i > 0 {
            assert!(e.at >= t.history[i - 1].at, "task {}: events out of time order", t.id);
        }
        if let Some(to) = e.to {
            match state {
                None => assert_eq!(to, Status::Queued),
                Some(from) => {
                    assert_eq!(
                        e.from,
                        Some(from),
                        "task {}: event {} from the wrong state",
                        t.id,
                        e.seq
                    );
                    assert!(is_valid_step(from, to), "task {}: {from} -> {to}", t.id);
                }
            }
            state = Some(to);
        }
    }
    assert_eq!(state, Some(t.status), "task {}: history ends where the task is", t.id);
}
