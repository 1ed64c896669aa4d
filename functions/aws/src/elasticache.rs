//! The ElastiCache describe calls behind `GET /v1/admin/cache`. The template deploys
//! ElastiCache Serverless, so `DescribeServerlessCaches` is tried first; a node-based
//! deployment (or an emulator without the serverless API: moto answers it with HTTP 500) is
//! described with `DescribeReplicationGroups`, then `DescribeCacheClusters`.

use std::sync::LazyLock;

use async_trait::async_trait;
use aws_sdk_elasticache::Client;
use serde_json::json;
use taskq_core::cache::{CacheDescriber, CacheDescription, CacheError};

pub struct ElastiCacheDescriber {
    /// Built on the first describe. Only the admin endpoint describes the cache, so building the
    /// client at init (its endpoint rules parse the partition table and compile its regexes)
    /// would cost every API cold start for a call most never make.
    client: LazyLock<Client, Box<dyn FnOnce() -> Client + Send>>,
    /// The serverless cache name, replication group id or cache cluster id.
    name: String,
}

fn failed(call: &str, e: impl std::fmt::Display) -> String {
    format!("{call}: failed ({e})")
}

impl ElastiCacheDescriber {
    pub fn new(client: Client, name: impl Into<String>) -> Self {
        Self {
            client: LazyLock::new(Box::new(move || client)),
            name: name.into(),
        }
    }

    /// From `TASKQ_CACHE_NAME`; `None` when unset.
    pub fn from_env(sdk: &aws_config::SdkConfig) -> Option<Self> {
        let name = std::env::var("TASKQ_CACHE_NAME").ok().filter(|n| !n.is_empty())?;
        Some(Self::from_config(sdk, name))
    }

    /// A describer whose client is built from `sdk` on its first call.
    pub fn from_config(sdk: &aws_config::SdkConfig, name: impl Into<String>) -> Self {
        let sdk = sdk.clone();
        Self {
            client: LazyLock::new(Box::new(move || Client::new(&sdk))),
            name: name.into(),
        }
    }

    async fn serverless(&self) -> Result<Option<CacheDescription>, String> {
        let out = self
            .client
            .describe_serverless_caches()
            .serverless_cache_name(&self.name)
            .send()
            .await
            .map_err(|e| aws_sdk_elasticache::error::DisplayErrorContext(e).to_string())?;
        Ok(out.serverless_caches().first().map(|c| {
            let limits = c.cache_usage_limits().map(|l| {
                json!({
                    "data_storage_gb": l.data_storage().map(|d| json!({"minimum": d.minimum(), "maximum": d.maximum()})),
                    "ecpu_per_second": l.ecpu_per_second().map(|e| json!({"minimum": e.minimum(), "maximum": e.maximum()})),
                })
            });
            CacheDescription {
                kind: "serverless".into(),
                name: c.serverless_cache_name().unwrap_or(&self.name).to_owned(),
                status: c.status().map(str::to_owned),
                endpoint: c
                    .endpoint()
                    .and_then(|e| e.address().map(|a| format!("{a}:{}", e.port().unwrap_or(6379)))),
                engine: c.engine().map(str::to_owned),
                engine_version: c.full_engine_version().or(c.major_engine_version()).map(str::to_owned),
                usage_limits: limits,
                described_by: vec![],
            }
        }))
    }

    async fn replication_group(&self) -> Result<Option<CacheDescription>, String> {
        let out = self
            .client
            .describe_replication_groups()
            .replication_group_id(&self.name)
            .send()
            .await
            .map_err(|e| aws_sdk_elasticache::error::DisplayErrorContext(e).to_string())?;
        Ok(out.replication_groups().first().map(|g| {
            let endpoint = g
                .configuration_endpoint()
                .or_else(|| g.node_groups().first().and_then(|n| n.primary_endpoint()))
                .and_then(|e| e.address().map(|a| format!("{a}:{}", e.port().unwrap_or(6379))));
            CacheDescription {
                kind: "replication_group".into(),
                name: g.replication_group_id().unwrap_or(&self.name).to_owned(),
                status: g.status().map(str::to_owned),
                endpoint,
                engine: g.engine().map(str::to_owned),
                engine_version: None,
                usage_limits: None,
                described_by: vec![],
            }
        }))
    }

    async fn cache_cluster(&self) -> Result<Option<CacheDescription>, String> {
        let out = self
            .client
            .describe_cache_clusters()
            .cache_cluster_id(&self.name)
            .show_cache_node_info(true)
            .send()
            .await
            .map_err(|e| aws_sdk_elasticache::error::DisplayErrorContext(e).to_string())?;
        Ok(out.cache_clusters().first().map(|c| {
            let endpoint = c
                .configuration_endpoint()
                .or_else(|| c.cache_nodes().first().and_then(|n| n.endpoint()))
                .and_then(|e| e.address().map(|a| format!("{a}:{}", e.port().unwrap_or(6379))));
            CacheDescription {
                kind: "cache_cluster".into(),
                name: c.cache_cluster_id().unwrap_or(&self.name).to_owned(),
                status: c.cache_cluster_status().map(str::to_owned),
                endpoint,
                engine: c.engine().map(str::to_owned),
                engine_version: c.engine_version().map(str::to_owned),
                usage_limits: None,
                described_by: vec![],
            }
        }))
    }
}

#[async_trait]
impl CacheDescriber for ElastiCacheDescriber {
    async fn describe(&self) -> Result<CacheDescription, CacheError> {
        let mut trail = Vec::new();
        for call in [
            "DescribeServerlessCaches",
            "DescribeReplicationGroups",
            "DescribeCacheClusters",
        ] {
            let outcome = match call {
                "DescribeServerlessCaches" => self.serverless().await,
                "DescribeReplicationGroups" => self.replication_group().await,
                _ => self.cache_cluster().await,
            };
            match outcome {
                Ok(Some(mut d)) => {
                    trail.push(format!("{call}: found"));
                    d.described_by = trail;
                    return Ok(d);
                }
                Ok(None) => trail.push(format!("{call}: not found")),
                Err(e) => trail.push(failed(call, e)),
            }
        }
        Err(CacheError::Unavailable(
            format!("no cache named {:?}: {}", self.name, trail.join("; ")).into(),
        ))
    }
}
