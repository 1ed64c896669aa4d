//! The stream consumer with stream events as DynamoDB shapes them: the AWS-published fixture,
//! and records carrying real task items at successive versions.

use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::dynamodb::Event;
use serde_json::{json, Value};
use taskq_core::cache::{CacheLayer, Guard, StatusCache};
use taskq_core::memory::MemoryStatusCache;
use taskq_core::{NewTask, Snapshot, Status, Task, TaskService, Transition};
use taskq_stream::{handle, StreamReport};

fn layer() -> (Arc<MemoryStatusCache>, CacheLayer) {
    let cache = Arc::new(MemoryStatusCache::default());
    let layer = CacheLayer::new(
        cache.clone(),
        Guard::new(Duration::from_secs(1), Duration::from_secs(1)),
    );
    (cache, layer)
}

/// A stream record whose new image is `image` (a DynamoDB JSON item), from the fixture's shape.
fn record(event_name: &str, image: Value) -> Value {
    let fixture: Value =
        serde_json::from_str(include_str!("../../../events/fixtures/example-dynamodb-event.json")).unwrap();
    let mut r = fixture["Records"][0].clone();
    r["eventName"] = json!(event_name);
    r["dynamodb"]["NewImage"] = image;
    r
}

fn image(task: &Task) -> Value {
    let item: serde_dynamo::Item = taskq_aws::task_to_image(task).unwrap().into();
    serde_json::to_value(item).unwrap()
}

async fn a_task() -> Task {
    let store = Arc::new(taskq_core::memory::MemoryTaskStore::new());
    let service = TaskService::new(store, Arc::new(taskq_core::memory::MemoryTaskQueue::default()));
    let new = NewTask::from_json(&json!({"type": "echo", "payload": {"k": [1, 2]}}), "").unwrap();
    service.submit("alice", &new, None).await.unwrap().task
}

#[tokio::test]
async fn the_aws_fixture_holds_no_task_and_is_skipped() {
    let (_, layer) = layer();
    let event: Event =
        serde_json::from_str(include_str!("../../../events/fixtures/example-dynamodb-event.json")).unwrap();
    let report = handle(&event, &layer).await;
    assert_eq!(
        report,
        StreamReport {
            refreshed: 0,
            invalidated: 0,
            removed: 0,
            ignored: 2,
            unreadable: 0
        }
    );
}

#[tokio::test]
async fn each_task_write_refreshes_the_cache_and_an_old_record_never_wins() {
    let (cache, layer) = layer();
    let queued = a_task().await;
    let change = Transition::Start {
        lease_until: chrono::Utc::now() + chrono::Duration::seconds(60),
    }
    .plan(Snapshot::from(&queued), chrono::Utc::now())
    .unwrap();
    let mut running = queued.clone();
    change.apply_to(&mut running);

    let mut watch = cache.subscribe("alice", queued.id).await.unwrap();
    let event: Event = serde_json::from_value(json!({"Records": [
        record("INSERT", image(&queued)),
        record("MODIFY", image(&running)),
        // A redelivered older record (the consumer retried a batch): must not go back in time.
        record("MODIFY", image(&queued)),
        record("MODIFY", json!({"pk": {"S": "U#alice"}, "sk": {"S": "I#some-key"}})),
        record("MODIFY", json!({"pk": {"S": "U#alice"}, "sk": {"S": "T#not-a-task"}})),
    ]}))
    .unwrap();
    let report = handle(&event, &layer).await;
    assert_eq!(
        report,
        StreamReport {
            refreshed: 3,
            invalidated: 0,
            removed: 0,
            ignored: 1,
            unreadable: 1
        }
    );
    let cached = cache.get("alice", queued.id).await.unwrap().expect("cached");
    assert_eq!(cached.status, Status::Running);
    assert_eq!(
        serde_json::to_value(&cached).unwrap(),
        serde_json::to_value(&running).unwrap()
    );
    tokio::time::timeout(Duration::from_secs(1), watch.changed())
        .await
        .expect("a change message was published")
        .unwrap();
    assert!(cache.get("bob", queued.id).await.unwrap().is_none());
}

/// The table's TTL deleted a finished task (its retention ended): the REMOVE record carries only
/// the keys, and the consumer drops the task's cache entry, so a status read answers 404 from
/// the table instead of the cached task for up to an hour.
#[tokio::test]
async fn a_ttl_removal_drops_the_cache_entry() {
    let (cache, layer) = layer();
    let task = a_task().await;
    cache.put(&task).await.unwrap();
    let mut removal = record("REMOVE", json!(null));
    removal["dynamodb"].as_object_mut().unwrap().remove("NewImage");
    removal["dynamodb"]["Keys"] = json!({"pk": {"S": "U#alice"}, "sk": {"S": format!("T#{}", task.id)}});
    let key_removal = {
        let mut r = removal.clone();
        r["dynamodb"]["Keys"] = json!({"pk": {"S": "U#alice"}, "sk": {"S": "I#a-key"}});
        r
    };
    let event: Event = serde_json::from_value(json!({"Records": [removal, key_removal]})).unwrap();
    let report = handle(&event, &layer).await;
    assert_eq!(
        report,
        StreamReport {
            refreshed: 0,
            invalidated: 0,
            removed: 1,
            ignored: 1,
            unreadable: 0
        }
    );
    assert!(cache.get("alice", task.id).await.unwrap().is_none());
}

/// A task whose payload is in its own item (over 256 bytes): the stream image lacks the payload,
/// so the consumer drops the entry (the next read fills it from the table, payload included)
/// and wakes waiters, instead of caching a task without its payload.
#[tokio::test]
async fn an_image_without_its_payload_drops_the_entry_and_wakes_waiters() {
    let (cache, layer) = layer();
    let task = a_task().await;
    cache.put(&task).await.unwrap();
    let mut watch = cache.subscribe("alice", task.id).await.unwrap();
    let mut img = image(&task);
    let obj = img.as_object_mut().unwrap();
    obj.remove("payload");
    obj.insert("payload_bytes".into(), json!({"N": "300"}));
    let event: Event = serde_json::from_value(json!({"Records": [record("MODIFY", img)]})).unwrap();
    let report = handle(&event, &layer).await;
    assert_eq!(report.invalidated, 1, "{report:?}");
    assert_eq!(report.refreshed, 0);
    assert!(cache.get("alice", task.id).await.unwrap().is_none());
    tokio::time::timeout(Duration::from_secs(1), watch.changed())
        .await
        .expect("a change message was published")
        .unwrap();
}
