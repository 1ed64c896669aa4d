//! [`TaskStore`] over DynamoDB. Every state change is one conditional UpdateItem that also
//! appends the history event; a failed condition returns the current item (no extra read).

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeValue, Put, ReturnValue, ReturnValuesOnConditionCheckFailure, TransactWriteItem,
};
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, Utc};
use taskq_core::transition::Field;
use taskq_core::{
    active_shard, ActivePage, ActiveQuery, Created, IdempotencyClaim, ListQuery, StateChange, StoreError, Task,
    TaskEvent, TaskId, TaskPage, TaskStore,
};
use tracing::instrument;

use crate::item::{self, Item, ACTIVE_INDEX};

/// How long finished tasks are kept unless configured (`TASKQ_RETENTION_DAYS`).
pub const DEFAULT_RETENTION_DAYS: u32 = 30;

#[derive(Clone, Debug)]
pub struct DynamoDbTaskStore {
    client: Client,
    table: String,
    /// Finished tasks get `expires_at` = finished + this; the table's TTL deletes them.
    retention: chrono::Duration,
}

impl DynamoDbTaskStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
            retention: chrono::Duration::days(DEFAULT_RETENTION_DAYS.into()),
        }
    }

    /// Keeps finished tasks `days` days (the template's `TaskRetentionDays`).
    pub fn with_retention_days(mut self, days: u32) -> Self {
        self.retention = chrono::Duration::days(days.into());
        self
    }

    /// The task an item holds, with its payload read from the payload's own item when it has
    /// one (see [`item::to_items`]).
    async fn task(&self, item: Item) -> Result<Task, StoreError> {
        let separate = item::payload_is_separate(&item);
        let mut task = item::from_item(item).map_err(|e| StoreError::Unavailable(e.into()))?;
        if separate {
            task.payload = self.payload(&task.user_id, task.id).await?;
        }
        Ok(task)
    }

    /// A payload item, read eventually consistent (it never changes once written, before its
    /// task), then strongly if that missed it.
    async fn payload(&self, user_id: &str, id: TaskId) -> Result<serde_json::Value, StoreError> {
        for consistent in [false, true] {
            let out = self
                .client
                .get_item()
                .table_name(&self.table)
                .set_key(Some(Self::key(user_id, item::payload_sk(id))))
                .consistent_read(consistent)
                .send()
                .await
                .map_err(store_error)?;
            if let Some(i) = out.item {
                return item::payload_from_item(&i).map_err(|e| StoreError::Unavailable(e.into()));
            }
        }
        Err(StoreError::Unavailable(
            format!("task {id}: its payload item is missing (expired?)").into(),
        ))
    }

    /// The tasks of a page of items, the separate payloads read in one `BatchGetItem` per 100.
    async fn tasks(&self, items: Vec<Item>) -> Result<Vec<Task>, StoreError> {
        let separate: Vec<bool> = items.iter().map(item::payload_is_separate).collect();
        let mut tasks = items
            .into_iter()
            .map(|i| item::from_item(i).map_err(|e| StoreError::Unavailable(e.into())))
            .collect::<Result<Vec<Task>, _>>()?;
        let keys: Vec<Item> = tasks
            .iter()
            .zip(&separate)
            .filter(|(_, s)| **s)
            .map(|(t, _)| Self::key(&t.user_id, item::payload_sk(t.id)))
            .collect();
        if keys.is_empty() {
            return Ok(tasks);
        }
        let mut payloads: HashMap<String, Item> = self.batch_get(keys, None).await?;
        for (t, s) in tasks.iter_mut().zip(&separate) {
            if *s {
                t.payload = match payloads.remove(&item::payload_sk(t.id)) {
                    Some(i) => item::payload_from_item(&i).map_err(|e| StoreError::Unavailable(e.into()))?,
                    // Not yet visible to an eventually consistent read: read it alone.
                    None => self.payload(&t.user_id, t.id).await?,
                };
            }
        }
        Ok(tasks)
    }

    /// `BatchGetItem` over any number of keys (100 per call; unprocessed keys asked for again),
    /// eventually consistent; the items found, by sort key. `projection`: attribute names.
    async fn batch_get(
        &self,
        keys: Vec<Item>,
        projection: Option<&[&str]>,
    ) -> Result<HashMap<String, Item>, StoreError> {
        let mut names = HashMap::new();
        let projection: Option<String> = projection.map(|attrs| {
            attrs
                .iter()
                .map(|a| {
                    names.insert(format!("#{a}"), (*a).to_owned());
                    format!("#{a}")
                })
                .chain(["sk".to_owned()])
                .collect::<Vec<_>>()
                .join(", ")
        });
        let mut found: HashMap<String, Item> = HashMap::with_capacity(keys.len());
        // BatchGetItem may leave keys unprocessed (throttling, or 16 MB per call): those are
        // asked for again.
        let mut pending: Vec<Item> = keys;
        let mut rounds = 0;
        while !pending.is_empty() {
            rounds += 1;
            if rounds > 10 {
                return Err(StoreError::Throttled(
                    "BatchGetItem kept leaving keys unprocessed".into(),
                ));
            }
            let chunk: Vec<Item> = pending.drain(..pending.len().min(100)).collect();
            let mut request = aws_sdk_dynamodb::types::KeysAndAttributes::builder().set_keys(Some(chunk));
            if let Some(p) = &projection {
                request = request
                    .projection_expression(p)
                    .set_expression_attribute_names(Some(names.clone()));
            }
            let request = request.build().map_err(|e| StoreError::Unavailable(e.into()))?;
            let out = self
                .client
                .batch_get_item()
                .request_items(&self.table, request)
                .send()
                .await
                .map_err(store_error)?;
            for i in out
                .responses
                .unwrap_or_default()
                .remove(&self.table)
                .unwrap_or_default()
            {
                if let Some(sk) = sk_of(&i).map(str::to_owned) {
                    found.insert(sk, i);
                }
            }
            if let Some(left) = out.unprocessed_keys.and_then(|mut u| u.remove(&self.table)) {
                pending.extend(left.keys);
            }
        }
        Ok(found)
    }

    /// A write's answer as tasks (payloads filled in).
    async fn outcome(&self, written: Written) -> Result<Task, StoreError> {
        match written {
            Written::Item(i) => self.task(i).await,
            Written::Conflict(Some(i)) => Err(StoreError::Conflict {
                current: Some(Box::new(self.task(i).await?)),
            }),
            Written::Conflict(None) => Err(StoreError::Conflict { current: None }),
        }
    }

    /// The base items of `keys` (from the keys-only `active` index), with the attributes its
    /// readers need, in the order given. Eventually consistent: every reader acts through
    /// conditional writes, which see the item as it is.
    async fn active_items(&self, keys: Vec<Item>) -> Result<Vec<Item>, StoreError> {
        let order: Vec<String> = keys.iter().filter_map(|k| sk_of(k).map(str::to_owned)).collect();
        let mut found = self.batch_get(keys, Some(item::ACTIVE_ATTRIBUTES)).await?;
        // A task deleted since the index was read (it finished and expired) is skipped.
        Ok(order.into_iter().filter_map(|sk| found.remove(&sk)).collect())
    }

    fn key(user_id: &str, sk: String) -> Item {
        HashMap::from([
            ("pk".to_owned(), AttributeValue::S(item::pk(user_id))),
            ("sk".to_owned(), AttributeValue::S(sk)),
        ])
    }

    async fn read(&self, key: Item) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(store_error)?;
        Ok(out.item)
    }

    /// The task an existing idempotency key names, or `None` when the key is free or expired.
    async fn claimed(&self, user_id: &str, claim: &IdempotencyClaim) -> Result<Option<Created>, StoreError> {
        let Some(record) = self.read(Self::key(user_id, item::key_sk(&claim.key))).await? else {
            return Ok(None);
        };
        let text = |name: &str| match record.get(name) {
            Some(AttributeValue::S(s)) => Some(s.clone()),
            _ => None,
        };
        let expires: i64 = match record.get("expires_at") {
            Some(AttributeValue::N(n)) => n.parse().unwrap_or(0),
            _ => 0,
        };
        if expires <= Utc::now().timestamp() {
            return Ok(None);
        }
        let (Some(task_id), Some(fingerprint)) = (text("task_id"), text("fingerprint")) else {
            return Err(StoreError::Unavailable("idempotency record without task_id".into()));
        };
        let id: TaskId = task_id
            .parse()
            .map_err(|_| StoreError::Unavailable("idempotency record with a bad task_id".into()))?;
        let task = self
            .get(user_id, id)
            .await?
            .ok_or(StoreError::Conflict { current: None })?;
        Ok(Some(Created::Existing {
            task,
            same_request: fingerprint == claim.fingerprint,
        }))
    }
}

