//! Load generator for a running taskq (`taskq-local`, or any deployment reachable over HTTP).
//!
//! Phase 1, sustained submission: `--concurrency` closed-loop clients POST tasks (`/v1/tasks`,
//! or `/v1/tasks/batch` with `--batch N`) for `--duration` seconds, spread over `--users`
//! users; latencies go into an HDR histogram. The workers run meanwhile, so the figure is
//! submissions per second while the same machine also executes them.
//!
//! Phase 2, end to end: every accepted task is read back with `?wait=20`; completions per
//! second = tasks succeeded / (last `finished_at` - first `created_at`), from the service's
//! own timestamps, so the read-back does not distort it. Also the created -> finished latency.

#[path = "../argv.rs"]
mod argv;
use argv::Argv;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use hdrhistogram::Histogram;
use serde_json::{json, Value};

const USAGE: &str = "\
loadgen: sustained submissions and end-to-end completions against a running taskq

USAGE:
    loadgen [--url URL] [--secret S] [--duration SECONDS] [--concurrency N] [--users N]
            [--batch N] [--type TYPE]

OPTIONS:
    --url URL          base URL (default http://127.0.0.1:8080)
    --secret S         HS256 secret the server verifies tokens with (default $TASKQ_JWT_SECRET,
                       else taskq-local's dev secret)
    --duration SECONDS length of the submission phase (default 20)
    --concurrency N    closed-loop clients (default 32)
    --users N          distinct users the clients submit as (default 16)
    --batch N          submit with POST /v1/tasks/batch, N tasks a request (1-100)
    --type TYPE        task type (default echo)
";

struct Args {
    url: String,
    secret: String,
    duration: Duration,
    concurrency: usize,
    users: usize,
    batch: Option<usize>,
    task_type: String,
}

fn parse_args() -> Result<Args, String> {
    if std::env::args().any(|a| a == "--help" || a == "-h") {
        return Err(String::new());
    }
    let mut argv = Argv::from_env();
    let args = Args {
        url: argv
            .value("--url")?
            .unwrap_or_else(|| "http://127.0.0.1:8080".into())
            .trim_end_matches('/')
            .to_owned(),
        secret: argv
            .value("--secret")?
            .or_else(|| std::env::var("TASKQ_JWT_SECRET").ok().filter(|s| !s.is_empty()))
            .unwrap_or_else(|| "taskq-local-dev-secret".into()),
        duration: Duration::from_secs(argv.number("--duration", 20, 3600)? as u64),
        concurrency: argv.number("--concurrency", 32, 4096)?,
        users: argv.number("--users", 16, 100_000)?,
        batch: argv.optional_number("--batch", 100)?,
        task_type: argv.value("--type")?.unwrap_or_else(|| "echo".into()),
    };
    argv.finish()?;
    Ok(args)
}

fn histogram() -> Histogram<u64> {
    // 1 µs .. 60 s at 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant bounds are valid")
}

fn report(name: &str, h: &Histogram<u64>) {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{name}: n={} p50={:.2} ms p90={:.2} ms p99={:.2} ms max={:.2} ms",
        h.len(),
        ms(0.5),
        ms(0.9),
        ms(0.99),
        h.max() as f64 / 1000.0
    );
}

#[derive(Default)]
struct ClientResult {
    latencies: Option<Histogram<u64>>,
    accepted: Vec<(String, String)>, // (token, task id)
    requests: u64,
    errors: Vec<String>,
    statuses: std::collections::BTreeMap<u16, u64>,
}

async fn submit_loop(
    client: reqwest::Client,
    url: String,
    token: String,
    body: Value,
    batch: bool,
    until: Instant,
) -> ClientResult {
    let mut r = ClientResult {
        latencies: Some(histogram()),
        ..ClientResult::default()
    };
    let endpoint = if batch {
        format!("{url}/v1/tasks/batch")
    } else {
        format!("{url}/v1/tasks")
    };
    while Instant::now() < until {
        let start = Instant::now();
        let sent = client.post(&endpoint).bearer_auth(&token).json(&body).send().await;
        r.requests += 1;
        let res = match sent {
            Ok(res) => res,
            Err(e) => {
                r.errors.push(e.to_string());
                continue;
            }
        };
        let status = res.status().as_u16();
        *r.statuses.entry(status).or_default() += 1;
        let reply: Value = res.json().await.unwrap_or(Value::Null);
        let took = start.elapsed().as_micros() as u64;
        if let Some(h) = r.latencies.as_mut() {
            let _ = h.record(took.max(1));
        }
        if status != 202 {
            continue;
        }
        if batch {
            for item in reply["results"].as_array().into_iter().flatten() {
                if let Some(id) = item["task"]["id"].as_str() {
                    r.accepted.push((token.clone(), id.to_owned()));
                }
            }
        } else if let Some(id) = reply["id"].as_str() {
            r.accepted.push((token.clone(), id.to_owned()));
        }
    }
    r
}

fn time(v: &Value) -> Option<DateTime<Utc>> {
    v.as_str()?.parse().ok()
}

async fn main_inner() -> Result<(), String> {
    let args = parse_args()?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| e.to_string())?;
    let health = client
        .get(format!("{}/v1/health", args.url))
        .send()
        .await
        .map_err(|e| format!("{} is not answering: {e}", args.url))?;
    if !health.status().is_success() {
        return Err(format!("{}/v1/health answered {}", args.url, health.status()));
    }
    let tokens: Vec<String> = (0..args.users)
        .map(|u| taskq_api::auth::mint(&args.secret, &format!("load-{u}"), &[], 3600).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let item = json!({"type": args.task_type, "payload": {"load": true, "n": 42}});
    let body = match args.batch {
        Some(n) => json!({"tasks": vec![item; n]}),
        None => item,
    };

    println!(
        "submission: {} clients for {:?}, {} users, {}",
        args.concurrency,
        args.duration,
        args.users,
        match args.batch {
            Some(n) => format!("POST /v1/tasks/batch of {n}"),
            None => "POST /v1/tasks".into(),
        }
    );
    let started = Instant::now();
    let until = started + args.duration;
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..args.concurrency {
        clients.spawn(submit_loop(
            client.clone(),
            args.url.clone(),
            tokens[c % tokens.len()].clone(),
            body.clone(),
            args.batch.is_some(),
            until,
        ));
    }
    let mut latencies = histogram();
    let mut accepted = Vec::new();
    let mut requests = 0;
    let mut statuses = std::collections::BTreeMap::new();
    let mut errors = Vec::new();
    while let Some(r) = clients.join_next().await {
        let r = r.map_err(|e| e.to_string())?;
        if let Some(h) = &r.latencies {
            latencies.add(h).map_err(|e| e.to_string())?;
        }
        accepted.extend(r.accepted);
        requests += r.requests;
        for (s, n) in r.statuses {
            *statuses.entry(s).or_insert(0) += n;
        }
        errors.extend(r.errors);
    }
    let elapsed = started.elapsed();
    println!(
        "requests={requests} statuses={statuses:?} transport_errors={} elapsed={:.2}s",
        errors.len(),
        elapsed.as_secs_f64()
    );
    if let Some(e) = errors.first() {
        println!("first transport error: {e}");
    }
    println!(
        "sustained submissions: {:.0} tasks/s ({:.0} requests/s)",
        accepted.len() as f64 / elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64()
    );
    report("submit latency", &latencies);
    if accepted.is_empty() {
        return Err("no task was accepted".into());
    }

    // Phase 2: read every task back, waiting for it to finish.
    let accepted = Arc::new(accepted);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut readers = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency.min(64) {
        let (client, url, accepted, next) = (client.clone(), args.url.clone(), accepted.clone(), next.clone());
        readers.spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((token, id)) = accepted.get(i) else { break };
                let task: Value = match client
                    .get(format!("{url}/v1/tasks/{id}?wait=20"))
                    .bearer_auth(token)
                    .send()
                    .await
                {
                    Ok(res) => res.json().await.unwrap_or(Value::Null),
                    Err(_) => Value::Null,
                };
                out.push(task);
            }
            out
        });
    }
    let mut tasks = Vec::with_capacity(accepted.len());
    while let Some(r) = readers.join_next().await {
        tasks.extend(r.map_err(|e| e.to_string())?);
    }
    let mut e2e = histogram();
    let (mut first_created, mut last_finished): (Option<DateTime<Utc>>, Option<DateTime<Utc>>) = (None, None);
    let mut by_status = std::collections::BTreeMap::<String, u64>::new();
    for t in &tasks {
        let status = t["status"].as_str().unwrap_or("unreadable").to_owned();
        *by_status.entry(status.clone()).or_default() += 1;
        if status != "succeeded" {
            continue;
        }
        if let (Some(c), Some(f)) = (time(&t["created_at"]), time(&t["finished_at"])) {
            first_created = Some(first_created.map_or(c, |x| x.min(c)));
            last_finished = Some(last_finished.map_or(f, |x| x.max(f)));
            let _ = e2e.record(((f - c).num_microseconds().unwrap_or(0).max(1)) as u64);
        }
    }
    println!("read back {} tasks: {by_status:?}", tasks.len());
    if let (Some(c), Some(f)) = (first_created, last_finished) {
        let span = (f - c).num_milliseconds().max(1) as f64 / 1000.0;
        println!(
            "end-to-end completions: {:.0} tasks/s ({} succeeded between the first created_at and the last finished_at, {span:.2}s)",
            e2e.len() as f64 / span,
            e2e.len()
        );
        report("created -> finished", &e2e);
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    match main_inner().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is_empty() => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("loadgen: {e}\n\n{USAGE}");
            ExitCode::FAILURE
        }
    }
}
