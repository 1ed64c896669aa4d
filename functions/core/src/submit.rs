//! Validation of submitted tasks, exactly as the v1 contract states it. Errors name the field.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use thiserror::Error;

use crate::callback::{validate_callback_url, CallbackRules};
use crate::catalog::Catalog;
use crate::limits::*;
use crate::task::{Priority, TaskType};

/// A submission that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTask {
    pub task_type: TaskType,
    pub payload: Value,
    pub priority: Priority,
    pub delay_seconds: u32,
    /// When to run, up to 7 days ahead (instead of `delay_seconds`).
    pub run_at: Option<DateTime<Utc>>,
    pub max_attempts: u32,
    pub timeout_seconds: u32,
    /// Where to POST the task when it ends (validated and normalised; see [`crate::callback`]).
    pub callback_url: Option<String>,
}

/// What a submission may contain beyond the contract's defaults (set per deployment).
#[derive(Debug, Clone, Default)]
pub struct SubmitRules {
    pub callback: CallbackRules,
    /// The accepted types and their limits (default: the built-in types).
    pub types: Catalog,
}

/// A field that failed validation. `too_large` marks size limits (HTTP 413, not 400).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
    pub too_large: bool,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
            too_large: false,
        }
    }
}

const FIELDS: &[&str] = &[
    "type",
    "payload",
    "priority",
    "delay_seconds",
    "run_at",
    "max_attempts",
    "timeout_seconds",
    "callback_url",
];

impl NewTask {
    /// Validates one task object against the contract alone: any well-formed type, with the
    /// contract's limits ([`Catalog::open`]). For submitters inside the trust boundary (tests,
    /// benchmarks); the API uses [`from_json_with`](Self::from_json_with) and its deployment's
    /// catalog. `prefix` is put before field names (`tasks[3].`) in errors.
    pub fn from_json(value: &Value, prefix: &str) -> Result<Self, FieldError> {
        let rules = SubmitRules {
            types: Catalog::open(),
            ..SubmitRules::default()
        };
        Self::from_json_with(value, prefix, &rules)
    }