#[async_trait]
impl TaskStore for DynamoDbTaskStore {
    #[instrument(level = "debug", skip_all, fields(task_id = %task.id), err(Debug))]
    async fn create(&self, task: &Task, claim: Option<&IdempotencyClaim>) -> Result<Created, StoreError> {
        let (task_item, payload_item) = item::to_items(task).map_err(|e| StoreError::Unavailable(e.into()))?;
        if let Some(mut payload_item) = payload_item {
            // Written first, so a task item never names a payload that is not there. Not
            // conditional: the id is new, and a retry writes the same bytes. If the task's
            // write then fails, this item is an orphan that its TTL removes.
            let due = task.run_at.unwrap_or(task.created_at).max(task.created_at);
            let expires = due + chrono::Duration::days(PAYLOAD_GRACE_DAYS) + self.retention;
            payload_item.insert("expires_at".into(), AttributeValue::N(expires.timestamp().to_string()));
            self.client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(payload_item))
                .send()
                .await
                .map_err(store_error)?;
        }
        let Some(claim) = claim else {
            let put = self
                .client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(task_item))
                .condition_expression("attribute_not_exists(pk)")
                .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
                .send()
                .await;
            return match put {
                Ok(_) => Ok(Created::New(task.clone())),
                // The id is new (a ULID made for this request), so an item already there is this
                // very write, applied by an earlier try whose response was lost (the SDK
                // retried): created, not a conflict (a 503 would make the client submit twice).
                Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                    let existing = match e.into_err() {
                        aws_sdk_dynamodb::operation::put_item::PutItemError::ConditionalCheckFailedException(c) => {
                            c.item
                        }
                        _ => None,
                    };
                    let existing = match existing {
                        Some(i) => Some(self.task(i).await?),
                        None => None,
                    };
                    match existing {
                        Some(t) if t.write_token.is_some() && t.write_token == task.write_token => Ok(Created::New(t)),
                        current => Err(StoreError::Conflict {
                            current: current.map(Box::new),
                        }),
                    }
                }
                Err(e) => Err(store_error(e)),
            };
        };
        // Write first, read only when the key turns out to be taken: most keyed requests are new
        // (a replay is a client's retry), so reading the key first would add a GetItem (and a
        // round trip) to nearly every submission to save a failed transaction on the rare replay.
        let mut key_item = Self::key(&task.user_id, item::key_sk(&claim.key));
        key_item.insert("task_id".into(), AttributeValue::S(task.id.to_string()));
        key_item.insert("fingerprint".into(), AttributeValue::S(claim.fingerprint.clone()));
        key_item.insert(
            "expires_at".into(),
            AttributeValue::N(claim.expires_at.timestamp().to_string()),
        );
        let build = |e: aws_sdk_dynamodb::error::BuildError| StoreError::Unavailable(e.into());
        let result = self
            .client
            .transact_write_items()
            .transact_items(
                TransactWriteItem::builder()
                    .put(
                        Put::builder()
                            .table_name(&self.table)
                            .set_item(Some(task_item))
                            .condition_expression("attribute_not_exists(pk)")
                            .build()
                            .map_err(build)?,
                    )
                    .build(),
            )
            .transact_items(
                TransactWriteItem::builder()
                    .put(
                        Put::builder()
                            .table_name(&self.table)
                            .set_item(Some(key_item))
                            // An expired key whose item TTL has not yet removed may be reused.
                            .condition_expression("attribute_not_exists(pk) OR expires_at < :now")
                            .expression_attribute_values(":now", AttributeValue::N(Utc::now().timestamp().to_string()))
                            .build()
                            .map_err(build)?,
                    )
                    .build(),
            )
            .send()
            .await;
        match result {
            Ok(_) => Ok(Created::New(task.clone())),
            Err(e) => {
                let cancelled = matches!(e.code(), Some("TransactionCanceledException"));
                if cancelled {
                    // The key is claimed (a replay, or a concurrent request with the same key).
                    if let Some(existing) = self.claimed(&task.user_id, claim).await? {
                        return Ok(match existing {
                            // The key names this very task: an earlier try of this transaction
                            // was applied and its response lost (the SDK retried).
                            Created::Existing { task: t, .. } if t.id == task.id => Created::New(t),
                            other => other,
                        });
                    }
                }
                Err(store_error(e))
            }
        }
    }

    #[instrument(level = "debug", skip_all, fields(task_id = %id), err(Debug))]
    async fn get(&self, user_id: &str, id: TaskId) -> Result<Option<Task>, StoreError> {
        match self.read(Self::key(user_id, item::task_sk(id))).await? {
            Some(i) => Ok(Some(self.task(i).await?)),
            None => Ok(None),
        }
    }

    #[instrument(level = "debug", skip_all, err(Debug))]
    async fn list(&self, user_id: &str, query: &ListQuery) -> Result<TaskPage, StoreError> {
        let limit = query.limit.max(1) as usize;
        let mut start: Option<Item> = query.after.map(|after| Self::key(user_id, item::task_sk(after)));
        let mut tasks = Vec::with_capacity(limit);
        let mut filters = Vec::new();
        if query.status.is_some() {
            filters.push("#status = :s");
        }
        if query.priority.is_some() {
            filters.push("#priority = :p");
        }
        // Filters apply after DynamoDB's Limit (and are billed for what they read): keep
        // reading until the page is full or the user's tasks are exhausted, asking for at least
        // a page's worth each time so a rare status does not take one request per task.
        loop {
            let ask = if filters.is_empty() {
                limit - tasks.len()
            } else {
                limit.max(FILTERED_READ)
            };
            let mut q = self
                .client
                .query()
                .table_name(&self.table)
                .scan_index_forward(false)
                .limit(ask as i32)
                .set_exclusive_start_key(start.take())
                .key_condition_expression("pk = :pk AND begins_with(sk, :t)")
                .expression_attribute_values(":pk", AttributeValue::S(item::pk(user_id)))
                .expression_attribute_values(":t", AttributeValue::S("T#".into()));
            if let Some(status) = query.status {
                q = q
                    .expression_attribute_names("#status", "status")
                    .expression_attribute_values(":s", AttributeValue::S(status.as_str().into()));
            }
            if let Some(p) = query.priority {
                q = q
                    .expression_attribute_names("#priority", "priority")
                    .expression_attribute_values(":p", AttributeValue::S(p.as_str().into()));
            }
            if !filters.is_empty() {
                q = q.filter_expression(filters.join(" AND "));
            }
            let out = q.send().await.map_err(store_error)?;
            tasks.extend(out.items.unwrap_or_default());
            match out.last_evaluated_key {
                Some(k) if tasks.len() < limit => start = Some(k),
                // A filtered read can return more than the page: the cursor is the page's last
                // task, so the rest are read again by the next page.
                _ => break,
            }
        }
        tasks.truncate(limit);
        let tasks = self.tasks(tasks).await?;
        let next = (tasks.len() == limit).then(|| tasks[limit - 1].id);
        Ok(TaskPage { tasks, next })
    }

    #[instrument(level = "debug", skip_all, fields(priority = %query.priority, shard = query.shard), err(Debug))]
    async fn active(&self, query: &ActiveQuery) -> Result<ActivePage, StoreError> {
        let limit = query.limit.max(1) as usize;
        let pk = item::active_pk(query.priority, query.shard);
        let mut start: Option<Item> = None;
        let mut tasks = Vec::with_capacity(limit);
        loop {
            let mut q = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(ACTIVE_INDEX)
                .expression_attribute_values(":pk", AttributeValue::S(pk.clone()))
                .limit((limit - tasks.len()) as i32)
                .set_exclusive_start_key(start.take());
            // The cursor is a position in the sort key, so it needs no base-table key.
            q = match query.after {
                Some(after) => q
                    .key_condition_expression("gsi2pk = :pk AND gsi2sk > :after")
                    .expression_attribute_values(":after", AttributeValue::S(item::task_sk(after))),
                None => q.key_condition_expression("gsi2pk = :pk"),
            };
            let out = q.send().await.map_err(store_error)?;
            let keys: Vec<Item> = out
                .items
                .unwrap_or_default()
                .into_iter()
                .map(|i| i.into_iter().filter(|(k, _)| k == "pk" || k == "sk").collect())
                .collect();
            for i in self.active_items(keys).await? {
                tasks.push(item::active_from_item(i).map_err(|e| StoreError::Unavailable(e.into()))?);
            }
            match out.last_evaluated_key {
                Some(k) if tasks.len() < limit => start = Some(k),
                _ => break,
            }
        }
        let next = (tasks.len() == limit).then(|| tasks[limit - 1].id);
        Ok(ActivePage { tasks, next })
    }

    #[instrument(level = "debug", skip_all, fields(task_id = %id, kind = ?event.kind), err(Debug))]
    async fn record(&self, user_id: &str, id: TaskId, expect_seq: u32, event: &TaskEvent) -> Result<Task, StoreError> {
        let value = item::event_value(event).map_err(|e| StoreError::Unavailable(e.into()))?;
        // The history's length is its last seq: the condition makes racing appends take turns.
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(user_id, item::task_sk(id))))
            .update_expression("SET #events = list_append(#events, :event)")
            .condition_expression("attribute_exists(pk) AND size(#events) = :expect_seq")
            .expression_attribute_names("#events", "events")
            .expression_attribute_values(":event", AttributeValue::L(vec![value]))
            .expression_attribute_values(":expect_seq", AttributeValue::N(expect_seq.to_string()))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        self.outcome(updated(result)?).await
    }

    #[instrument(level = "debug", skip_all, fields(task_id = %id, to = %change.status), err(Debug))]
    async fn apply(&self, user_id: &str, id: TaskId, change: &StateChange) -> Result<Task, StoreError> {
        let u = Update::from_change(id, change, self.retention).map_err(|e| StoreError::Unavailable(e.into()))?;
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(user_id, item::task_sk(id))))
            .update_expression(u.expression())
            // An item from before the run count has none: its attempt count stands for it.
            .condition_expression(u.condition())
            .set_expression_attribute_names(Some(u.names))
            .set_expression_attribute_values(Some(u.values))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match self.outcome(updated(result)?).await {
            // An earlier try of this write was applied and its response lost (the SDK retried):
            // the item carries this change's token.
            Err(StoreError::Conflict { current: Some(t) }) if change.applied_in(&t) => Ok(*t),
            other => other,
        }
    }
}

