//! `taskq-local`: run taskq on this machine. See `taskq-local --help`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use taskq_core::memory::MemoryQueueConfig;
use taskq_local::{start, Backend, LocalOptions};
use taskq_worker::WorkerConfig;

const USAGE: &str = "\
taskq-local: the taskq API and workers on one machine

USAGE:
    taskq-local [--listen ADDR] [--backend memory|aws] [--create-resources] [--prefix NAME] [--api-only]
    taskq-local token --user USER [--roles ROLE,ROLE] [--ttl SECONDS]

OPTIONS:
    --listen ADDR         address to serve the API on (default 127.0.0.1:8080)
    --backend memory      embedded in-memory store and queues (default)
    --backend aws         DynamoDB and SQS at AWS_ENDPOINT_URL (moto, LocalStack) or in AWS;
                          names from TASKQ_TABLE_NAME and TASKQ_QUEUE_URL_{HIGH,NORMAL,LOW}
    --create-resources    with --backend aws: create the table and queues (named by --prefix)
    --prefix NAME         resource name prefix for --create-resources (default taskq-local)
    --api-only            serve the API without running the workers
    --sweep-every SECONDS run the sweeper this often (default 60; 0 = never)
    --faults SPEC         inject faults, e.g. store_throttle=0.05,send_fail=0.02,send_duplicate=0.1,
                          store_error_after_write=0.02,store_retry_after_write=0.02,
                          receive_fail=0.01,delete_fail=0.02,visibility_fail=0.02,
                          crash_before_status_write=0.02,send_delay_max_ms=50,
                          stall_before_status_write=0.01,stall_ms=40000 (a worker frozen past
                          its lease before writing its outcome)
    --redis-url URL       status cache, change messages and rate limits in Redis (as in AWS) instead
                          of in this process; also read from TASKQ_REDIS_URL

