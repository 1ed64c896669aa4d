//! `taskq`: a command-line client of the v1 HTTP API, for a local server (`taskq-local`) or a
//! deployment. Human-readable output by default, the API's JSON with `--json`. Progress and
//! diagnostics go to stderr so stdout stays parseable.

pub mod client;
pub mod error;
pub mod output;

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand, ValueEnum};
use reqwest::Method;
use serde_json::{json, Map, Value};

pub use client::Client;
pub use error::CliError;

#[derive(Debug, Parser)]
#[command(
    name = "taskq",
    version,
    about = "taskq command-line client",
    after_help = "Exit codes: 0 done; 1 server or network error; 2 bad arguments or input; \
                  3 the waited-for task ended failed, cancelled or dead; 4 wait timed out."
)]
pub struct Cli {
    /// API base URL (a local server, or a deployment's CloudFrontUrl: the stack's API answers only through CloudFront)
    #[arg(long, env = "TASKQ_URL", default_value = "http://127.0.0.1:8080", global = true)]
    pub url: String,
    /// Bearer token (JWT)
    #[arg(long, env = "TASKQ_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Print the API's JSON instead of text
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Submit a task; the payload comes from a file, stdin (`-`) or --data
    Submit(SubmitArgs),
    /// Show a task
    Get {
        id: String,
        /// Wait up to this many seconds (0-20) for the task to finish
        #[arg(long, value_name = "SECONDS")]
        wait: Option<u32>,
    },
    /// Follow a task until it finishes, showing its progress
    Wait {
        id: String,
        /// Give up after this many seconds (0: never)
        #[arg(long, value_name = "SECONDS", default_value_t = 600)]
        timeout: u64,
    },
    /// List your tasks, newest first
    List(ListArgs),
    /// Cancel a task (queued: at once; running: requested)
    Cancel { id: String },
    /// Run a failed, dead or cancelled task again (attempts start over; its history goes on)
    Retry { id: String },
    /// Show a task's history
    Events { id: String },
    /// List the task types this deployment accepts, with their limits
    Types,
    /// Mint a local HS256 token (as `taskq-local token` does); needs no server
    Token(TokenArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Priority {
    High,
    Normal,
    Low,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Status {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    Dead,
}

fn value_name<T: ValueEnum>(v: &T) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_owned())
        .unwrap_or_default()
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// Task type, e.g. echo, sleep, fail, webhook
    #[arg(value_name = "TYPE")]
    pub task_type: String,
    /// File holding the JSON payload; `-` reads stdin
    #[arg(value_name = "PAYLOAD_FILE", conflicts_with = "data")]
    pub payload_file: Option<PathBuf>,
    /// The JSON payload inline
    #[arg(short, long, value_name = "JSON")]
    pub data: Option<String>,
    #[arg(short, long)]
    pub priority: Option<Priority>,
    /// Seconds before the task may start (0-900)
    #[arg(long, value_name = "SECONDS")]
    pub delay: Option<u32>,
    /// Attempts before the task fails (1-25)
    #[arg(long)]
    pub max_attempts: Option<u32>,
    /// Seconds one attempt may run (1-900)
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u32>,
    /// Idempotency-Key header: resubmitting with the same key returns the original task
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
    /// Then follow the task until it finishes (as `taskq wait`)
    #[arg(short, long)]
    pub wait: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[arg(long)]
    pub status: Option<Status>,
    #[arg(long)]
    pub priority: Option<Priority>,
    /// Tasks per page (1-100)
    #[arg(long)]
    pub limit: Option<u32>,
    /// Continue from a previous page's next_cursor
    #[arg(long)]
    pub cursor: Option<String>,
    /// Follow next_cursor to the end
    #[arg(long, conflicts_with = "cursor")]
    pub all: bool,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The user id (`sub` claim)
    #[arg(long)]
    pub user: String,
    /// Comma-separated roles, e.g. admin
    #[arg(long, default_value = "")]
    pub roles: String,
    /// Lifetime in seconds
    #[arg(long, default_value_t = 24 * 3600)]
    pub ttl: u64,
    /// HS256 secret; unset: taskq-local's development secret
    #[arg(long, env = "TASKQ_JWT_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
}

/// Runs one command, writing its result to `out`.
pub async fn run(cli: Cli, out: &mut impl Write) -> Result<(), CliError> {
    if let Command::Token(args) = &cli.command {
        let secret = taskq_core::token::secret_or_dev(args.secret.clone());
        let roles = taskq_core::token::roles_from_list(&args.roles);
        let token = taskq_core::token::mint(&secret, &args.user, &roles, args.ttl)
            .map_err(|e| CliError::Usage(format!("cannot mint a token: {e}")))?;
        return emit(out, &token);
    }
    let client = Client::new(&cli.url, cli.token.clone())?;
    let json = cli.json;
    match cli.command {
        Command::Token(_) => unreachable!("handled above"),
        Command::Submit(args) => {
            let (body, key) = submit_body(&args)?;
            let headers: Vec<(&str, String)> = key.map(|k| ("Idempotency-Key", k)).into_iter().collect();
            let answer = client
                .call(Method::POST, "/v1/tasks", &[], Some(&body), &headers)
                .await?;
            let task = answer.body;
            if args.wait {
                if !json {
                    writeln!(std::io::stderr(), "submitted {}", task["id"].as_str().unwrap_or("?")).ok();
                }
                let id = task_id(&task)?;
                return follow(&client, &id, 600, json, out).await;
            }
            if json {
                emit(out, &task.to_string())
            } else {
                emit(out, &output::task(&task))
            }
        }
        Command::Get { id, wait } => {
            let query: Vec<(&str, String)> = wait.map(|w| ("wait", w.to_string())).into_iter().collect();
            let task = client.get(&task_path(&id)?, &query).await?;
            emit(out, &render(json, &task, output::task))
        }
        Command::Wait { id, timeout } => follow(&client, &task_path(&id).map(|_| id)?, timeout, json, out).await,
        Command::List(args) => {
            let mut query: Vec<(&str, String)> = Vec::new();
            if let Some(s) = args.status {
                query.push(("status", value_name(&s)));
            }
            if let Some(p) = args.priority {
                query.push(("priority", value_name(&p)));
            }
            if let Some(l) = args.limit {
                query.push(("limit", l.to_string()));
            }
            if let Some(c) = &args.cursor {
                query.push(("cursor", c.clone()));
            }
            let mut page = client.get("/v1/tasks", &query).await?;
            if args.all {
                let mut tasks = page["tasks"].as_array().cloned().unwrap_or_default();
                while let Some(next) = page["next_cursor"].as_str().map(str::to_owned) {
                    let mut q = query.clone();
                    q.push(("cursor", next));
                    page = client.get("/v1/tasks", &q).await?;
                    tasks.extend(page["tasks"].as_array().cloned().unwrap_or_default());
                }
                page = json!({"tasks": tasks, "next_cursor": null});
            }
            emit(out, &render(json, &page, output::task_list))
        }
        Command::Cancel { id } => {
            let answer = client
                .call(Method::POST, &format!("{}/cancel", task_path(&id)?), &[], None, &[])
                .await?;
            if json {
                emit(out, &answer.body.to_string())
            } else {
                let note = if answer.status == reqwest::StatusCode::ACCEPTED {
                    "cancellation requested: the task is running and stops at its next check\n"
                } else {
                    ""
                };
                emit(out, &format!("{note}{}", output::task(&answer.body)))
            }
        }
        Command::Retry { id } => {
            let answer = client
                .call(Method::POST, &format!("{}/retry", task_path(&id)?), &[], None, &[])
                .await?;
            if json {
                emit(out, &answer.body.to_string())
            } else {
                emit(out, &output::task(&answer.body))
            }
        }
        Command::Events { id } => {
            let events = client.get(&format!("{}/events", task_path(&id)?), &[]).await?;
            emit(out, &render(json, &events, output::events))
        }
        Command::Types => {
            let types = client.get("/v1/types", &[]).await?;
            emit(out, &render(json, &types, output::types))
        }
    }
}

fn render(json: bool, value: &Value, human: fn(&Value) -> String) -> String {
    if json {
        value.to_string()
    } else {
        human(value)
    }
}

fn emit(out: &mut impl Write, text: &str) -> Result<(), CliError> {
    let text = text.strip_suffix('\n').unwrap_or(text);
    // A closed pipe (`taskq list | head`) is not worth an error message.
    let _ = writeln!(out, "{text}");
    Ok(())
}

/// `/v1/tasks/{id}` for an id that can be put in a path as is. The server decides whether the id
/// exists; this only refuses what would change the path (`/`, `?`, spaces).
fn task_path(id: &str) -> Result<String, CliError> {
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(CliError::Usage(format!(
            "{id:?} is not a task id (26 letters and digits, e.g. 01JD0Q3V8ZKQ6M1T2W9X4Y5Z6A)"
        )));
    }
    Ok(format!("/v1/tasks/{id}"))
}