/// An UpdateItem's answer: the item as written (`ALL_NEW`), or on a failed condition the item
/// as it is now, when it exists (`ALL_OLD` on condition failure: no extra read).
enum Written {
    Item(Item),
    Conflict(Option<Item>),
}

fn updated(
    result: Result<
        aws_sdk_dynamodb::operation::update_item::UpdateItemOutput,
        SdkError<
            aws_sdk_dynamodb::operation::update_item::UpdateItemError,
            aws_sdk_dynamodb::config::http::HttpResponse,
        >,
    >,
) -> Result<Written, StoreError> {
    match result {
        Ok(out) => out
            .attributes
            .map(Written::Item)
            .ok_or_else(|| StoreError::Unavailable("UpdateItem returned no attributes".into())),
        Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
            Ok(Written::Conflict(match e.into_err() {
                aws_sdk_dynamodb::operation::update_item::UpdateItemError::ConditionalCheckFailedException(c) => c.item,
                _ => None,
            }))
        }
        Err(e) => Err(store_error(e)),
    }
}

/// An UpdateItem expression under construction.
struct Update {
    set: Vec<String>,
    remove: Vec<String>,
    names: HashMap<String, String>,
    values: Item,
}

impl Update {
    fn from_change(id: TaskId, c: &StateChange, retention: chrono::Duration) -> Result<Self, item::ItemError> {
        let mut u = Update {
            set: vec![],
            remove: vec![],
            names: HashMap::from([("#status".to_owned(), "status".to_owned())]),
            values: HashMap::new(),
        };
        let s = |v: &str| AttributeValue::S(v.to_owned());
        let n = |v: u32| AttributeValue::N(v.to_string());
        u.values.insert(":expect_status".into(), s(c.expect_status.as_str()));
        u.values.insert(":expect_attempts".into(), n(c.expect_attempts));
        u.values.insert(":expect_runs".into(), n(c.expect_runs));
        if let Some(at) = c.expect_updated_at {
            u.values.insert(":expect_updated_at".into(), time(at));
        }
        u.assign("status", s(c.status.as_str()));
        u.assign("runs", n(c.runs));
        u.assign("write_token", s(&c.token));
        u.assign("attempts", n(c.attempts));
        u.assign("updated_at", time(c.updated_at));
        // The sparse index of unfinished tasks: leave it when terminal, (re)join otherwise.
        // Finished: expires after the retention period (the table's TTL); revived: kept again.
        if c.status.is_terminal() {
            u.field::<()>("gsi2pk", &Field::Clear, |_| AttributeValue::Null(true));
            u.field::<()>("gsi2sk", &Field::Clear, |_| AttributeValue::Null(true));
            let expires = (c.updated_at + retention).timestamp();
            u.assign("expires_at", AttributeValue::N(expires.to_string()));
        } else if c.expect_status.is_terminal() {
            u.assign("gsi2pk", s(&item::active_pk(c.priority, active_shard(id))));
            u.assign("gsi2sk", s(&item::task_sk(id)));
            u.field::<()>("expires_at", &Field::Clear, |_| AttributeValue::Null(true));
        }
        u.field("started_at", &c.started_at, |t| time(*t));
        u.field("finished_at", &c.finished_at, |t| time(*t));
        u.field("run_at", &c.run_at, |t| time(*t));
        u.field("lease_until", &c.lease_until, |t| time(*t));
        u.field("result", &c.result, |v| s(&item::json_text(v)));
        let error = match &c.error {
            Field::Set(e) => Field::Set(serde_dynamo::to_attribute_value::<_, AttributeValue>(e)?),
            Field::Clear => Field::Clear,
            Field::Keep => Field::Keep,
        };
        u.field("error", &error, |v| v.clone());
        if let Some(flag) = c.cancel_requested {
            u.assign("cancel_requested", AttributeValue::Bool(flag));
        }
        u.names.insert("#events".into(), "events".into());
        u.set.push("#events = list_append(#events, :event)".into());
        u.values
            .insert(":event".into(), AttributeValue::L(vec![item::event_value(&c.event)?]));
        Ok(u)
    }

