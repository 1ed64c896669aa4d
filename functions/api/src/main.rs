//! Lambda entry point of the API: the axum Router under `lambda_http`.

use std::sync::Arc;

use taskq_api::{router, AppState, Authenticator};
use taskq_core::TaskService;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    taskq_aws::telemetry::init();
    let aws = taskq_aws::AwsConfig::from_env()?;
    let (store, queue) = aws.adapters().await;
    let state = AppState::new(
        TaskService::new(Arc::new(store), Arc::new(queue)),
        Authenticator::from_env(),
    );
    lambda_http::run(router(state)).await
}
