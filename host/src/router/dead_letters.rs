//! Dead-letter rows: a record that failed, where it came from and why.

use crate::model::{Row, Stage};
use crate::runtime::PluginVersion;
use serde_json::{Value, json};
use sluice_plugin_sdk::abi::Record;

/// What every dead letter of a batch says about where it comes from.
pub struct DeadLetterContext<'a> {
    pub pipeline: &'a str,
    pub plugin: &'a str,
    pub plugin_version: &'a str,
    pub plugin_hash: &'a str,
}

impl<'a> DeadLetterContext<'a> {
    pub fn new(pipeline: &'a str, plugin: &'a PluginVersion) -> Self {
        DeadLetterContext {
            pipeline,
            plugin: &plugin.name,
            plugin_version: &plugin.info.version,
            plugin_hash: &plugin.hash,
        }
    }

    /// A dead letter for `record`; `suffix` distinguishes several per record.
    pub fn row(&self, record: &Record, stage: Stage, reason: &str, suffix: &str) -> Row {
        let id = format!(
            "{}/{}/{}/{}{suffix}",
            self.pipeline, record.topic, record.partition, record.offset
        );
        // Both as text, or (if either is not UTF-8) both in base64.
        let text = |b: Option<&[u8]>| b.is_none_or(|b| std::str::from_utf8(b).is_ok());
        let utf8 = text(record.key) && text(record.value);
        let (key, value) = (encode(record.key, utf8), encode(record.value, utf8));
        let timestamp = record
            .timestamp
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string());
        let fields = json!({
            "id": id,
            "pipeline": self.pipeline,
            "plugin": self.plugin,
            "plugin_version": self.plugin_version,
            "plugin_hash": self.plugin_hash,
            "stage": stage.as_str(),
            "reason": crate::config::scrub(reason),
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "timestamp": timestamp,
            "key": key,
            "value": value,
            "encoding": if utf8 { "utf8" } else { "base64" },
            "failed_at": chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        });
        let Value::Object(fields) = fields else {
            unreachable!()
        };
        Row::upsert(Value::String(id), fields)
    }
}

fn encode(bytes: Option<&[u8]>, utf8: bool) -> Option<String> {
    use base64::Engine;
    match bytes {
        None => None,
        Some(b) if utf8 => Some(String::from_utf8_lossy(b).into_owned()),
        Some(b) => Some(base64::engine::general_purpose::STANDARD.encode(b)),
    }
}