fn task_id(task: &Value) -> Result<String, CliError> {
    task["id"].as_str().map(str::to_owned).ok_or_else(|| CliError::NotJson {
        status: 200,
        start: "a task without an id".into(),
    })
}

/// The request body of `submit` and its idempotency key.
pub fn submit_body(args: &SubmitArgs) -> Result<(Value, Option<String>), CliError> {
    let payload = match (&args.payload_file, &args.data) {
        (Some(path), _) => {
            let (text, from) = if path.as_os_str() == "-" {
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .map_err(|e| CliError::Usage(format!("reading the payload from stdin: {e}")))?;
                (s, "stdin".to_owned())
            } else {
                let s = std::fs::read_to_string(path)
                    .map_err(|e| CliError::Usage(format!("reading the payload file {}: {e}", path.display())))?;
                (s, path.display().to_string())
            };
            Some(parse_payload(&text, &from)?)
        }
        (None, Some(data)) => Some(parse_payload(data, "--data")?),
        (None, None) => None,
    };
    let mut body = Map::new();
    body.insert("type".into(), Value::from(args.task_type.clone()));
    if let Some(p) = payload {
        body.insert("payload".into(), p);
    }
    if let Some(p) = args.priority {
        body.insert("priority".into(), Value::from(value_name(&p)));
    }
    if let Some(d) = args.delay {
        body.insert("delay_seconds".into(), Value::from(d));
    }
    if let Some(m) = args.max_attempts {
        body.insert("max_attempts".into(), Value::from(m));
    }
    if let Some(t) = args.timeout {
        body.insert("timeout_seconds".into(), Value::from(t));
    }
    Ok((Value::Object(body), args.idempotency_key.clone()))
}

