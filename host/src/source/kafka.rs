//! Kafka consumer: batches by count and time, explicit commits after the
//! sinks acknowledged; bounded consumers for scheduled runs and backfills.

use super::{Source, SourceError};
use crate::config::KafkaConfig;
use crate::model::{Batch, PartitionRange, SourceRecord};
use crate::retry::{Backoff, retry};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers as _, Message};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// How long reading a group's offsets waits for a broker that is starting.
const OFFSETS_TIMEOUT: Duration = Duration::from_secs(60);

type Tp = (String, i32);
/// Low and high watermark per partition.
type Watermarks = HashMap<Tp, (i64, i64)>;

pub struct KafkaSource {
    consumer: Arc<StreamConsumer>,
    /// Bounded runs: the end offset of each partition, exclusive.
    ends: Option<HashMap<Tp, i64>>,
    /// Next offset to process per partition, as far as this source knows.
    positions: HashMap<Tp, i64>,
    /// Bounded runs by time (backfills): `[from, to)` in ms.
    window: Option<(i64, i64)>,
    /// Offsets processed whose commit failed: sent with the next commit.
    uncommitted: BTreeMap<Tp, i64>,
}

/// Client settings shared by every consumer of a group.
fn client(config: &KafkaConfig, group_id: &str) -> Result<ClientConfig, SourceError> {
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
            .map_err(|e| SourceError::Config(format!("kafka.options.{key}: {e}")))?;
        client.set(key, value);
    }
    check_features(config).map_err(SourceError::Config)?;
    let protocol = match (&config.tls, &config.sasl) {
        (None, None) => "plaintext",
        (Some(_), None) => "ssl",
        (None, Some(_)) => "sasl_plaintext",
        (Some(_), Some(_)) => "sasl_ssl",
    };
    client.set("security.protocol", protocol);
    if let Some(tls) = &config.tls {
        let files = [
            ("ssl.ca.location", &tls.ca),
            ("ssl.certificate.location", &tls.certificate),
            ("ssl.key.location", &tls.key),
        ];
        for (property, path) in files {
            if let Some(path) = path {
                client.set(property, path.to_string_lossy());
            }
        }
        if let Some(password) = &tls.key_password {
            let password = password
                .resolve()
                .map_err(|e| SourceError::Config(format!("kafka.tls.key_password: {e}")))?;
            client.set("ssl.key.password", password);
        }
        let verify = if tls.verify_hostname { "https" } else { "none" };
        client.set("ssl.endpoint.identification.algorithm", verify);
    }
    if let Some(sasl) = &config.sasl {
        let password = sasl
            .password
            .resolve()
            .map_err(|e| SourceError::Config(format!("kafka.sasl.password: {e}")))?;
        client
            .set("sasl.mechanism", sasl.mechanism.name())
            .set("sasl.username", &sasl.username)
            .set("sasl.password", password);
    }
    Ok(client)
}

/// The features this build of librdkafka was compiled with (its
/// `builtin.features`), e.g. `ssl`, `sasl_scram`.
pub fn builtin_features() -> Vec<String> {
    use rdkafka::bindings as rd;
    let mut buffer = vec![0u8; 1024];
    let mut size = buffer.len();
    // SAFETY: a fresh configuration object, read into a buffer of `size`
    // bytes, then destroyed; librdkafka writes a NUL-terminated string.
    let found = unsafe {
        let conf = rd::rd_kafka_conf_new();
        let result = rd::rd_kafka_conf_get(
            conf,
            c"builtin.features".as_ptr(),
            buffer.as_mut_ptr().cast(),
            &mut size,
        );
        rd::rd_kafka_conf_destroy(conf);
        result == rd::rd_kafka_conf_res_t::RD_KAFKA_CONF_OK
    };
    if !found {
        return Vec::new();
    }
    let text = std::ffi::CStr::from_bytes_until_nul(&buffer)
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    text.split(',').map(str::to_string).collect()
}

