//! The task state machine. Every state change is planned here as a [`StateChange`]: the state it
//! expects (status, attempt count and run count) and what it writes, history event included.
//! Stores apply a change only if the task is still in the expected state, so a duplicate delivery
//! or a stale worker can never move a task twice. The run count never repeats over a task's life
//! (a redrive starts `attempts` over but not `runs`), so a worker from before a redrive cannot
//! commit onto the new run. Changes that move none of the three (a re-send, an enqueue, a cancel
//! request) are conditioned on the `updated_at` their caller read as well. Every change carries
//! a fresh token, written with it: a write retried after a lost response (the SDK retries)
//! fails its condition against its own result, finds its own token there, and counts as applied.

use chrono::{DateTime, Utc};
use serde_json::Value;
use thiserror::Error;

use crate::task::{EventKind, Priority, Status, Task, TaskEvent, TaskFailure};

/// What a caller knows of a task's current state: enough to plan a conditional change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub priority: Priority,
    pub status: Status,
    pub attempts: u32,
    /// Attempts ever started ([`Task::runs`]).
    pub runs: u32,
    pub max_attempts: u32,
    pub cancel_requested: bool,
    /// When the task was last written, if the caller read it: changes that move neither status,
    /// attempts nor runs (a re-send, an enqueue, a cancel request) are conditioned on it, so two
    /// callers racing on one task write once.
    pub updated_at: Option<DateTime<Utc>>,
}

impl From<&Task> for Snapshot {
    fn from(t: &Task) -> Self {
        Self {
            priority: t.priority,
            status: t.status,
            attempts: t.attempts,
            runs: t.runs,
            max_attempts: t.max_attempts,
            cancel_requested: t.cancel_requested,
            updated_at: Some(t.updated_at),
        }
    }
}

/// A fresh write token: 64 random bits, so two writes never share one in practice.
pub fn new_write_token() -> String {
    format!("{:016x}", fastrand::u64(..))
}

/// The moves a task can make.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    /// queued -> running: the next attempt begins and holds a lease until `lease_until`.
    Start { lease_until: DateTime<Utc> },
    /// running -> running: the previous attempt's lease expired; a new attempt takes over.
    TakeOver { lease_until: DateTime<Utc> },
    /// running -> succeeded.
    Succeed { result: Value },
    /// running -> queued, to run again at `run_at`.
    Retry { error: TaskFailure, run_at: DateTime<Utc> },
    /// running -> failed.
    Fail { error: TaskFailure },
    /// queued -> cancelled, or running -> cancelled once the running attempt has ended.
    Cancel { error: Option<TaskFailure> },
    /// running -> running with `cancel_requested`.
    RequestCancel,
    /// queued | running -> dead: the queue gave up on its message.
    Dead { detail: String },
    /// queued -> queued: the sweeper re-sends the message of a task stranded without one.
    Resend { reason: String },
    /// queued -> queued: a task scheduled (`run_at`) past SQS's delay got its message now.
    Enqueue { run_at: DateTime<Utc> },
    /// dead -> queued: the message was redriven from the dead-letter queue; attempts start over.
    Revive,
    /// failed | dead | cancelled -> queued: its owner asked for it to run again, with a fresh
    /// attempt budget (`POST /v1/tasks/{id}/retry`). Like a redrive, `runs` goes on counting.
    Rerun,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("a {from} task cannot {action}")]
pub struct InvalidTransition {
    pub from: Status,
    pub action: &'static str,
}

/// A field a change may leave alone, set, or remove.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Field<T> {
    #[default]
    Keep,
    Set(T),
    Clear,
}

impl<T: Clone> Field<T> {
    fn apply(&self, slot: &mut Option<T>) {
        match self {
            Field::Keep => {}
            Field::Set(v) => *slot = Some(v.clone()),
            Field::Clear => *slot = None,
        }
    }
}

/// One conditional write: applied only when the task has `expect_status`, `expect_attempts` and
/// `expect_runs`.
#[derive(Debug, Clone, PartialEq)]
pub struct StateChange {
    /// The task's priority (unchanged; stores key indexes by it).
    pub priority: Priority,
    pub expect_status: Status,
    pub expect_attempts: u32,
    pub expect_runs: u32,
    /// Set for changes that move neither status, attempts nor runs (see [`Snapshot::updated_at`]).
    pub expect_updated_at: Option<DateTime<Utc>>,
    pub status: Status,
    pub attempts: u32,
    pub runs: u32,
    /// Written as the task's `write_token`; see [`StateChange::applied_in`].
    pub token: String,
    pub updated_at: DateTime<Utc>,
    pub started_at: Field<DateTime<Utc>>,
    pub finished_at: Field<DateTime<Utc>>,
    pub run_at: Field<DateTime<Utc>>,
    pub lease_until: Field<DateTime<Utc>>,
    pub result: Field<Value>,
    pub error: Field<TaskFailure>,
    pub cancel_requested: Option<bool>,
    /// The history entry written with the change; its `seq` is assigned by position on read.
    pub event: TaskEvent,
}

