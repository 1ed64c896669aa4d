//! Task metrics, as a port: the service and the worker say what happened to a task; a sink
//! installed once per process (CloudWatch EMF in Lambda, see `taskq-aws`) turns that into
//! metrics. With no sink installed, recording costs one atomic load.
//!
//! A process-wide sink, like `tracing`'s dispatcher, rather than a parameter of every
//! constructor: metrics are an output of the process, and tests that care install a recorder.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::task::{Priority, TaskId};

/// What happened to a task. Each is a `Count` metric of 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Counter {
    Submitted,
    Started,
    Succeeded,
    Failed,
    Retried,
    Dead,
}

impl Counter {
    pub fn name(self) -> &'static str {
        match self {
            Counter::Submitted => "Submitted",
            Counter::Started => "Started",
            Counter::Succeeded => "Succeeded",
            Counter::Failed => "Failed",
            Counter::Retried => "Retried",
            Counter::Dead => "Dead",
        }
    }
}

/// A duration measured with the event, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timing {
    /// Start of an attempt minus the time the task became runnable (submitted, or its delay or
    /// retry backoff ended).
    QueueWait,
    /// How long the handler ran.
    RunDuration,
}

impl Timing {
    pub fn name(self) -> &'static str {
        match self {
            Timing::QueueWait => "QueueWait",
            Timing::RunDuration => "RunDuration",
        }
    }
}

/// One event about one task.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskMetric<'a> {
    pub counter: Counter,
    pub task_type: &'a str,
    pub priority: Priority,
    pub task_id: TaskId,
    pub timing: Option<(Timing, Duration)>,
}

pub trait MetricsSink: Send + Sync + 'static {
    fn task(&self, metric: &TaskMetric<'_>);
    /// Once per process, when its first handler is built.
    fn cold_start(&self, function: &str);
}

static SINK: OnceLock<Box<dyn MetricsSink>> = OnceLock::new();

/// Installs the process's sink. The first one wins; returns false if one was installed already.
pub fn install(sink: Box<dyn MetricsSink>) -> bool {
    SINK.set(sink).is_ok()
}

pub fn enabled() -> bool {
    SINK.get().is_some()
}

/// The `type` dimension of task types not registered as known: a task's type is chosen by
/// whoever submits it, and a dimension per chosen value would be a new metric per value (each
/// billed, and unbounded).
pub const OTHER_TYPE: &str = "other";

/// The types a metric may name; every other type is [`OTHER_TYPE`]. Until set: the built-in
/// types ([`crate::task::BUILTIN_TYPES`]).
static KNOWN_TYPES: OnceLock<Vec<String>> = OnceLock::new();

/// Sets the known types (the worker: its registry's). The first call wins; returns false if
/// they were set already.
pub fn set_known_types<I, S>(types: I) -> bool
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    KNOWN_TYPES.set(types.into_iter().map(Into::into).collect()).is_ok()
}

/// `task_type` when it is known, else [`OTHER_TYPE`].
pub fn type_dimension(task_type: &str) -> &str {
    let known = match KNOWN_TYPES.get() {
        Some(types) => types.iter().any(|t| t == task_type),
        None => crate::task::BUILTIN_TYPES.contains(&task_type),
    };
    if known {
        task_type
    } else {
        OTHER_TYPE
    }
}

/// Hands `metric` to the sink, its type bounded by [`type_dimension`].
pub fn task_metric(metric: TaskMetric<'_>) {
    if let Some(sink) = SINK.get() {
        sink.task(&TaskMetric {
            task_type: type_dimension(metric.task_type),
            ..metric
        });
    }
}

pub fn cold_start(function: &str) {
    if let Some(sink) = SINK.get() {
        sink.cold_start(function);
    }
}

/// A sink that keeps counts and timings in memory, for tests and the request-accounting run.
#[derive(Default)]
pub struct Recorder {
    inner: Mutex<Recorded>,
}

#[derive(Default, Debug, Clone)]
pub struct Recorded {
    /// Count per (counter, type, priority).
    pub counts: HashMap<(Counter, String, Priority), u64>,
    /// Every timing recorded, per timing.
    pub timings: HashMap<Timing, Vec<Duration>>,
    pub cold_starts: u64,
}

impl Recorded {
    /// The total of a counter over all types and priorities.
    pub fn total(&self, counter: Counter) -> u64 {
        self.counts
            .iter()
            .filter(|((c, _, _), _)| *c == counter)
            .map(|(_, n)| n)
            .sum()
    }
}

impl Recorder {
    pub fn snapshot(&self) -> Recorded {
        self.inner.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl MetricsSink for Recorder {
    fn task(&self, m: &TaskMetric<'_>) {
        if let Ok(mut r) = self.inner.lock() {
            *r.counts
                .entry((m.counter, m.task_type.to_owned(), m.priority))
                .or_default() += 1;
            if let Some((timing, d)) = m.timing {
                r.timings.entry(timing).or_default().push(d);
            }
        }
    }

    fn cold_start(&self, _function: &str) {
        if let Ok(mut r) = self.inner.lock() {
            r.cold_starts += 1;
        }
    }
}

/// Forwards to a shared recorder (the installed sink must be owned; tests keep the `Arc`).
impl MetricsSink for std::sync::Arc<Recorder> {
    fn task(&self, m: &TaskMetric<'_>) {
        self.as_ref().task(m)
    }
    fn cold_start(&self, function: &str) {
        self.as_ref().cold_start(function)
    }
}

/// Records `counter` for `task`, with an optional timing.
pub fn record(counter: Counter, task: &crate::task::Task, timing: Option<(Timing, Duration)>) {
    task_metric(TaskMetric {
        counter,
        task_type: task.task_type.as_str(),
        priority: task.priority,
        task_id: task.id,
        timing,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_known_types_become_dimensions() {
        // KNOWN_TYPES is not set in this test binary: the built-in types are known.
        for t in crate::task::BUILTIN_TYPES {
            assert_eq!(type_dimension(t), *t);
        }
        for t in ["user-chosen-1", "invoice.send", "x".repeat(64).as_str()] {
            assert_eq!(type_dimension(t), OTHER_TYPE);
        }
    }
}
