//! The `taskq` binary against a taskq-local started in this process (embedded backends):
//! every command, its output in both forms, its exit codes, and refusals of bad input.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use taskq_local::{start, EventSourceConfig, LocalOptions, LocalServer};
use taskq_worker::WorkerConfig;

const SECRET: &str = "cli-test-secret";

struct App {
    server: LocalServer,
    token: String,
}

async fn app() -> App {
    let mut o = LocalOptions::new("127.0.0.1:0".parse().unwrap(), SECRET);
    o.worker = WorkerConfig {
        retry_base: Duration::from_millis(100),
        retry_cap: Duration::from_millis(200),
        ..WorkerConfig::default()
    };
    o.event_sources = EventSourceConfig {
        poll_wait: Duration::from_millis(200),
        ..EventSourceConfig::default()
    };
    o.sweep_every = None;
    let server = start(o).await.expect("local server starts");
    let token = taskq_api::auth::mint(SECRET, "cli-user", &[], 600).unwrap();
    App { server, token }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout))
    }
}

impl App {
    /// Runs `taskq args...` with this server's URL and token, feeding `stdin`.
    async fn taskq(&self, args: &[&str], stdin: Option<&str>) -> Run {
        self.taskq_env(args, stdin, &[("TASKQ_TOKEN", &self.token)]).await
    }

