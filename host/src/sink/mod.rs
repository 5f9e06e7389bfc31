//! Sinks: where validated outputs are written. One folder per database,
//! each behind the `Sink` trait; writes are idempotent upserts so a batch
//! replayed after a crash changes nothing.

mod mongodb;
mod mysql;

use crate::config::SinkConfig;
use serde_json::{Map, Value};
use sluice_plugin_sdk::schema::Output;
use std::collections::BTreeMap;
use std::sync::Arc;

pub use self::mongodb::MongoSink;
pub use self::mysql::MysqlSink;

/// One output value ready to write.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The document `_id`: the declared key, or the source position.
    pub id: Value,
    /// Field values, normalised by `Output::check_value`.
    pub fields: Map<String, Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The database cannot be reached or failed the request: retry later.
    #[error("{0}")]
    Unavailable(String),
    /// The database refused the data itself (constraint, type, size).
    #[error("write refused: {0}")]
    Refused(String),
}

#[async_trait::async_trait]
pub trait Sink: Send + Sync {
    /// Checks the database answers.
    async fn healthcheck(&self) -> Result<(), SinkError>;

    /// Creates the table or collection `target` and the declared indexes,
    /// if missing.
    async fn prepare(&self, target: &str, decl: &Output) -> Result<(), SinkError>;

    /// Upserts `rows` into `target` on the declared key: each row replaces
    /// whatever the key held. Rows carry distinct keys (the router keeps
    /// the last version of each, see `router::Routed`). Either all rows
    /// are written or an error is returned; retrying is always safe.
    async fn write(&self, target: &str, decl: &Output, rows: &[Row]) -> Result<(), SinkError>;

    /// Reads back rows of `target` (declared by `decl`, which has `pipeline`
    /// and `failed_at` fields: dead letters) whose `pipeline` is `pipeline`
    /// and, unless `ids` is empty, whose id is one of `ids`; newest first.
    /// Timestamps come back as RFC 3339 text.
    async fn read_dead_letters(
        &self,
        target: &str,
        decl: &Output,
        pipeline: &str,
        ids: &[String],
        limit: u32,
    ) -> Result<Vec<Map<String, Value>>, SinkError>;

    /// Deletes the rows of `target` with these ids (text primary keys).
    async fn delete(&self, target: &str, decl: &Output, ids: &[String]) -> Result<(), SinkError>;

    /// Closes the connections; called once the host stopped using the sink.
    async fn close(&self) {}

    /// The sink's transactions over several targets and the consumer
    /// offsets, if the database has them (MySQL).
    fn transactional(&self) -> Option<&dyn Transactional> {
        None
    }
}

/// A Kafka partition: (topic, partition).
pub type Partition = (String, i32);
/// The next offset to consume, per partition.
pub type Offsets = BTreeMap<Partition, i64>;

/// A database that stores a consumer group's offsets beside the rows, so a
/// batch's rows and its offsets commit together: exactly-once, whatever
/// the writes are.
#[async_trait::async_trait]
pub trait Transactional: Send + Sync {
    /// The offsets stored for `group`, of these partitions; a partition
    /// never stored is absent.
    async fn stored_offsets(
        &self,
        group: &str,
        partitions: &[Partition],
    ) -> Result<Offsets, SinkError>;

    /// Starts a transaction that locks `group`'s offsets of `partitions`
    /// (another writer of them waits) and returns them as stored.
    async fn begin(
        &self,
        group: &str,
        partitions: &[Partition],
    ) -> Result<(Box<dyn SinkTransaction>, Offsets), SinkError>;
}

/// Writes that become visible together, with the offsets, at `commit`;
/// dropped without `commit`, nothing is written.
#[async_trait::async_trait]
pub trait SinkTransaction: Send {
    /// Upserts `rows` into `target`. A refused write leaves the
    /// transaction as it was before the call.
    async fn write(&mut self, target: &str, decl: &Output, rows: &[Row]) -> Result<(), SinkError>;

    /// Stores `next` as the group's offsets and commits.
    async fn commit(self: Box<Self>, next: &Offsets) -> Result<(), SinkError>;
}

/// Every configured sink, by name.
pub type Sinks = BTreeMap<String, Arc<dyn Sink>>;

/// Creates a client for each configured sink (connections open lazily).
pub async fn connect_all(configs: &BTreeMap<String, SinkConfig>) -> anyhow::Result<Sinks> {
    let mut sinks = Sinks::new();
    for (name, config) in configs {
        let sink: Arc<dyn Sink> = match config {
            SinkConfig::Mongodb { uri, database } => {
                let uri = uri
                    .resolve()
                    .map_err(|e| anyhow::anyhow!("sinks.{name}.uri: {e}"))?;
                Arc::new(
                    MongoSink::connect(&uri, database)
                        .await
                        .map_err(|e| anyhow::anyhow!("sinks.{name}: {e}"))?,
                )
            }
            SinkConfig::Mysql {
                url,
                max_connections,
            } => {
                let url = url
                    .resolve()
                    .map_err(|e| anyhow::anyhow!("sinks.{name}.url: {e}"))?;
                Arc::new(
                    MysqlSink::connect(&url, *max_connections)
                        .map_err(|e| anyhow::anyhow!("sinks.{name}: {e}"))?,
                )
            }
        };
        sinks.insert(name.clone(), sink);
    }
    Ok(sinks)
}
