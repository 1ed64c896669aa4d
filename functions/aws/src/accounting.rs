//! Request accounting: an SDK interceptor that counts the AWS API calls a client makes, by
//! operation, and estimates the DynamoDB capacity they consume from the sizes of the items
//! they read and write.
//!
//! Estimated, not reported: moto answers `ReturnConsumedCapacity` with a constant (1.0 for
//! writes, 0.5 for GetItem) whatever the item, so its numbers say nothing. The estimate follows
//! DynamoDB's published sizing rules ([`write_cost`]): an item's size is its attribute names
//! plus values; a write costs one unit per started KiB, an UpdateItem of the larger of the item
//! before and after it (the counter keeps a copy of every item its clients wrote, to know the
//! before); a transaction's writes cost double; each global secondary index ([`INDEXES`]) is
//! written when an item enters it (a put of the projected entry), leaves it (a delete), changes
//! its index key (a delete and a put) or changes a projected attribute (an update), and not at
//! all otherwise. A strongly consistent read costs one unit per started 4 KiB, an eventually
//! consistent one half; a Query is priced on the items it returned (DynamoDB prices a filtered
//! Query on what it read, more: such lists are under-counted here), a BatchGetItem per item.
//! Writes whose condition failed are not counted (DynamoDB bills them too).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_dynamodb::operation::batch_get_item::BatchGetItemOutput;
use aws_sdk_dynamodb::operation::get_item::{GetItemInput, GetItemOutput};
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

use aws_smithy_types::config_bag::{Storable, StoreReplace};

use crate::item::{IndexProjection, IndexSpec, INDEXES};

/// Whether the GetItem in flight asked for a strongly consistent read (its output cannot say).
#[derive(Debug, Clone, Copy)]
struct Consistent(bool);

impl Storable for Consistent {
    type Storer = StoreReplace<Self>;
}

type Item = HashMap<String, AttributeValue>;

/// Calls and estimated capacity of one operation.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OperationCount {
    /// HTTP requests sent (an SDK retry is a second call).
    pub calls: u64,
    pub read_units: f64,
    /// Write units, the table's and the indexes' together.
    pub write_units: f64,
    /// The part of `write_units` spent on global secondary indexes.
    pub index_write_units: f64,
}

/// The write units one write costs: the table's and the indexes'.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WriteCost {
    pub table: f64,
    pub indexes: f64,
}

/// What writing `after` over `before` (`None`: absent) costs by DynamoDB's rules, given the
/// table's indexes. A transaction doubles the table's part (see [`RequestCounter`]).
pub fn write_cost(before: Option<&Item>, after: Option<&Item>, indexes: &[IndexSpec]) -> WriteCost {
    let size = |i: Option<&Item>| i.map(item_size).unwrap_or(0);
    let table = match (before, after) {
        (None, None) => 0.0,
        _ => write_units(size(before).max(size(after))),
    };
    let mut index_units = 0.0;
    for index in indexes {
        let (b, a) = (
            before.and_then(|i| entry(i, index)),
            after.and_then(|i| entry(i, index)),
        );
        index_units += match (&b, &a) {
            (None, None) => 0.0,
            (None, Some(a)) => write_units(item_size(a)),
            (Some(b), None) => write_units(item_size(b)),
            (Some(b), Some(a))
                if b.get(index.hash) != a.get(index.hash) || b.get(index.range) != a.get(index.range) =>
            {
                write_units(item_size(b)) + write_units(item_size(a))
            }
            (Some(b), Some(a)) if b == a => 0.0,
            (Some(b), Some(a)) => write_units(item_size(b).max(item_size(a))),
        };
    }
    WriteCost {
        table,
        indexes: index_units,
    }
}