    /// Every attribute goes through a `#name` placeholder: `result`, `error` and many other
    /// plain words are DynamoDB reserved words.
    fn assign(&mut self, name: &str, value: AttributeValue) {
        self.names.insert(format!("#{name}"), name.to_owned());
        self.set.push(format!("#{name} = :{name}"));
        self.values.insert(format!(":{name}"), value);
    }

    fn field<T>(&mut self, name: &str, field: &Field<T>, to_value: impl Fn(&T) -> AttributeValue) {
        match field {
            Field::Keep => {}
            Field::Set(v) => self.assign(name, to_value(v)),
            Field::Clear => {
                self.names.insert(format!("#{name}"), name.to_owned());
                self.remove.push(format!("#{name}"));
            }
        }
    }

    /// The expected state: status, attempts, runs, and for changes that move none of those
    /// (notes such as a re-send or a cancel request) the `updated_at` the caller read.
    fn condition(&self) -> String {
        let mut c = "#status = :expect_status AND attempts = :expect_attempts AND (#runs = :expect_runs OR attribute_not_exists(#runs))".to_owned();
        if self.values.contains_key(":expect_updated_at") {
            c.push_str(" AND #updated_at = :expect_updated_at");
        }
        c
    }

    fn expression(&self) -> String {
        let mut e = format!("SET {}", self.set.join(", "));
        if !self.remove.is_empty() {
            e.push_str(&format!(" REMOVE {}", self.remove.join(", ")));
        }
        e
    }
}