    /// [`from_json`](Self::from_json) under the given rules: the type must be in `rules.types`,
    /// and its defaults, ceilings, highest priority and payload schema apply.
    pub fn from_json_with(value: &Value, prefix: &str, rules: &SubmitRules) -> Result<Self, FieldError> {
        let f = |name: &str| format!("{prefix}{name}");
        let obj = value.as_object().ok_or_else(|| {
            FieldError::new(
                if prefix.is_empty() {
                    "body"
                } else {
                    prefix.trim_end_matches('.')
                },
                "must be a JSON object",
            )
        })?;
        if let Some(unknown) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(FieldError::new(
                f(unknown),
                format!("unknown field; allowed fields are {}", FIELDS.join(", ")),
            ));
        }
        let task_type = match obj.get("type") {
            Some(Value::String(s)) => TaskType::parse(s).map_err(|m| FieldError::new(f("type"), m))?,
            Some(_) => return Err(FieldError::new(f("type"), "must be a string")),
            None => return Err(FieldError::new(f("type"), "is required")),
        };
        let spec = rules.types.get(&task_type).map_err(|m| FieldError::new(f("type"), m))?;
        let payload = obj.get("payload").cloned().unwrap_or(Value::Null);
        let payload_len = serde_json::to_vec(&payload).map(|v| v.len()).unwrap_or(usize::MAX);
        if payload_len > MAX_PAYLOAD_BYTES {
            return Err(FieldError {
                field: f("payload"),
                message: format!("is {payload_len} bytes; the limit is {MAX_PAYLOAD_BYTES} bytes (256 KiB)"),
                too_large: true,
            });
        }
        let priority = match obj.get("priority") {
            None | Some(Value::Null) => Priority::Normal,
            Some(Value::String(s)) => s.parse().map_err(|m: String| FieldError::new(f("priority"), m))?,
            Some(_) => return Err(FieldError::new(f("priority"), "must be a string: high, normal or low")),
        };
        if priority < spec.max_priority {
            return Err(FieldError::new(
                f("priority"),
                format!("type {} allows at most {}", task_type, spec.max_priority),
            ));
        }
        spec.check_payload(&payload).map_err(|(path, message)| {
            FieldError::new(
                f(&format!("payload{path}")),
                format!("does not match the payload schema of type {task_type}: {message}"),
            )
        })?;
        let delay_seconds = int_field(obj, &f("delay_seconds"), "delay_seconds", 0, MAX_DELAY_SECONDS, 0)?;
        let run_at = run_at_field(obj, &f("run_at"), Utc::now())?;
        if run_at.is_some() && delay_seconds > 0 {
            return Err(FieldError::new(f("run_at"), "give run_at or delay_seconds, not both"));
        }
        let callback_url = match obj.get("callback_url") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => {
                Some(validate_callback_url(s, rules.callback).map_err(|m| FieldError::new(f("callback_url"), m))?)
            }
            Some(_) => return Err(FieldError::new(f("callback_url"), "must be a string (an https:// URL)")),
        };
        Ok(Self {
            callback_url,
            task_type,
            payload,
            priority,
            delay_seconds,
            run_at,
            max_attempts: int_field(
                obj,
                &f("max_attempts"),
                "max_attempts",
                1,
                spec.max_attempts.max,
                spec.max_attempts.default,
            )?,
            timeout_seconds: int_field(
                obj,
                &f("timeout_seconds"),
                "timeout_seconds",
                1,
                spec.timeout_seconds.max,
                spec.timeout_seconds.default,
            )?,
        })
    }

    /// A stable fingerprint of the request, so an idempotent replay can tell "same body" from
    /// "different body". Defaults are applied first: omitting `priority` equals sending `normal`.
    pub fn fingerprint(&self) -> String {
        let canonical = serde_json::json!({
            "type": self.task_type.as_str(),
            "payload": self.payload,
            "priority": self.priority.as_str(),
            "delay_seconds": self.delay_seconds,
            "run_at": self.run_at.map(|r| r.timestamp_millis()),
            "max_attempts": self.max_attempts,
            "timeout_seconds": self.timeout_seconds,
        });
        // Only when set, so fingerprints of requests without one stay what they were (keys
        // claimed before this field existed still replay).
        let mut canonical = canonical;
        if let (Some(url), Some(obj)) = (&self.callback_url, canonical.as_object_mut()) {
            obj.insert("callback_url".into(), Value::String(url.clone()));
        }
        // serde_json's Map is ordered by key, so this text is canonical.
        format!("{:016x}", fnv1a64(canonical.to_string().as_bytes()))
    }
}

/// `run_at`: an RFC 3339 time at most 7 days ahead and at most 5 minutes past.
fn run_at_field(
    obj: &Map<String, Value>,
    field: &str,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, FieldError> {
    let text = match obj.get("run_at") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => s,
        Some(_) => return Err(FieldError::new(field, "must be an RFC 3339 date-time string")),
    };
    let at = DateTime::parse_from_rfc3339(text)
        .map_err(|e| FieldError::new(field, format!("must be an RFC 3339 date-time ({e})")))?
        .with_timezone(&Utc);
    if at > now + chrono::Duration::seconds(MAX_SCHEDULE_AHEAD_SECONDS) {
        return Err(FieldError::new(field, "is more than 7 days ahead"));
    }
    if at < now - chrono::Duration::seconds(MAX_RUN_AT_PAST_SECONDS) {
        return Err(FieldError::new(field, "is in the past"));
    }
    Ok(Some(at))
}

fn int_field(
    obj: &Map<String, Value>,
    field: &str,
    key: &str,
    min: u32,
    max: u32,
    default: u32,
) -> Result<u32, FieldError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(default),
        // JSON Schema's "integer" includes numbers like 30.0: accept those too.
        Some(Value::Number(n)) => match n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= 1e9)
                .map(|f| f as u64)
        }) {
            Some(v) if v >= u64::from(min) && v <= u64::from(max) => Ok(v as u32),
            _ => Err(FieldError::new(
                field,
                format!("must be an integer from {min} to {max}"),
            )),
        },
        Some(_) => Err(FieldError::new(
            field,
            format!("must be an integer from {min} to {max}"),
        )),
    }
}