/// Whether this librdkafka can do what `[kafka.tls]` and `[kafka.sasl]`
/// ask; the error names the key and the missing feature.
pub fn check_features(config: &KafkaConfig) -> Result<(), String> {
    let features = builtin_features();
    let mut needed = Vec::new();
    if config.tls.is_some() {
        needed.push(("kafka.tls", "ssl"));
    }
    if let Some(sasl) = &config.sasl {
        needed.push(("kafka.sasl.mechanism", sasl.mechanism.feature()));
    }
    match needed
        .iter()
        .find(|(_, f)| !features.iter().any(|have| have == f))
    {
        Some((key, feature)) => Err(format!(
            "{key}: this build of librdkafka lacks the '{feature}' feature (it has: {})",
            features.join(", ")
        )),
        None => Ok(()),
    }
}

fn consumer<C: rdkafka::config::FromClientConfig>(
    config: &KafkaConfig,
    group_id: &str,
) -> Result<C, SourceError> {
    client(config, group_id)?.create().map_err(|e| {
        SourceError::Config(format!(
            "kafka: cannot create consumer for group '{group_id}': {e}"
        ))
    })
}

impl KafkaSource {
    /// A consumer that joins the group and follows the topics forever.
    pub fn subscribed(
        config: &KafkaConfig,
        group_id: &str,
        topics: &[String],
    ) -> Result<Self, SourceError> {
        let consumer: StreamConsumer = consumer(config, group_id)?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&names)
            .map_err(|e| SourceError::Broker(format!("cannot subscribe to {names:?}: {e}")))?;
        Ok(KafkaSource {
            consumer: Arc::new(consumer),
            ends: None,
            positions: HashMap::new(),
            window: None,
            uncommitted: BTreeMap::new(),
        })
    }

    /// A consumer of exactly `ranges`; `drained()` once all are processed.
    /// With `window` (ms, `[from, to)`), records whose timestamps fall
    /// outside it are passed over.
    pub fn bounded(
        config: &KafkaConfig,
        group_id: &str,
        ranges: &[PartitionRange],
        window: Option<(i64, i64)>,
    ) -> Result<Self, SourceError> {
        let consumer: StreamConsumer = consumer(config, group_id)?;
        let mut tpl = TopicPartitionList::new();
        let mut ends = HashMap::new();
        let mut positions = HashMap::new();
        for r in ranges.iter().filter(|r| !r.is_empty()) {
            tpl.add_partition_offset(&r.topic, r.partition, Offset::Offset(r.from))?;
            ends.insert((r.topic.clone(), r.partition), r.to);
            positions.insert((r.topic.clone(), r.partition), r.from);
        }
        if tpl.count() > 0 {
            consumer
                .assign(&tpl)
                .map_err(|e| SourceError::Broker(format!("cannot assign {tpl:?}: {e}")))?;
        }
        Ok(KafkaSource {
            consumer: Arc::new(consumer),
            ends: Some(ends),
            positions,
            window,
            uncommitted: BTreeMap::new(),
        })
    }

    /// What a scheduled run of the group processes: from the committed
    /// offset (or the start of the partition) to the current end.
    pub async fn pending(
        config: &KafkaConfig,
        group_id: &str,
        topics: &[String],
    ) -> Result<Vec<PartitionRange>, SourceError> {
        read_offsets(config, group_id, topics, |consumer, watermarks, partitions| {
            let committed = consumer.committed_offsets(partitions, METADATA_TIMEOUT)?;
            let mut ranges = Vec::new();
            for e in committed.elements() {
                let tp = (e.topic().to_string(), e.partition());
                let (low, high) = watermarks[&tp];
                let from = match e.offset() {
                    Offset::Offset(o) if o > high => {
                        tracing::warn!(topic = %tp.0, partition = tp.1, committed = o, high,
                            "committed offset is past the end of the partition (topic recreated?): starting from its beginning");
                        low
                    }
                    Offset::Offset(o) if o < low => {
                        tracing::warn!(topic = %tp.0, partition = tp.1, committed = o, low,
                            "records between the committed offset and the oldest retained one were deleted by retention before they were processed");
                        low
                    }
                    Offset::Offset(o) => o,
                    _ => low,
                };
                ranges.push(PartitionRange {
                    topic: tp.0,
                    partition: tp.1,
                    from,
                    to: high.max(from),
                });
            }
            Ok(ranges)
        })
        .await
    }

    /// The offsets of the records whose Kafka timestamps fall in
    /// `[from_ms, to_ms)`, per partition.
    pub async fn between_times(
        config: &KafkaConfig,
        group_id: &str,
        topics: &[String],
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<PartitionRange>, SourceError> {
        read_offsets(
            config,
            group_id,
            topics,
            move |consumer, watermarks, partitions| {
                let offset_at = |ms: i64| -> Result<HashMap<Tp, i64>, SourceError> {
                    let mut tpl = TopicPartitionList::new();
                    for e in partitions.elements() {
                        tpl.add_partition_offset(e.topic(), e.partition(), Offset::Offset(ms))?;
                    }
                    let found = consumer.offsets_for_times(tpl, METADATA_TIMEOUT)?;
                    Ok(found
                        .elements()
                        .iter()
                        .map(|e| {
                            let tp = (e.topic().to_string(), e.partition());
                            let offset = match e.offset() {
                                Offset::Offset(o) => o,
                                _ => watermarks[&tp].1, // no record that late
                            };
                            (tp, offset)
                        })
                        .collect())
                };
                let (starts, ends) = (offset_at(from_ms)?, offset_at(to_ms)?);
                let mut ranges: Vec<_> = starts
                    .into_iter()
                    .map(|(tp, from)| PartitionRange {
                        to: ends[&tp].max(from),
                        topic: tp.0,
                        partition: tp.1,
                        from,
                    })
                    .collect();
                ranges.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
                Ok(ranges)
            },
        )
        .await
    }

    fn within_window(&self, r: &SourceRecord) -> bool {
        let Some((from, to)) = self.window else {
            return true;
        };
        r.timestamp.is_some_and(|t| from <= t && t < to)
    }

    fn within_bounds(&self, r: &SourceRecord) -> bool {
        let Some(ends) = &self.ends else { return true };
        ends.get(&r.partition()).is_some_and(|end| r.offset < *end)
    }
}

