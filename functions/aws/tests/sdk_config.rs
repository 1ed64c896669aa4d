//! `AwsConfig::sdk_config` in a Lambda environment: region and credentials come straight from
//! the variables Lambda sets, and `AWS_ENDPOINT_URL` (moto, LocalStack) still applies.
//! One test in its own binary: it sets process environment variables.

use aws_sdk_dynamodb::config::ProvideCredentials;
use taskq_aws::config::lambda_region;

fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
    move |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
}

#[test]
fn lambda_region_needs_the_function_name_the_keys_and_the_region() {
    let lambda = env_of(&[
        ("AWS_LAMBDA_FUNCTION_NAME", "taskq-api"),
        ("AWS_REGION", "eu-west-1"),
        ("AWS_ACCESS_KEY_ID", "AKIA"),
        ("AWS_SECRET_ACCESS_KEY", "secret"),
    ]);
    assert_eq!(lambda_region(lambda).as_deref(), Some("eu-west-1"));
    // Outside Lambda the default chains (profiles, SSO, IMDS) must still run.
    let laptop = env_of(&[
        ("AWS_REGION", "eu-west-1"),
        ("AWS_ACCESS_KEY_ID", "AKIA"),
        ("AWS_SECRET_ACCESS_KEY", "secret"),
    ]);
    assert_eq!(lambda_region(laptop), None);
    // No keys in the environment (container credentials, say): the chain finds them.
    let no_keys = env_of(&[("AWS_LAMBDA_FUNCTION_NAME", "taskq-api"), ("AWS_REGION", "eu-west-1")]);
    assert_eq!(lambda_region(no_keys), None);
    let empty_region = env_of(&[
        ("AWS_LAMBDA_FUNCTION_NAME", "taskq-api"),
        ("AWS_REGION", ""),
        ("AWS_ACCESS_KEY_ID", "AKIA"),
        ("AWS_SECRET_ACCESS_KEY", "secret"),
    ]);
    assert_eq!(lambda_region(empty_region), None);
}

#[tokio::test]
async fn sdk_config_in_lambda_uses_the_environment_and_keeps_the_endpoint_override() {
    for (k, v) in [
        ("AWS_LAMBDA_FUNCTION_NAME", "taskq-worker"),
        ("AWS_REGION", "ap-southeast-2"),
        ("AWS_ACCESS_KEY_ID", "AKIAFROMLAMBDA"),
        ("AWS_SECRET_ACCESS_KEY", "lambda-secret"),
        ("AWS_SESSION_TOKEN", "lambda-session"),
        ("AWS_ENDPOINT_URL", "http://127.0.0.1:4566"),
    ] {
        std::env::set_var(k, v);
    }
    let sdk = taskq_aws::AwsConfig::sdk_config().await;
    assert_eq!(sdk.region().map(|r| r.as_ref()), Some("ap-southeast-2"));
    assert_eq!(sdk.endpoint_url(), Some("http://127.0.0.1:4566"));
    // One HTTP client for every SDK client made from this config (lazy_https_client).
    assert!(sdk.http_client().is_some());
    let timeouts = sdk.timeout_config().expect("timeouts set");
    assert_eq!(
        timeouts.operation_timeout(),
        taskq_aws::config::sdk_timeouts().operation_timeout()
    );
    let credentials = sdk
        .credentials_provider()
        .expect("a credentials provider")
        .provide_credentials()
        .await
        .expect("credentials from the environment");
    assert_eq!(credentials.access_key_id(), "AKIAFROMLAMBDA");
    assert_eq!(credentials.secret_access_key(), "lambda-secret");
    assert_eq!(credentials.session_token(), Some("lambda-session"));
    // The provider reads the environment when asked, as the default chain's env provider does.
    std::env::set_var("AWS_ACCESS_KEY_ID", "AKIAROTATED");
    let rotated = sdk.credentials_provider().unwrap().provide_credentials().await.unwrap();
    assert_eq!(rotated.access_key_id(), "AKIAROTATED");

    // The template's TASKQ_AWS_ENDPOINT_URL: empty (deployed) changes nothing; set (sam local
    // with env.local.json) it is every client's endpoint.
    std::env::set_var(taskq_aws::config::LOCAL_ENDPOINT_VAR, "");
    let sdk = taskq_aws::AwsConfig::sdk_config().await;
    assert_eq!(sdk.endpoint_url(), Some("http://127.0.0.1:4566"));
    std::env::set_var(taskq_aws::config::LOCAL_ENDPOINT_VAR, "http://10.88.0.1:5000");
    let sdk = taskq_aws::AwsConfig::sdk_config().await;
    assert_eq!(sdk.endpoint_url(), Some("http://10.88.0.1:5000"));
}
