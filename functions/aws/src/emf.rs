//! CloudWatch Embedded Metric Format: one JSON line per task event on stdout, which Lambda
//! ships to CloudWatch Logs, where CloudWatch extracts the metrics asynchronously (no
//! PutMetricData call, no latency added to the invocation).
//!
//! Written by hand rather than with `metrics_cloudwatch_embedded`: the format is one small JSON
//! object, and the crate brings the `metrics` facade and buffers until the invocation ends,
//! where a line per event needs neither.
//!
//! Namespace `taskq`; task metrics have the dimensions `[type, priority]`; `ColdStart` has
//! `[function]`. `task_id` rides along as a property (searchable in Logs Insights, not a
//! dimension, so it adds no metric cardinality).

use std::io::Write;
use std::sync::Mutex;

use serde_json::{json, Map, Value};
use taskq_core::metrics::{MetricsSink, TaskMetric};

pub const NAMESPACE: &str = "taskq";

/// The EMF line for one task event (without the newline).
pub fn task_line(m: &TaskMetric<'_>, timestamp_ms: i64) -> String {
    let mut metrics = vec![json!({"Name": m.counter.name(), "Unit": "Count"})];
    let mut root = Map::new();
    root.insert("type".into(), Value::from(m.task_type));
    root.insert("priority".into(), Value::from(m.priority.as_str()));
    root.insert("task_id".into(), Value::from(m.task_id.to_string()));
    root.insert(m.counter.name().into(), Value::from(1));
    if let Some((timing, d)) = m.timing {
        metrics.push(json!({"Name": timing.name(), "Unit": "Milliseconds"}));
        root.insert(timing.name().into(), Value::from(d.as_secs_f64() * 1000.0));
    }
    root.insert(
        "_aws".into(),
        json!({
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [["type", "priority"]],
                "Metrics": metrics,
            }],
        }),
    );
    Value::Object(root).to_string()
}

/// The EMF line for a cold start of `function`.
pub fn cold_start_line(function: &str, timestamp_ms: i64) -> String {
    json!({
        "_aws": {
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [["function"]],
                "Metrics": [{"Name": "ColdStart", "Unit": "Count"}],
            }],
        },
        "function": function,
        "ColdStart": 1,
    })
    .to_string()
}

/// Writes EMF lines, one whole line per write, so lines from concurrent tasks never interleave.
pub struct EmfSink {
    out: Mutex<Box<dyn Write + Send>>,
}

impl EmfSink {
    pub fn stdout() -> Self {
        Self::new(Box::new(std::io::stdout()))
    }

    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Self { out: Mutex::new(out) }
    }

    fn write(&self, mut line: String) {
        line.push('\n');
        if let Ok(mut out) = self.out.lock() {
            // A lost metric line must never fail a task.
            let _ = out.write_all(line.as_bytes()).and_then(|_| out.flush());
        }
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl MetricsSink for EmfSink {
    fn task(&self, metric: &TaskMetric<'_>) {
        self.write(task_line(metric, now_ms()));
    }

    fn cold_start(&self, function: &str) {
        self.write(cold_start_line(function, now_ms()));
    }
}

/// Whether EMF is on: `TASKQ_EMF` (`1`/`true` or `0`/`false`) decides; unset, it is on in
/// Lambda only, so the local server and tests do not print metric lines.
pub fn wanted(taskq_emf: Option<&str>, in_lambda: bool) -> bool {
    match taskq_emf.map(str::trim) {
        Some("1" | "true" | "on") => true,
        Some("0" | "false" | "off") => false,
        _ => in_lambda,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use taskq_core::metrics::{Counter, Timing};
    use taskq_core::{Priority, TaskId};

    use super::*;

    fn metric(counter: Counter, timing: Option<(Timing, Duration)>) -> (TaskId, TaskMetric<'static>) {
        let id = TaskId::new();
        (
            id,
            TaskMetric {
                counter,
                task_type: "echo",
                priority: Priority::High,
                task_id: id,
                timing,
            },
        )
    }

    #[test]
    fn task_line_is_emf_with_type_and_priority_dimensions() {
        let (id, m) = metric(
            Counter::Started,
            Some((Timing::QueueWait, Duration::from_micros(12_500))),
        );
        let v: Value = serde_json::from_str(&task_line(&m, 1_700_000_000_123)).unwrap();
        assert_eq!(v["_aws"]["Timestamp"], 1_700_000_000_123i64);
        let cw = &v["_aws"]["CloudWatchMetrics"];
        assert_eq!(cw.as_array().unwrap().len(), 1);
        assert_eq!(cw[0]["Namespace"], "taskq");
        assert_eq!(cw[0]["Dimensions"], json!([["type", "priority"]]));
        assert_eq!(
            cw[0]["Metrics"],
            json!([{"Name": "Started", "Unit": "Count"}, {"Name": "QueueWait", "Unit": "Milliseconds"}])
        );
        // Every dimension and metric named in the directive is a member of the root object.
        assert_eq!(
            (v["type"].as_str(), v["priority"].as_str()),
            (Some("echo"), Some("high"))
        );
        assert_eq!(v["Started"], 1);
        assert_eq!(v["QueueWait"].as_f64(), Some(12.5));
        assert_eq!(v["task_id"], id.to_string());
    }

    #[test]
    fn every_counter_has_its_name_and_no_timing_unless_given() {
        for c in [
            Counter::Submitted,
            Counter::Started,
            Counter::Succeeded,
            Counter::Failed,
            Counter::Retried,
            Counter::Dead,
        ] {
            let (_, m) = metric(c, None);
            let v: Value = serde_json::from_str(&task_line(&m, 0)).unwrap();
            let names = &v["_aws"]["CloudWatchMetrics"][0]["Metrics"];
            assert_eq!(names, &json!([{"Name": c.name(), "Unit": "Count"}]));
            assert_eq!(v[c.name()], 1);
        }
    }

    #[test]
    fn cold_start_line_has_the_function_dimension() {
        let v: Value = serde_json::from_str(&cold_start_line("taskq-worker", 5)).unwrap();
        let cw = &v["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(cw["Namespace"], "taskq");
        assert_eq!(cw["Dimensions"], json!([["function"]]));
        assert_eq!(cw["Metrics"], json!([{"Name": "ColdStart", "Unit": "Count"}]));
        assert_eq!(
            (v["function"].as_str(), v["ColdStart"].as_i64()),
            (Some("taskq-worker"), Some(1))
        );
    }

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_sink_writes_one_parseable_line_per_event() {
        let buf = Shared::default();
        let sink = EmfSink::new(Box::new(buf.clone()));
        let (_, started) = metric(Counter::Started, None);
        let (_, done) = metric(
            Counter::Succeeded,
            Some((Timing::RunDuration, Duration::from_millis(3))),
        );
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..50 {
                        sink.task(&started);
                        sink.task(&done);
                    }
                });
            }
        });
        sink.cold_start("f");
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 401);
        assert_eq!(lines.iter().filter(|l| l["Succeeded"] == 1).count(), 200);
        assert_eq!(
            lines.iter().filter(|l| l["RunDuration"].as_f64() == Some(3.0)).count(),
            200
        );
    }

    #[test]
    fn emf_is_off_outside_lambda_unless_asked_for() {
        assert!(!wanted(None, false));
        assert!(wanted(None, true));
        assert!(wanted(Some("1"), false));
        assert!(!wanted(Some("0"), true));
        assert!(wanted(Some("junk"), true));
    }
}
