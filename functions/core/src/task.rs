//! The task and the values it is made of.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use ulid::Ulid;

/// A task id: a ULID, so a user's tasks sort by creation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskId(Ulid);

static GENERATOR: std::sync::Mutex<ulid::Generator> = std::sync::Mutex::new(ulid::Generator::new());

impl TaskId {
    /// A new id, greater than every id this process made before, even within one millisecond,
    /// so a user's tasks list in submission order. (Across processes, same-millisecond ids
    /// order arbitrarily.)
    pub fn new() -> Self {
        let mut g = GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
        Self(g.generate().unwrap_or_else(|_| Ulid::new()))
    }
    pub fn from_ulid(ulid: Ulid) -> Self {
        Self(ulid)
    }
    pub fn ulid(&self) -> Ulid {
        self.0
    }
}

impl Default for TaskId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for TaskId {
    type Err = ulid::DecodeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ulid::from_string(s).map(Self)
    }
}

/// The task types every worker has (`taskq-worker`'s built-in handlers); metrics name only
/// known types (see [`crate::metrics::type_dimension`]).
pub const BUILTIN_TYPES: &[&str] = &["echo", "sleep", "fail", "webhook"];

/// A task type: 1-64 characters of `[a-z0-9_.-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct TaskType(String);

impl TaskType {
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        if s.is_empty() || s.len() > 64 {
            return Err("must be 1-64 characters");
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-'))
        {
            return Err("may only contain a-z, 0-9, '_', '.' and '-'");
        }
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TaskType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TaskType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

macro_rules! string_enum {
    ($name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "lowercase")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub fn as_str(&self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(format!(
                        "must be one of {}",
                        [$($text),+].join(", ")
                    )),
                }
            }
        }
    };
}

string_enum!(Priority { High => "high", Normal => "normal", Low => "low" });
string_enum!(Status {
    Queued => "queued",
    Running => "running",
    Succeeded => "succeeded",
    Failed => "failed",
    Cancelled => "cancelled",
    Dead => "dead",
});

impl Status {
    pub fn is_terminal(&self) -> bool {
        !matches!(self, Status::Queued | Status::Running)
    }
}

/// Why a task failed (or why its last attempt did).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskFailure {
    pub kind: String,
    pub message: String,
}

/// Longest `error.kind` and `error.message` kept, in UTF-8 bytes (what DynamoDB counts): a
/// handler's error text is stored in the item (twice: the error and the history event), which
/// holds at most 400 KB in all.
pub const MAX_ERROR_KIND_BYTES: usize = 64;
pub const MAX_ERROR_MESSAGE_BYTES: usize = 1000;

impl TaskFailure {
    /// Cuts `kind` and `message` to [`MAX_ERROR_KIND_BYTES`] and [`MAX_ERROR_MESSAGE_BYTES`]
    /// (on a character boundary; a cut message ends with `…`, within the limit).
    pub fn new(kind: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            kind: cut(kind.into(), MAX_ERROR_KIND_BYTES),
            message: cut(message.into(), MAX_ERROR_MESSAGE_BYTES),
        }
    }
}

#[cfg(test)]
mod failure_tests {
    use super::*;

    #[test]
    fn error_texts_are_cut_by_bytes_on_a_character_boundary() {
        let f = TaskFailure::new("k".repeat(100), "é".repeat(5000));
        assert!(f.kind.len() <= MAX_ERROR_KIND_BYTES && f.kind.ends_with('…'));
        assert!(f.message.len() <= MAX_ERROR_MESSAGE_BYTES && f.message.ends_with('…'));
        assert!(f.message.len() > MAX_ERROR_MESSAGE_BYTES - 8);
        let short = TaskFailure::new("kind", "short");
        assert_eq!((short.kind.as_str(), short.message.as_str()), ("kind", "short"));
    }
}

fn cut(mut s: String, max_bytes: usize) -> String {
    const MARK: char = '…';
    if s.len() <= max_bytes {
        return s;
    }
    let mut end = max_bytes.saturating_sub(MARK.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push(MARK);
    s
}

/// What happened to a task. `seq` counts from 1 in the order events were written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskEvent {
    pub seq: u32,
    pub at: DateTime<Utc>,
    #[serde(rename = "type")]
    pub kind: EventKind,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub from: Option<Status>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub to: Option<Status>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub attempt: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Submitted,
    Started,
    /// A delivery found the previous attempt's lease expired (its worker died) and took over.
    LeaseExpired,
    Succeeded,
    RetryScheduled,
    Failed,
    CancelRequested,
    Cancelled,
    Dead,
    /// The sweeper sent a queued task's message again (it had none, or it was lost).
    MessageResent,
    /// The sweeper sent the first message of a task scheduled beyond SQS's 15-minute delay.
    Enqueued,
    /// An operator moved the task's message back from the dead-letter queue.
    Redriven,
    /// Its owner asked for a finished (failed, dead or cancelled) task to run again.
    Retried,
    /// The task's completion webhook was answered with a 2xx (`attempt`: attempts made).
    WebhookDelivered,
    /// The task's completion webhook gave up (`detail`: the last error).
    WebhookFailed,
}