ENVIRONMENT:
    TASKQ_JWT_SECRET      HS256 secret for bearer tokens (default: a fixed dev secret)
    TASKQ_RETRY_BASE_MS, TASKQ_RETRY_CAP_MS   worker retry backoff
    TASKQ_RATE_LIMITS     per-role rates, e.g. {\"default\":{\"per_second\":20,\"burst\":40}}
    TASKQ_MAX_PRIORITY    per-role highest priority, e.g. {\"default\":\"normal\",\"admin\":\"high\"}
    TASKQ_CACHE_TIMEOUT_MS, TASKQ_CACHE_PAUSE_MS, TASKQ_CACHE_TTL_ACTIVE_MS   Redis bounds (see README)
    TASKQ_WEBHOOK_SECRET  secret completion webhooks are signed with (default: a fixed dev secret,
                          printed at start)
    TASKQ_CALLBACK_ALLOW_LOOPBACK_HTTP=true   accept callback_url http(s)://127.0.0.1|localhost|[::1]
                          and let completion webhooks and webhook tasks reach loopback (local
                          receivers; off by default: public addresses only); never set this where
                          the API is reachable by others
    RUST_LOG              log filter (default info)
";

struct Args {
    items: Vec<String>,
}

impl Args {
    fn flag(&mut self, name: &str) -> bool {
        let before = self.items.len();
        self.items.retain(|a| a != name);
        self.items.len() != before
    }

    fn value(&mut self, name: &str) -> Result<Option<String>, String> {
        let Some(i) = self.items.iter().position(|a| a == name) else {
            return Ok(None);
        };
        if i + 1 >= self.items.len() {
            return Err(format!("{name} needs a value"));
        }
        let v = self.items.remove(i + 1);
        self.items.remove(i);
        Ok(Some(v))
    }

    fn finish(self) -> Result<(), String> {
        match self.items.first() {
            Some(extra) => Err(format!("unexpected argument {extra:?}")),
            None => Ok(()),
        }
    }
}

fn secret() -> String {
    taskq_core::token::secret_or_dev(std::env::var("TASKQ_JWT_SECRET").ok())
}

fn token(mut args: Args) -> Result<(), String> {
    let user = args.value("--user")?.ok_or("token needs --user USER")?;
    let roles = args
        .value("--roles")?
        .map(|r| taskq_core::token::roles_from_list(&r))
        .unwrap_or_default();
    let ttl = match args.value("--ttl")? {
        Some(t) => t.parse::<u64>().map_err(|_| "--ttl must be a number of seconds")?,
        None => 24 * 3600,
    };
    args.finish()?;
    let token = taskq_core::token::mint(&secret(), &user, &roles, ttl).map_err(|e| e.to_string())?;
    println!("{token}");
    Ok(())
}

async fn serve(mut args: Args) -> Result<(), String> {
    let listen: SocketAddr = args
        .value("--listen")?
        .unwrap_or_else(|| "127.0.0.1:8080".into())
        .parse()
        .map_err(|e| format!("--listen: {e}"))?;
    let backend = args.value("--backend")?.unwrap_or_else(|| "memory".into());
    let create = args.flag("--create-resources");
    let prefix = args.value("--prefix")?.unwrap_or_else(|| "taskq-local".into());
    let api_only = args.flag("--api-only");
    let sweep_every: u64 = match args.value("--sweep-every")? {
        Some(v) => v.parse().map_err(|_| "--sweep-every must be a number of seconds")?,
        None => 60,
    };
    let faults = args
        .value("--faults")?
        .map(|spec| taskq_core::faults::FaultPlan::parse(&spec))
        .transpose()
        .map_err(|e| format!("--faults: {e}"))?;
    let redis_url = args.value("--redis-url")?;
    args.finish()?;

    let mut options = LocalOptions::new(listen, secret());
    options.worker = WorkerConfig::from_env()?;
    options.workers = !api_only;
    options.sweep_every = (sweep_every > 0).then(|| std::time::Duration::from_secs(sweep_every));
    options.sweeper = taskq_sweeper::SweeperConfig::from_env()?;
    options.faults = faults;
    options.policy = taskq_local::RolePolicy::from_env().map_err(|e| e.to_string())?;
    options.redis = taskq_local::RedisSettings::from_env_with(redis_url)?;
    options.callback.allow_loopback = match std::env::var("TASKQ_CALLBACK_ALLOW_LOOPBACK_HTTP").as_deref() {
        Ok("true") => true,
        Ok("false") | Ok("") | Err(_) => false,
        Ok(other) => {
            return Err(format!(
                "TASKQ_CALLBACK_ALLOW_LOOPBACK_HTTP must be true or false, not {other:?}"
            ))
        }
    };
    if options.callback.allow_loopback {
        options.outbound = taskq_local::Network::AllowLoopback;
    }
    options.types = taskq_core::Catalog::from_env().map_err(|e| e.to_string())?;
    if options.types.uses("lambda") {
        // AWS_ENDPOINT_URL_LAMBDA (or AWS_ENDPOINT_URL) points it at a local function server.
        options.lambda = Some(taskq_worker::targets::LambdaTarget::client(
            &taskq_aws::AwsConfig::sdk_config().await,
        ));
    }
    let webhook_secret = std::env::var("TASKQ_WEBHOOK_SECRET").ok().filter(|s| !s.is_empty());
    let webhook_secret_is_dev = webhook_secret.is_none();
    options.webhook_secret = webhook_secret.unwrap_or_else(|| taskq_local::DEV_WEBHOOK_SECRET.to_owned());
    options.backend = match backend.as_str() {
        "memory" => Backend::Memory(MemoryQueueConfig::default()),
        "aws" => {
            let sdk = taskq_aws::AwsConfig::sdk_config().await;
            let config = if create {
                let plan = taskq_aws::bootstrap::Plan::named(&prefix);
                let config = taskq_aws::bootstrap::ensure(&sdk, &plan)
                    .await
                    .map_err(|e| format!("creating resources: {e}"))?;
                eprintln!(
                    "table {} and queues {:?} ready",
                    config.table_name, config.queues.queues
                );
                config
            } else {
                taskq_aws::AwsConfig::from_env()?
            };
            let (store, queue) = config.adapters_from(&sdk);
            Backend::Ports {
                store: Arc::new(store),
                queue: Arc::new(queue),
            }
        }
        other => return Err(format!("--backend must be memory or aws, not {other:?}")),
    };
    let server = start(options)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let token = taskq_core::token::mint(&secret(), "dev-user", &[], 24 * 3600).map_err(|e| e.to_string())?;
    let url = server.base_url();
    println!("taskq-local listening on {url} (backend: {backend})");
    println!("dev token for user dev-user (24 h):\n  export TOKEN={token}");
    if webhook_secret_is_dev {
        println!(
            "webhooks are signed with the dev secret {:?} (set TASKQ_WEBHOOK_SECRET to choose one)",
            taskq_local::DEV_WEBHOOK_SECRET
        );
    }
    println!(
        "try:\n  curl -s -X POST {url}/v1/tasks -H \"Authorization: Bearer $TOKEN\" -H 'Content-Type: application/json' -d '{{\"type\":\"echo\",\"payload\":{{\"hello\":\"world\"}}}}'"
    );
    println!("  curl -s {url}/v1/tasks -H \"Authorization: Bearer $TOKEN\"");
    tokio::select! {
        _ = server.wait() => Err("server stopped".into()),
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    taskq_aws::telemetry::init();
    let mut items: Vec<String> = std::env::args().skip(1).collect();
    if items.iter().any(|a| a == "--help" || a == "-h") {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let result = if items.first().map(String::as_str) == Some("token") {
        items.remove(0);
        token(Args { items })
    } else {
        serve(Args { items }).await
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("taskq-local: {e}\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}
