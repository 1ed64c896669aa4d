//! Cold start of every taskq Lambda, side by side with a hello-world `lambda_runtime` binary.
//!
//! This program is a local Lambda Runtime API (the HTTP interface `lambda_runtime` polls). Each
//! round it execs every release binary in turn (in a shuffled order, so no function always runs
//! on a warmer machine than another) with the environment the SAM template gives it, with the
//! first event already waiting, and measures:
//!
//! - init: exec -> the runtime's first `GET /invocation/next` (main's wiring is done);
//! - first response: exec -> the `POST /invocation/{id}/response` of a realistic first event
//!   (an API Gateway create, an SQS batch of a real queued task, a schedule, a stream record).
//!
//! Then, per function, one long-lived process serves `--invocations` events in a row and its
//! peak RSS (`VmHWM` from /proc), warm handler durations and the CPU (user + system) of the
//! invocations after the first are read. Last, each function is
//! started with its AWS and Redis endpoints pointed at an unroutable address: reaching
//! `/next` proves that init does no network I/O.
//!
//! Needs a moto server (`--aws-endpoint`) and a redis-server (`--redis-url`); `scripts/bench`
//! starts both.

#[path = "../argv.rs"]
mod argv;
use argv::Argv;
use std::collections::VecDeque;
use std::path::{Path as FsPath, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use taskq_core::{NewTask, Priority, TaskQueue, TaskService};
use tokio::sync::mpsc;

const USAGE: &str = "\
coldstart: cold start, peak RSS and init network check of the taskq Lambda binaries

USAGE:
    coldstart --aws-endpoint URL --redis-url URL [--bin-dir DIR] [--events-dir DIR]
              [--rounds N] [--invocations N] [--only NAME,NAME] [--page-cache warm|cold]

OPTIONS:
    --aws-endpoint URL   moto server (DynamoDB + SQS) the functions talk to
    --redis-url URL      redis-server standing in for ElastiCache
    --bin-dir DIR        release binaries (default $CARGO_TARGET_DIR/release or target/release)
    --events-dir DIR     event fixtures (default events)
    --rounds N           cold starts per function (default 30)
    --invocations N      invocations of the long-lived process for peak RSS and CPU (default 200)
    --only NAMES         run only these functions (hello always runs: it is the baseline)
    --page-cache MODE    warm (default): every binary is dropped from the page cache once, before
                         the first round, so each is read back by the kernel's own exec path and
                         stays cached; cold: dropped before every exec, so each cold start reads
                         the binary from disk, as a new sandbox with nothing cached would
";

/// How long one step (init, one invocation) may take before the run is declared failed.
const STEP_TIMEOUT: Duration = Duration::from_secs(15);

// ------------------------------------------------------------------ the Runtime API

enum Signal {
    Next(Instant),
    Done {
        id: u64,
        at: Instant,
        ok: bool,
        body: Bytes,
    },
    InitError(Bytes),
}

#[derive(Clone)]
struct RuntimeApi {
    events: Arc<Mutex<VecDeque<(u64, String)>>>,
    served: Arc<Mutex<Vec<(u64, Instant)>>>,
    next_id: Arc<AtomicU64>,
    tx: mpsc::UnboundedSender<Signal>,
}

impl RuntimeApi {
    fn load(&self, events: Vec<String>) {
        let mut queue = self.events.lock().unwrap_or_else(|e| e.into_inner());
        queue.clear();
        for e in events {
            queue.push_back((self.next_id.fetch_add(1, Ordering::Relaxed), e));
        }
        self.served.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    fn served_at(&self, id: u64) -> Option<Instant> {
        let served = self.served.lock().unwrap_or_else(|e| e.into_inner());
        served.iter().find(|(i, _)| *i == id).map(|(_, at)| *at)
    }
}

async fn next(State(api): State<RuntimeApi>) -> Response {
    let at = Instant::now();
    // Take the event (or find none) before telling the harness: on a function's last GET /next
    // the harness kills it and loads the next function's events, and a request that had not
    // looked at the queue yet would take the next function's first event to a dead process
    // (seen as a rare "1 events served, 0 answered" stall of the next function).
    let event = api.events.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
    if let Some((id, _)) = &event {
        api.served.lock().unwrap_or_else(|e| e.into_inner()).push((*id, at));
    }
    let _ = api.tx.send(Signal::Next(at));
    let Some((id, body)) = event else {
        // Out of events: park the runtime (as Lambda freezes it) until the harness kills it.
        std::future::pending::<()>().await;
        return StatusCode::GONE.into_response();
    };
    let deadline_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
        + 60_000;
    let mut headers = HeaderMap::new();
    let mut set = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    };
    set("lambda-runtime-aws-request-id", id.to_string());
    set("lambda-runtime-deadline-ms", deadline_ms.to_string());
    set(
        "lambda-runtime-invoked-function-arn",
        "arn:aws:lambda:us-east-1:123456789012:function:bench".into(),
    );
    set(
        "lambda-runtime-trace-id",
        format!("Root=1-00000000-{id:024x};Parent=0000000000000001;Sampled=0"),
    );
    set("content-type", "application/json".into());
    (StatusCode::OK, headers, body).into_response()
}

async fn respond(State(api): State<RuntimeApi>, Path(id): Path<u64>, body: Bytes) -> StatusCode {
    let _ = api.tx.send(Signal::Done {
        id,
        at: Instant::now(),
        ok: true,
        body,
    });
    StatusCode::ACCEPTED
}

async fn fail(State(api): State<RuntimeApi>, Path(id): Path<u64>, body: Bytes) -> StatusCode {
    let _ = api.tx.send(Signal::Done {
        id,
        at: Instant::now(),
        ok: false,
        body,
    });
    StatusCode::ACCEPTED
}

async fn init_error(State(api): State<RuntimeApi>, body: Bytes) -> StatusCode {
    let _ = api.tx.send(Signal::InitError(body));
    StatusCode::ACCEPTED
}

// ------------------------------------------------------------------ a keep-alive front for moto

/// moto's server (werkzeug) answers every request with `Connection: close`, so an SDK client
/// talking to it opens a TCP connection per call: socket, connect, shutdown and close syscalls
/// and a new hyper connection each time, about a tenth of a worker's CPU in a profile. DynamoDB
/// and SQS keep connections open and the SDK reuses them. The functions therefore reach moto
/// through this proxy, which keeps their connections open (hyper's server default) and makes
/// the per-request connections to moto itself, in the harness's process, whose CPU is not
/// counted. Request signatures are not checked by moto, so the changed Host does not matter.
async fn keep_alive_front(upstream: String) -> Result<String, String> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .map_err(|e| e.to_string())?;
    let forward = move |request: axum::extract::Request| {
        let client = client.clone();
        let upstream = upstream.clone();
        async move {
            let (parts, body) = request.into_parts();
            let body = match axum::body::to_bytes(body, usize::MAX).await {
                Ok(b) => b,
                Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
            };
            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            let mut headers = parts.headers;
            headers.remove(axum::http::header::HOST);
            headers.remove(axum::http::header::CONNECTION);
            let sent = client
                .request(parts.method, format!("{upstream}{path}"))
                .headers(headers)
                .body(body)
                .send()
                .await;
            let reply = match sent {
                Ok(r) => r,
                Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
            };
            let status = reply.status();
            let mut headers = reply.headers().clone();
            headers.remove(axum::http::header::CONNECTION);
            headers.remove(axum::http::header::TRANSFER_ENCODING);
            match reply.bytes().await {
                Ok(body) => (status, headers, body).into_response(),
                Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
            }
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let app = Router::new().fallback(forward);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(format!("http://{addr}"))
}

// ------------------------------------------------------------------ the functions

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Hello,
    Api,
    Worker,
    Sweeper,
    Stream,
    Webhook,
}

impl Kind {
    const ALL: [Kind; 6] = [
        Kind::Hello,
        Kind::Api,
        Kind::Worker,
        Kind::Sweeper,
        Kind::Stream,
        Kind::Webhook,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Hello => "hello",
            Kind::Api => "taskq-api",
            Kind::Worker => "taskq-worker",
            Kind::Sweeper => "taskq-sweeper",
            Kind::Stream => "taskq-stream",
            Kind::Webhook => "taskq-webhook",
        }
    }

    /// Whether the handler's reply to the events this harness sends is a success.
    fn check(self, reply: &Value) -> Result<(), String> {
        let ok = match self {
            Kind::Hello => reply["hello"] == "world",
            Kind::Api => reply["statusCode"] == 202,
            Kind::Worker => reply["batchItemFailures"].as_array().is_some_and(|f| f.is_empty()),
            Kind::Sweeper => reply["errors"] == 0,
            Kind::Stream => reply["refreshed"].as_u64().is_some_and(|n| n > 0) && reply["unreadable"] == 0,
            Kind::Webhook => reply["batchItemFailures"].as_array().is_some_and(|f| f.is_empty()),
        };
        if ok {
            Ok(())
        } else {
            Err(format!("{} replied {reply}", self.name()))
        }
    }
}

