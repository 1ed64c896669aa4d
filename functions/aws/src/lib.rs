//! taskq's ports over AWS: [`DynamoDbTaskStore`] and [`SqsTaskQueue`], the configuration that
//! builds them from the environment (one binary runs against AWS, moto or LocalStack through
//! `AWS_ENDPOINT_URL`), a bootstrap that creates the resources for local runs and tests, and the
//! telemetry set-up shared by the Lambda binaries.

pub mod accounting;
pub mod bootstrap;
pub mod config;
mod dynamodb;
pub mod elasticache;
pub mod emf;
mod item;
pub mod redis_cache;
pub mod secrets;
mod sqs;
pub mod telemetry;
pub mod testing;

pub use config::{AwsConfig, QueueUrls};
pub use dynamodb::DynamoDbTaskStore;
pub use item::{payload_is_separate, task_from_image, task_to_image, ItemError};
pub use redis_cache::{RedisCache, RedisSettings};
pub use sqs::SqsTaskQueue;