/// The index entry an item makes: the table's keys, the index's keys and the projected
/// attributes; `None` when the item lacks an index key (a sparse index skips it).
fn entry(item: &Item, index: &IndexSpec) -> Option<Item> {
    item.get(index.hash)?;
    item.get(index.range)?;
    let keep = |name: &str| {
        ["pk", "sk", index.hash, index.range].contains(&name)
            || match index.projection {
                IndexProjection::KeysOnly => false,
                IndexProjection::Include(names) => names.contains(&name),
                IndexProjection::All => true,
            }
    };
    Some(
        item.iter()
            .filter(|(k, _)| keep(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    )
}

/// Counts calls by `Service.Operation`. Clones share their counts: register one clone on each
/// client's config.
#[derive(Debug, Clone, Default)]
pub struct RequestCounter {
    counts: Arc<Mutex<BTreeMap<String, OperationCount>>>,
    /// Every item the counted clients wrote, as last written: the "before" of the next write.
    items: Arc<Mutex<HashMap<(String, String), Item>>>,
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

    /// Prices writing `after` (`transaction`: doubled table units) and remembers it.
    fn write(&self, after: &Item, transaction: bool) -> WriteCost {
        let Some(key) = key_of(after) else {
            return WriteCost::default();
        };
        let Ok(mut items) = self.items.lock() else {
            return WriteCost::default();
        };
        let mut cost = write_cost(items.get(&key), Some(after), INDEXES);
        if transaction {
            cost.table *= 2.0;
        }
        items.insert(key, after.clone());
        cost
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
        // Puts are priced here, as if they succeed (their condition rarely fails).
        let input = context.input();
        let mut cost = WriteCost::default();
        if let Some(put) = input.downcast_ref::<PutItemInput>() {
            if let Some(item) = &put.item {
                cost = self.write(item, false);
            }
        } else if let Some(get) = input.downcast_ref::<GetItemInput>() {
            cfg.interceptor_state()
                .store_put(Consistent(get.consistent_read.unwrap_or(false)));
        } else if let Some(tx) = input.downcast_ref::<TransactWriteItemsInput>() {
            for put in tx.transact_items.iter().flatten().filter_map(|t| t.put.as_ref()) {
                let c = self.write(&put.item, true);
                cost.table += c.table;
                cost.indexes += c.indexes;
            }
        }
        if cost.table + cost.indexes > 0.0 {
            self.add(cfg, |c| {
                c.write_units += cost.table + cost.indexes;
                c.index_write_units += cost.indexes;
            });
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
            // A miss still costs a unit (half, eventually consistent).
            let size = get.item.as_ref().map(item_size).unwrap_or(0);
            let consistent = cfg.load::<Consistent>().is_none_or(|c| c.0);
            let units = read_units(size).max(1.0);
            (if consistent { units } else { units / 2.0 }, WriteCost::default())
        } else if let Some(q) = output.downcast_ref::<QueryOutput>() {
            // Eventually consistent (lists and the index are read so).
            let size: usize = q.items.iter().flatten().map(item_size).sum();
            ((read_units(size) / 2.0).max(0.5), WriteCost::default())
        } else if let Some(b) = output.downcast_ref::<BatchGetItemOutput>() {
            // Eventually consistent, each item rounded up on its own.
            let units: f64 = b
                .responses
                .iter()
                .flat_map(|r| r.values().flatten())
                .map(|i| read_units(item_size(i)) / 2.0)
                .sum();
            (units, WriteCost::default())
        } else if let Some(u) = output.downcast_ref::<UpdateItemOutput>() {
            // ALL_NEW: the item after; the counter's copy is the item before.
            let cost = u
                .attributes
                .as_ref()
                .map(|i| self.write(i, false))
                .unwrap_or(WriteCost {
                    table: 1.0,
                    indexes: 0.0,
                });
            (0.0, cost)
        } else {
            return Ok(());
        };
        self.add(cfg, |c| {
            c.read_units += read;
            c.write_units += write.table + write.indexes;
            c.index_write_units += write.indexes;
        });
        Ok(())
    }
}

fn key_of(item: &Item) -> Option<(String, String)> {
    match (item.get("pk"), item.get("sk")) {
        (Some(AttributeValue::S(pk)), Some(AttributeValue::S(sk))) => Some((pk.clone(), sk.clone())),
        _ => None,
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

    fn s(v: &str) -> AttributeValue {
        AttributeValue::S(v.into())
    }

    /// An item of `bytes` bytes in all (names and values), in or out of the sparse index.
    fn item(bytes: usize, indexed: Option<&str>, status: &str) -> Item {
        let mut i = HashMap::from([
            ("pk".to_owned(), s("U#u")),
            ("sk".to_owned(), s("T#1")),
            ("status".to_owned(), s(status)),
        ]);
        if let Some(p) = indexed {
            i.insert("gsi2pk".into(), s(p));
            i.insert("gsi2sk".into(), s("T#1"));
        }
        let pad = bytes - item_size(&i) - "pad".len();
        i.insert("pad".into(), s(&"x".repeat(pad)));
        assert_eq!(item_size(&i), bytes);
        i
    }

    const KEYS_ONLY: IndexSpec = IndexSpec {
        name: "active",
        hash: "gsi2pk",
        range: "gsi2sk",
        projection: IndexProjection::KeysOnly,
    };
    const ALL: IndexSpec = IndexSpec {
        projection: IndexProjection::All,
        ..KEYS_ONLY
    };

    /// Hand-computed cases of DynamoDB's write pricing.
    #[test]
    fn writes_are_priced_by_dynamodbs_rules() {
        let queued = item(900, Some("A#normal#1"), "queued");
        let running = item(950, Some("A#normal#1"), "running");
        let done = item(1100, None, "succeeded");
        // A put of a 900-byte item into a keys-only index: 1 for the table, 1 for the entry.
        assert_eq!(
            write_cost(None, Some(&queued), &[KEYS_ONLY]),
            WriteCost {
                table: 1.0,
                indexes: 1.0
            }
        );
        // An update that changes neither index key nor a projected attribute: the table only.
        assert_eq!(
            write_cost(Some(&queued), Some(&running), &[KEYS_ONLY]),
            WriteCost {
                table: 1.0,
                indexes: 0.0
            }
        );
        // With everything projected, the same update rewrites the entry.
        assert_eq!(
            write_cost(Some(&queued), Some(&running), &[ALL]),
            WriteCost {
                table: 1.0,
                indexes: 1.0
            }
        );
        // Leaving the sparse index: a delete of the entry; the table billed on the larger item
        // (1,100 bytes: 2 units).
        assert_eq!(
            write_cost(Some(&running), Some(&done), &[KEYS_ONLY]),
            WriteCost {
                table: 2.0,
                indexes: 1.0
            }
        );
        // Billed on the larger of before and after, when the update shrinks the item.
        assert_eq!(write_cost(Some(&done), Some(&queued), &[]).table, 2.0);
        // An index key change is a delete and a put; with ALL, each the whole item's size.
        let moved = item(950, Some("A#high#1"), "running");
        assert_eq!(
            write_cost(Some(&running), Some(&moved), &[ALL]),
            WriteCost {
                table: 1.0,
                indexes: 2.0
            }
        );
        let big_before = item(3000, Some("A#normal#1"), "queued");
        let big_after = item(3000, Some("A#high#1"), "running");
        assert_eq!(
            write_cost(Some(&big_before), Some(&big_after), &[ALL]),
            WriteCost {
                table: 3.0,
                indexes: 6.0
            }
        );
        // Exactly 1 KiB is one unit; one byte more is two.
        assert_eq!(write_cost(None, Some(&item(1024, None, "q")), &[]).table, 1.0);
        assert_eq!(write_cost(None, Some(&item(1025, None, "q")), &[]).table, 2.0);
    }

    /// The counter remembers what its clients wrote: a second write of an item is priced
    /// against the first, and a transaction doubles the table's units.
    #[test]
    fn the_counter_prices_each_write_against_the_last() {
        let c = RequestCounter::new();
        let queued = item(900, Some("A#normal#1"), "queued");
        assert_eq!(
            c.write(&queued, true),
            WriteCost {
                table: 2.0,
                indexes: 1.0
            }
        );
        let running = item(950, Some("A#normal#1"), "running");
        assert_eq!(
            c.write(&running, false),
            WriteCost {
                table: 1.0,
                indexes: 0.0
            }
        );
    }
}
