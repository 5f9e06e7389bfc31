//! Where records come from. A `Source` hands out batches of neutral
//! `model::SourceRecord`s and commits their offsets only after every sink
//! acknowledged them. Kafka is the one source today; rdkafka's types stay
//! inside `source/kafka`.

mod kafka;

pub use kafka::{KafkaSource, builtin_features, check_features};

use crate::model::Batch;
use std::time::Duration;

/// A consumer of records, continuous or bounded.
#[async_trait::async_trait]
pub trait Source: Send {
    /// Waits for up to `max` records, returning early after `max_wait` once
    /// at least one arrived (or with none if nothing came). A bounded source
    /// never returns records past its end.
    async fn next_batch(&mut self, max: usize, max_wait: Duration) -> Result<Batch, SourceError>;

    /// Stores the batch's offsets as processed, with those of earlier
    /// batches whose commit failed. Call only after every sink acknowledged
    /// the batch. On failure the offsets wait for the next commit.
    async fn commit(&mut self, batch: &Batch) -> Result<(), SourceError>;

    /// True while offsets whose commit failed wait for the next one.
    fn has_uncommitted(&self) -> bool;

    /// Commits the offsets whose commit failed before, if any.
    async fn commit_pending(&mut self) -> Result<(), SourceError>;

    /// Records that a batch was fully processed.
    fn advance(&mut self, batch: &Batch);

    /// A bounded source: true once every partition reached its end.
    fn drained(&self) -> bool;
}

/// What went wrong reading from a source.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SourceError {
    /// The topic does not exist: waiting will not help.
    #[error("kafka: topic '{topic}' does not exist (check `topics` of the pipeline)")]
    UnknownTopic { topic: String },
    /// The client could not be set up from the configuration.
    #[error("{0}")]
    Config(String),
    /// The broker failed the request or cannot be reached: retry later.
    #[error("kafka: {0}")]
    Broker(String),
}

impl SourceError {
    /// Retrying the same request cannot succeed.
    pub fn is_permanent(&self) -> bool {
        match self {
            SourceError::UnknownTopic { .. } | SourceError::Config(_) => true,
            SourceError::Broker(_) => false,
        }
    }
}