/// What the harness needs to make realistic events: the moto resources and their adapters.
struct Fixtures {
    config: taskq_aws::AwsConfig,
    service: TaskService,
    queue: Arc<taskq_aws::SqsTaskQueue>,
    events_dir: PathBuf,
    aws_endpoint: String,
    redis_url: String,
    /// The webhook signing secret, created in moto's Secrets Manager.
    secret_arn: String,
}

impl Fixtures {
    fn read(&self, name: &str) -> Result<String, String> {
        let path = self.events_dir.join(name);
        std::fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))
    }

    /// `count` events for `kind`, each carrying `per_event` records where that means something.
    async fn events(&self, kind: Kind, count: usize, per_event: usize) -> Result<Vec<String>, String> {
        let mut out = Vec::with_capacity(count);
        for i in 0..count {
            out.push(match kind {
                Kind::Hello => json!({"bench": i}).to_string(),
                // The API Gateway HTTP API (v2) request of a create, JWT claims in its context.
                Kind::Api => self.read("api-create.json")?,
                Kind::Worker => self.worker_event(per_event).await?,
                Kind::Sweeper => self.read("sweeper-schedule.json")?,
                // Stream records of tasks without a callback URL: the sender reads and skips
                // them (a delivery would leave the machine: the Lambda build refuses loopback).
                Kind::Stream | Kind::Webhook => self.stream_event(per_event).await?,
            });
        }
        Ok(out)
    }

    /// Real queued tasks in moto, received from the normal queue as the event source mapping
    /// would receive them (real receipt handles), then deleted from the queue as the mapping
    /// does when the batch succeeds.
    async fn worker_event(&self, tasks: usize) -> Result<String, String> {
        for n in 0..tasks {
            let new =
                NewTask::from_json(&json!({"type": "echo", "payload": {"bench": n}}), "").map_err(|e| e.to_string())?;
            self.service
                .submit("bench-user", &new, None)
                .await
                .map_err(|e| format!("submitting to moto: {e}"))?;
        }
        let mut deliveries = Vec::new();
        while deliveries.len() < tasks {
            let got = self
                .queue
                .receive(Priority::Normal, tasks - deliveries.len(), Duration::from_secs(1))
                .await
                .map_err(|e| format!("receiving from moto: {e}"))?;
            if got.is_empty() {
                return Err("the normal queue in moto returned no message".into());
            }
            deliveries.extend(got);
        }
        for d in &deliveries {
            self.queue
                .delete(Priority::Normal, &d.receipt)
                .await
                .map_err(|e| format!("deleting from moto: {e}"))?;
        }
        let event = taskq_worker::sqs::event_from(Priority::Normal, deliveries);
        serde_json::to_string(&event).map_err(|e| e.to_string())
    }

    /// Stream records (INSERT) whose new images are real task items, in the shape of the
    /// AWS-published fixture.
    async fn stream_event(&self, records: usize) -> Result<String, String> {
        let fixture: Value = serde_json::from_str(&self.read("fixtures/example-dynamodb-event.json")?)
            .map_err(|e| format!("fixtures/example-dynamodb-event.json: {e}"))?;
        let template = fixture["Records"][0].clone();
        let mut out = Vec::with_capacity(records);
        for n in 0..records {
            let new =
                NewTask::from_json(&json!({"type": "echo", "payload": {"bench": n}}), "").map_err(|e| e.to_string())?;
            let task = self
                .service
                .submit("bench-user-stream", &new, None)
                .await
                .map_err(|e| format!("submitting to moto: {e}"))?
                .task;
            let item: serde_dynamo::Item = taskq_aws::task_to_image(&task).map_err(|e| e.to_string())?.into();
            let mut r = template.clone();
            r["eventName"] = json!("INSERT");
            r["dynamodb"]["NewImage"] = serde_json::to_value(item).map_err(|e| e.to_string())?;
            r["dynamodb"]["Keys"] =
                json!({"pk": {"S": format!("U#{}", task.user_id)}, "sk": {"S": format!("T#{}", task.id)}});
            out.push(r);
        }
        // The stream tasks went to the normal queue too: drain it so worker events stay fresh.
        loop {
            let got = self
                .queue
                .receive(Priority::Normal, 10, Duration::ZERO)
                .await
                .map_err(|e| format!("receiving from moto: {e}"))?;
            if got.is_empty() {
                break;
            }
            for d in got {
                let _ = self.queue.delete(Priority::Normal, &d.receipt).await;
            }
        }
        Ok(json!({"Records": out}).to_string())
    }

    /// The environment the SAM template's Globals and each function's own variables give it.
    fn env(&self, kind: Kind, runtime_api: &str, reachable: bool) -> Vec<(String, String)> {
        let (aws, redis) = if reachable {
            (self.aws_endpoint.clone(), self.redis_url.clone())
        } else {
            // TEST-NET-1: unroutable, so any connection attempt in init would hang or fail.
            ("http://192.0.2.1:9".to_owned(), "redis://192.0.2.1:9".to_owned())
        };
        let mut env: Vec<(String, String)> = vec![
            ("AWS_LAMBDA_RUNTIME_API", runtime_api.to_owned()),
            ("AWS_LAMBDA_FUNCTION_NAME", kind.name().to_owned()),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128".into()),
            ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".into()),
            ("AWS_LAMBDA_LOG_GROUP_NAME", format!("/aws/lambda/{}", kind.name())),
            ("AWS_LAMBDA_LOG_STREAM_NAME", "bench".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_DEFAULT_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "bench".into()),
            ("AWS_SECRET_ACCESS_KEY", "bench".into()),
            ("AWS_ENDPOINT_URL", aws),
            ("RUST_LOG", "info".into()),
            ("TASKQ_TABLE_NAME", self.config.table_name.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        for (i, p) in ["HIGH", "NORMAL", "LOW"].iter().enumerate() {
            env.push((format!("TASKQ_QUEUE_URL_{p}"), self.config.queues.queues[i].clone()));
            if let Some(dlq) = &self.config.queues.dead_letter[i] {
                env.push((format!("TASKQ_DLQ_URL_{p}"), dlq.clone()));
            }
        }
        if matches!(kind, Kind::Api | Kind::Stream) {
            env.push(("TASKQ_REDIS_URL".into(), redis));
        }
        if kind == Kind::Webhook {
            env.push(("TASKQ_WEBHOOK_SECRET_ARN".into(), self.secret_arn.clone()));
        }
        if kind == Kind::Api {
            // As the template sets it with the cache enabled (only `GET /v1/admin/cache` uses it).
            env.push(("TASKQ_CACHE_NAME".into(), "taskq-bench".into()));
            // The rate limiter runs (in Redis) but never refuses the harness's bursts.
            env.push((
                "TASKQ_RATE_LIMITS".into(),
                r#"{"default":{"per_second":100000,"burst":100000}}"#.into(),
            ));
        }
        env
    }
}

// ------------------------------------------------------------------ one process

struct Run {
    init: Duration,
    /// exec -> each response, in order.
    responses: Vec<Duration>,
    /// Handler durations: event served -> its response.
    handler: Vec<Duration>,
    vm_hwm_kib: Option<u64>,
    vm_rss_kib: Option<u64>,
    /// CPU (user + system, every thread) from the first response to the last: the warm
    /// invocations' CPU, which Lambda bills as duration at 128 MB.
    warm_cpu: Option<Duration>,
    /// Set when an invocation got no answer within STEP_TIMEOUT after init succeeded: the run
    /// stops there and is reported as a stall (seen with moto's development server, which now
    /// and then leaves a request unanswered), not silently dropped.
    stalled: Option<String>,
}

/// What `Harness::watch` saw: init, exec -> each response, handler durations, the CPU used up to
/// the first response, and why the run stopped early, if it did.
type Watched = (Duration, Vec<Duration>, Vec<Duration>, Option<Duration>, Option<String>);

struct Harness {
    api: RuntimeApi,
    rx: mpsc::UnboundedReceiver<Signal>,
    addr: String,
    bin_dir: PathBuf,
    log_dir: PathBuf,
    fixtures: Fixtures,
    /// Drop each binary from the page cache before it is exec'd.
    cold_page_cache: bool,
}

/// Drops `path`'s pages from the page cache. How a binary's pages got into the cache changes
/// its start: pages written by a copy or a build map differently from pages the kernel read
/// ahead for an exec (the same api binary measured 2.5 ms or 2.8 ms init depending on which).
/// Dropping every binary first gives all of them, hello included, the same history.
fn drop_from_page_cache(path: &FsPath) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    // SAFETY: posix_fadvise only reads the descriptor, which `file` keeps open for the call.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        return Err(format!("posix_fadvise({}): error {rc}", path.display()));
    }
    Ok(())
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// User + system CPU of process `pid` so far, all threads (dead ones included), from
/// /proc/PID/stat (fields 14 and 15, in clock ticks).
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf only reads a constant.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (per_second > 0).then(|| Duration::from_secs_f64(ticks as f64 / per_second as f64))
}

