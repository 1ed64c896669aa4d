//! SQS events built from queue deliveries, shaped as Lambda's event source mapping sends them:
//! used by the local server's emulation and by tests.

use std::collections::HashMap;

use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use taskq_core::{Delivery, Priority};

/// Deliveries as the `SqsEvent` Lambda would send.
pub fn event_from(priority: Priority, deliveries: Vec<Delivery>) -> SqsEvent {
    let mut event = SqsEvent::default();
    event.records = deliveries
        .into_iter()
        .map(|d| {
            let mut m = SqsMessage::default();
            m.message_id = Some(d.message_id);
            m.receipt_handle = Some(d.receipt);
            m.body = Some(d.body);
            m.attributes = HashMap::from([
                ("ApproximateReceiveCount".to_owned(), d.receive_count.to_string()),
                ("SentTimestamp".to_owned(), d.sent_at.timestamp_millis().to_string()),
            ]);
            if let Some(g) = d.group_id {
                m.attributes.insert("MessageGroupId".to_owned(), g);
            }
            if let Some(t) = d.trace_header {
                m.attributes.insert("AWSTraceHeader".to_owned(), t);
            }
            m.event_source = Some("aws:sqs".into());
            m.event_source_arn = Some(format!("arn:aws:sqs:local:000000000000:taskq-{priority}"));
            m.aws_region = Some("local".into());
            m
        })
        .collect();
    event
}
