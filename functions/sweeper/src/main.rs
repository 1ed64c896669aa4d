//! Lambda entry point of the sweeper (an EventBridge schedule invokes it).

use std::sync::Arc;

use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use taskq_sweeper::{SweepReport, Sweeper, SweeperConfig};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    taskq_aws::telemetry::init();
    let config = SweeperConfig::from_env()?;
    let aws = taskq_aws::AwsConfig::from_env()?;
    let (store, queue) = aws.adapters().await;
    let sweeper = Sweeper::new(Arc::new(store), Arc::new(queue), config);
    run(service_fn(|_: LambdaEvent<serde_json::Value>| {
        let sweeper = sweeper.clone();
        async move { Ok::<SweepReport, Error>(sweeper.sweep().await) }
    }))
    .await
}
