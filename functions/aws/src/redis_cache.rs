//! Redis (ElastiCache in AWS, redis-server locally) as the status cache and the shared rate
//! limiter. Connections are made once per process and reused across Lambda invocations; the
//! first one is made lazily so a cache that is down at cold start does not stop the function.
//!
//! ElastiCache Serverless speaks cluster mode over TLS: `TASKQ_REDIS_URL=rediss://...` with
//! `TASKQ_REDIS_CLUSTER=true`. Every command here touches one key, so no cross-slot issue arises.
//! Pub/sub uses a plain connection to the endpoint: in cluster mode a PUBLISH reaches every node.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::StreamExt;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Script, Value};
use taskq_core::cache::{self, CacheError, CacheTtl, ChangeWatch, Guard, RateLimiter, StatusCache};
use taskq_core::rate::{Quota, RateDecision};
use taskq_core::{Task, TaskId};
use tokio::sync::OnceCell;

/// Settings from the environment; see the README's configuration table.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisSettings {
    pub url: String,
    pub cluster: bool,
    /// Bound of one cache or limiter call before the request goes on without it.
    pub timeout: Duration,
    /// After a failure, calls skip Redis this long.
    pub pause: Duration,
    pub ttl: CacheTtl,
}

impl RedisSettings {
    /// `None` when `TASKQ_REDIS_URL` is unset: no cache, in-process rate limits.
    pub fn from_env() -> Result<Option<Self>, String> {
        Self::from_env_with(None)
    }

    /// As [`from_env`](Self::from_env), with `url` (a command-line flag) over `TASKQ_REDIS_URL`.
    pub fn from_env_with(url: Option<String>) -> Result<Option<Self>, String> {
        let var = |n: &str| std::env::var(n).ok().filter(|v| !v.trim().is_empty());
        let Some(url) = url.or_else(|| var("TASKQ_REDIS_URL")) else {
            return Ok(None);
        };
        let num = |n: &str, default: u64| -> Result<u64, String> {
            var(n).map_or(Ok(default), |v| {
                v.trim()
                    .parse()
                    .map_err(|_| format!("{n} must be a whole number, got {v:?}"))
            })
        };
        let cluster = match var("TASKQ_REDIS_CLUSTER").as_deref() {
            None | Some("false") | Some("0") => false,
            Some("true") | Some("1") => true,
            Some(other) => return Err(format!("TASKQ_REDIS_CLUSTER must be true or false, got {other:?}")),
        };
        Ok(Some(Self {
            url,
            cluster,
            timeout: Duration::from_millis(num("TASKQ_CACHE_TIMEOUT_MS", 10)?),
            pause: Duration::from_millis(num("TASKQ_CACHE_PAUSE_MS", 1000)?),
            ttl: CacheTtl {
                active: Duration::from_millis(num("TASKQ_CACHE_TTL_ACTIVE_MS", 2000)?),
                terminal: Duration::from_secs(num("TASKQ_CACHE_TTL_TERMINAL_SECONDS", 3600)?),
            },
        }))
    }

    pub fn guard(&self) -> Guard {
        Guard::new(self.timeout, self.pause)
    }
}

/// One multiplexed connection, standalone or cluster; both reconnect by themselves.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// GCRA in one atomic step, on Redis's clock so every API instance agrees. Mirrors
/// `taskq_core::rate::gcra`. ARGV: emission interval (µs), burst. Returns
/// {allowed, remaining, retry_after_us, reset_us}.
const GCRA: &str = r#"
local t = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + t
local allow_at = new_tat - t * burst
if allow_at > now then
  return {0, 0, allow_at - now, tat - now}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, math.floor((now - allow_at) / t), 0, new_tat - now}
"#;

/// Set unless a newer version is cached. ARGV: version, entry, ttl (ms).
const PUT_IF_NEWER: &str = r#"
local current = redis.call('GET', KEYS[1])
if current then
  local v = tonumber(string.match(current, '^{"v":(%d+)'))
  if v and v > tonumber(ARGV[1]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"#;

/// One connection, standalone or cluster. The client's own connect and response timeouts are
/// a backstop against a dead endpoint; callers' guards are tighter.
async fn connect(client: &redis::Client, settings: &RedisSettings) -> Result<Conn, CacheError> {
    let limit = Duration::from_secs(2);
    if settings.cluster {
        let client = redis::cluster::ClusterClientBuilder::new(vec![settings.url.as_str()])
            .connection_timeout(limit)
            .response_timeout(limit)
            .build()
            .map_err(unavailable)?;
        Ok(Conn::Cluster(client.get_async_connection().await.map_err(unavailable)?))
    } else {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(limit))
            .set_response_timeout(Some(limit))
            .set_number_of_retries(1);
        let manager = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(unavailable)?;
        Ok(Conn::Single(manager))
    }
}

pub struct RedisCache {
    settings: RedisSettings,
    client: redis::Client,
    conn: Arc<OnceCell<Conn>>,
    gcra: Script,
    put_if_newer: Script,
}

fn unavailable(e: redis::RedisError) -> CacheError {
    CacheError::Unavailable(Box::new(e))
}

