//! The task types a deployment accepts: the catalog the API checks submissions against and the
//! worker takes its targets from, read by both from the same configuration
//! (`TASKQ_TASK_TYPES`, the template's `TaskTypes` parameter).
//!
//! The configuration is a JSON object keyed by type name:
//!
//! ```json
//! {
//!   "resize": {
//!     "target": {"lambda": "resize-images"},
//!     "timeout_seconds": {"default": 120, "max": 600},
//!     "max_attempts": {"default": 5, "max": 10},
//!     "max_priority": "normal",
//!     "payload_schema": {"type": "object", "required": ["key"]},
//!     "description": "Resizes one image"
//!   },
//!   "notify": {"target": {"http": "https://hooks.example.com/taskq"}},
//!   "fail": null
//! }
//! ```
//!
//! The built-in types are always there unless named with `null`; naming one with an object
//! changes its limits (its target stays `builtin`). Every field but `target` (for a type that is
//! not built in) is optional; unset limits are the v1 contract's.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::limits::{DEFAULT_MAX_ATTEMPTS, DEFAULT_TIMEOUT_SECONDS, MAX_ATTEMPTS, MAX_TIMEOUT_SECONDS};
use crate::task::{Priority, TaskType, BUILTIN_TYPES};

/// The variable the API, the worker and taskq-local read the catalog from (JSON text; unset or
/// empty: the built-in types).
pub const TASK_TYPES_VAR: &str = "TASKQ_TASK_TYPES";

/// Where a type's tasks run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Target {
    /// A handler compiled into the worker (`taskq-worker`'s `builtin` module).
    Builtin,
    /// A Lambda function (name, partial or full ARN), invoked synchronously with the task.
    Lambda(String),
    /// An HTTPS endpoint the task is POSTed to, signed like completion webhooks.
    Http(String),
}

impl Target {
    /// `builtin`, `lambda` or `http`: what callers may see (not the function or the URL).
    pub fn kind(&self) -> &'static str {
        match self {
            Target::Builtin => "builtin",
            Target::Lambda(_) => "lambda",
            Target::Http(_) => "http",
        }
    }
}

/// A default and a ceiling for one of a submission's numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bounds {
    pub default: u32,
    pub max: u32,
}

/// One accepted type.
#[derive(Debug, Clone)]
pub struct TypeSpec {
    pub name: TaskType,
    pub target: Target,
    pub timeout_seconds: Bounds,
    pub max_attempts: Bounds,
    /// The highest priority a task of this type may ask for.
    pub max_priority: Priority,
    pub payload_schema: Option<Value>,
    pub description: Option<String>,
    #[cfg(feature = "schema")]
    validator: Option<Arc<jsonschema::Validator>>,
}

/// What a type's configuration may say (see the module docs).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TypeConfig {
    #[serde(default)]
    target: Option<Target>,
    #[serde(default)]
    timeout_seconds: Option<Bounds>,
    #[serde(default)]
    max_attempts: Option<Bounds>,
    #[serde(default)]
    max_priority: Option<Priority>,
    #[serde(default)]
    payload_schema: Option<Value>,
    #[serde(default)]
    description: Option<String>,
}

/// The accepted types, by name.
#[derive(Debug, Clone)]
pub struct Catalog {
    types: Arc<BTreeMap<String, TypeSpec>>,
    /// Any well-formed type, with the contract's limits: for code inside the trust boundary
    /// that submits directly (tests, benchmarks), never for the API.
    open: bool,
}

impl Default for Catalog {
    fn default() -> Self {
        Self::builtin()
    }
}

/// Why a catalog configuration was refused; every problem is listed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("task types: {}", .0.join("; "))]
pub struct CatalogError(pub Vec<String>);

