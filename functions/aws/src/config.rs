//! Configuration of the AWS adapters, read once from the environment by `main`.

use aws_config::BehaviorVersion;
use aws_smithy_runtime_api::client::connector_metadata::ConnectorMetadata;
use aws_smithy_runtime_api::client::http::{HttpClient, HttpConnectorSettings, SharedHttpClient, SharedHttpConnector};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use taskq_core::Priority;

use crate::accounting::RequestCounter;
use crate::{DynamoDbTaskStore, SqsTaskQueue};

/// An endpoint for every AWS service, for `sam local invoke` against moto: see `sdk_config`.
pub const LOCAL_ENDPOINT_VAR: &str = "TASKQ_AWS_ENDPOINT_URL";

/// Queue URLs by priority: high, normal, low.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueUrls {
    pub queues: [String; 3],
    /// Dead-letter queues; optional (only admin views and tests read them).
    pub dead_letter: [Option<String>; 3],
}

impl QueueUrls {
    pub fn url(&self, p: Priority) -> &str {
        &self.queues[index(p)]
    }
    pub fn dead_letter_url(&self, p: Priority) -> Option<&str> {
        self.dead_letter[index(p)].as_deref()
    }
}

pub(crate) fn index(p: Priority) -> usize {
    match p {
        Priority::High => 0,
        Priority::Normal => 1,
        Priority::Low => 2,
    }
}

#[derive(Debug, Clone)]
pub struct AwsConfig {
    pub table_name: String,
    pub queues: QueueUrls,
    /// Days finished tasks are kept before the table's TTL deletes them.
    pub retention_days: u32,
}

impl AwsConfig {
    /// Reads `TASKQ_TABLE_NAME`, `TASKQ_QUEUE_URL_{HIGH,NORMAL,LOW}` and, optionally,
    /// `TASKQ_DLQ_URL_{HIGH,NORMAL,LOW}` and `TASKQ_RETENTION_DAYS` (default 30). Reports every
    /// missing or bad variable at once.
    pub fn from_env() -> Result<Self, String> {
        let mut missing = Vec::new();
        let mut var = |name: &str| match std::env::var(name) {
            Ok(v) if !v.is_empty() => v,
            _ => {
                missing.push(name.to_owned());
                String::new()
            }
        };
        let table_name = var("TASKQ_TABLE_NAME");
        let queues = [
            var("TASKQ_QUEUE_URL_HIGH"),
            var("TASKQ_QUEUE_URL_NORMAL"),
            var("TASKQ_QUEUE_URL_LOW"),
        ];
        let retention_days = match std::env::var("TASKQ_RETENTION_DAYS") {
            Ok(v) if !v.is_empty() => match v.parse::<u32>() {
                Ok(d) if (1..=3650).contains(&d) => d,
                _ => {
                    missing.push(format!(
                        "TASKQ_RETENTION_DAYS (a whole number of days, 1-3650; got {v:?})"
                    ));
                    0
                }
            },
            _ => crate::dynamodb::DEFAULT_RETENTION_DAYS,
        };
        if !missing.is_empty() {
            return Err(format!(
                "missing or invalid environment variables: {}",
                missing.join(", ")
            ));
        }
        let dlq = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Ok(Self {
            table_name,
            retention_days,
            queues: QueueUrls {
                queues,
                dead_letter: [
                    dlq("TASKQ_DLQ_URL_HIGH"),
                    dlq("TASKQ_DLQ_URL_NORMAL"),
                    dlq("TASKQ_DLQ_URL_LOW"),
                ],
            },
        })
    }

    /// The SDK configuration from the environment (region, credentials, `AWS_ENDPOINT_URL`, or
    /// [`LOCAL_ENDPOINT_VAR`] when set and not empty).
    /// No network I/O: credentials are resolved on first use.
    ///
    /// In Lambda the region and the credentials are environment variables the service sets, so
    /// they are taken from there directly (see [`lambda_region`]). The default chains would end
    /// at the same values, but building them is most of a cold start's SDK cost: the credentials
    /// chain constructs an STS client for web identity tokens, and constructing any SDK client
    /// loads and parses the system trust roots (every file under /etc/ssl/certs on Debian).
    /// Everything else (`AWS_ENDPOINT_URL` and the per-service endpoint variables, retries,
    /// FIPS and dual-stack flags) still goes through the loader.
    pub async fn sdk_config() -> aws_config::SdkConfig {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .timeout_config(sdk_timeouts())
            .http_client(lazy_https_client());
        // Declared empty in template.yaml so that `sam local invoke --env-vars` can point the
        // functions at local servers (sam passes only variables the template declares); an empty
        // AWS_ENDPOINT_URL there would make the SDK warn at every start.
        if let Some(url) = std::env::var(LOCAL_ENDPOINT_VAR).ok().filter(|v| !v.trim().is_empty()) {
            loader = loader.endpoint_url(url.trim());
        }
        if let Some(region) = lambda_region(|name| std::env::var(name).ok()) {
            loader = loader
                .region(aws_config::Region::new(region))
                .credentials_provider(aws_config::environment::EnvironmentVariableCredentialsProvider::new());
        }
        loader.load().await
    }