fn tail(path: &FsPath) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

impl Harness {
    fn binary(&self, kind: Kind) -> PathBuf {
        self.bin_dir.join(kind.name())
    }

    /// Execs `kind` with `events` waiting and serves them all; `None` events = init only.
    async fn run(&mut self, kind: Kind, events: Vec<String>, reachable: bool) -> Result<Run, String> {
        let expected = events.len();
        self.api.load(events);
        while self.rx.try_recv().is_ok() {}
        let log_path = self.log_dir.join(format!("{}.log", kind.name()));
        let log = std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
        let log_err = log.try_clone().map_err(|e| e.to_string())?;
        // std's Command, not tokio's: tokio's `process` feature would change the tokio the
        // functions are built with (features unify in one `cargo build`) and rebuild them all.
        if self.cold_page_cache {
            drop_from_page_cache(&self.binary(kind))?;
        }
        let mut command = std::process::Command::new(self.binary(kind));
        command
            .env_clear()
            .envs(self.fixtures.env(kind, &self.addr, reachable))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        let start = Instant::now();
        let mut child = command
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.binary(kind).display()))?;
        let pid = child.id();
        let result = self.watch(kind, start, expected, &mut child, &log_path).await;
        let hwm = status_kib(pid, "VmHWM:");
        let rss = status_kib(pid, "VmRSS:");
        let cpu_end = cpu_time(pid);
        let _ = child.kill();
        let _ = child.wait();
        result.map(|(init, responses, handler, cpu_first, stalled)| Run {
            init,
            responses,
            handler,
            vm_hwm_kib: hwm,
            vm_rss_kib: rss,
            warm_cpu: cpu_first.zip(cpu_end).map(|(first, end)| end.saturating_sub(first)),
            stalled,
        })
    }

    async fn watch(
        &mut self,
        kind: Kind,
        start: Instant,
        expected: usize,
        child: &mut std::process::Child,
        log: &FsPath,
    ) -> Result<Watched, String> {
        let mut init = None;
        let mut cpu_first = None;
        let mut responses = Vec::with_capacity(expected);
        let mut handler = Vec::with_capacity(expected);
        let mut quiet_since = Instant::now();
        let mut exit_check = tokio::time::interval(Duration::from_millis(20));
        loop {
            let signal = tokio::select! {
                s = self.rx.recv() => match s {
                    Some(s) => s,
                    None => return Err("runtime API stopped".into()),
                },
                _ = exit_check.tick() => {
                    if let Ok(Some(status)) = child.try_wait() {
                        return Err(format!("{} exited ({status}); log:\n{}", kind.name(), tail(log)));
                    }
                    if quiet_since.elapsed() > STEP_TIMEOUT {
                        let served = self.api.served.lock().unwrap_or_else(|e| e.into_inner()).len();
                        let message = format!(
                            "{}: nothing for {STEP_TIMEOUT:?} ({served} events served, {} answered); log:\n{}",
                            kind.name(),
                            responses.len(),
                            tail(log)
                        );
                        // A stall in init is a failure (init must not wait on anything); a
                        // stall in an invocation is reported with what was measured before it.
                        return match init {
                            Some(init) if expected > 0 => Ok((init, responses, handler, cpu_first, Some(message))),
                            _ => Err(message),
                        };
                    }
                    continue;
                }
            };
            quiet_since = Instant::now();
            match signal {
                Signal::Next(at) => {
                    if init.is_none() {
                        init = Some(at - start);
                    }
                    if responses.len() == expected {
                        break;
                    }
                }
                Signal::InitError(body) => {
                    return Err(format!(
                        "{} init error: {}; log:\n{}",
                        kind.name(),
                        String::from_utf8_lossy(&body),
                        tail(log)
                    ))
                }
                Signal::Done { id, at, ok, body } => {
                    let reply: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    if !ok {
                        return Err(format!("{} invocation error: {reply}", kind.name()));
                    }
                    kind.check(&reply)?;
                    if let Some(served) = self.api.served_at(id) {
                        handler.push(at - served);
                    }
                    responses.push(at - start);
                    if responses.len() == 1 {
                        cpu_first = cpu_time(child.id());
                    }
                }
            }
        }
        let init = init.ok_or("no GET /next")?;
        Ok((init, responses, handler, cpu_first, None))
    }
}

