//! Logging for every binary: JSON lines in Lambda (CloudWatch parses them), readable text
//! elsewhere. `RUST_LOG` sets the filter (default `info`): a level, `target=level` pairs, or
//! both (`warn,taskq_worker=debug`). It is a static per-target filter (tracing-subscriber's
//! `Targets`), not `EnvFilter`: no span-field directives, and in exchange no regex engine in
//! every binary and no filter work on each span enter and exit. Also installs the EMF metrics sink
//! (see [`crate::emf`]) and records the process's cold start.
//!
//! In Lambda each line is one flat JSON object: the event's fields plus the fields of every
//! span it is in (the runtime's `requestId` and `xrayTraceId`, the API's `request_id` and
//! `user_id`, the worker's `task_id`, `user_id`, `priority`, `trace_header`), so Logs Insights
//! can `filter task_id = "..."` whatever code emitted the line.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

pub fn init() {
    let filter = log_filter(std::env::var("RUST_LOG").ok().as_deref());
    let function = std::env::var("AWS_LAMBDA_FUNCTION_NAME").ok();
    let in_lambda = function.is_some();
    let registry = tracing_subscriber::registry().with(filter);
    // try_init: tests and the local server may call this more than once.
    let _ = if in_lambda {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .fmt_fields(JsonFields::new())
                    .event_format(FlatJson),
            )
            .try_init()
    } else {
        registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .try_init()
    };
    let emf = std::env::var("TASKQ_EMF").ok();
    if crate::emf::wanted(emf.as_deref(), in_lambda)
        && taskq_core::metrics::install(Box::new(crate::emf::EmfSink::stdout()))
    {
        taskq_core::metrics::cold_start(function.as_deref().unwrap_or("local"));
    }
}

/// The filter `RUST_LOG` asks for; `info` when it is unset or does not parse (a typo in a
/// function's configuration must not silence its logs).
pub fn log_filter(spec: Option<&str>) -> Targets {
    let default = || Targets::new().with_default(tracing::Level::INFO);
    match spec.map(str::trim) {
        None | Some("") => default(),
        Some(spec) => spec.parse().unwrap_or_else(|e| {
            eprintln!("RUST_LOG={spec:?} is not a log filter ({e}); logging at info");
            default()
        }),
    }
}

/// One JSON object per event: `level`, `target`, the fields of the spans it is in (outermost
/// first, inner ones win on a clash), then its own fields (`message` among them). No time:
/// CloudWatch stamps each line.
pub struct FlatJson;

impl<S, N> FormatEvent<S, N> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let meta = event.metadata();
        let mut line = Map::new();
        line.insert("level".into(), Value::from(meta.level().as_str()));
        line.insert("target".into(), Value::from(meta.target()));
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let ext = span.extensions();
                // JsonFields stores each span's fields as a JSON object's text.
                if let Some(fields) = ext.get::<FormattedFields<N>>() {
                    if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(fields.as_str()) {
                        line.extend(map);
                    }
                }
            }
        }
        event.record(&mut JsonVisitor(&mut line));
        writeln!(writer, "{}", Value::Object(line))
    }
}

struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl Visit for JsonVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().into(), Value::from(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().into(), Value::from(format!("{value:?}")));
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[test]
    fn rust_log_sets_levels_per_target_and_a_bad_value_falls_back_to_info() {
        use tracing::Level;
        let enabled = |f: &Targets, target: &str, level: Level| f.would_enable(target, &level);
        let f = log_filter(Some("warn,taskq_worker=debug"));
        assert!(enabled(&f, "taskq_worker::batch", Level::DEBUG));
        assert!(!enabled(&f, "taskq_aws::dynamodb", Level::INFO));
        assert!(enabled(&f, "taskq_aws::dynamodb", Level::WARN));
        for unset_or_bad in [None, Some(""), Some("  "), Some("taskq=verbose")] {
            let f = log_filter(unset_or_bad);
            assert!(enabled(&f, "taskq_api", Level::INFO), "{unset_or_bad:?}");
            assert!(!enabled(&f, "taskq_api", Level::DEBUG), "{unset_or_bad:?}");
        }
    }

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl<'a> MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    #[test]
    fn lines_are_flat_json_with_every_enclosing_span_field() {
        let buf = Buf::default();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(JsonFields::new())
            .event_format(FlatJson)
            .with_writer(buf.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let outer = tracing::info_span!("Lambda runtime invoke", requestId = "req-1");
            let _o = outer.enter();
            let task = tracing::info_span!(
                "task",
                task_id = "01J",
                user_id = "u1",
                priority = "high",
                trace_header = tracing::field::Empty
            );
            task.record("trace_header", "Root=1-abc");
            let _t = task.enter();
            let inner = tracing::info_span!("apply", to = "running");
            let _i = inner.enter();
            tracing::warn!(attempt = 2u64, ok = false, "attempt finished");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let v: Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["message"], "attempt finished");
        assert_eq!(v["requestId"], "req-1");
        assert_eq!(v["task_id"], "01J");
        assert_eq!(v["user_id"], "u1");
        assert_eq!(v["priority"], "high");
        assert_eq!(v["trace_header"], "Root=1-abc");
        assert_eq!(v["to"], "running");
        assert_eq!(v["attempt"], 2);
        assert_eq!(v["ok"], false);
    }
}
