//! Lambda entry point of the API: the axum Router under `lambda_http`.

use std::sync::Arc;

use taskq_api::{router, AppState, Authenticator};
use taskq_core::cache::{CacheLayer, FallbackLimiter, RateLimiter};
use taskq_core::memory::MemoryRateLimiter;
use taskq_core::rate::RolePolicy;
use taskq_core::TaskService;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    taskq_aws::telemetry::init();
    let aws = taskq_aws::AwsConfig::from_env()?;
    let policy = RolePolicy::from_env()?;
    let sdk = taskq_aws::AwsConfig::sdk_config().await;
    let (store, queue) = aws.adapters_from(&sdk);
    let mut service = TaskService::new(Arc::new(store), Arc::new(queue));
    let local: Arc<dyn RateLimiter> = Arc::new(MemoryRateLimiter::new());
    let limiter = match taskq_aws::RedisSettings::from_env()? {
        Some(settings) => {
            let guard = settings.guard();
            let redis = Arc::new(taskq_aws::RedisCache::new(settings.clone())?);
            service = service.with_cache(CacheLayer::new(redis.clone(), settings.guard()));
            Arc::new(FallbackLimiter::new(redis, local, guard)) as Arc<dyn RateLimiter>
        }
        None => local,
    };
    let mut state = AppState::new(service, Authenticator::from_env()).with_limits(policy, limiter);
    if let Some(info) = taskq_aws::elasticache::ElastiCacheDescriber::from_env(&sdk) {
        state = state.with_cache_info(Arc::new(info));
    }
    lambda_http::run(router(state)).await
}
