//! Where records come from. Kafka today; offsets are committed only after
//! every sink acknowledged the batch.

mod kafka;

pub use kafka::{Batch, KafkaSource, PartitionRange, headers};