// ------------------------------------------------------------------ statistics and output

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn percentile(values: &[Duration], p: f64) -> Duration {
    let mut v = values.to_vec();
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v[i]
}

fn median(values: &[Duration]) -> Duration {
    percentile(values, 0.5)
}

struct Args {
    aws_endpoint: String,
    redis_url: String,
    bin_dir: PathBuf,
    events_dir: PathBuf,
    rounds: usize,
    invocations: usize,
    only: Option<Vec<String>>,
    cold_page_cache: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut argv = Argv::from_env();
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let args = Args {
        aws_endpoint: argv
            .value("--aws-endpoint")?
            .ok_or("--aws-endpoint URL is required (a moto server)")?,
        redis_url: argv
            .value("--redis-url")?
            .ok_or("--redis-url URL is required (a redis-server)")?,
        bin_dir: argv
            .value("--bin-dir")?
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(target).join("release")),
        events_dir: argv
            .value("--events-dir")?
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("events")),
        rounds: argv.number("--rounds", 30, usize::MAX)?,
        invocations: argv.number("--invocations", 200, usize::MAX)?,
        only: argv.value("--only")?.map(|v| v.split(',').map(str::to_owned).collect()),
        cold_page_cache: match argv.value("--page-cache")?.as_deref() {
            None | Some("warm") => false,
            Some("cold") => true,
            Some(other) => return Err(format!("--page-cache must be warm or cold, not {other:?}")),
        },
    };
    argv.finish()?;
    Ok(args)
}

