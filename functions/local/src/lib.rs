//! taskq on one machine: the API Router on a TCP port (`axum::serve`) and an emulation of the
//! three SQS event source mappings in front of the worker's batch handler. Backends are the
//! embedded in-memory adapters by default, or DynamoDB and SQS endpoints (moto, LocalStack, AWS).

pub mod dashboard;
pub mod esm;

use std::net::SocketAddr;
use std::sync::Arc;

use std::time::Duration;

use taskq_api::{router, AppState, Authenticator};
use taskq_aws::RedisCache;
pub use taskq_aws::RedisSettings;
use taskq_core::cache::{CacheLayer, EmbeddedCache, FallbackLimiter, Guard, RateLimiter, RefreshingStore, StatusCache};
use taskq_core::callback::CallbackRules;
use taskq_core::faults::{FaultCounts, FaultPlan, FaultyQueue, FaultyStore};
use taskq_core::memory::{MemoryQueueConfig, MemoryTaskQueue, MemoryTaskStore};
use taskq_core::memory::{MemoryRateLimiter, MemoryStatusCache};
pub use taskq_core::rate::RolePolicy;
use taskq_core::{Catalog, SubmitRules, TaskQueue, TaskService, TaskStore};
pub use taskq_sweeper::{Sweeper, SweeperConfig};
pub use taskq_webhook::Network;
pub use taskq_webhook::RetryPolicy as WebhookRetryPolicy;
use taskq_webhook::{Deliverer, Webhooks};
use taskq_worker::targets::{HttpClient, TargetClients};
use taskq_worker::{Registry, Worker, WorkerConfig};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use esm::EventSourceConfig;

/// Where tasks and queues live.
pub enum Backend {
    Memory(MemoryQueueConfig),
    /// Given adapters: DynamoDB and SQS at AWS-compatible endpoints (moto, LocalStack, AWS).
    Ports {
        store: Arc<dyn TaskStore>,
        queue: Arc<dyn TaskQueue>,
    },
}

pub struct LocalOptions {
    pub listen: SocketAddr,
    pub backend: Backend,
    pub jwt_secret: String,
    pub worker: WorkerConfig,
    pub event_sources: EventSourceConfig,
    /// Run the emulated event source mappings (off: the API only).
    pub workers: bool,
    /// Task handlers; `None`: the built-in types, `webhook` reaching what `outbound` allows,
    /// and a handler for each `lambda` and `http` type of `types`. Given: the API also accepts
    /// every type it registers (`Catalog::accepting`).
    pub registry: Option<Registry>,
    /// The task types the API accepts (`TASKQ_TASK_TYPES`; default: the built-ins).
    pub types: Catalog,
    /// How `lambda` targets are invoked (needed when `types` has one; `http` targets use the
    /// outbound network and the webhook secret below).
    pub lambda: Option<aws_sdk_lambda::Client>,
    /// Run the sweeper this often (`None`: never).
    pub sweep_every: Option<std::time::Duration>,
    pub sweeper: SweeperConfig,
    /// Inject faults into the store and queue ports.
    pub faults: Option<FaultPlan>,
    /// Rate limits and priority caps per role.
    pub policy: RolePolicy,
    /// Status cache and rate limiter in Redis, as in AWS (`None`: both in this process).
    pub redis: Option<RedisSettings>,
    /// Accept loopback callback URLs at submission, http included: local receivers.
    pub callback: CallbackRules,
    /// What completion webhooks and `webhook` tasks may connect to: public addresses only unless
    /// told otherwise (`TASKQ_CALLBACK_ALLOW_LOOPBACK_HTTP=true` allows loopback for both).
    pub outbound: Network,
    /// How outbound requests resolve host names (`None`: the system resolver). Tests use it
    /// to make a public-looking name resolve to loopback.
    pub lookup: Option<Arc<dyn taskq_outbound::Lookup>>,
    /// The secret completion webhooks are signed with.
    pub webhook_secret: String,
    pub webhook_retry: WebhookRetryPolicy,
}

/// The webhook secret taskq-local uses when `TASKQ_WEBHOOK_SECRET` is not set. Fixed, like the
/// JWT dev secret, so a local receiver's configuration survives restarts; printed at start.
pub const DEV_WEBHOOK_SECRET: &str = "taskq-local-dev-webhook-secret";

impl LocalOptions {
    pub fn new(listen: SocketAddr, jwt_secret: impl Into<String>) -> Self {
        Self {
            listen,
            backend: Backend::Memory(MemoryQueueConfig::default()),
            jwt_secret: jwt_secret.into(),
            worker: WorkerConfig::default(),
            event_sources: EventSourceConfig::default(),
            workers: true,
            registry: None,
            types: Catalog::builtin(),
            lambda: None,
            sweep_every: Some(std::time::Duration::from_secs(60)),
            sweeper: SweeperConfig::default(),
            faults: None,
            policy: RolePolicy::default(),
            redis: None,
            callback: CallbackRules::default(),
            outbound: Network::PublicOnly,
            lookup: None,
            webhook_secret: DEV_WEBHOOK_SECRET.to_owned(),
            webhook_retry: WebhookRetryPolicy::default(),
        }
    }
}

