//! In-memory adapters with the semantics of DynamoDB and SQS that taskq relies on: conditional
//! writes; visibility timeouts, receive counts, per-message delay and a dead-letter queue.
//! They back the local server by default and run the same contract suite as the AWS adapters.

mod cache;
mod queue;
mod store;

pub use cache::{MemoryRateLimiter, MemoryStatusCache};

pub use queue::{MemoryQueueConfig, MemoryTaskQueue};
pub use store::MemoryTaskStore;