async fn fixtures(args: &Args) -> Result<Fixtures, String> {
    std::env::set_var("AWS_ENDPOINT_URL", &args.aws_endpoint);
    for (k, v) in [
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "bench"),
        ("AWS_SECRET_ACCESS_KEY", "bench"),
    ] {
        if std::env::var_os(k).is_none() {
            std::env::set_var(k, v);
        }
    }
    let sdk = taskq_aws::AwsConfig::sdk_config().await;
    let mut plan = taskq_aws::bootstrap::Plan::named(&format!("taskq-bench-{}", std::process::id()));
    plan.visibility_timeout_seconds = 30;
    let config = taskq_aws::bootstrap::ensure(&sdk, &plan)
        .await
        .map_err(|e| format!("creating the table and queues in moto at {}: {e}", args.aws_endpoint))?;
    let (store, queue) = config.adapters_from(&sdk);
    let queue = Arc::new(queue);
    let secret_arn = aws_sdk_secretsmanager::Client::new(&sdk)
        .create_secret()
        .name(format!("taskq-bench-webhook-{}", std::process::id()))
        .secret_string("s".repeat(64))
        .send()
        .await
        .map_err(|e| format!("creating the webhook secret in moto: {e}"))?
        .arn
        .ok_or("moto returned no secret ARN")?;
    Ok(Fixtures {
        secret_arn,
        service: TaskService::new(Arc::new(store), queue.clone()),
        queue,
        config,
        events_dir: args.events_dir.clone(),
        aws_endpoint: args.aws_endpoint.clone(),
        redis_url: args.redis_url.clone(),
    })
}