    /// Builds both adapters over one SDK configuration.
    pub async fn adapters(&self) -> (DynamoDbTaskStore, SqsTaskQueue) {
        let sdk = Self::sdk_config().await;
        self.adapters_from(&sdk)
    }

    pub fn adapters_from(&self, sdk: &aws_config::SdkConfig) -> (DynamoDbTaskStore, SqsTaskQueue) {
        (
            DynamoDbTaskStore::new(aws_sdk_dynamodb::Client::new(sdk), self.table_name.clone())
                .with_retention_days(self.retention_days),
            SqsTaskQueue::new(aws_sdk_sqs::Client::new(sdk), self.queues.clone()),
        )
    }

    /// Both adapters, their clients counting every call in `counter` (request accounting).
    pub fn adapters_counted(
        &self,
        sdk: &aws_config::SdkConfig,
        counter: &RequestCounter,
    ) -> (DynamoDbTaskStore, SqsTaskQueue) {
        let ddb = aws_sdk_dynamodb::config::Builder::from(sdk)
            .interceptor(counter.clone())
            .build();
        let sqs = aws_sdk_sqs::config::Builder::from(sdk)
            .interceptor(counter.clone())
            .build();
        (
            DynamoDbTaskStore::new(aws_sdk_dynamodb::Client::from_conf(ddb), self.table_name.clone())
                .with_retention_days(self.retention_days),
            SqsTaskQueue::new(aws_sdk_sqs::Client::from_conf(sqs), self.queues.clone()),
        )
    }
}

/// The SDK's default HTTPS client (hyper 1, rustls on aws-lc-rs, proxy settings from the
/// environment: what `default-https-client` builds), with two differences:
///
/// - one client for every SDK client made from the `SdkConfig` (DynamoDB, SQS, ElastiCache), so
///   they share one connector per timeout setting and one connection pool;
/// - its TLS connector is built on the first request instead of when each SDK client is
///   constructed. The SDK builds a throwaway connector per client at construction, only to
///   load the system trust roots early (`HyperClient::validate_base_client_config`); with two
///   or three clients that was two or three parses of every root certificate in every cold
///   start, before the connector actually used was built, again, on the first call.
///
/// The roots are still loaded once, on the first AWS call (so an API request that never reaches
/// AWS, such as a health check or a refused token, never loads them).
pub fn lazy_https_client() -> SharedHttpClient {
    use aws_smithy_http_client::proxy::ProxyConfig;
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};

    let inner = aws_smithy_http_client::Builder::new().build_with_connector_fn(|settings, components| {
        let mut connector =
            aws_smithy_http_client::ConnectorBuilder::default().tls_provider(Provider::Rustls(CryptoMode::AwsLc));
        connector.set_connector_settings(settings.cloned());
        if let Some(components) = components {
            connector.set_sleep_impl(components.sleep_impl());
        }
        connector.set_proxy_config(Some(ProxyConfig::from_env()));
        connector.build()
    });
    SharedHttpClient::new(LazyHttpClient(inner))
}

/// An HTTP client that leaves `validate_base_client_config` at its default (no eager connector).
#[derive(Debug)]
struct LazyHttpClient(SharedHttpClient);

impl HttpClient for LazyHttpClient {
    fn http_connector(&self, settings: &HttpConnectorSettings, components: &RuntimeComponents) -> SharedHttpConnector {
        // The inner client builds the connector for these settings once and caches it.
        self.0.http_connector(settings, components)
    }

    fn connector_metadata(&self) -> Option<ConnectorMetadata> {
        self.0.connector_metadata()
    }
}

/// The region, when this process runs in Lambda with the credentials in its environment: then
/// `AWS_REGION` and the environment credentials are exactly what the default chains would find
/// (Lambda sets `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and
/// `AWS_SESSION_TOKEN` for the execution role). `None` anywhere else (a laptop, CI, taskq-local,
/// a Lambda-like environment without keys): the full default chains run there, profiles, SSO
/// and IMDS included.
pub fn lambda_region(env: impl Fn(&str) -> Option<String>) -> Option<String> {
    let set = |name: &str| env(name).filter(|v| !v.is_empty());
    set("AWS_LAMBDA_FUNCTION_NAME")?;
    set("AWS_ACCESS_KEY_ID")?;
    set("AWS_SECRET_ACCESS_KEY")?;
    set("AWS_REGION")
}

/// Bounds on every AWS call. Without them an unanswered request holds an invocation until the
/// Lambda timeout (29 s for the API, up to 15 minutes for a worker batch). DynamoDB and SQS
/// answer in milliseconds; an attempt that takes 10 s is retried (the SDK's standard retries),
/// and the whole call gives up after 25 s, inside the API's 29 s. SQS long polls raise their
/// own attempt timeout by the wait (`sqs.rs`).
pub fn sdk_timeouts() -> aws_config::timeout::TimeoutConfig {
    aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(std::time::Duration::from_secs(3))
        .operation_attempt_timeout(std::time::Duration::from_secs(10))
        .operation_timeout(std::time::Duration::from_secs(25))
        .build()
}
