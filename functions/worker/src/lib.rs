//! The taskq worker: the SQS batch handler (a plain function of its inputs, called by the Lambda
//! main, by the local server's event-source emulation and by tests) and the registry of task
//! handlers it runs.

pub mod batch;
pub mod builtin;
pub mod config;
pub mod registry;
pub mod sqs;
pub mod targets;

pub use batch::Worker;
pub use config::WorkerConfig;
pub use registry::{HandlerError, Registry, TaskContext, TaskHandler};