fn parse_payload(text: &str, from: &str) -> Result<Value, CliError> {
    serde_json::from_str(text).map_err(|e| CliError::Usage(format!("the payload from {from} is not JSON: {e}")))
}

const TERMINAL: [&str; 4] = ["succeeded", "failed", "cancelled", "dead"];

/// Polls the task until it is terminal, showing each change on stderr: a line redrawn in place
/// on a terminal, one line per change otherwise (logs, CI). Each poll is a long poll of at most
/// 1 s, so completion shows at once and queued -> running within a second.
async fn follow(client: &Client, id: &str, timeout: u64, json: bool, out: &mut impl Write) -> Result<(), CliError> {
    let path = task_path(id)?;
    let started = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut last = String::new();
    let mut frame = 0usize;
    let task = loop {
        let task = client.get(&path, &[("wait", "1".into())]).await?;
        let status = task["status"].as_str().unwrap_or("?").to_owned();
        let line = output::progress(&task);
        let elapsed = started.elapsed().as_secs_f64();
        if tty {
            const SPIN: [char; 4] = ['|', '/', '-', '\\'];
            frame += 1;
            eprint!("\r\x1b[2K{} {line}  {elapsed:.1}s", SPIN[frame % SPIN.len()]);
        } else if line != last {
            eprintln!("{line}  ({elapsed:.1}s)");
        }
        last = line;
        if TERMINAL.contains(&status.as_str()) {
            if tty {
                eprintln!();
            }
            break task;
        }
        if timeout > 0 && started.elapsed() >= Duration::from_secs(timeout) {
            if tty {
                eprintln!();
            }
            return Err(CliError::WaitTimedOut {
                id: id.to_owned(),
                status,
                seconds: timeout,
            });
        }
    };
    emit(out, &render(json, &task, output::task))?;
    match task["status"].as_str() {
        Some("succeeded") => Ok(()),
        other => Err(CliError::TaskNotSucceeded {
            id: id.to_owned(),
            status: other.unwrap_or("?").to_owned(),
        }),
    }
}
