//! [`TaskQueue`] over three SQS standard queues. Messages carry keys only, and the user id as
//! `MessageGroupId`, which turns on SQS fair queues: one busy user cannot starve the others.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName, SendMessageBatchRequestEntry};
use aws_sdk_sqs::Client;
use chrono::{TimeZone, Utc};
use taskq_core::{Delivery, Priority, QueueError, TaskMessage, TaskQueue};
use tracing::instrument;

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
}

fn body(m: &TaskMessage) -> Result<String, QueueError> {
    serde_json::to_string(m).map_err(|e| QueueError::Unavailable(e.into()))
}

fn secs(d: Duration) -> i32 {
    d.as_secs_f64().ceil() as i32
}

fn queue_error<E, R>(e: SdkError<E, R>) -> QueueError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    match e.code() {
        Some("ReceiptHandleIsInvalid" | "InvalidParameterValue" | "AWS.SimpleQueueService.MessageNotInflight") => {
            QueueError::InvalidReceipt
        }
        _ => QueueError::Unavailable(Box::new(e)),
    }
}

#[async_trait]
impl TaskQueue for SqsTaskQueue {
    #[instrument(skip_all, fields(task_id = %message.task_id), err(Debug))]
    async fn send(&self, message: &TaskMessage, delay: Duration) -> Result<(), QueueError> {
        self.client
            .send_message()
            .queue_url(self.urls.url(message.priority))
            .message_body(body(message)?)
            .delay_seconds(secs(delay))
            .message_group_id(&message.user_id)
            .send()
            .await
            .map_err(queue_error)?;
        Ok(())
    }

    #[instrument(skip_all, fields(count = messages.len()))]
    async fn send_batch(&self, messages: &[(TaskMessage, Duration)]) -> Vec<Result<(), QueueError>> {
        let mut results: Vec<Result<(), QueueError>> = (0..messages.len()).map(|_| Ok(())).collect();
        for priority in Priority::ALL {
            let indices: Vec<usize> = (0..messages.len())
                .filter(|i| messages[*i].0.priority == *priority)
                .collect();
            for chunk in indices.chunks(SQS_BATCH) {
                let mut entries = Vec::with_capacity(chunk.len());
                for &i in chunk {
                    let (m, delay) = &messages[i];
                    let entry = body(m).and_then(|b| {
                        SendMessageBatchRequestEntry::builder()
                            .id(i.to_string())
                            .message_body(b)
                            .delay_seconds(secs(*delay))
                            .message_group_id(&m.user_id)
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
                                results[i] = Err(QueueError::Unavailable(
                                    format!("{}: {}", failed.code, failed.message.unwrap_or_default()).into(),
                                ));
                            }
                        }
                    }
                    Err(e) => {
                        let e = queue_error(e);
                        let text = e.to_string();
                        for &i in chunk {
                            results[i] = Err(QueueError::Unavailable(text.clone().into()));
                        }
                    }
                }
            }
        }
        results
    }

    #[instrument(skip_all, err(Debug))]
    async fn change_visibility(&self, p: Priority, receipt: &str, timeout: Duration) -> Result<(), QueueError> {
        self.client
            .change_message_visibility()
            .queue_url(self.urls.url(p))
            .receipt_handle(receipt)
            .visibility_timeout(secs(timeout.min(MAX_VISIBILITY)))
            .send()
            .await
            .map_err(queue_error)?;
        Ok(())
    }

    async fn receive(&self, p: Priority, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        let out = self
            .client
            .receive_message()
            .queue_url(self.urls.url(p))
            .max_number_of_messages(max.clamp(1, SQS_BATCH) as i32)
            .wait_time_seconds(wait.as_secs().min(20) as i32)
            .message_system_attribute_names(MessageSystemAttributeName::All)
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
                }
            })
            .collect())
    }

    async fn delete(&self, p: Priority, receipt: &str) -> Result<(), QueueError> {
        self.client
            .delete_message()
            .queue_url(self.urls.url(p))
            .receipt_handle(receipt)
            .send()
            .await
            .map_err(queue_error)?;
        Ok(())
    }

    async fn dead_letter_depth(&self, p: Priority) -> Result<u64, QueueError> {
        let Some(url) = self.urls.dead_letter[index(p)].as_deref() else {
            return Err(QueueError::Unavailable(
                format!("no dead-letter queue configured for {p}").into(),
            ));
        };
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await
            .map_err(queue_error)?;
        Ok(out
            .attributes
            .and_then(|a| {
                a.get(&QueueAttributeName::ApproximateNumberOfMessages)
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0))
    }
}
