//! [`TaskQueue`] over three SQS standard queues. Messages carry keys only, and the user id as
//! `MessageGroupId`, which turns on SQS fair queues: one busy user cannot starve the others.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{
    MessageSystemAttributeName, MessageSystemAttributeNameForSends, MessageSystemAttributeValue, QueueAttributeName,
    SendMessageBatchRequestEntry,
};
use aws_sdk_sqs::Client;
use chrono::{TimeZone, Utc};
use taskq_core::{Delivery, Priority, QueueError, QueueStats, RedrivePath, TaskMessage, TaskQueue};
use tracing::{instrument, warn};

use crate::config::{index, QueueUrls};

/// SQS accepts at most ten entries per batch call.
const SQS_BATCH: usize = 10;
/// SQS's largest visibility timeout (12 hours).
const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 3600);

#[derive(Clone, Debug)]
pub struct SqsTaskQueue {
    client: Client,
    urls: QueueUrls,
}

impl SqsTaskQueue {
    pub fn new(client: Client, urls: QueueUrls) -> Self {
        Self { client, urls }
    }

    pub fn urls(&self) -> &QueueUrls {
        &self.urls
    }

    fn dead_letter_url(&self, p: Priority) -> Result<&str, QueueError> {
        self.urls.dead_letter[index(p)]
            .as_deref()
            .ok_or_else(|| QueueError::Unavailable(format!("no dead-letter queue configured for {p}").into()))
    }

    async fn receive_from(
        &self,
        url: &str,
        max: usize,
        wait: Duration,
        visibility: Option<Duration>,
    ) -> Result<Vec<Delivery>, QueueError> {
        let out = self
            .client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(max.clamp(1, SQS_BATCH) as i32)
            // SQS long-polls in whole seconds: round a sub-second wait up, not down to a short
            // poll (which returns at once and makes a poller spin on an empty queue).
            .wait_time_seconds(wait.as_secs_f64().ceil().min(20.0) as i32)
            .set_visibility_timeout(visibility.map(|v| secs(v.min(MAX_VISIBILITY))))
            .message_system_attribute_names(MessageSystemAttributeName::All)
            // A long poll legitimately waits up to 20 s: bound the attempt by the wait plus the
            // usual margin instead of the client's default (config.rs).
            .customize()
            .config_override(
                aws_sdk_sqs::config::Builder::default().timeout_config(
                    aws_sdk_sqs::config::timeout::TimeoutConfig::builder()
                        .operation_attempt_timeout(wait + Duration::from_secs(10))
                        .operation_timeout(wait + Duration::from_secs(25))
                        .build(),
                ),
            )
            .send()
            .await
            .map_err(queue_error)?;
        Ok(out
            .messages
            .unwrap_or_default()
            .into_iter()
            .map(|m| {
                let attr = |name: MessageSystemAttributeName| m.attributes.as_ref().and_then(|a| a.get(&name).cloned());
                let sent_ms: i64 = attr(MessageSystemAttributeName::SentTimestamp)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                Delivery {
                    message_id: m.message_id.clone().unwrap_or_default(),
                    receipt: m.receipt_handle.clone().unwrap_or_default(),
                    body: m.body.clone().unwrap_or_default(),
                    receive_count: attr(MessageSystemAttributeName::ApproximateReceiveCount)
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(1),
                    sent_at: Utc.timestamp_millis_opt(sent_ms).single().unwrap_or_else(Utc::now),
                    group_id: attr(MessageSystemAttributeName::MessageGroupId),
                    trace_header: attr(MessageSystemAttributeName::AwsTraceHeader),
                }
            })
            .collect())
    }

    async fn arn(&self, url: &str) -> Result<String, QueueError> {
        self.client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(queue_error)?
            .attributes
            .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
            .ok_or_else(|| QueueError::Unavailable(format!("{url} has no QueueArn").into()))
    }

    async fn counts(&self, url: &str, names: &[QueueAttributeName]) -> Result<Vec<u64>, QueueError> {
        let attrs = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .set_attribute_names(Some(names.to_vec()))
            .send()
            .await
            .map_err(queue_error)?
            .attributes
            .unwrap_or_default();
        Ok(names
            .iter()
            .map(|n| attrs.get(n).and_then(|v| v.parse().ok()).unwrap_or(0))
            .collect())
    }
}

fn body(m: &TaskMessage) -> Result<String, QueueError> {
    serde_json::to_string(m).map_err(|e| QueueError::Unavailable(e.into()))
}

type SystemAttributes = HashMap<MessageSystemAttributeNameForSends, MessageSystemAttributeValue>;

