//! Limits of the v1 contract, in one place so validation, docs and tests agree.

/// Largest `payload` accepted, serialized (256 KiB, the SQS message limit people expect).
pub const MAX_PAYLOAD_BYTES: usize = 256 * 1024;
/// Largest request body of `POST /v1/tasks`: the payload plus room for the other fields.
pub const MAX_SUBMIT_BODY_BYTES: usize = MAX_PAYLOAD_BYTES + 16 * 1024;
/// Largest request body of `POST /v1/tasks/batch`: the Lambda synchronous invocation limit.
pub const MAX_BATCH_BODY_BYTES: usize = 6 * 1024 * 1024 - 64 * 1024;
/// Payloads up to this many bytes (serialized) are kept in the task's item; larger ones in an
/// item of their own, written once (DynamoDB bills every state change by the size of the whole
/// item). The embedded store counts item sizes the same way.
pub const INLINE_PAYLOAD_BYTES: usize = 256;
/// A DynamoDB item holds at most 400 KB; an inline payload, the result and the history share
/// it. (DynamoDB's
/// limit is 400 KiB; the decimal figure keeps a margin for the estimate.)
pub const MAX_ITEM_BYTES: usize = 400 * 1000;
/// Room kept in an item, when a result is budgeted, for the writes that may follow it: the
/// terminal event, a webhook outcome, a failure in its place.
pub const ITEM_RESERVE_BYTES: usize = 4 * 1024;
pub const MAX_BATCH_ITEMS: usize = 100;
pub const MAX_DELAY_SECONDS: u32 = 900;
/// Farthest ahead `run_at` may be. Past SQS's own delay (`MAX_DELAY_SECONDS`) a task waits in
/// the table and the sweeper sends its message when it is due.
pub const MAX_SCHEDULE_AHEAD_SECONDS: i64 = 7 * 24 * 3600;
/// How far in the past `run_at` may be (clock skew); it then runs now. Older: refused.
pub const MAX_RUN_AT_PAST_SECONDS: i64 = 300;
pub const MAX_ATTEMPTS: u32 = 25;
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
pub const MAX_TIMEOUT_SECONDS: u32 = 900;
pub const DEFAULT_TIMEOUT_SECONDS: u32 = 60;
pub const MAX_LIST_LIMIT: u32 = 100;
pub const DEFAULT_LIST_LIMIT: u32 = 20;
pub const MAX_WAIT_SECONDS: u32 = 20;
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;
/// Idempotency keys are remembered this long, then a key may be used again.
pub const IDEMPOTENCY_TTL_SECONDS: i64 = 24 * 3600;

/// The largest result a handler may return for a task whose item holds `item_bytes` now
/// ([`crate::Task::item_bytes`]): whatever the item has left after the reserve, capped at the
/// payload limit.
pub fn max_result_bytes(item_bytes: usize) -> usize {
    MAX_ITEM_BYTES
        .saturating_sub(ITEM_RESERVE_BYTES)
        .saturating_sub(item_bytes)
        .min(MAX_PAYLOAD_BYTES)
}