#[async_trait::async_trait]
impl Source for KafkaSource {
    async fn next_batch(&mut self, max: usize, max_wait: Duration) -> Result<Batch, SourceError> {
        let deadline = tokio::time::Instant::now() + max_wait;
        let mut records = Vec::with_capacity(max.min(10_000));
        while records.len() < max {
            match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Err(_elapsed) => break,
                Ok(Ok(m)) => {
                    let m = to_record(&m);
                    if !self.within_bounds(&m) {
                        continue;
                    }
                    if self.within_window(&m) {
                        records.push(m);
                    } else {
                        // Passed over, but counts as done for `drained()`.
                        let p = self.positions.entry(m.partition()).or_default();
                        *p = (*p).max(m.offset + 1);
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "kafka: consumer error (librdkafka retries)");
                    if records.is_empty() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    break;
                }
            }
        }
        if records.is_empty() && self.ends.is_some() {
            // Offsets taken by transaction markers are never delivered:
            // trust the consumer's position once nothing more comes.
            if let Ok(tpl) = self.consumer.position() {
                for e in tpl.elements() {
                    if let (Offset::Offset(o), Some(p)) = (
                        e.offset(),
                        self.positions
                            .get_mut(&(e.topic().to_string(), e.partition())),
                    ) {
                        *p = (*p).max(o);
                    }
                }
            }
        }
        Ok(Batch { records })
    }

    /// Commits synchronously; commits are cumulative, so offsets whose
    /// commit failed simply go with the next one.
    async fn commit(&mut self, batch: &Batch) -> Result<(), SourceError> {
        for (tp, next) in batch.next_offsets() {
            let e = self.uncommitted.entry(tp).or_insert(next);
            *e = (*e).max(next);
        }
        self.commit_pending().await
    }

    fn has_uncommitted(&self) -> bool {
        !self.uncommitted.is_empty()
    }

    async fn commit_pending(&mut self) -> Result<(), SourceError> {
        // Partitions taken away by a rebalance are the new owner's to commit.
        if let Ok(assigned) = self.consumer.assignment() {
            self.uncommitted.retain(|(topic, partition), _| {
                assigned.find_partition(topic, *partition).is_some()
            });
        }
        if self.uncommitted.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in &self.uncommitted {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
        }
        let consumer = self.consumer.clone();
        tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync))
            .await
            .map_err(|e| SourceError::Broker(format!("offset commit: {e}")))?
            .map_err(|e| SourceError::Broker(format!("offset commit failed: {e}")))?;
        self.uncommitted.clear();
        Ok(())
    }

    /// A bounded source stops fetching partitions that reached their end.
    fn advance(&mut self, batch: &Batch) {
        self.positions.extend(batch.next_offsets());
        if let Some(ends) = &self.ends {
            let mut done = TopicPartitionList::new();
            for ((topic, partition), next) in batch.next_offsets() {
                if ends
                    .get(&(topic.clone(), partition))
                    .is_some_and(|end| next >= *end)
                {
                    done.add_partition(&topic, partition);
                }
            }
            if done.count() > 0 {
                let _ = self.consumer.pause(&done);
            }
        }
    }

    fn drained(&self) -> bool {
        self.ends.as_ref().is_some_and(|ends| {
            ends.iter()
                .all(|(tp, end)| self.positions.get(tp).is_some_and(|p| p >= end))
        })
    }
}
/// Reads offsets of the group's partitions with a consumer that does not
/// join the group: `read` gets the watermarks and the partition list.
/// A fresh broker answers NotCoordinator until the group coordinator (the
/// `__consumer_offsets` topic) is loaded: retry for a while, but not for a
/// topic that does not exist.
async fn read_offsets<T: Send + 'static>(
    config: &KafkaConfig,
    group_id: &str,
    topics: &[String],
    read: impl Fn(&BaseConsumer, &Watermarks, TopicPartitionList) -> Result<T, SourceError>
    + Send
    + Sync
    + 'static,
) -> Result<T, SourceError> {
    let consumer: BaseConsumer = consumer(config, group_id)?;
    let names = topics.to_vec();
    let read = Arc::new(move || {
        let (watermarks, partitions) = read_watermarks(&consumer, &names)?;
        read(&consumer, &watermarks, partitions)
    });
    let deadline = std::time::Instant::now() + OFFSETS_TIMEOUT;
    let attempt = || {
        let read = read.clone();
        async move {
            tokio::task::spawn_blocking(move || read())
                .await
                .map_err(|e| SourceError::Broker(e.to_string()))?
        }
    };
    retry(
        Backoff::constant(Duration::from_millis(250)),
        None,
        attempt,
        |e: &SourceError, _, _| {
            if e.is_permanent() || std::time::Instant::now() >= deadline {
                return ControlFlow::Break(());
            }
            tracing::debug!(error = %e, "kafka: offsets not available yet; retrying");
            ControlFlow::Continue(())
        },
    )
    .await
    .map_err(|gave_up| match gave_up.into_error() {
        SourceError::Broker(e) => {
            SourceError::Broker(format!("cannot read the offsets of {topics:?}: {e}"))
        }
        e => e,
    })
}

