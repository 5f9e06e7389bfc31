//! The bottom layer: plain data types every other module speaks. Nothing
//! here imports the rest of the host, so any layer may use it.
//!
//! - `batch`: records as a source delivers them, their positions, batches;
//! - `row`: one validated output value, and the dead-letter declaration;
//! - `canary`: what comparing a canary with the active version found;
//! - `migration`: what making a sink match a declaration takes, and did.

pub mod batch;
pub mod canary;
pub mod migration;
pub mod row;

pub use batch::{Batch, Offsets, Partition, PartitionRange, SourceRecord};
pub use migration::{Applied, Plan};
pub use row::{BatchDone, Row, Stage, dead_letter_decl};
