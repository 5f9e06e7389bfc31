//! Kafka consumer: batches by count and time, explicit commits after the
//! sinks acknowledged, and "drained" detection for bounded runs.

use crate::config::KafkaConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Headers as _, Message, OwnedMessage};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// A batch of records and the offsets to commit once it is written.
pub struct Batch {
    pub messages: Vec<OwnedMessage>,
}

impl Batch {
    /// Next offset to consume per (topic, partition): highest seen + 1.
    pub fn next_offsets(&self) -> BTreeMap<(String, i32), i64> {
        let mut next = BTreeMap::new();
        for m in &self.messages {
            let e = next
                .entry((m.topic().to_string(), m.partition()))
                .or_insert(0);
            *e = (*e).max(m.offset() + 1);
        }
        next
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }
}

pub struct KafkaSource {
    consumer: Arc<StreamConsumer>,
    topics: Vec<String>,
    /// Next offset to process per partition, as far as this source knows.
    positions: HashMap<(String, i32), i64>,
    /// End offsets captured by `snapshot_ends`, for bounded runs.
    ends: Option<Ends>,
}

impl KafkaSource {
    pub fn new(config: &KafkaConfig, group_id: &str, topics: &[String]) -> anyhow::Result<Self> {
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &config.brokers)
            .set("group.id", group_id)
            .set("client.id", format!("sluice-{group_id}"))
            // Offsets are committed by us, after the sinks acknowledged.
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false");
        for (key, value) in &config.options {
            let value = value
                .resolve()
                .map_err(|e| anyhow::anyhow!("kafka.options.{key}: {e}"))?;
            client.set(key, value);
        }
        let consumer: StreamConsumer = client.create().map_err(|e| {
            anyhow::anyhow!("kafka: cannot create consumer for group '{group_id}': {e}")
        })?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&names)
            .map_err(|e| anyhow::anyhow!("kafka: cannot subscribe to {names:?}: {e}"))?;
        Ok(KafkaSource {
            consumer: Arc::new(consumer),
            topics: topics.to_vec(),
            positions: HashMap::new(),
            ends: None,
        })
    }

    /// Waits for up to `max` records, returning early after `max_wait` once
    /// at least one arrived (or with none if nothing came).
    pub async fn next_batch(&mut self, max: usize, max_wait: Duration) -> anyhow::Result<Batch> {
        let deadline = tokio::time::Instant::now() + max_wait;
        let mut messages = Vec::with_capacity(max.min(10_000));
        while messages.len() < max {
            match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Err(_elapsed) => break,
                Ok(Ok(m)) => messages.push(m.detach()),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "kafka: consumer error (librdkafka retries)");
                    if messages.is_empty() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    break;
                }
            }
        }
        Ok(Batch { messages })
    }

    /// Commits the batch's offsets synchronously. Call only after every sink
    /// acknowledged the batch's writes.
    pub async fn commit(&self, batch: &Batch) -> anyhow::Result<()> {
        let next = batch.next_offsets();
        if next.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in &next {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
        }
        let consumer = self.consumer.clone();
        tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync))
            .await?
            .map_err(|e| anyhow::anyhow!("kafka: offset commit failed (batch will be re-delivered; writes are idempotent): {e}"))
    }

    /// Records that a committed batch was fully processed.
    pub fn advance(&mut self, batch: &Batch) {
        self.positions.extend(batch.next_offsets());
    }

    /// Records the current end offset of every partition of the topics:
    /// a bounded run processes up to these and stops.
    pub async fn snapshot_ends(&mut self) -> anyhow::Result<()> {
        // A fresh broker answers NotCoordinator until the group coordinator
        // (the __consumer_offsets topic) is loaded: retry for a while.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let (ends, committed) = loop {
            let consumer = self.consumer.clone();
            let topics = self.topics.clone();
            match tokio::task::spawn_blocking(move || read_ends(&consumer, &topics)).await? {
                Ok(snapshot) => break snapshot,
                Err(e) if std::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "kafka: end offsets not available yet; retrying");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => anyhow::bail!("kafka: cannot read end offsets of {:?}: {e}", self.topics),
            }
        };
        for e in committed.elements() {
            if let Offset::Offset(o) = e.offset() {
                self.positions
                    .entry((e.topic().to_string(), e.partition()))
                    .or_insert(o);
            }
        }
        self.ends = Some(ends);
        Ok(())
    }

    /// True once every partition reached the end captured by `snapshot_ends`.
    pub fn drained(&self) -> bool {
        self.ends.as_ref().is_some_and(|ends| {
            ends.iter().all(|(tp, (low, high))| {
                high <= low || self.positions.get(tp).is_some_and(|p| p >= high)
            })
        })
    }
}

type Ends = HashMap<(String, i32), (i64, i64)>;

/// Low and high watermarks of every partition, and the group's committed offsets.
fn read_ends(
    consumer: &StreamConsumer,
    topics: &[String],
) -> anyhow::Result<(Ends, TopicPartitionList)> {
    let mut ends = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for topic in topics {
        let metadata = consumer.fetch_metadata(Some(topic), METADATA_TIMEOUT)?;
        for t in metadata.topics() {
            for p in t.partitions() {
                ends.insert(
                    (topic.clone(), p.id()),
                    consumer.fetch_watermarks(topic, p.id(), METADATA_TIMEOUT)?,
                );
                tpl.add_partition(topic, p.id());
            }
        }
    }
    let committed = consumer.committed_offsets(tpl, METADATA_TIMEOUT)?;
    Ok((ends, committed))
}

/// Headers as (name, value) pairs borrowed from a message.
pub fn headers(m: &OwnedMessage) -> Vec<(&str, Option<&[u8]>)> {
    m.headers()
        .map(|h| h.iter().map(|h| (h.key, h.value)).collect())
        .unwrap_or_default()
}
