//! What a batch produces: rows for the sinks, dead letters, and counts.

use serde_json::{Map, Value};
use sluice_plugin_sdk::schema::{Output, Type};
use std::collections::BTreeMap;

/// One output value ready to write, or a key to delete.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The document `_id`: the declared key, or the source position.
    pub id: Value,
    /// Field values, normalised by `Output::check_value`; for a delete,
    /// the key fields (`Output::check_key`).
    pub fields: Map<String, Value>,
    /// Remove what the key holds instead of writing `fields`.
    pub delete: bool,
}

impl Row {
    pub fn upsert(id: Value, fields: Map<String, Value>) -> Row {
        Row {
            id,
            fields,
            delete: false,
        }
    }
}

/// Why a record ended in dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The plugin rejected the record.
    Plugin,
    /// The plugin trapped or hit a limit on this record.
    Trap,
    /// An output broke its declared schema.
    Schema,
    /// The database refused the row itself (constraint, type, size).
    Sink,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Plugin => "plugin",
            Stage::Trap => "trap",
            Stage::Schema => "schema",
            Stage::Sink => "sink",
        }
    }
}

/// The schema of a dead letter, in any kind of sink.
pub fn dead_letter_decl() -> Output {
    Output::document("dead_letters")
        .field("id", Type::text(255))
        .primary_key(["id"])
        .field("pipeline", Type::text(64))
        .field("plugin", Type::text(64))
        .field("plugin_version", Type::text(64))
        .field("plugin_hash", Type::text(64))
        .field("stage", Type::text(16))
        .field("reason", Type::Text(None))
        .field("topic", Type::text(255))
        .field("partition", Type::Integer)
        .field("offset", Type::Integer)
        .optional("timestamp", Type::Timestamp)
        .optional("key", Type::Text(None))
        .optional("value", Type::Text(None))
        .field("encoding", Type::text(8))
        .field("failed_at", Type::Timestamp)
        .index("by_pipeline", ["pipeline", "failed_at"])
}

/// What one batch wrote.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchDone {
    /// Rows written per output.
    pub outputs: BTreeMap<String, usize>,
    /// Keys deleted per output (deleting a key that held nothing counts).
    pub deletes: BTreeMap<String, usize>,
    pub dead_letters: usize,
    /// Records skipped because the sink's stored offsets say they were
    /// written before (offsets in the sink's transaction).
    pub already_written: usize,
}