/// `AWSTraceHeader` for a message, so the worker's trace continues the request's. SQS takes
/// it as a message system attribute (it is not counted against the ten message attributes).
fn trace_attributes(header: Option<String>) -> Option<SystemAttributes> {
    let value = MessageSystemAttributeValue::builder()
        .data_type("String")
        .string_value(header?)
        .build()
        .ok()?;
    Some(HashMap::from([(
        MessageSystemAttributeNameForSends::AwsTraceHeader,
        value,
    )]))
}

fn secs(d: Duration) -> i32 {
    d.as_secs_f64().ceil() as i32
}

/// SQS's codes for a request it refuses as malformed (its awsQueryCompatible codes, which the
/// SDK reports). None of them is cured by retrying, and none means the queue is down.
const PARAMETER_ERRORS: &[&str] = &[
    "InvalidParameterValue",
    "MissingParameter",
    "InvalidMessageContents",
    "InvalidAttributeName",
    "InvalidAttributeValue",
    "InvalidParameterCombination",
    "InvalidBatchEntryId",
    "BatchEntryIdsNotDistinct",
    "BatchRequestTooLong",
    "EmptyBatchRequest",
    "TooManyEntriesInBatchRequest",
    "ValidationError",
];

fn invalid<E: ProvideErrorMetadata>(e: &E) -> QueueError {
    QueueError::Invalid(format!(
        "{}: {}",
        e.code().unwrap_or("unknown"),
        e.message().unwrap_or_default()
    ))
}

/// For every request but those that carry a receipt handle.
fn queue_error<E, R>(e: SdkError<E, R>) -> QueueError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    match e.code() {
        Some(code) if PARAMETER_ERRORS.contains(&code) => invalid(&e),
        _ => QueueError::Unavailable(Box::new(e)),
    }
}

/// For DeleteMessage and ChangeMessageVisibility: SQS answers an expired or stale receipt
/// handle with `InvalidParameterValue` (naming `ReceiptHandle`) as well as with its own codes.
fn receipt_error<E, R>(e: SdkError<E, R>) -> QueueError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    match e.code() {
        Some("ReceiptHandleIsInvalid" | "AWS.SimpleQueueService.MessageNotInflight") => QueueError::InvalidReceipt,
        Some("InvalidParameterValue") if e.message().is_none_or(|m| m.to_ascii_lowercase().contains("receipt")) => {
            QueueError::InvalidReceipt
        }
        _ => queue_error(e),
    }
}

/// What SendMessage would refuse for a message, checked before sending: SQS's `MessageGroupId`
/// rule (moto does not enforce it; SQS does), so every backend refuses the same messages.
fn check_message(m: &TaskMessage) -> Result<(), QueueError> {
    taskq_core::identity::check_message_group_id(&m.user_id).map_err(QueueError::Invalid)
}

#[async_trait]
impl TaskQueue for SqsTaskQueue {
    #[instrument(level = "debug", skip_all, fields(task_id = %message.task_id), err(Debug))]
    async fn send(&self, message: &TaskMessage, delay: Duration) -> Result<(), QueueError> {
        check_message(message)?;
        self.client
            .send_message()
            .queue_url(self.urls.url(message.priority))
            .message_body(body(message)?)
            .delay_seconds(secs(delay))
            .message_group_id(&message.user_id)
            .set_message_system_attributes(trace_attributes(taskq_core::trace::current()))
            .send()
            .await
            .map_err(queue_error)?;
        Ok(())
    }

    #[instrument(level = "debug", skip_all, fields(count = messages.len()))]
    async fn send_batch(&self, messages: &[(TaskMessage, Duration)]) -> Vec<Result<(), QueueError>> {
        let mut results: Vec<Result<(), QueueError>> = (0..messages.len()).map(|_| Ok(())).collect();
        // One request's messages: one trace header for all of them.
        let trace = taskq_core::trace::current();
        for priority in Priority::ALL {
            let indices: Vec<usize> = (0..messages.len())
                .filter(|i| messages[*i].0.priority == *priority)
                .collect();
            for chunk in indices.chunks(SQS_BATCH) {
                let mut entries = Vec::with_capacity(chunk.len());
                for &i in chunk {
                    let (m, delay) = &messages[i];
                    let entry = check_message(m).and_then(|()| body(m)).and_then(|b| {
                        SendMessageBatchRequestEntry::builder()
                            .id(i.to_string())
                            .message_body(b)
                            .delay_seconds(secs(*delay))
                            .message_group_id(&m.user_id)
                            .set_message_system_attributes(trace_attributes(trace.clone()))
                            .build()
                            .map_err(|e| QueueError::Unavailable(e.into()))
                    });
                    match entry {
                        Ok(e) => entries.push(e),
                        Err(e) => results[i] = Err(e),
                    }
                }
                let out = self
                    .client
                    .send_message_batch()
                    .queue_url(self.urls.url(*priority))
                    .set_entries(Some(entries))
                    .send()
                    .await;
                match out {
                    Ok(out) => {
                        for failed in out.failed {
                            if let Ok(i) = failed.id.parse::<usize>() {
                                let text = format!("{}: {}", failed.code, failed.message.unwrap_or_default());
                                results[i] = Err(if failed.sender_fault {
                                    QueueError::Invalid(text)
                                } else {
                                    QueueError::Unavailable(text.into())
                                });
                            }
                        }
                    }
                    Err(e) => {
                        let e = queue_error(e);
                        for &i in chunk {
                            results[i] = Err(match &e {
                                QueueError::Invalid(text) => QueueError::Invalid(text.clone()),
                                other => QueueError::Unavailable(other.to_string().into()),
                            });
                        }
                    }
                }
            }
        }
        results
    }

