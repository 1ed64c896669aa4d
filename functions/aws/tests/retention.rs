//! Retention on moto: a finished task's item carries `expires_at` (the table's TTL attribute)
//! = its finish + the configured days, and leaves the `active` index; a task revived from
//! `dead` loses it and joins the index again. Read back raw, as DynamoDB holds it.

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::Utc;
use serde_json::json;
use taskq_core::{NewTask, Snapshot, Status, TaskService, TaskStore, Transition};

async fn raw(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    user: &str,
    id: taskq_core::TaskId,
) -> std::collections::HashMap<String, AttributeValue> {
    client
        .get_item()
        .table_name(table)
        .key("pk", AttributeValue::S(format!("U#{user}")))
        .key("sk", AttributeValue::S(format!("T#{id}")))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
        .unwrap()
}

fn expires_at(item: &std::collections::HashMap<String, AttributeValue>) -> Option<i64> {
    match item.get("expires_at") {
        Some(AttributeValue::N(n)) => n.parse().ok(),
        _ => None,
    }
}

#[tokio::test]
async fn finished_tasks_expire_after_the_retention_period_and_revived_ones_do_not() {
    let Some(endpoint) = taskq_aws::testing::endpoint("finished_tasks_expire_after_the_retention_period") else {
        return;
    };
    let (sdk, config) = taskq_aws::testing::fresh(&endpoint, 3).await;
    let client = aws_sdk_dynamodb::Client::new(&sdk);
    let store = std::sync::Arc::new(
        taskq_aws::DynamoDbTaskStore::new(client.clone(), config.table_name.clone()).with_retention_days(7),
    );
    let (_, queue) = config.adapters_from(&sdk);
    let service = TaskService::new(store.clone(), std::sync::Arc::new(queue));
    let new = NewTask::from_json(&json!({"type": "echo", "payload": {"a": 1}}), "").unwrap();

    // Submitted, then succeeded: expires 7 days after it finished, and is out of the index.
    let t = service.submit("rita", &new, None).await.unwrap().task;
    let item = raw(&client, &config.table_name, "rita", t.id).await;
    assert_eq!(expires_at(&item), None, "an unfinished task never expires");
    assert!(item.contains_key("gsi2pk"));
    let now = Utc::now();
    let start = Transition::Start {
        lease_until: now + chrono::Duration::seconds(60),
    }
    .plan(Snapshot::from(&t), now)
    .unwrap();
    let running = store.apply("rita", t.id, &start).await.unwrap();
    let done = Transition::Succeed { result: json!(1) }
        .plan(Snapshot::from(&running), Utc::now())
        .unwrap();
    let done = store.apply("rita", t.id, &done).await.unwrap();
    let item = raw(&client, &config.table_name, "rita", t.id).await;
    let finished = done.finished_at.unwrap().timestamp();
    assert_eq!(expires_at(&item), Some(finished + 7 * 86_400));
    assert!(!item.contains_key("gsi2pk"), "a finished task leaves the active index");

    // Marked dead, then revived: kept again (no expiry) and back in the index.
    let d = service.submit("rita", &new, None).await.unwrap().task;
    let dead = Transition::Dead {
        detail: "its message reached the dead-letter queue".into(),
    }
    .plan(Snapshot::from(&d), Utc::now())
    .unwrap();
    let dead = store.apply("rita", d.id, &dead).await.unwrap();
    assert_eq!(dead.status, Status::Dead);
    assert!(expires_at(&raw(&client, &config.table_name, "rita", d.id).await).is_some());
    let revive = Transition::Revive.plan(Snapshot::from(&dead), Utc::now()).unwrap();
    store.apply("rita", d.id, &revive).await.unwrap();
    let item = raw(&client, &config.table_name, "rita", d.id).await;
    assert_eq!(expires_at(&item), None, "a revived task is kept");
    assert!(item.contains_key("gsi2pk"));
}