impl Transition {
    fn name(&self) -> &'static str {
        match self {
            Transition::Start { .. } => "start",
            Transition::TakeOver { .. } => "be taken over",
            Transition::Succeed { .. } => "succeed",
            Transition::Retry { .. } => "be retried",
            Transition::Fail { .. } => "fail",
            Transition::Cancel { .. } => "be cancelled",
            Transition::RequestCancel => "be asked to cancel",
            Transition::Dead { .. } => "be marked dead",
            Transition::Resend { .. } => "have its message re-sent",
            Transition::Enqueue { .. } => "be enqueued",
            Transition::Revive => "be redriven",
            Transition::Rerun => "be retried (only failed, dead or cancelled tasks are)",
        }
    }

    /// The target status of this move from `from`, or why it is not allowed.
    pub fn target(&self, from: Status) -> Result<Status, InvalidTransition> {
        use Status::*;
        let to = match (self, from) {
            (Transition::Start { .. }, Queued) => Running,
            (Transition::TakeOver { .. }, Running) => Running,
            (Transition::Succeed { .. }, Running) => Succeeded,
            (Transition::Retry { .. }, Running) => Queued,
            (Transition::Fail { .. }, Running) => Failed,
            (Transition::Cancel { .. }, Queued | Running) => Cancelled,
            (Transition::RequestCancel, Running) => Running,
            (Transition::Dead { .. }, Queued | Running) => Dead,
            (Transition::Resend { .. }, Queued) => Queued,
            (Transition::Enqueue { .. }, Queued) => Queued,
            (Transition::Revive, Dead) => Queued,
            (Transition::Rerun, Failed | Dead | Cancelled) => Queued,
            _ => {
                return Err(InvalidTransition {
                    from,
                    action: self.name(),
                })
            }
        };
        Ok(to)
    }

    /// Plans this move from `current` at `now`.
    pub fn plan(self, current: Snapshot, now: DateTime<Utc>) -> Result<StateChange, InvalidTransition> {
        let from = current.status;
        let to = self.target(from)?;
        let mut change = StateChange {
            priority: current.priority,
            expect_status: from,
            expect_attempts: current.attempts,
            expect_runs: current.runs,
            expect_updated_at: None,
            status: to,
            attempts: current.attempts,
            runs: current.runs,
            token: new_write_token(),
            updated_at: now,
            started_at: Field::Keep,
            finished_at: Field::Keep,
            run_at: Field::Keep,
            lease_until: Field::Keep,
            result: Field::Keep,
            error: Field::Keep,
            cancel_requested: None,
            event: TaskEvent {
                seq: 0,
                at: now,
                kind: EventKind::Submitted,
                from: Some(from),
                to: Some(to),
                attempt: None,
                detail: None,
            },
        };
        if to.is_terminal() {
            change.finished_at = Field::Set(now);
            change.lease_until = Field::Clear;
            change.run_at = Field::Clear;
        }
        match self {
            Transition::Start { lease_until } | Transition::TakeOver { lease_until } => {
                let took_over = from == Status::Running;
                if current.attempts >= current.max_attempts {
                    return Err(InvalidTransition {
                        from,
                        action: "start another attempt (max_attempts reached)",
                    });
                }
                change.attempts = current.attempts + 1;
                change.runs = current.runs + 1;
                change.started_at = Field::Set(now);
                change.lease_until = Field::Set(lease_until);
                change.run_at = Field::Clear;
                change.event.kind = if took_over {
                    EventKind::LeaseExpired
                } else {
                    EventKind::Started
                };
                change.event.attempt = Some(change.attempts);
            }
            Transition::Succeed { result } => {
                change.result = Field::Set(result);
                change.error = Field::Clear;
                change.event.kind = EventKind::Succeeded;
                change.event.attempt = Some(current.attempts);
            }
            Transition::Retry { error, run_at } => {
                change.event.kind = EventKind::RetryScheduled;
                change.event.attempt = Some(current.attempts);
                change.event.detail = Some(format!(
                    "{}: {}; next attempt at {}",
                    error.kind,
                    error.message,
                    run_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ));
                change.error = Field::Set(error);
                change.run_at = Field::Set(run_at);
                change.lease_until = Field::Clear;
            }
            Transition::Fail { error } => {
                change.event.kind = EventKind::Failed;
                change.event.attempt = Some(current.attempts);
                change.event.detail = Some(format!("{}: {}", error.kind, error.message));
                change.error = Field::Set(error);
            }
            Transition::Cancel { error } => {
                change.event.kind = EventKind::Cancelled;
                if let Some(error) = error {
                    change.error = Field::Set(error);
                }
            }
            Transition::RequestCancel => {
                change.expect_updated_at = current.updated_at;
                change.event.kind = EventKind::CancelRequested;
                change.event.from = None;
                change.event.to = None;
                change.cancel_requested = Some(true);
            }
            Transition::Dead { detail } => {
                change.event.kind = EventKind::Dead;
                change.event.detail = Some(detail.clone());
                change.error = Field::Set(TaskFailure::new("dead", detail));
            }
            Transition::Resend { reason } => {
                change.expect_updated_at = current.updated_at;
                change.event.kind = EventKind::MessageResent;
                change.event.from = None;
                change.event.to = None;
                change.event.detail = Some(reason);
            }
            Transition::Enqueue { run_at } => {
                change.expect_updated_at = current.updated_at;
                change.event.kind = EventKind::Enqueued;
                change.event.from = None;
                change.event.to = None;
                change.event.detail = Some(format!("due at {}", run_at.to_rfc3339()));
            }
            Transition::Revive | Transition::Rerun => {
                change.event.kind = if self == Transition::Revive {
                    EventKind::Redriven
                } else {
                    EventKind::Retried
                };
                change.event.detail = Some(format!("after {} attempts", current.attempts));
                change.attempts = 0;
                change.finished_at = Field::Clear;
                change.started_at = Field::Clear;
                change.run_at = Field::Clear;
                change.error = Field::Clear;
                change.result = Field::Clear;
                change.cancel_requested = Some(false);
            }
        }
        Ok(change)
    }
}