impl EventKind {
    /// Events that record a state change. The others (webhook outcomes) are notes appended to
    /// a task without changing it; [`crate::ports::TaskStore::record`] writes them.
    pub fn is_transition(&self) -> bool {
        !matches!(self, EventKind::WebhookDelivered | EventKind::WebhookFailed)
    }
}

/// Shards of the index of unfinished tasks: spreading them keeps one priority's writes under a
/// partition's limit (1,000 WCU/s each, so 8,000 state changes per second per priority).
pub const ACTIVE_SHARDS: u8 = 8;

/// The shard of the unfinished-task index a task lives in, from its id's random bits.
pub fn active_shard(id: TaskId) -> u8 {
    (id.ulid().random() % u128::from(ACTIVE_SHARDS)) as u8
}

/// A task as clients see it (its JSON is the contract's task object) plus the fields the
/// service keeps for itself (`user_id`, `lease_until`, `history`), which are not serialized.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: TaskId,
    #[serde(skip)]
    pub user_id: String,
    #[serde(rename = "type")]
    pub task_type: TaskType,
    pub priority: Priority,
    pub status: Status,
    pub payload: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<TaskFailure>,
    pub attempts: u32,
    pub max_attempts: u32,
    pub timeout_seconds: u32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub cancel_requested: bool,
    /// Where to POST the task once it is terminal (see `taskq-webhook`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub callback_url: Option<String>,
    /// While running: when the attempt's worker is presumed dead if it has not written.
    #[serde(skip)]
    pub lease_until: Option<DateTime<Utc>>,
    /// Attempts ever started, redrives included: unlike `attempts`, which a redrive starts over,
    /// it never decreases, so a change conditioned on it cannot be applied by a worker of an
    /// earlier run.
    #[serde(skip)]
    pub runs: u32,
    /// The token of the last write (see [`crate::transition::StateChange::token`]): a write whose
    /// response was lost finds its own token and knows it was applied.
    #[serde(skip)]
    pub write_token: Option<String>,
    #[serde(skip)]
    pub history: Vec<TaskEvent>,
}

impl Task {
    /// The size of this task's DynamoDB item, estimated as DynamoDB counts it (attribute names
    /// and values, strings as UTF-8 bytes) from above: the public JSON (payload and result are
    /// stored as their JSON text, the same bytes), the history as JSON (a map's braces, quotes
    /// and colons count more than DynamoDB does), and the keys and bookkeeping attributes. The
    /// embedded store refuses writes past [`crate::limits::MAX_ITEM_BYTES`] by it, as DynamoDB
    /// refuses items past 400 KB, and the worker budgets results with it.
    pub fn item_bytes(&self) -> usize {
        let payload = json_len(&self.payload);
        // A payload over the inline limit lives in an item of its own.
        let apart = if payload > crate::limits::INLINE_PAYLOAD_BYTES {
            payload
        } else {
            0
        };
        let public = json_len(self) - apart;
        let history: usize = self.history.iter().map(json_len).sum();
        // pk, sk, gsi2pk, gsi2sk (each holding the user id or the task id, and a prefix),
        // user_id, runs, write_token, lease_until, expires_at, payload_bytes: names and
        // values.
        let keys = 3 * self.user_id.len() + 300;
        public + history + keys
    }
}

/// Serialized length. Serializing a task or an event cannot fail (no maps with non-string
/// keys); were it to, the item counts as full.
fn json_len<T: Serialize>(v: &T) -> usize {
    serde_json::to_vec(v).map(|v| v.len()).unwrap_or(usize::MAX / 4)
}

/// See [`Task::send_delay`].
pub fn send_delay(run_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Option<std::time::Duration> {
    let Some(run_at) = run_at else {
        return Some(std::time::Duration::ZERO);
    };
    let wait = (run_at - now).to_std().unwrap_or_default();
    (wait.as_secs_f64() <= f64::from(crate::limits::MAX_DELAY_SECONDS)).then_some(wait)
}

/// A queued task scheduled beyond SQS's delay whose message has not been sent yet. Every send
/// after submission records an event, which moves `updated_at` within reach of `run_at`.
pub fn awaiting_enqueue(status: Status, run_at: Option<DateTime<Utc>>, updated_at: DateTime<Utc>) -> bool {
    status == Status::Queued
        && run_at.is_some_and(|r| r - updated_at > chrono::Duration::seconds(crate::limits::MAX_DELAY_SECONDS.into()))
}

impl Task {
    /// How long its message should wait in the queue if sent at `now`, or `None` when the task
    /// is due beyond SQS's longest delay (15 minutes): it then waits in the table, and the
    /// sweeper sends its message once it comes within reach.
    pub fn send_delay(&self, now: DateTime<Utc>) -> Option<std::time::Duration> {
        send_delay(self.run_at, now)
    }

    /// The message that stands for this task in its queue.
    pub fn message(&self) -> crate::ports::TaskMessage {
        crate::ports::TaskMessage {
            user_id: self.user_id.clone(),
            task_id: self.id,
            priority: self.priority,
            timeout_seconds: self.timeout_seconds,
            run_at: self.run_at,
        }
    }
}