async fn main_inner() -> Result<(), String> {
    let args = parse_args()?;
    let kinds: Vec<Kind> = Kind::ALL
        .into_iter()
        .filter(|k| *k == Kind::Hello || args.only.as_ref().is_none_or(|only| only.iter().any(|o| o == k.name())))
        .collect();
    for k in &kinds {
        let path = args.bin_dir.join(k.name());
        if !path.is_file() {
            return Err(format!(
                "{} not found: build the release binaries first (scripts/bench does)",
                path.display()
            ));
        }
    }
    let mut fixtures = fixtures(&args).await?;
    // The functions (not the harness's own set-up) reach moto through a keep-alive front.
    fixtures.aws_endpoint = keep_alive_front(args.aws_endpoint.clone()).await?;

    let (tx, rx) = mpsc::unbounded_channel();
    let api = RuntimeApi {
        events: Arc::default(),
        served: Arc::default(),
        next_id: Arc::new(AtomicU64::new(1)),
        tx,
    };
    let app = Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next))
        .route("/2018-06-01/runtime/invocation/{id}/response", post(respond))
        .route("/2018-06-01/runtime/invocation/{id}/error", post(fail))
        .route("/2018-06-01/runtime/init/error", post(init_error))
        .with_state(api.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?.to_string();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let log_dir = std::env::temp_dir().join(format!("taskq-coldstart-{}", std::process::id()));
    std::fs::create_dir_all(&log_dir).map_err(|e| e.to_string())?;
    let mut h = Harness {
        api,
        rx,
        addr,
        bin_dir: args.bin_dir.clone(),
        log_dir: log_dir.clone(),
        fixtures,
        cold_page_cache: args.cold_page_cache,
    };
    for k in &kinds {
        drop_from_page_cache(&args.bin_dir.join(k.name()))?;
    }

    println!(
        "cold start: {} rounds, functions in a shuffled order each round, page cache {}; child logs in {}",
        args.rounds,
        if args.cold_page_cache {
            "cold (every binary dropped from it before each exec)"
        } else {
            "warm (every binary dropped from it once, before the first round)"
        },
        log_dir.display()
    );
    let mut init: Vec<Vec<Duration>> = vec![Vec::new(); kinds.len()];
    let mut first: Vec<Vec<Duration>> = vec![Vec::new(); kinds.len()];
    let mut stalls = vec![0usize; kinds.len()];
    for round in 0..args.rounds {
        let mut order: Vec<usize> = (0..kinds.len()).collect();
        fastrand::shuffle(&mut order);
        for i in order {
            let events = h.fixtures.events(kinds[i], 1, 1).await?;
            let run = h.run(kinds[i], events, true).await?;
            init[i].push(run.init);
            match (run.responses.first(), run.stalled) {
                (Some(r), _) => first[i].push(*r),
                (None, Some(why)) => {
                    eprintln!("  stall (round {}): {why}", round + 1);
                    stalls[i] += 1;
                }
                (None, None) => return Err(format!("{}: no response", kinds[i].name())),
            }
        }
        if (round + 1) % 10 == 0 {
            eprintln!("  {} rounds done", round + 1);
        }
    }
    let base_init = median(&init[0]);
    let base_first = median(&first[0]);
    println!();
    println!("| function | binary (bytes) | init p50 (ms) | init p90 (ms) | init / hello | first response p50 (ms) | first response p90 (ms) | first / hello | stalled |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (i, k) in kinds.iter().enumerate() {
        let size = std::fs::metadata(h.binary(*k)).map(|m| m.len()).unwrap_or(0);
        println!(
            "| {} | {} | {:.2} | {:.2} | {:.2}x | {:.2} | {:.2} | {:.2}x | {} |",
            k.name(),
            size,
            ms(median(&init[i])),
            ms(percentile(&init[i], 0.9)),
            median(&init[i]).as_secs_f64() / base_init.as_secs_f64(),
            ms(median(&first[i])),
            ms(percentile(&first[i], 0.9)),
            median(&first[i]).as_secs_f64() / base_first.as_secs_f64(),
            stalls[i],
        );
    }

    println!();
    println!(
        "peak RSS: one process per function serving {} invocations in a row (worker: 10-record SQS batches; stream: 10-record batches)",
        args.invocations
    );
    println!("| function | invocations answered | VmHWM (MiB) | VmRSS after (MiB) | warm handler p50 (ms) | warm handler p99 (ms) | CPU per warm invocation (ms) | CPU per message (ms) |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for k in &kinds {
        let per_event = if matches!(k, Kind::Worker | Kind::Stream) {
            10
        } else {
            1
        };
        let events = h.fixtures.events(*k, args.invocations, per_event).await?;
        let run = h.run(*k, events, true).await?;
        if let Some(why) = &run.stalled {
            eprintln!("  stall after {} invocations: {why}", run.responses.len());
        }
        let warm = &run.handler[1.min(run.handler.len())..];
        let per_invocation = run
            .warm_cpu
            .filter(|_| run.responses.len() > 1)
            .map(|cpu| ms(cpu) / (run.responses.len() - 1) as f64);
        let show = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.3}"));
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.2} | {:.2} | {} | {} |",
            k.name(),
            run.responses.len(),
            run.vm_hwm_kib.unwrap_or(0) as f64 / 1024.0,
            run.vm_rss_kib.unwrap_or(0) as f64 / 1024.0,
            ms(median(warm)),
            ms(percentile(warm, 0.99)),
            show(per_invocation),
            show(per_invocation.map(|v| v / per_event as f64)),
        );
    }

    println!();
    println!("init with every AWS and Redis endpoint unroutable (192.0.2.1): reaching GET /next proves init does no network I/O");
    println!("| function | init p50 (ms), 5 runs |");
    println!("|---|---:|");
    for k in &kinds {
        if *k == Kind::Webhook {
            // By design: the sender reads its signing secret from Secrets Manager at init.
            println!("| {} | reads its secret at init |", k.name());
            continue;
        }
        let mut runs = Vec::new();
        for _ in 0..5 {
            // No event: the runtime reaches /next and is parked there.
            runs.push(h.run(*k, Vec::new(), false).await?.init);
        }
        println!("| {} | {:.2} |", k.name(), ms(median(&runs)));
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    match main_inner().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("coldstart: {e}\n\n{USAGE}");
            ExitCode::FAILURE
        }
    }
}