impl StateChange {
    /// Whether `task` is in the state this change expects.
    pub fn matches(&self, task: &Task) -> bool {
        task.status == self.expect_status
            && task.attempts == self.expect_attempts
            && task.runs == self.expect_runs
            && self.expect_updated_at.is_none_or(|at| task.updated_at == at)
    }

    /// Whether `task` is this change already applied: the answer to a write whose condition
    /// failed because an earlier try of the same write (whose response was lost) succeeded.
    pub fn applied_in(&self, task: &Task) -> bool {
        task.write_token.as_deref() == Some(self.token.as_str())
    }

    /// Applies the change to a task that [`matches`](Self::matches) it.
    pub fn apply_to(&self, task: &mut Task) {
        task.status = self.status;
        task.attempts = self.attempts;
        task.runs = self.runs;
        task.write_token = Some(self.token.clone());
        task.updated_at = self.updated_at;
        self.started_at.apply(&mut task.started_at);
        self.finished_at.apply(&mut task.finished_at);
        self.run_at.apply(&mut task.run_at);
        self.lease_until.apply(&mut task.lease_until);
        self.result.apply(&mut task.result);
        self.error.apply(&mut task.error);
        if let Some(c) = self.cancel_requested {
            task.cancel_requested = c;
        }
        let mut event = self.event.clone();
        event.seq = task.history.len() as u32 + 1;
        task.history.push(event);
    }
}