impl Catalog {
    /// The built-in types with the contract's limits.
    pub fn builtin() -> Self {
        let types = BUILTIN_TYPES
            .iter()
            .filter_map(|name| {
                Some((
                    name.to_string(),
                    TypeSpec::with_contract_limits(TaskType::parse(name).ok()?),
                ))
            })
            .collect();
        Self {
            types: Arc::new(types),
            open: false,
        }
    }

    /// Any well-formed type name, with the contract's limits (see the `open` field).
    pub fn open() -> Self {
        Self {
            types: Arc::new(BTreeMap::new()),
            open: true,
        }
    }

    /// The built-in types changed and extended by `text` (the JSON object of the module docs;
    /// empty text or `{}` leaves the built-ins as they are).
    pub fn from_json(text: &str) -> Result<Self, CatalogError> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(Self::builtin());
        }
        let config: BTreeMap<String, Option<TypeConfig>> = serde_json::from_str(text)
            .map_err(|e| CatalogError(vec![format!("not a JSON object of type configurations: {e}")]))?;
        let mut types = (*Self::builtin().types).clone();
        let mut errors = Vec::new();
        for (name, config) in config {
            let Some(config) = config else {
                if types.remove(&name).is_none() {
                    errors.push(format!("{name}: null removes a built-in type, and {name} is not one"));
                }
                continue;
            };
            match TypeSpec::configured(&name, config) {
                Ok(spec) => {
                    types.insert(name, spec);
                }
                Err(mut e) => errors.append(&mut e),
            }
        }
        if errors.is_empty() {
            Ok(Self {
                types: Arc::new(types),
                open: false,
            })
        } else {
            Err(CatalogError(errors))
        }
    }

    /// This catalog, also accepting `names` (with the contract's limits) where it has no entry:
    /// handlers an embedder registers in code next to the API, as taskq-local's
    /// `LocalOptions::registry` does. Configured types keep their limits; a name given here is
    /// accepted even if the configuration removed it (its handler is there).
    pub fn accepting<'a>(self, names: impl IntoIterator<Item = &'a str>) -> Self {
        let mut types = (*self.types).clone();
        for name in names {
            if let (false, Ok(t)) = (types.contains_key(name), TaskType::parse(name)) {
                types.insert(name.to_owned(), TypeSpec::with_contract_limits(t));
            }
        }
        Self {
            types: Arc::new(types),
            open: self.open,
        }
    }

    /// The type named `name`; `Err` says why it is not accepted.
    pub fn get(&self, name: &TaskType) -> Result<TypeSpec, String> {
        if let Some(spec) = self.types.get(name.as_str()) {
            return Ok(spec.clone());
        }
        if self.open {
            return Ok(TypeSpec::with_contract_limits(name.clone()));
        }
        let known: Vec<&str> = self.types.keys().map(String::as_str).collect();
        Err(format!(
            "unknown task type {:?}; this deployment accepts {} (GET /v1/types)",
            name.as_str(),
            known.join(", ")
        ))
    }

    /// Every accepted type, by name.
    pub fn types(&self) -> impl Iterator<Item = &TypeSpec> {
        self.types.values()
    }

    /// The catalog [`TASK_TYPES_VAR`] configures.
    pub fn from_env() -> Result<Self, CatalogError> {
        Self::from_json(&std::env::var(TASK_TYPES_VAR).unwrap_or_default())
    }

    /// Whether some type runs on a target of this kind (`lambda`, `http`).
    pub fn uses(&self, kind: &str) -> bool {
        self.types().any(|t| t.target.kind() == kind)
    }

    /// Names of the types, sorted (metrics name only these).
    pub fn names(&self) -> Vec<&str> {
        self.types.keys().map(String::as_str).collect()
    }
}

impl TypeSpec {
    /// A built-in target with the v1 contract's limits.
    fn with_contract_limits(name: TaskType) -> Self {
        Self {
            name,
            target: Target::Builtin,
            timeout_seconds: Bounds {
                default: DEFAULT_TIMEOUT_SECONDS,
                max: MAX_TIMEOUT_SECONDS,
            },
            max_attempts: Bounds {
                default: DEFAULT_MAX_ATTEMPTS,
                max: MAX_ATTEMPTS,
            },
            max_priority: Priority::High,
            payload_schema: None,
            description: None,
            #[cfg(feature = "schema")]
            validator: None,
        }
    }

