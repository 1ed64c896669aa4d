//! Hello world on `lambda_runtime`: the cold-start baseline. It does what every taskq main does
//! before its own wiring (a current-thread tokio runtime, the runtime client) and nothing else.

use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use serde_json::{json, Value};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    run(service_fn(|event: LambdaEvent<Value>| async move {
        Ok::<Value, Error>(json!({"hello": "world", "request_id": event.context.request_id}))
    }))
    .await
}