/// FNV-1a, 64 bits: stable across builds and platforms, unlike std's hasher.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// An `Idempotency-Key` header value: 1-255 visible ASCII characters.
pub fn validate_idempotency_key(key: &str) -> Result<(), FieldError> {
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN || !key.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(FieldError::new(
            "Idempotency-Key",
            "must be 1-255 visible ASCII characters",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn run_at_up_to_seven_days_ahead() {
        let at = |d: chrono::Duration| (Utc::now() + d).to_rfc3339();
        let ok = NewTask::from_json(&json!({"type": "x", "run_at": at(chrono::Duration::days(6))}), "").unwrap();
        assert!(ok.run_at.is_some());
        assert_eq!(ok.delay_seconds, 0);
        let cases = [
            (
                json!({"type": "x", "run_at": at(chrono::Duration::days(8))}),
                "is more than 7 days ahead",
            ),
            (
                json!({"type": "x", "run_at": at(chrono::Duration::hours(-1))}),
                "is in the past",
            ),
            (json!({"type": "x", "run_at": "tomorrow"}), "RFC 3339"),
            (json!({"type": "x", "run_at": 1700000000}), "RFC 3339"),
            (
                json!({"type": "x", "run_at": at(chrono::Duration::hours(1)), "delay_seconds": 5}),
                "not both",
            ),
        ];
        for (body, message) in cases {
            let e = NewTask::from_json(&body, "tasks[2].").unwrap_err();
            assert_eq!(e.field, "tasks[2].run_at", "{body}");
            assert!(e.message.contains(message), "{body}: {}", e.message);
        }
        // A little clock skew is fine: it runs now.
        assert!(NewTask::from_json(&json!({"type": "x", "run_at": at(chrono::Duration::seconds(-30))}), "").is_ok());
    }

    #[test]
    fn defaults_apply() {
        let t = NewTask::from_json(&json!({"type": "echo"}), "").unwrap();
        assert_eq!(t.priority, Priority::Normal);
        assert_eq!((t.delay_seconds, t.max_attempts, t.timeout_seconds), (0, 3, 60));
        assert_eq!(t.payload, Value::Null);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (json!({}), "type"),
            (json!({"type": "Bad Type"}), "type"),
            (json!({"type": "x", "priority": "urgent"}), "priority"),
            (json!({"type": "x", "delay_seconds": 901}), "delay_seconds"),
            (json!({"type": "x", "max_attempts": 0}), "max_attempts"),
            (json!({"type": "x", "max_attempts": 26}), "max_attempts"),
            (json!({"type": "x", "timeout_seconds": 1.5}), "timeout_seconds"),
            (json!({"type": "x", "timeout_seconds": "60"}), "timeout_seconds"),
            (json!({"type": "x", "colour": 1}), "colour"),
        ];
        for (body, field) in cases {
            assert_eq!(NewTask::from_json(&body, "").unwrap_err().field, field, "{body}");
        }
        let e = NewTask::from_json(&json!({"priority": 1}), "tasks[2].").unwrap_err();
        assert_eq!(e.field, "tasks[2].type");
    }

    #[test]
    fn integral_floats_and_nulls_are_integers_and_defaults() {
        let t = NewTask::from_json(&json!({"type": "x", "delay_seconds": 433.0, "max_attempts": null}), "").unwrap();
        assert_eq!((t.delay_seconds, t.max_attempts), (433, 3));
    }

    #[test]
    fn payload_over_256_kib_is_too_large() {
        let big = "x".repeat(MAX_PAYLOAD_BYTES);
        let e = NewTask::from_json(&json!({"type": "x", "payload": big}), "").unwrap_err();
        assert!(e.too_large);
        assert_eq!(e.field, "payload");
    }

    #[test]
    fn fingerprint_ignores_spelled_out_defaults() {
        let a = NewTask::from_json(&json!({"type": "x", "payload": {"b": 1, "a": 2}}), "").unwrap();
        let b = NewTask::from_json(
            &json!({"payload": {"a": 2, "b": 1}, "type": "x", "priority": "normal"}),
            "",
        )
        .unwrap();
        let c = NewTask::from_json(&json!({"type": "x", "payload": {"a": 3}}), "").unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
    }

    #[test]
    fn callback_url_is_validated_and_part_of_the_fingerprint() {
        let plain = NewTask::from_json(&json!({"type": "x"}), "").unwrap();
        assert_eq!(plain.callback_url, None);
        // Unchanged for requests without a callback (idempotency keys claimed before still match).
        // FNV-1a of {"delay_seconds":0,"max_attempts":3,"payload":null,"priority":"normal","run_at":null,"timeout_seconds":60,"type":"x"}
        assert_eq!(plain.fingerprint(), "418c20436761aebb");
        let a = NewTask::from_json(&json!({"type": "x", "callback_url": "https://a.example/h"}), "").unwrap();
        let b = NewTask::from_json(&json!({"type": "x", "callback_url": "https://b.example/h"}), "").unwrap();
        assert_eq!(a.callback_url.as_deref(), Some("https://a.example/h"));
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), plain.fingerprint());
        for bad in [json!("http://a.example/"), json!(5), json!("https://127.0.0.1/")] {
            let e = NewTask::from_json(&json!({"type": "x", "callback_url": bad}), "tasks[1].").unwrap_err();
            assert_eq!(e.field, "tasks[1].callback_url", "{bad}");
        }
        let local = SubmitRules {
            callback: CallbackRules { allow_loopback: true },
            types: Catalog::open(),
        };
        let t = NewTask::from_json_with(
            &json!({"type": "x", "callback_url": "http://127.0.0.1:7/h"}),
            "",
            &local,
        )
        .unwrap();
        assert_eq!(t.callback_url.as_deref(), Some("http://127.0.0.1:7/h"));
    }

    #[test]
    fn the_catalog_decides_types_defaults_ceilings_and_priority() {
        let rules = SubmitRules {
            types: Catalog::from_json(
                &json!({"resize": {"target": {"lambda": "f"}, "timeout_seconds": {"default": 120, "max": 600},
                                   "max_attempts": {"default": 5, "max": 6}, "max_priority": "normal"}})
                .to_string(),
            )
            .unwrap(),
            ..SubmitRules::default()
        };
        let check = |body: Value| NewTask::from_json_with(&body, "tasks[2].", &rules);
        let e = check(json!({"type": "x"})).unwrap_err();
        assert_eq!(e.field, "tasks[2].type");
        assert!(
            e.message.contains("unknown task type \"x\"") && e.message.contains("resize"),
            "{}",
            e.message
        );
        let t = check(json!({"type": "resize"})).unwrap();
        assert_eq!(
            (t.timeout_seconds, t.max_attempts, t.priority),
            (120, 5, Priority::Normal)
        );
        let e = check(json!({"type": "resize", "timeout_seconds": 601})).unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.message.as_str()),
            ("tasks[2].timeout_seconds", "must be an integer from 1 to 600")
        );
        let e = check(json!({"type": "resize", "max_attempts": 7})).unwrap_err();
        assert_eq!(e.field, "tasks[2].max_attempts");
        let e = check(json!({"type": "resize", "priority": "high"})).unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.message.as_str()),
            ("tasks[2].priority", "type resize allows at most normal")
        );
        assert_eq!(
            check(json!({"type": "resize", "priority": "low"})).unwrap().priority,
            Priority::Low
        );
        // The built-ins keep the contract's limits.
        let t = check(json!({"type": "echo"})).unwrap();
        assert_eq!((t.timeout_seconds, t.max_attempts), (60, 3));
    }

    #[cfg(feature = "schema")]
    #[test]
    fn a_payload_failing_its_schema_names_the_path() {
        let rules = SubmitRules {
            types: Catalog::from_json(
                r#"{"mail": {"target": {"http": "https://m.example/"}, "payload_schema":
                    {"type": "object", "properties": {"to": {"type": "array", "items": {"type": "string"}}}}}}"#,
            )
            .unwrap(),
            ..SubmitRules::default()
        };
        let e = NewTask::from_json_with(&json!({"type": "mail", "payload": {"to": ["a", 3]}}), "", &rules).unwrap_err();
        assert_eq!(e.field, "payload.to[1]");
        assert!(
            e.message.starts_with("does not match the payload schema of type mail"),
            "{}",
            e.message
        );
        assert!(!e.too_large);
    }

    proptest! {
        #[test]
        fn task_type_accepts_exactly_the_contract_alphabet(s in "\\PC{0,70}") {
            let ok = !s.is_empty() && s.len() <= 64
                && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
            prop_assert_eq!(TaskType::parse(&s).is_ok(), ok);
        }

        #[test]
        fn integer_fields_accept_exactly_their_range(v in -5i64..1000) {
            let r = NewTask::from_json(&json!({"type": "x", "delay_seconds": v}), "");
            prop_assert_eq!(r.is_ok(), (0..=900).contains(&v));
        }
    }
}
