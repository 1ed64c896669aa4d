//! Lambda entry point of the API: the axum Router under `lambda_http`.

use std::sync::Arc;

use taskq_api::{router, AppState, Authenticator};
use taskq_core::cache::{CacheLayer, FallbackLimiter, RateLimiter};
use taskq_core::memory::MemoryRateLimiter;
use taskq_core::rate::RolePolicy;
use taskq_core::TaskService;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    taskq_aws::telemetry::init();
    let aws = taskq_aws::AwsConfig::from_env()?;
    let policy = RolePolicy::from_env()?;
    let authenticator = Authenticator::from_env();
    let redis = match taskq_aws::RedisSettings::from_env()? {
        Some(settings) => {
            let redis = taskq_aws::RedisCache::new(settings.clone())?;
            redis.connect_in_background();
            Some((Arc::new(redis), settings))
        }
        None => None,
    };
    let sdk = taskq_aws::AwsConfig::sdk_config().await;
    let (store, queue) = aws.adapters_from(&sdk);
    let mut service = TaskService::new(Arc::new(store), Arc::new(queue));
    let local: Arc<dyn RateLimiter> = Arc::new(MemoryRateLimiter::new());
    let limiter = match redis {
        Some((redis, settings)) => {
            service = service.with_cache(CacheLayer::new(redis.clone(), settings.guard()));
            Arc::new(FallbackLimiter::new(redis, local, settings.guard())) as Arc<dyn RateLimiter>
        }
        None => local,
    };
    let types = taskq_core::Catalog::from_env()?;
    taskq_core::metrics::set_known_types(types.names());
    let mut state = AppState::new(service, authenticator)
        .with_limits(policy, limiter)
        .with_submit_rules(taskq_core::SubmitRules {
            types,
            ..Default::default()
        });
    // Set by the template: only requests that came through CloudFront are served.
    if let Some(secret) = std::env::var("TASKQ_ORIGIN_VERIFY").ok().filter(|s| !s.is_empty()) {
        state = state.with_origin_secret(secret);
    }
    if let Some(info) = taskq_aws::elasticache::ElastiCacheDescriber::from_env(&sdk) {
        state = state.with_cache_info(Arc::new(info));
    }
    lambda_http::run(router(state)).await
}