/// Whether `to` may follow `from` in a task's history (used to check recorded histories).
pub fn is_valid_step(from: Status, to: Status) -> bool {
    use Status::*;
    matches!(
        (from, to),
        (Queued, Running | Cancelled | Dead | Queued)
            | (Running, Running | Succeeded | Queued | Failed | Cancelled | Dead)
            | (Dead | Failed | Cancelled, Queued)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn snap(status: Status, attempts: u32) -> Snapshot {
        Snapshot {
            priority: Priority::Normal,
            status,
            attempts,
            runs: attempts,
            max_attempts: 3,
            cancel_requested: false,
            updated_at: None,
        }
    }

    fn all_transitions() -> Vec<Transition> {
        let now = Utc::now();
        vec![
            Transition::Start { lease_until: now },
            Transition::TakeOver { lease_until: now },
            Transition::Succeed { result: Value::Null },
            Transition::Retry {
                error: TaskFailure::new("k", "m"),
                run_at: now,
            },
            Transition::Fail {
                error: TaskFailure::new("k", "m"),
            },
            Transition::Cancel { error: None },
            Transition::RequestCancel,
            Transition::Dead { detail: "d".into() },
            Transition::Resend { reason: "r".into() },
            Transition::Enqueue { run_at: now },
            Transition::Revive,
            Transition::Rerun,
        ]
    }

    #[test]
    fn terminal_tasks_move_only_when_redriven_or_retried() {
        for status in Status::ALL.iter().filter(|s| s.is_terminal()) {
            for t in all_transitions() {
                let redrive = *status == Status::Dead && t == Transition::Revive;
                let retry = *status != Status::Succeeded && t == Transition::Rerun;
                assert_eq!(
                    t.plan(snap(*status, 1), Utc::now()).is_ok(),
                    redrive || retry,
                    "{status} moved"
                );
            }
        }
        for status in [Status::Queued, Status::Running] {
            let refused = Transition::Rerun.plan(snap(status, 1), Utc::now()).unwrap_err();
            assert_eq!(refused.from, status);
        }
    }

    #[test]
    fn a_retry_starts_attempts_over_never_runs_and_clears_the_outcome() {
        for status in [Status::Failed, Status::Dead, Status::Cancelled] {
            let mut from = snap(status, 3);
            from.cancel_requested = true;
            let c = Transition::Rerun.plan(from, Utc::now()).unwrap();
            assert_eq!((c.status, c.attempts, c.expect_attempts), (Status::Queued, 0, 3));
            assert_eq!((c.runs, c.expect_runs), (3, 3), "runs never repeat");
            assert_eq!(
                (c.finished_at.clone(), c.result.clone(), c.error.clone()),
                (Field::Clear, Field::Clear, Field::Clear)
            );
            assert_eq!(c.cancel_requested, Some(false));
            assert_eq!(c.event.kind, EventKind::Retried);
            assert_eq!((c.event.from, c.event.to), (Some(status), Some(Status::Queued)));
        }
    }

    #[test]
    fn revive_starts_attempts_over_but_never_runs() {
        let c = Transition::Revive.plan(snap(Status::Dead, 3), Utc::now()).unwrap();
        assert_eq!((c.status, c.attempts, c.expect_attempts), (Status::Queued, 0, 3));
        assert_eq!((c.runs, c.expect_runs), (3, 3));
        assert_eq!(c.finished_at, Field::Clear);
        let mut revived = snap(Status::Queued, 0);
        revived.runs = 3;
        let started = Transition::Start {
            lease_until: Utc::now(),
        }
        .plan(revived, Utc::now())
        .unwrap();
        assert_eq!((started.attempts, started.runs), (1, 4));
    }

    #[test]
    fn every_change_has_its_own_token() {
        let a = Transition::Revive.plan(snap(Status::Dead, 3), Utc::now()).unwrap();
        let b = Transition::Revive.plan(snap(Status::Dead, 3), Utc::now()).unwrap();
        assert_ne!(a.token, b.token);
        assert_eq!(a.token.len(), 16);
    }

    #[test]
    fn start_counts_an_attempt_and_refuses_past_max() {
        let now = Utc::now();
        let c = Transition::Start { lease_until: now }
            .plan(snap(Status::Queued, 1), now)
            .unwrap();
        assert_eq!((c.expect_attempts, c.attempts, c.status), (1, 2, Status::Running));
        assert_eq!(c.event.attempt, Some(2));
        assert!(Transition::Start { lease_until: now }
            .plan(snap(Status::Queued, 3), now)
            .is_err());
    }

    #[test]
    fn retry_keeps_attempts_and_sets_run_at() {
        let now = Utc::now();
        let c = Transition::Retry {
            error: TaskFailure::new("boom", "x"),
            run_at: now,
        }
        .plan(snap(Status::Running, 2), now)
        .unwrap();
        assert_eq!((c.status, c.attempts), (Status::Queued, 2));
        assert_eq!(c.run_at, Field::Set(now));
    }

    proptest! {
        #[test]
        fn planned_changes_are_valid_steps(si in 0usize..6, ti in 0usize..11, attempts in 0u32..5) {
            let status = Status::ALL[si];
            let t = all_transitions().swap_remove(ti);
            if let Ok(c) = t.plan(snap(status, attempts), Utc::now()) {
                prop_assert!(is_valid_step(c.expect_status, c.status));
                let revived = matches!(c.event.kind, EventKind::Redriven | EventKind::Retried) && c.attempts == 0;
                prop_assert!(c.attempts == attempts || c.attempts == attempts + 1 || revived);
                prop_assert_eq!(c.status.is_terminal(), matches!(c.finished_at, Field::Set(_)));
                prop_assert_eq!(c.expect_status, Status::ALL[si]);
            }
        }
    }
}