    async fn taskq_env(&self, args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Run {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_taskq"));
        cmd.args(args)
            .env_clear()
            .env("TASKQ_URL", self.server.base_url())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let stdin = stdin.map(str::to_owned);
        // The server runs on this runtime: wait for the child on a blocking thread.
        let out: Output = tokio::task::spawn_blocking(move || {
            let mut child = cmd.spawn().expect("taskq starts");
            let mut pipe = child.stdin.take().unwrap();
            if let Some(s) = stdin {
                pipe.write_all(s.as_bytes()).unwrap();
            }
            drop(pipe);
            child.wait_with_output().unwrap()
        })
        .await
        .unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    async fn submit_json(&self, args: &[&str]) -> Value {
        let mut all = vec!["submit", "--json"];
        all.extend_from_slice(args);
        let run = self.taskq(&all, None).await;
        assert_eq!(run.code, 0, "submit failed: {}", run.stderr);
        run.json()
    }
}

fn id(task: &Value) -> String {
    task["id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_from_stdin_then_wait_shows_progress_and_the_result() {
    let app = app().await;
    let run = app
        .taskq(&["submit", "echo", "-", "--json"], Some(r#"{"hello": "world"}"#))
        .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let task = run.json();
    assert_eq!(task["type"], "echo");
    assert_eq!(task["status"], "queued");
    assert_eq!(task["payload"]["hello"], "world");

    let run = app.taskq(&["wait", &id(&task), "--json"], None).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let done = run.json();
    assert_eq!(done["status"], "succeeded");
    assert_eq!(done["result"]["hello"], "world");
    // Progress goes to stderr (not a terminal here: one line per change), ending at succeeded.
    let last = run.stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains(&id(&task)) && last.contains("succeeded"),
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_from_a_file_with_options_in_human_form() {
    let app = app().await;
    let dir = std::env::temp_dir().join(format!("taskq-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("payload.json");
    std::fs::write(&file, r#"{"ms": 10}"#).unwrap();
    let run = app
        .taskq(
            &[
                "submit",
                "sleep",
                file.to_str().unwrap(),
                "--priority",
                "high",
                "--max-attempts",
                "2",
                "--timeout",
                "5",
            ],
            None,
        )
        .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let id_line = run.stdout.lines().find(|l| l.starts_with("id ")).expect("an id line");
    let id = id_line.split_whitespace().nth(1).unwrap().to_owned();
    assert!(run.stdout.contains("priority  high"), "{}", run.stdout);
    assert!(run.stdout.contains("attempts  0/2"), "{}", run.stdout);
    assert!(run.stdout.contains("timeout   5 s"), "{}", run.stdout);
    assert!(run.stdout.contains(r#"payload   {"ms":10}"#), "{}", run.stdout);

    // The server holds what the flags asked for.
    let run = app.taskq(&["get", &id, "--wait", "10", "--json"], None).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let task = run.json();
    assert_eq!(task["priority"], "high");
    assert_eq!(task["max_attempts"], 2);
    assert_eq!(task["timeout_seconds"], 5);
    assert_eq!(task["result"]["slept_ms"], 10);
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_on_a_failing_task_exits_3_and_shows_its_error() {
    let app = app().await;
    let run = app
        .taskq(
            &[
                "submit",
                "fail",
                "--data",
                r#"{"times": 5}"#,
                "--max-attempts",
                "1",
                "--wait",
            ],
            None,
        )
        .await;
    assert_eq!(run.code, 3, "stdout {} stderr {}", run.stdout, run.stderr);
    assert!(run.stdout.contains("status    failed"), "{}", run.stdout);
    assert!(
        run.stdout
            .contains("error     deliberate_failure: attempt 1 of the first 5 fails"),
        "{}",
        run.stdout
    );
    assert!(run.stderr.contains("ended failed"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_gives_up_after_its_timeout_with_exit_4() {
    let app = app().await;
    let task = app.submit_json(&["sleep", "--data", r#"{"ms": 10000}"#]).await;
    let run = app.taskq(&["wait", &id(&task), "--timeout", "1"], None).await;
    assert_eq!(run.code, 4, "{}", run.stderr);
    assert!(run.stderr.contains("after 1 s"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_by_status_and_all_follows_cursors() {
    let app = app().await;
    let ok = app.submit_json(&["echo", "--data", "1"]).await;
    let bad = app
        .submit_json(&["fail", "--data", r#"{"times": 9}"#, "--max-attempts", "1"])
        .await;
    for t in [&ok, &bad] {
        app.taskq(&["wait", &id(t)], None).await;
    }
    let third = app.submit_json(&["echo", "--data", "3", "--delay", "600"]).await;

    let run = app.taskq(&["list", "--status", "failed", "--json"], None).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let ids: Vec<String> = run.json()["tasks"].as_array().unwrap().iter().map(id).collect();
    assert_eq!(ids, vec![id(&bad)]);

    // One task per page: --all walks three pages, newest first.
    let run = app.taskq(&["list", "--all", "--limit", "1", "--json"], None).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let page = run.json();
    let ids: Vec<String> = page["tasks"].as_array().unwrap().iter().map(id).collect();
    assert_eq!(ids, vec![id(&third), id(&bad), id(&ok)]);
    assert!(page["next_cursor"].is_null());

    // Human form: a header, one row per task, and the cursor of the next page.
    let run = app.taskq(&["list", "--limit", "2"], None).await;
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(lines[0].starts_with("ID"), "{}", run.stdout);
    assert!(
        lines[1].starts_with(&id(&third)) && lines[1].contains("queued"),
        "{}",
        run.stdout
    );
    assert!(
        lines[2].starts_with(&id(&bad)) && lines[2].contains("failed"),
        "{}",
        run.stdout
    );
    assert!(lines[3].starts_with("more: --cursor "), "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_then_cancel_again_is_a_conflict() {
    let app = app().await;
    let task = app.submit_json(&["echo", "--delay", "600"]).await;
    let run = app.taskq(&["cancel", &id(&task)], None).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("status    cancelled"), "{}", run.stdout);
    let run = app.taskq(&["cancel", &id(&task)], None).await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.starts_with("taskq: 409 "), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_runs_a_cancelled_task_again_and_refuses_a_queued_one() {
    let app = app().await;
    let task = app.submit_json(&["echo", "--delay", "600"]).await;
    let run = app.taskq(&["retry", &id(&task)], None).await;
    assert_eq!(run.code, 1, "a queued task: {}", run.stdout);
    assert!(run.stderr.starts_with("taskq: 409 "), "{}", run.stderr);
    assert_eq!(app.taskq(&["cancel", &id(&task)], None).await.code, 0);
    let run = app.taskq(&["retry", &id(&task)], None).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("status    queued"), "{}", run.stdout);
    let run = app.taskq(&["events", &id(&task)], None).await;
    assert!(run.stdout.contains("retried"), "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_show_the_history_in_order() {
    let app = app().await;
    let task = app.submit_json(&["echo", "--data", "{}"]).await;
    assert_eq!(app.taskq(&["wait", &id(&task)], None).await.code, 0);
    let run = app.taskq(&["events", &id(&task)], None).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let kinds: Vec<&str> = run
        .stdout
        .lines()
        .map(|l| l.split_whitespace().nth(2).unwrap_or_default())
        .collect();
    assert_eq!(kinds, ["submitted", "started", "succeeded"], "{}", run.stdout);
    assert!(run.stdout.contains("queued -> running"), "{}", run.stdout);
    let run = app.taskq(&["events", &id(&task), "--json"], None).await;
    assert_eq!(run.json()["events"].as_array().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn types_lists_what_the_deployment_accepts() {
    let app = app().await;
    let run = app.taskq(&["types"], None).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(
        lines[0].starts_with("TYPE") && lines[0].contains("ATTEMPTS"),
        "{}",
        run.stdout
    );
    let echo = lines.iter().find(|l| l.starts_with("echo ")).expect("echo listed");
    let cols: Vec<&str> = echo.split_whitespace().collect();
    assert_eq!(
        cols,
        ["echo", "builtin", "60/900", "3/25", "high", "-"],
        "{}",
        run.stdout
    );
    let run = app.taskq(&["types", "--json"], None).await;
    assert_eq!(run.json()["types"].as_array().unwrap().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_minted_by_the_cli_is_accepted_with_its_roles() {
    let app = app().await;
    let run = app
        .taskq_env(
            &["token", "--user", "root", "--roles", "admin,ops", "--ttl", "60"],
            None,
            &[("TASKQ_JWT_SECRET", SECRET)],
        )
        .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let token = run.stdout.trim().to_owned();
    // The admin role in the token opens an admin route.
    let r = reqwest::Client::new()
        .get(format!("{}/v1/admin/queues", app.server.base_url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // And the CLI itself uses it: the tasks listed are root's (none), not cli-user's.
    app.submit_json(&["echo"]).await;
    let run = app.taskq_env(&["list"], None, &[("TASKQ_TOKEN", &token)]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout.trim(), "no tasks");
    // Minted without TASKQ_JWT_SECRET: taskq-local's development secret, refused by this server.
    let run = app.taskq_env(&["token", "--user", "root"], None, &[]).await;
    let dev = run.stdout.trim();
    let run = app.taskq_env(&["list"], None, &[("TASKQ_TOKEN", dev)]).await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("401"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error_and_its_own_exit_code() {
    let app = app().await;
    // Refused before sending (exit 2).
    let run = app.taskq(&["submit", "echo", "--data", "{nope"], None).await;
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("the payload from --data is not JSON"),
        "{}",
        run.stderr
    );
    let run = app.taskq(&["submit", "echo", "-"], Some("not json")).await;
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("the payload from stdin is not JSON"),
        "{}",
        run.stderr
    );
    let run = app.taskq(&["submit", "echo", "/nonexistent/payload.json"], None).await;
    assert_eq!(run.code, 2);
    assert!(
        run.stderr
            .contains("reading the payload file /nonexistent/payload.json"),
        "{}",
        run.stderr
    );
    let run = app.taskq(&["submit", "echo", "--priority", "urgent"], None).await;
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("possible values: high, normal, low"),
        "{}",
        run.stderr
    );
    let run = app.taskq(&["get", "../admin/queues"], None).await;
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("is not a task id"), "{}", run.stderr);
    let run = app.taskq_env(&["list"], None, &[]).await;
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("no token"), "{}", run.stderr);

    // Refused by the server (exit 1), in its own words.
    let run = app.taskq(&["submit", "echo", "--max-attempts", "99"], None).await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.starts_with("taskq: 400 ") && run.stderr.contains("max_attempts"),
        "{}",
        run.stderr
    );
    let run = app.taskq(&["get", "01JD0Q3V8ZKQ6M1T2W9X4Y5Z6A"], None).await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.starts_with("taskq: 404 "), "{}", run.stderr);
    let run = app.taskq_env(&["list"], None, &[("TASKQ_TOKEN", "not-a-jwt")]).await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.starts_with("taskq: 401 "), "{}", run.stderr);

    // No server there.
    let run = app.taskq(&["list", "--url", "http://127.0.0.1:9"], None).await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("cannot reach http://127.0.0.1:9"), "{}", run.stderr);
    let run = app.taskq(&["list", "--url", "localhost:8080"], None).await;
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("must start with http://"), "{}", run.stderr);
}
