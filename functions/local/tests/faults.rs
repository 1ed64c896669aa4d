//! The fault-injection end-to-end test: 2,000 tasks through the service, the emulated event
//! source mappings, the worker and the sweeper, with faults injected into every port call, on
//! the embedded backends and on moto. At the end every task is terminal, none is lost, none has
//! two terminal transitions, no handler ran more often than its task's attempts, and every
//! history is a valid path of the state machine.

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

type Runs = Arc<Mutex<HashMap<TaskId, u32>>>;

/// Counts every handler run per task, then runs the real handler.
struct Counted {
    inner: Arc<dyn TaskHandler>,
    runs: Runs,
}

#[async_trait]
impl TaskHandler for Counted {
    async fn run(&self, ctx: TaskContext) -> Result<Value, HandlerError> {
        *self.runs.lock().unwrap().entry(ctx.task.id).or_default() += 1;
        self.inner.run(ctx).await
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
    }));
    let backend = Backend::Ports {
        store: store.clone(),
        queue: queue.clone(),
    };
    run(
        backend,
        store,
        queue,
        Duration::from_millis(20),
        Duration::from_secs(120),
        9,
        Checks {
            tasks: tasks_from_env(TASKS),
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
    let mut known: Vec<(String, TaskId)> = Vec::new();
    let mut client_gave_up = 0;
    let mut submit_errors: HashMap<&'static str, u32> = HashMap::new();
    while let Some(r) = clients.join_next().await {
        let (k, gave_up, errors) = r.unwrap();
        known.extend(k);
        client_gave_up += gave_up;
        for (kind, n) in errors {
            *submit_errors.entry(kind).or_default() += n;
        }
    }
    known.sort();
    known.dedup();
    let submitted_in = started.elapsed();

    // Wait until the index of unfinished tasks is empty (cheap to poll), then read everything.
    let deadline = Instant::now() + within;
    loop {
        let unfinished = unfinished(store.as_ref()).await;
        if unfinished == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{unfinished} tasks still not terminal after {within:?}"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
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
    let mut statuses: HashMap<Status, u32> = HashMap::new();
    let (mut resent, mut takeovers, mut total_runs, mut max_seq) = (0, 0, 0, 0);
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
        check(
            terminal_transitions == 1,
            format!("task {} has {terminal_transitions} terminal transitions", t.id),
        );
        let ran = runs.get(&t.id).copied().unwrap_or(0);
        check(
            ran <= t.attempts,
            format!("task {}: handler ran {ran} times in {} attempts", t.id, t.attempts),
        );
        total_runs += ran;
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
    let faults = server
        .faults
        .as_ref()
        .map(|f| serde_json::to_value(f.as_ref()).unwrap());
    eprintln!(
        "fault run: {} tasks in the store, {} known to clients, {} clients gave up after errors; \
         submitted in {submitted_in:?}, all terminal after {settled_in:?}\n  \
         statuses: {statuses:?}\n  handler runs: {total_runs}; sweeper re-sends: {resent}; lease takeovers: {takeovers}; \
         longest history: {max_seq} events\n  submit errors seen by clients: {submit_errors:?}\n  faults injected: {}\n  \
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

type ClientOutcome = (Vec<(String, TaskId)>, u32, HashMap<&'static str, u32>);

/// One user's client: submits its share of the tasks, retrying with an idempotency key
/// (`keyed_in_ten` in ten) or firing and forgetting (the rest). Returns the ids it was told, how
/// many it gave up on, and the errors it saw.
async fn submit_as(service: &TaskService, u: usize, keyed_in_ten: usize, task_count: usize) -> ClientOutcome {
    let user = format!("user-{u}");
    let mut known = Vec::new();
    let mut gave_up = 0;
    let mut errors: HashMap<&'static str, u32> = HashMap::new();
    for i in (u..task_count).step_by(USERS) {
        let priority = ["high", "normal", "low"][i % 3];
        let body = match i % 20 {
            0 => json!({"type": "poison", "priority": priority, "max_attempts": 2, "timeout_seconds": 1}),
            1 | 2 => json!({"type": "fail", "payload": {"times": 1}, "priority": priority, "timeout_seconds": 1}),
            3 | 4 => json!({"type": "sleep", "payload": {"ms": 20}, "priority": priority, "timeout_seconds": 1}),
            _ => json!({"type": "echo", "payload": {"i": i}, "priority": priority, "timeout_seconds": 1}),
        };
        let new = NewTask::from_json(&body, "").unwrap();
        let key = ((i / USERS) % 10 < keyed_in_ten).then(|| format!("k-{i}"));
        let mut tries = 0;
        loop {
            tries += 1;
            match service.submit(&user, &new, key.as_deref()).await {
                Ok(s) => {
                    known.push((user.clone(), s.task.id));
                    break;
                }
                Err(e) => {
                    let last = key.is_none() || tries >= 5;
                    let kind = match &e {
                        ServiceError::NotEnqueued(id, _) => {
                            // The task exists and the client was told its id.
                            if last {
                                known.push((user.clone(), *id));
                            }
                            "not_enqueued"
                        }
                        ServiceError::Throttled(_) => "throttled",
                        _ => "store_failed",
                    };
                    *errors.entry(kind).or_default() += 1;
                    if last {
                        gave_up += 1;
                        break;
                    }
                }
            }
        }
    }
    (known, gave_up, errors)
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
