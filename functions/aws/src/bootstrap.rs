//! Creates the table and queues taskq needs, for local runs and tests only (deployments get
//! them from `template.yaml`). Idempotent: existing resources are left as they are.

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection, ProjectionType,
    ScalarAttributeType,
};
use aws_sdk_sqs::types::QueueAttributeName;
use taskq_core::Priority;

use crate::config::{AwsConfig, QueueUrls};
use crate::item::ACTIVE_INDEX;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How the bootstrap names and sizes things.
#[derive(Debug, Clone)]
pub struct Plan {
    pub table_name: String,
    /// Queues are `<prefix>-<priority>` and `<prefix>-<priority>-dlq`.
    pub queue_prefix: String,
    pub visibility_timeout_seconds: u32,
    pub max_receive_count: u32,
}

impl Plan {
    pub fn named(prefix: &str) -> Self {
        Self {
            table_name: format!("{prefix}-tasks"),
            queue_prefix: prefix.to_owned(),
            visibility_timeout_seconds: 120,
            max_receive_count: 30,
        }
    }
}

pub async fn ensure(sdk: &aws_config::SdkConfig, plan: &Plan) -> Result<AwsConfig, BoxError> {
    ensure_table(&aws_sdk_dynamodb::Client::new(sdk), &plan.table_name).await?;
    let sqs = aws_sdk_sqs::Client::new(sdk);
    let mut queues: [String; 3] = Default::default();
    let mut dead_letter: [Option<String>; 3] = Default::default();
    for (i, p) in Priority::ALL.iter().enumerate() {
        let dlq_name = format!("{}-{p}-dlq", plan.queue_prefix);
        let dlq_url = sqs
            .create_queue()
            .queue_name(&dlq_name)
            .send()
            .await?
            .queue_url
            .unwrap_or_default();
        let dlq_arn = sqs
            .get_queue_attributes()
            .queue_url(&dlq_url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await?
            .attributes
            .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
            .ok_or("dead-letter queue has no ARN")?;
        let redrive =
            serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": plan.max_receive_count.to_string()});
        let url = sqs
            .create_queue()
            .queue_name(format!("{}-{p}", plan.queue_prefix))
            .attributes(
                QueueAttributeName::VisibilityTimeout,
                plan.visibility_timeout_seconds.to_string(),
            )
            .attributes(QueueAttributeName::RedrivePolicy, redrive.to_string())
            .send()
            .await?
            .queue_url
            .unwrap_or_default();
        queues[i] = url;
        dead_letter[i] = Some(dlq_url);
    }
    Ok(AwsConfig {
        table_name: plan.table_name.clone(),
        retention_days: crate::dynamodb::DEFAULT_RETENTION_DAYS,
        queues: QueueUrls { queues, dead_letter },
    })
}

async fn ensure_table(ddb: &aws_sdk_dynamodb::Client, name: &str) -> Result<(), BoxError> {
    let attr = |n: &str| {
        AttributeDefinition::builder()
            .attribute_name(n)
            .attribute_type(ScalarAttributeType::S)
            .build()
    };
    let key = |n: &str, t: KeyType| KeySchemaElement::builder().attribute_name(n).key_type(t).build();
    let result = ddb
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attr("pk")?)
        .attribute_definitions(attr("sk")?)
        .attribute_definitions(attr("gsi2pk")?)
        .attribute_definitions(attr("gsi2sk")?)
        .key_schema(key("pk", KeyType::Hash)?)
        .key_schema(key("sk", KeyType::Range)?)
        .global_secondary_indexes(
            GlobalSecondaryIndex::builder()
                .index_name(ACTIVE_INDEX)
                .key_schema(key("gsi2pk", KeyType::Hash)?)
                .key_schema(key("gsi2sk", KeyType::Range)?)
                .projection(Projection::builder().projection_type(ProjectionType::KeysOnly).build())
                .build()?,
        )
        .send()
        .await;
    match result {
        Ok(_) => Ok(()),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_resource_in_use_exception()) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