/// A payload item outlives the day its task is due by this long plus the retention period: a
/// task must finish within it (a task still unfinished after that may lose its payload).
const PAYLOAD_GRACE_DAYS: i64 = 14;

/// Tasks a filtered list asks DynamoDB for at least, per request.
const FILTERED_READ: usize = 100;

fn sk_of(item: &Item) -> Option<&str> {
    match item.get("sk") {
        Some(AttributeValue::S(s)) => Some(s),
        _ => None,
    }
}

fn time(t: DateTime<Utc>) -> AttributeValue {
    // The same text serde gives a DateTime, so items written either way read back alike.
    AttributeValue::S(
        serde_json::to_value(t)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
    )
}

fn store_error<E, R>(e: SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    match e.code() {
        Some("ProvisionedThroughputExceededException" | "RequestLimitExceeded" | "ThrottlingException") => {
            StoreError::Throttled(Box::new(e))
        }
        Some("ConditionalCheckFailedException") => StoreError::Conflict { current: None },
        // "Item size has exceeded the maximum allowed size" (PutItem) / "Item size to update
        // has exceeded the maximum allowed size" (UpdateItem): not retryable.
        Some("ValidationException") if e.message().is_some_and(|m| m.contains("Item size")) => StoreError::ItemTooLarge,
        _ => StoreError::Unavailable(Box::new(e)),
    }
}