impl RedisCache {
    /// Checks the URL; connects on first use.
    pub fn new(settings: RedisSettings) -> Result<Self, String> {
        let client = redis::Client::open(settings.url.as_str())
            .map_err(|e| format!("TASKQ_REDIS_URL is not a Redis URL: {e}"))?;
        Ok(Self {
            settings,
            client,
            conn: Arc::new(OnceCell::new()),
            gcra: Script::new(GCRA),
            put_if_newer: Script::new(PUT_IF_NEWER),
        })
    }

    pub fn settings(&self) -> &RedisSettings {
        &self.settings
    }

    /// Starts connecting in a task of its own and returns at once (no I/O before it does):
    /// the API's main calls it so the first request finds the connection made or under way.
    pub fn connect_in_background(&self) {
        drop(self.spawn_connect());
    }

    /// A connection's first set-up (TCP, TLS, cluster discovery with ElastiCache) takes longer
    /// than one cache call may (10 ms by default): made inside a caller's future, each caller's
    /// timeout would cancel it and the cache would never connect. It runs in a spawned task,
    /// which a caller's timeout does not cancel; callers wait for it within their own budget,
    /// and a later call finds it made. Concurrent callers share one attempt (the `OnceCell`).
    fn spawn_connect(&self) -> tokio::task::JoinHandle<Result<Conn, CacheError>> {
        let (cell, client, settings) = (self.conn.clone(), self.client.clone(), self.settings.clone());
        tokio::spawn(async move { cell.get_or_try_init(|| connect(&client, &settings)).await.cloned() })
    }

    async fn conn(&self) -> Result<Conn, CacheError> {
        if let Some(conn) = self.conn.get() {
            return Ok(conn.clone());
        }
        self.spawn_connect()
            .await
            .map_err(|e| CacheError::Unavailable(Box::new(e)))?
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &Cmd) -> Result<T, CacheError> {
        let mut conn = self.conn().await?;
        cmd.query_async(&mut conn).await.map_err(unavailable)
    }
}

#[async_trait]
impl StatusCache for RedisCache {
    async fn get(&self, user_id: &str, id: TaskId) -> Result<Option<Task>, CacheError> {
        let raw: Option<String> = self.query(redis::cmd("GET").arg(cache::task_key(user_id, id))).await?;
        Ok(raw.and_then(|r| cache::decode(user_id, &r)))
    }

    async fn put(&self, task: &Task) -> Result<(), CacheError> {
        let mut conn = self.conn().await?;
        let ttl_ms = self.settings.ttl.of(task.status).as_millis() as u64;
        let _: i64 = self
            .put_if_newer
            .key(cache::task_key(&task.user_id, task.id))
            .arg(cache::version(task))
            .arg(cache::encode(task))
            .arg(ttl_ms.max(1))
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn remove(&self, user_id: &str, id: TaskId) -> Result<(), CacheError> {
        let _: i64 = self.query(redis::cmd("DEL").arg(cache::task_key(user_id, id))).await?;
        Ok(())
    }

    async fn publish(&self, user_id: &str, id: TaskId) -> Result<(), CacheError> {
        let _: i64 = self
            .query(redis::cmd("PUBLISH").arg(cache::task_key(user_id, id)).arg("changed"))
            .await?;
        Ok(())
    }

    async fn subscribe(&self, user_id: &str, id: TaskId) -> Result<Box<dyn ChangeWatch>, CacheError> {
        let mut pubsub = self.client.get_async_pubsub().await.map_err(unavailable)?;
        pubsub
            .subscribe(cache::task_key(user_id, id))
            .await
            .map_err(unavailable)?;
        Ok(Box::new(RedisWatch { pubsub }))
    }

    async fn ping(&self) -> Result<Duration, CacheError> {
        let mut conn = self.conn().await?;
        let start = Instant::now();
        let _: String = redis::cmd("PING").query_async(&mut conn).await.map_err(unavailable)?;
        Ok(start.elapsed())
    }
}

struct RedisWatch {
    pubsub: redis::aio::PubSub,
}

#[async_trait]
impl ChangeWatch for RedisWatch {
    async fn changed(&mut self) -> Result<(), CacheError> {
        match self.pubsub.on_message().next().await {
            Some(_) => Ok(()),
            None => Err(CacheError::Unavailable("the subscription's connection closed".into())),
        }
    }
}

#[async_trait]
impl RateLimiter for RedisCache {
    async fn acquire(&self, key: &str, quota: Quota) -> Result<RateDecision, CacheError> {
        let mut conn = self.conn().await?;
        let (allowed, remaining, retry_after_us, reset_us): (i64, i64, i64, i64) = self
            .gcra
            .key(format!("taskq:rl:{key}"))
            .arg(quota.emission_us())
            .arg(quota.burst)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let micros = |v: i64| Duration::from_micros(v.max(0) as u64);
        Ok(RateDecision {
            allowed: allowed == 1,
            limit: quota.burst,
            remaining: remaining.clamp(0, i64::from(u32::MAX)) as u32,
            reset: micros(reset_us),
            retry_after: micros(retry_after_us),
        })
    }
}
