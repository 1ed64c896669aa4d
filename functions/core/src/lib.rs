//! taskq's domain and service logic. It knows the store and the queue only as traits
//! ([`ports::TaskStore`], [`ports::TaskQueue`]); AWS lives in `taskq-aws`, and the in-memory
//! adapters in [`memory`] give tests and the local server the same semantics.

pub mod admin;
pub mod cache;
pub mod callback;
pub mod catalog;
pub mod faults;
pub mod identity;
pub mod limits;
pub mod memory;
pub mod metrics;
pub mod ports;
pub mod rate;
pub mod service;
pub mod submit;
pub mod task;
#[cfg(feature = "token")]
pub mod token;
pub mod trace;
pub mod transition;

pub use catalog::{Catalog, Target, TypeSpec};
pub use ports::{
    ActivePage, ActiveQuery, ActiveTask, Created, Delivery, IdempotencyClaim, ListQuery, QueueError, QueueStats,
    RedrivePath, StoreError, TaskMessage, TaskPage, TaskQueue, TaskStore,
};
pub use service::{ServiceError, Submitted, TaskService};
pub use submit::{FieldError, NewTask, SubmitRules};
pub use task::{
    active_shard, EventKind, Priority, Status, Task, TaskEvent, TaskFailure, TaskId, TaskType, ACTIVE_SHARDS,
};
pub use transition::{InvalidTransition, Snapshot, StateChange, Transition};