    fn configured(name: &str, config: TypeConfig) -> Result<Self, Vec<String>> {
        let mut errors = Vec::new();
        let task_type = match TaskType::parse(name) {
            Ok(t) => Some(t),
            Err(m) => {
                errors.push(format!("{name:?}: a type name {m}"));
                None
            }
        };
        let builtin = BUILTIN_TYPES.contains(&name);
        let target = match (config.target, builtin) {
            (None, true) | (Some(Target::Builtin), true) => Target::Builtin,
            (None, false) => {
                errors.push(format!(
                    "{name}: target is required (lambda or http) for a type that is not built in"
                ));
                Target::Builtin
            }
            (Some(Target::Builtin), false) => {
                errors.push(format!(
                    "{name}: target builtin names no handler; the built-in types are {}",
                    BUILTIN_TYPES.join(", ")
                ));
                Target::Builtin
            }
            (Some(_), true) => {
                errors.push(format!(
                    "{name}: a built-in type's target cannot change; give the type another name"
                ));
                Target::Builtin
            }
            (Some(Target::Lambda(f)), false) => {
                if let Err(m) = check_function(&f) {
                    errors.push(format!("{name}: target.lambda {m}"));
                }
                Target::Lambda(f)
            }
            (Some(Target::Http(u)), false) => {
                if let Err(m) = check_url(&u) {
                    errors.push(format!("{name}: target.http {m}"));
                }
                Target::Http(u)
            }
        };
        let bounds = |field: &str, given: Option<Bounds>, default: u32, ceiling: u32, errors: &mut Vec<String>| {
            let b = given.unwrap_or(Bounds { default, max: ceiling });
            if b.default < 1 || b.default > b.max || b.max > ceiling {
                errors.push(format!("{name}: {field} needs 1 <= default <= max <= {ceiling}"));
            }
            b
        };
        let timeout_seconds = bounds(
            "timeout_seconds",
            config.timeout_seconds,
            DEFAULT_TIMEOUT_SECONDS,
            MAX_TIMEOUT_SECONDS,
            &mut errors,
        );
        let max_attempts = bounds(
            "max_attempts",
            config.max_attempts,
            DEFAULT_MAX_ATTEMPTS,
            MAX_ATTEMPTS,
            &mut errors,
        );
        #[cfg(feature = "schema")]
        let validator = match &config.payload_schema {
            None => None,
            Some(schema) => match jsonschema::validator_for(schema) {
                Ok(v) => Some(Arc::new(v)),
                Err(e) => {
                    errors.push(format!("{name}: payload_schema is not a valid JSON Schema: {e}"));
                    None
                }
            },
        };
        match (errors.is_empty(), task_type) {
            (true, Some(name)) => Ok(Self {
                name,
                target,
                timeout_seconds,
                max_attempts,
                max_priority: config.max_priority.unwrap_or(Priority::High),
                payload_schema: config.payload_schema,
                description: config.description,
                #[cfg(feature = "schema")]
                validator,
            }),
            _ => Err(errors),
        }
    }

    /// Checks `payload` against the type's schema. `Err((path, message))`: the first failing
    /// place, as a path below the payload (`.items[0]`, empty for the payload itself).
    pub fn check_payload(&self, payload: &Value) -> Result<(), (String, String)> {
        #[cfg(not(feature = "schema"))]
        let _ = payload;
        #[cfg(feature = "schema")]
        if let Some(validator) = &self.validator {
            if let Some(error) = validator.iter_errors(payload).next() {
                let mut path = String::new();
                for segment in error.instance_path().iter() {
                    match segment {
                        jsonschema::paths::LocationSegment::Property(p) => {
                            path.push('.');
                            path.push_str(&p);
                        }
                        jsonschema::paths::LocationSegment::Index(i) => path.push_str(&format!("[{i}]")),
                    }
                }
                // Masked: the message names what was expected without echoing the value back.
                return Err((path, error.masked().to_string()));
            }
            return Ok(());
        }
        if self.payload_schema.is_some() {
            // Only a build without the `schema` feature gets here; it must not accept unchecked.
            return Err((String::new(), "this build cannot check payload schemas".to_owned()));
        }
        Ok(())
    }

