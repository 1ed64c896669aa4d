//! Test support: an SDK configuration for an AWS-compatible test server (moto) and fresh,
//! uniquely named resources on it. Tests that need the server fail loudly when it is absent;
//! only an explicit `TASKQ_SKIP_SERVER_TESTS=1`, outside CI, skips them, and says so.

use aws_config::{BehaviorVersion, Region};
use aws_sdk_dynamodb::config::Credentials;

use crate::bootstrap::{self, Plan};
use crate::AwsConfig;

/// The variable `scripts/test` sets to the moto server's URL.
pub const ENDPOINT_VAR: &str = "TASKQ_TEST_AWS_ENDPOINT";

/// The test server's URL; `None` only when skipping was asked for explicitly (never in CI).
pub fn endpoint(test: &str) -> Option<String> {
    required(ENDPOINT_VAR, "a moto server", test)
}

/// A test server's address from `var`. Absent, the test fails loudly, unless skipping was asked
/// for explicitly (`TASKQ_SKIP_SERVER_TESTS=1`) outside CI; then it says it skipped.
fn required(var: &str, what: &str, test: &str) -> Option<String> {
    if let Ok(url) = std::env::var(var) {
        return Some(url);
    }
    let in_ci = std::env::var_os("CI").is_some();
    if !in_ci && std::env::var("TASKQ_SKIP_SERVER_TESTS").as_deref() == Ok("1") {
        eprintln!("SKIPPED {test}: TASKQ_SKIP_SERVER_TESTS=1 and no {var}");
        return None;
    }
    panic!(
        "{test} needs {what}: set {var} (scripts/test starts one and sets it), \
         or TASKQ_SKIP_SERVER_TESTS=1 to skip outside CI"
    );
}

pub async fn sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "taskq-tests"))
        // The HTTP client the functions use (AwsConfig::sdk_config), so the contract tests
        // exercise it.
        .http_client(crate::config::lazy_https_client())
        .load()
        .await
}

/// A fresh table and queues with a unique prefix, so tests never share state.
pub async fn fresh(endpoint: &str, max_receive_count: u32) -> (aws_config::SdkConfig, AwsConfig) {
    let sdk = sdk_config(endpoint).await;
    let prefix = format!("t{}", ulid_like());
    let mut plan = Plan::named(&prefix);
    plan.max_receive_count = max_receive_count;
    let config = bootstrap::ensure(&sdk, &plan)
        .await
        .unwrap_or_else(|e| panic!("creating test resources on {endpoint}: {e:?}"));
    (sdk, config)
}

fn ulid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{:x}{}{}", nanos, std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// The variable `scripts/test` sets to its redis-server's URL.
pub const REDIS_VAR: &str = "TASKQ_TEST_REDIS_URL";

/// The test Redis URL; `None` only when skipping was asked for explicitly (never in CI).
pub fn redis_url(test: &str) -> Option<String> {
    required(REDIS_VAR, "a redis-server", test)
}

/// Settings for tests: a generous timeout (a loaded CI machine is not a VPC) and a short pause.
pub fn redis_settings(url: &str) -> crate::RedisSettings {
    crate::RedisSettings {
        url: url.to_owned(),
        cluster: false,
        timeout: std::time::Duration::from_millis(500),
        pause: std::time::Duration::from_millis(200),
        ttl: taskq_core::cache::CacheTtl::default(),
    }
}

/// A unique prefix for keys and users, so tests sharing one Redis never share state.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}", ulid_like())
}
