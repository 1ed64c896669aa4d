//! Request accounting: an SDK interceptor that counts the AWS API calls a client makes, by
//! operation, and estimates the DynamoDB capacity they consume from the sizes of the items
//! they read and write.
//!
//! Estimated, not reported: moto answers `ReturnConsumedCapacity` with a constant (1.0 for
//! writes, 0.5 for GetItem) whatever the item, so its numbers say nothing. The estimate follows
//! DynamoDB's rules for the base table: a write costs one unit per started KiB of the item
//! (UpdateItem: of the item after the update, which here is within a history event of the one
//! before), doubled in a transaction; a strongly consistent read one unit per started 4 KiB, a
//! Query half a unit per started 4 KiB of everything it returned. Writes to the global secondary
//! indexes are billed on top (see the README's request accounting section).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_dynamodb::operation::get_item::GetItemOutput;
use aws_sdk_dynamodb::operation::put_item::PutItemInput;
use aws_sdk_dynamodb::operation::query::QueryOutput;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsInput;
use aws_sdk_dynamodb::operation::update_item::UpdateItemOutput;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::{
    AfterDeserializationInterceptorContextRef, BeforeSerializationInterceptorContextRef,
    BeforeTransmitInterceptorContextRef,
};
use aws_smithy_runtime_api::client::orchestrator::Metadata;

/// Calls and estimated capacity of one operation.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OperationCount {
    /// HTTP requests sent (an SDK retry is a second call).
    pub calls: u64,
    pub read_units: f64,
    pub write_units: f64,
}

/// Counts calls by `Service.Operation`. Clones share their counts: register one clone on each
/// client's config.
#[derive(Debug, Clone, Default)]
pub struct RequestCounter {
    counts: Arc<Mutex<BTreeMap<String, OperationCount>>>,
}

impl RequestCounter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts so far, by `Service.Operation` (e.g. `DynamoDB.PutItem`, `SQS.SendMessage`).
    pub fn snapshot(&self) -> BTreeMap<String, OperationCount> {
        self.counts.lock().map(|c| c.clone()).unwrap_or_default()
    }

    pub fn reset(&self) {
        if let Ok(mut c) = self.counts.lock() {
            c.clear();
        }
    }

    fn add(&self, cfg: &ConfigBag, f: impl FnOnce(&mut OperationCount)) {
        let Some(meta) = cfg.load::<Metadata>() else {
            return;
        };
        if let Ok(mut counts) = self.counts.lock() {
            f(counts.entry(format!("{}.{}", meta.service(), meta.name())).or_default());
        }
    }
}

impl Intercept for RequestCounter {
    fn name(&self) -> &'static str {
        "taskq-request-counter"
    }

    fn read_before_serialization(
        &self,
        context: &BeforeSerializationInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        // Writes whose size only the input shows.
        let input = context.input();
        let units = if let Some(put) = input.downcast_ref::<PutItemInput>() {
            put.item.as_ref().map(|i| write_units(item_size(i))).unwrap_or(0.0)
        } else if let Some(tx) = input.downcast_ref::<TransactWriteItemsInput>() {
            tx.transact_items
                .iter()
                .flatten()
                .filter_map(|t| t.put.as_ref())
                .map(|p| 2.0 * write_units(item_size(&p.item)))
                .sum()
        } else {
            0.0
        };
        if units > 0.0 {
            self.add(cfg, |c| c.write_units += units);
        }
        Ok(())
    }

    fn read_before_transmit(
        &self,
        _: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        self.add(cfg, |c| c.calls += 1);
        Ok(())
    }

    fn read_after_deserialization(
        &self,
        context: &AfterDeserializationInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let Ok(output) = context.output_or_error() else {
            return Ok(());
        };
        let (read, write) = if let Some(get) = output.downcast_ref::<GetItemOutput>() {
            // Strongly consistent (the store always asks for it); a miss still costs a unit.
            let size = get.item.as_ref().map(item_size).unwrap_or(0);
            (read_units(size).max(1.0), 0.0)
        } else if let Some(q) = output.downcast_ref::<QueryOutput>() {
            let size: usize = q.items.iter().flatten().map(item_size).sum();
            ((read_units(size) / 2.0).max(0.5), 0.0)
        } else if let Some(u) = output.downcast_ref::<UpdateItemOutput>() {
            (
                0.0,
                u.attributes.as_ref().map(|i| write_units(item_size(i))).unwrap_or(1.0),
            )
        } else {
            return Ok(());
        };
        self.add(cfg, |c| {
            c.read_units += read;
            c.write_units += write;
        });
        Ok(())
    }
}

fn write_units(bytes: usize) -> f64 {
    bytes.div_ceil(1024).max(1) as f64
}

fn read_units(bytes: usize) -> f64 {
    bytes.div_ceil(4096).max(1) as f64
}

/// DynamoDB's item size: attribute names plus values (numbers approximated by their text).
pub fn item_size(item: &HashMap<String, AttributeValue>) -> usize {
    item.iter().map(|(k, v)| k.len() + value_size(v)).sum()
}

fn value_size(v: &AttributeValue) -> usize {
    match v {
        AttributeValue::S(s) | AttributeValue::N(s) => s.len(),
        AttributeValue::B(b) => b.as_ref().len(),
        AttributeValue::Bool(_) | AttributeValue::Null(_) => 1,
        AttributeValue::Ss(v) | AttributeValue::Ns(v) => v.iter().map(String::len).sum(),
        AttributeValue::Bs(v) => v.iter().map(|b| b.as_ref().len()).sum(),
        // Lists and maps: 3 bytes of overhead plus 1 per element.
        AttributeValue::L(l) => 3 + l.iter().map(|v| 1 + value_size(v)).sum::<usize>(),
        AttributeValue::M(m) => 3 + m.iter().map(|(k, v)| 1 + k.len() + value_size(v)).sum::<usize>(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_units_follow_dynamodb_rules() {
        let item = HashMap::from([
            ("pk".to_owned(), AttributeValue::S("U#u".into())),
            ("n".to_owned(), AttributeValue::N("12".into())),
            (
                "m".to_owned(),
                AttributeValue::M(HashMap::from([("a".to_owned(), AttributeValue::Bool(true))])),
            ),
        ]);
        // pk(2)+3, n(1)+2, m(1)+3+1+1+1
        assert_eq!(item_size(&item), 5 + 3 + 7);
        assert_eq!(write_units(1), 1.0);
        assert_eq!(write_units(1024), 1.0);
        assert_eq!(write_units(1025), 2.0);
        assert_eq!(read_units(4097), 2.0);
    }
}
