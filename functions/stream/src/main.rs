//! Lambda entry point of the stream consumer (a DynamoDB stream event source invokes it).

use std::sync::Arc;

use aws_lambda_events::dynamodb::Event;
use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use taskq_core::cache::CacheLayer;
use taskq_stream::{handle, StreamReport};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    taskq_aws::telemetry::init();
    let settings =
        taskq_aws::RedisSettings::from_env()?.ok_or("TASKQ_REDIS_URL must be set for the stream consumer")?;
    let guard = settings.guard();
    let redis = taskq_aws::RedisCache::new(settings)?;
    redis.connect_in_background();
    let cache = CacheLayer::new(Arc::new(redis), guard);
    run(service_fn(|event: LambdaEvent<Event>| {
        let cache = cache.clone();
        async move { Ok::<StreamReport, Error>(handle(&event.payload, &cache).await) }
    }))
    .await
}
