//! The SQS adapter sends the current X-Ray trace header as the `AWSTraceHeader` message system
//! attribute and reads it back on receive. Against moto: SendMessage keeps it and ReceiveMessage
//! (MessageSystemAttributeNames=All) returns it; moto's SendMessageBatch drops system attributes,
//! so for batches the test checks the request the adapter sends.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_sqs::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use taskq_aws::accounting::RequestCounter;
use taskq_aws::SqsTaskQueue;
use taskq_core::{Priority, TaskId, TaskMessage, TaskQueue};

const TRACE: &str = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";

/// Keeps the body of every request sent.
#[derive(Debug, Clone, Default)]
struct Bodies(Arc<Mutex<Vec<String>>>);

impl Intercept for Bodies {
    fn name(&self) -> &'static str {
        "test-bodies"
    }
    fn read_before_transmit(
        &self,
        ctx: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let body = ctx.request().body().bytes().unwrap_or_default();
        self.0.lock().unwrap().push(String::from_utf8_lossy(body).into_owned());
        Ok(())
    }
}

fn message(p: Priority) -> TaskMessage {
    TaskMessage {
        user_id: "trace-user".into(),
        task_id: TaskId::new(),
        priority: p,
        timeout_seconds: 60,
        run_at: None,
    }
}

async fn queue(test: &str) -> Option<(SqsTaskQueue, Bodies, RequestCounter)> {
    let endpoint = taskq_aws::testing::endpoint(test)?;
    let (sdk, config) = taskq_aws::testing::fresh(&endpoint, 5).await;
    let bodies = Bodies::default();
    let counter = RequestCounter::new();
    let conf = aws_sdk_sqs::config::Builder::from(&sdk)
        .interceptor(bodies.clone())
        .interceptor(counter.clone())
        .build();
    Some((
        SqsTaskQueue::new(aws_sdk_sqs::Client::from_conf(conf), config.queues),
        bodies,
        counter,
    ))
}

#[tokio::test]
async fn send_message_carries_the_trace_header_to_the_receiver() {
    let Some((q, _, counter)) = queue("send_message_carries_the_trace_header_to_the_receiver").await else {
        return;
    };
    let m = message(Priority::High);
    taskq_core::trace::scope(Some(TRACE.into()), q.send(&m, Duration::ZERO))
        .await
        .unwrap();
    taskq_core::trace::scope(None, q.send(&message(Priority::High), Duration::ZERO))
        .await
        .unwrap();
    let got = q.receive(Priority::High, 10, Duration::from_secs(1)).await.unwrap();
    assert_eq!(got.len(), 2);
    let traced = got.iter().find(|d| d.body.contains(&m.task_id.to_string())).unwrap();
    assert_eq!(traced.trace_header.as_deref(), Some(TRACE));
    let untraced = got.iter().find(|d| !d.body.contains(&m.task_id.to_string())).unwrap();
    assert_eq!(untraced.trace_header, None);
    // And the interceptor counted the calls by operation.
    let counts = counter.snapshot();
    assert_eq!(counts["SQS.SendMessage"].calls, 2);
    assert_eq!(counts["SQS.ReceiveMessage"].calls, 1);
}

#[tokio::test]
async fn send_message_batch_sends_the_trace_header_on_every_entry() {
    let Some((q, bodies, counter)) = queue("send_message_batch_sends_the_trace_header_on_every_entry").await else {
        return;
    };
    let batch: Vec<_> = (0..12).map(|_| (message(Priority::Low), Duration::ZERO)).collect();
    let results = taskq_core::trace::scope(Some(TRACE.into()), q.send_batch(&batch)).await;
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(
        counter.snapshot()["SQS.SendMessageBatch"].calls,
        2,
        "12 messages, batches of 10"
    );
    let sent = bodies.0.lock().unwrap().clone();
    let batch_bodies: Vec<serde_json::Value> = sent
        .iter()
        .filter_map(|b| serde_json::from_str::<serde_json::Value>(b).ok())
        .filter(|v| v.get("Entries").is_some())
        .collect();
    assert_eq!(batch_bodies.len(), 2);
    let entries: Vec<&serde_json::Value> = batch_bodies
        .iter()
        .flat_map(|b| b["Entries"].as_array().unwrap())
        .collect();
    assert_eq!(entries.len(), 12);
    for e in entries {
        assert_eq!(
            e["MessageSystemAttributes"]["AWSTraceHeader"]["StringValue"], TRACE,
            "{e}"
        );
        assert_eq!(e["MessageSystemAttributes"]["AWSTraceHeader"]["DataType"], "String");
    }
}
