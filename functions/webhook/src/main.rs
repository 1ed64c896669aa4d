//! Lambda entry point of the webhook sender (a DynamoDB stream event source invokes it; its
//! filter passes only terminal tasks that have a `callback_url`).

use std::sync::Arc;

use aws_lambda_events::dynamodb::Event;
use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use taskq_webhook::{handle, BatchResponse, Deliverer, Network, RetryPolicy, Webhooks};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    taskq_aws::telemetry::init();
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let table = var("TASKQ_TABLE_NAME").ok_or("TASKQ_TABLE_NAME must be set")?;
    // The secret is read from Secrets Manager, not from the environment: a value in the
    // function's configuration is readable by anyone allowed GetFunctionConfiguration.
    let secret_arn = var("TASKQ_WEBHOOK_SECRET_ARN").ok_or("TASKQ_WEBHOOK_SECRET_ARN must be set")?;
    let sdk = taskq_aws::AwsConfig::sdk_config().await;
    let secret = taskq_aws::secrets::signing_secret(&sdk, &secret_arn).await?;
    let deliverer = Deliverer::new(secret.into_bytes(), RetryPolicy::default(), Network::PublicOnly)?;
    let store = taskq_aws::DynamoDbTaskStore::new(aws_sdk_dynamodb::Client::new(&sdk), table);
    let webhooks = Webhooks::new(deliverer, Arc::new(store));
    run(service_fn(|event: LambdaEvent<Event>| {
        let webhooks = webhooks.clone();
        async move { Ok::<BatchResponse, Error>(handle(&event.payload, &webhooks).await) }
    }))
    .await
}