    /// What `GET /v1/types` shows: limits and schema, the target's kind but not its address.
    pub fn public_json(&self) -> Value {
        let mut v = serde_json::json!({
            "name": self.name.as_str(),
            "target": self.target.kind(),
            "timeout_seconds": self.timeout_seconds,
            "max_attempts": self.max_attempts,
            "max_priority": self.max_priority,
            "payload_schema": self.payload_schema,
        });
        if let (Some(d), Some(obj)) = (&self.description, v.as_object_mut()) {
            obj.insert("description".into(), Value::String(d.clone()));
        }
        v
    }
}

/// A Lambda function name, partial ARN or ARN, as `Invoke` takes it.
fn check_function(f: &str) -> Result<(), String> {
    if f.is_empty() || f.len() > 170 {
        return Err("must be 1-170 characters (a function name or ARN)".into());
    }
    if !f
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b':' | b'.' | b'$'))
    {
        return Err(format!("{f:?} is not a function name or ARN"));
    }
    Ok(())
}

/// An https URL; plain http only to a loopback host (local receivers; the worker's outbound
/// guard still decides at send time whether loopback is reachable at all).
fn check_url(u: &str) -> Result<(), String> {
    let url = url::Url::parse(u).map_err(|e| format!("{u:?} is not a URL ({e})"))?;
    let loopback = matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        _ => return Err(format!("{u:?} must be an https:// URL")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials in the URL".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(name: &str) -> TaskType {
        TaskType::parse(name).unwrap()
    }

    #[test]
    fn empty_configuration_is_the_builtins() {
        for text in ["", "  ", "{}"] {
            let c = Catalog::from_json(text).unwrap();
            let mut names = BUILTIN_TYPES.to_vec();
            names.sort_unstable();
            assert_eq!(c.names(), names);
        }
        assert!(Catalog::builtin()
            .get(&t("resize"))
            .unwrap_err()
            .contains("unknown task type \"resize\""));
        assert!(Catalog::open().get(&t("resize")).is_ok());
    }

    #[test]
    fn configured_types_extend_change_and_remove() {
        let c = Catalog::from_json(
            &json!({
                "resize": {"target": {"lambda": "arn:aws:lambda:eu-west-1:123456789012:function:resize"},
                           "timeout_seconds": {"default": 120, "max": 600}, "max_priority": "normal"},
                "notify": {"target": {"http": "https://hooks.example.com/taskq"}},
                "echo": {"max_attempts": {"default": 1, "max": 2}},
                "fail": null
            })
            .to_string(),
        )
        .unwrap();
        assert_eq!(c.names(), vec!["echo", "notify", "resize", "sleep", "webhook"]);
        let resize = c.get(&t("resize")).unwrap();
        assert_eq!(resize.target.kind(), "lambda");
        assert_eq!(resize.timeout_seconds, Bounds { default: 120, max: 600 });
        assert_eq!(resize.max_attempts, Bounds { default: 3, max: 25 });
        assert_eq!(resize.max_priority, Priority::Normal);
        assert_eq!(c.get(&t("echo")).unwrap().max_attempts, Bounds { default: 1, max: 2 });
        assert_eq!(c.get(&t("echo")).unwrap().target, Target::Builtin);
        // Callers see the kind of target, not where it is.
        let shown = resize.public_json().to_string();
        assert!(
            shown.contains("\"target\":\"lambda\"") && !shown.contains("arn:aws"),
            "{shown}"
        );
    }

    #[test]
    fn every_mistake_is_reported_at_once() {
        let e = Catalog::from_json(
            &json!({
                "Bad Name": {"target": {"lambda": "f"}},
                "nowhere": {},
                "mine": {"target": "builtin"},
                "echo": {"target": {"lambda": "f"}},
                "plain": {"target": {"http": "http://hooks.example.com/"}},
                "secret": {"target": {"http": "https://user:pw@hooks.example.com/"}},
                "slow": {"target": {"lambda": "f"}, "timeout_seconds": {"default": 100, "max": 901}},
                "inverted": {"target": {"lambda": "f"}, "max_attempts": {"default": 5, "max": 2}},
                "spaces": {"target": {"lambda": "my function"}},
                "nothing": null
            })
            .to_string(),
        )
        .unwrap_err();
        let text = e.to_string();
        for needle in [
            "\"Bad Name\": a type name",
            "nowhere: target is required",
            "mine: target builtin names no handler",
            "echo: a built-in type's target cannot change",
            "plain: target.http",
            "secret: target.http must not carry credentials",
            "slow: timeout_seconds needs 1 <= default <= max <= 900",
            "inverted: max_attempts needs",
            "spaces: target.lambda",
            "nothing: null removes a built-in type",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from {text}");
        }
        assert!(Catalog::from_json("[1]").is_err());
        assert!(Catalog::from_json(r#"{"x": {"target": {"lambda": "f"}, "colour": 1}}"#).is_err());
    }

    #[test]
    fn handlers_registered_in_code_are_accepted_without_changing_configured_ones() {
        let c = Catalog::from_json(r#"{"echo": {"max_attempts": {"default": 1, "max": 1}}}"#)
            .unwrap()
            .accepting(["digest", "echo", "Not Valid"]);
        assert_eq!(
            c.get(&t("digest")).unwrap().max_attempts,
            Bounds { default: 3, max: 25 }
        );
        assert_eq!(c.get(&t("echo")).unwrap().max_attempts, Bounds { default: 1, max: 1 });
        assert!(!c.names().contains(&"Not Valid"));
    }

    #[test]
    fn loopback_http_targets_are_allowed_for_local_receivers() {
        let c = Catalog::from_json(r#"{"local": {"target": {"http": "http://127.0.0.1:9000/run"}}}"#).unwrap();
        assert_eq!(
            c.get(&t("local")).unwrap().target,
            Target::Http("http://127.0.0.1:9000/run".into())
        );
    }

    #[cfg(feature = "schema")]
    #[test]
    fn payload_schemas_name_the_failing_path() {
        let c = Catalog::from_json(
            &json!({"resize": {"target": {"lambda": "f"}, "payload_schema": {
                "type": "object", "required": ["key"],
                "properties": {"key": {"type": "string"}, "sizes": {"type": "array", "items": {"type": "integer", "maximum": 4096}}}
            }}})
            .to_string(),
        )
        .unwrap();
        let spec = c.get(&t("resize")).unwrap();
        assert!(spec.check_payload(&json!({"key": "a.png", "sizes": [64, 128]})).is_ok());
        let (path, message) = spec
            .check_payload(&json!({"key": "a.png", "sizes": [64, 9000]}))
            .unwrap_err();
        assert_eq!(path, ".sizes[1]");
        assert!(message.contains("4096"), "{message}");
        let (path, message) = spec.check_payload(&json!({"sizes": []})).unwrap_err();
        assert_eq!(path, "");
        assert!(message.contains("key"), "{message}");
        let e = Catalog::from_json(r#"{"x": {"target": {"lambda": "f"}, "payload_schema": {"type": "nonsense"}}}"#)
            .unwrap_err();
        assert!(
            e.to_string().contains("x: payload_schema is not a valid JSON Schema"),
            "{e}"
        );
    }
}