/// Low and high watermarks of every partition of the topics, and the list
/// of those partitions.
fn read_watermarks(
    consumer: &BaseConsumer,
    topics: &[String],
) -> Result<(Watermarks, TopicPartitionList), SourceError> {
    let unknown = |topic: &str| SourceError::UnknownTopic {
        topic: topic.to_string(),
    };
    let mut watermarks = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for topic in topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), METADATA_TIMEOUT)
            .map_err(|e| match e {
                KafkaError::MetadataFetch(RDKafkaErrorCode::UnknownTopicOrPartition) => {
                    unknown(topic)
                }
                e => e.into(),
            })?;
        for t in metadata.topics() {
            match t.error() {
                None => {}
                Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) => {
                    return Err(unknown(topic));
                }
                Some(e) => {
                    return Err(SourceError::Broker(format!(
                        "topic '{topic}': {}",
                        RDKafkaErrorCode::from(e)
                    )));
                }
            }
            for p in t.partitions() {
                watermarks.insert(
                    (topic.clone(), p.id()),
                    consumer.fetch_watermarks(topic, p.id(), METADATA_TIMEOUT)?,
                );
                tpl.add_partition(topic, p.id());
            }
        }
    }
    Ok((watermarks, tpl))
}

impl From<KafkaError> for SourceError {
    fn from(e: KafkaError) -> Self {
        SourceError::Broker(e.to_string())
    }
}

/// The neutral record of a Kafka message (one copy, as `detach` would make).
fn to_record(m: &BorrowedMessage<'_>) -> SourceRecord {
    SourceRecord {
        topic: m.topic().to_string(),
        partition: m.partition(),
        offset: m.offset(),
        timestamp: m.timestamp().to_millis(),
        key: m.key().map(<[u8]>::to_vec),
        value: m.payload().map(<[u8]>::to_vec),
        headers: m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default(),
    }
}