    #[instrument(level = "debug", skip_all, err(Debug))]
    async fn change_visibility(&self, p: Priority, receipt: &str, timeout: Duration) -> Result<(), QueueError> {
        self.client
            .change_message_visibility()
            .queue_url(self.urls.url(p))
            .receipt_handle(receipt)
            .visibility_timeout(secs(timeout.min(MAX_VISIBILITY)))
            .send()
            .await
            .map_err(receipt_error)?;
        Ok(())
    }

    async fn receive(&self, p: Priority, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        self.receive_from(self.urls.url(p), max, wait, None).await
    }

    async fn delete(&self, p: Priority, receipt: &str) -> Result<(), QueueError> {
        self.client
            .delete_message()
            .queue_url(self.urls.url(p))
            .receipt_handle(receipt)
            .send()
            .await
            .map_err(receipt_error)?;
        Ok(())
    }

    async fn dead_letter_depth(&self, p: Priority) -> Result<u64, QueueError> {
        let url = self.dead_letter_url(p)?;
        Ok(self
            .counts(url, &[QueueAttributeName::ApproximateNumberOfMessages])
            .await?[0])
    }

    async fn receive_dead_letters(
        &self,
        p: Priority,
        max: usize,
        visibility: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        let url = self.dead_letter_url(p)?;
        self.receive_from(url, max, Duration::ZERO, Some(visibility)).await
    }

    async fn release_dead_letters(&self, p: Priority, received: &[Delivery]) -> Result<(), QueueError> {
        let dlq = self.dead_letter_url(p)?;
        for d in received {
            self.client
                .change_message_visibility()
                .queue_url(dlq)
                .receipt_handle(&d.receipt)
                .visibility_timeout(0)
                .send()
                .await
                .map_err(receipt_error)?;
        }
        Ok(())
    }

    #[instrument(level = "debug", skip_all, fields(priority = %p, count = received.len()), err(Debug))]
    async fn redrive(&self, p: Priority, received: &[Delivery]) -> Result<RedrivePath, QueueError> {
        let dlq = self.dead_letter_url(p)?;
        let queue = self.urls.url(p);
        let moved = self
            .client
            .start_message_move_task()
            .source_arn(self.arn(dlq).await?)
            .destination_arn(self.arn(queue).await?)
            .send()
            .await;
        match moved {
            Ok(_) => {
                // The move task takes visible messages: give back the ones received.
                self.release_dead_letters(p, received).await?;
                Ok(RedrivePath::StartMessageMoveTask)
            }
            Err(e) => {
                warn!(error = %queue_error(e), "StartMessageMoveTask failed; moving messages one by one");
                for d in received {
                    let mut send = self.client.send_message().queue_url(queue).message_body(&d.body);
                    if let Some(g) = &d.group_id {
                        send = send.message_group_id(g);
                    }
                    send = send.set_message_system_attributes(trace_attributes(d.trace_header.clone()));
                    send.send().await.map_err(queue_error)?;
                    self.client
                        .delete_message()
                        .queue_url(dlq)
                        .receipt_handle(&d.receipt)
                        .send()
                        .await
                        .map_err(receipt_error)?;
                }
                Ok(RedrivePath::ReceiveAndSend)
            }
        }
    }

    async fn stats(&self, p: Priority) -> Result<QueueStats, QueueError> {
        use QueueAttributeName::*;
        let c = self
            .counts(
                self.urls.url(p),
                &[
                    ApproximateNumberOfMessages,
                    ApproximateNumberOfMessagesNotVisible,
                    ApproximateNumberOfMessagesDelayed,
                ],
            )
            .await?;
        let dead_letters = match self.urls.dead_letter[index(p)].as_deref() {
            Some(url) => self.counts(url, &[ApproximateNumberOfMessages]).await?[0],
            None => 0,
        };
        Ok(QueueStats {
            visible: c[0],
            in_flight: c[1],
            delayed: c[2],
            dead_letters,
        })
    }
}
