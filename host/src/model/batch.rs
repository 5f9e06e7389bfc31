//! Records as a source delivers them, independent of the broker's client
//! library, and their positions (topic, partition, offset).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A partition of a topic: (topic, partition).
pub type Partition = (String, i32);
/// The next offset to consume, per partition.
pub type Offsets = BTreeMap<Partition, i64>;

/// One record read from a source.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SourceRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// Milliseconds since the Unix epoch, if the record carries one.
    pub timestamp: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// (name, value) in the record's order.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl SourceRecord {
    pub fn partition(&self) -> Partition {
        (self.topic.clone(), self.partition)
    }

    /// Headers as borrowed (name, value) pairs.
    pub fn header_pairs(&self) -> Vec<(&str, Option<&[u8]>)> {
        self.headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_deref()))
            .collect()
    }
}

/// Records fetched together; written, then committed, as one unit.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub records: Vec<SourceRecord>,
}

impl Batch {
    /// Next offset to consume per partition: highest seen + 1.
    pub fn next_offsets(&self) -> Offsets {
        let mut next = Offsets::new();
        for r in &self.records {
            let e = next.entry(r.partition()).or_insert(0);
            *e = (*e).max(r.offset + 1);
        }
        next
    }

    /// First offset per partition: the lowest in the batch.
    pub fn first_offsets(&self) -> Offsets {
        let mut first = Offsets::new();
        for r in &self.records {
            let e = first.entry(r.partition()).or_insert(i64::MAX);
            *e = (*e).min(r.offset);
        }
        first
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// Offsets `[from, to)` of one partition: what a bounded run processes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRange {
    pub topic: String,
    pub partition: i32,
    pub from: i64,
    pub to: i64,
}

impl PartitionRange {
    pub fn len(&self) -> u64 {
        (self.to - self.from).max(0) as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(topic: &str, partition: i32, offset: i64) -> SourceRecord {
        SourceRecord {
            topic: topic.into(),
            partition,
            offset,
            ..Default::default()
        }
    }

    #[test]
    fn a_batch_knows_where_it_starts_and_where_the_next_one_starts() {
        let batch = Batch {
            records: vec![at("a", 0, 7), at("a", 1, 3), at("a", 0, 5), at("b", 0, 0)],
        };
        let p = |t: &str, n| (t.to_string(), n);
        assert_eq!(
            batch.first_offsets(),
            Offsets::from([(p("a", 0), 5), (p("a", 1), 3), (p("b", 0), 0)])
        );
        assert_eq!(
            batch.next_offsets(),
            Offsets::from([(p("a", 0), 8), (p("a", 1), 4), (p("b", 0), 1)])
        );
    }
}