/// A running local server. Dropping it stops the listener and the pollers.
pub struct LocalServer {
    pub addr: SocketAddr,
    /// The ports as the service sees them (with faults, when injected).
    pub store: Arc<dyn TaskStore>,
    pub queue: Arc<dyn TaskQueue>,
    /// Faults injected so far, when injecting.
    pub faults: Option<Arc<FaultCounts>>,
    /// The store under the cache refresher: counts the reads that missed the cache.
    pub refreshing: Arc<RefreshingStore>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl LocalServer {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Resolves when the server stops (never, unless its listener fails).
    pub async fn wait(mut self) {
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
    }
}

pub async fn start(options: LocalOptions) -> std::io::Result<LocalServer> {
    let (store, queue): (Arc<dyn TaskStore>, Arc<dyn TaskQueue>) = match options.backend {
        Backend::Memory(config) => (Arc::new(MemoryTaskStore::new()), Arc::new(MemoryTaskQueue::new(config))),
        Backend::Ports { store, queue } => (store, queue),
    };
    let mut counts = None;
    let (store, queue): (Arc<dyn TaskStore>, Arc<dyn TaskQueue>) = match options.faults {
        Some(plan) => {
            let c = Arc::new(FaultCounts::default());
            counts = Some(c.clone());
            (
                Arc::new(FaultyStore::new(store, plan.clone(), c.clone())),
                Arc::new(FaultyQueue::new(queue, plan, c)),
            )
        }
        None => (store, queue),
    };
    let local_limiter: Arc<dyn RateLimiter> = Arc::new(MemoryRateLimiter::new());
    let embedded = options.redis.is_none();
    let (cache, limiter, guard): (Arc<dyn StatusCache>, Arc<dyn RateLimiter>, Guard) = match options.redis {
        Some(settings) => {
            let redis = Arc::new(RedisCache::new(settings.clone()).map_err(std::io::Error::other)?);
            redis.connect_in_background();
            let limiter = Arc::new(FallbackLimiter::new(redis.clone(), local_limiter, settings.guard()));
            (redis, limiter, settings.guard())
        }
        None => (
            Arc::new(MemoryStatusCache::default()),
            local_limiter,
            Guard::new(Duration::from_millis(100), Duration::from_secs(1)),
        ),
    };
    let layer = CacheLayer::new(cache, guard);
    // Every write refreshes the cache and wakes waiters, and goes to the webhook sender: the
    // local stand-ins for the DynamoDB stream consumers.
    let (changes, feed) = tokio::sync::mpsc::unbounded_channel();
    let refreshing = Arc::new(RefreshingStore::new(store, layer.clone()).with_changes(changes));
    let store: Arc<dyn TaskStore> = refreshing.clone();
    let lookup = options.lookup.unwrap_or_else(|| Arc::new(taskq_outbound::SystemLookup));
    // Handlers given in code are accepted by the API too (the catalog cannot name them).
    let (registry, types) = match options.registry {
        Some(registry) => {
            let types = options.types.accepting(registry.types());
            (registry, types)
        }
        None => {
            let policy = taskq_worker::builtin::Webhook::policy(options.outbound.clone());
            let outbound = taskq_outbound::Outbound::with_lookup(policy, lookup.clone());
            let mut registry = Registry::with_builtins_using(taskq_worker::builtin::Webhook::with_outbound(outbound));
            let http = HttpClient::with_outbound(
                taskq_outbound::Outbound::with_lookup(HttpClient::policy(options.outbound.clone()), lookup.clone()),
                options.webhook_secret.clone().into_bytes(),
            );
            let clients = TargetClients {
                lambda: options.lambda,
                http: Some(http),
            };
            taskq_worker::targets::register(&mut registry, &options.types, &clients).map_err(std::io::Error::other)?;
            (registry, options.types)
        }
    };
    let deliverer = Deliverer::with_lookup(
        options.webhook_secret.into_bytes(),
        options.webhook_retry,
        options.outbound.clone(),
        lookup.clone(),
    )
    .map_err(std::io::Error::other)?;
    let webhooks = Webhooks::new(deliverer, store.clone());
    let state = AppState::new(
        TaskService::new(store.clone(), queue.clone()).with_cache(layer),
        Authenticator::new(Some(&options.jwt_secret), None, None),
    )
    .with_limits(options.policy, limiter)
    .with_submit_rules(SubmitRules {
        callback: options.callback,
        types,
    });
    let state = if embedded {
        state.with_cache_info(Arc::new(EmbeddedCache))
    } else {
        state
    };
    let listener = TcpListener::bind(options.listen).await?;
    let addr = listener.local_addr()?;
    // The dashboard's paths are disjoint from /v1/*, so merging cannot shadow an API route.
    let app = router(state).merge(dashboard::router());
    let mut tasks = vec![
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "HTTP server stopped");
            }
        }),
        tokio::spawn(taskq_webhook::run_feed(feed, webhooks)),
    ];
    if options.workers {
        let worker = Worker::new(store.clone(), queue.clone(), registry, options.worker);
        tasks.extend(esm::spawn(worker, queue.clone(), &options.event_sources));
    }
    if let Some(every) = options.sweep_every {
        let sweeper = Sweeper::new(store.clone(), queue.clone(), options.sweeper);
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                sweeper.sweep().await;
            }
        }));
    }
    Ok(LocalServer {
        addr,
        store,
        queue,
        faults: counts,
        refreshing,
        tasks,
    })
}
