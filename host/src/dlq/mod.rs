//! Dead letters you can act on: read back from the dead-letter sink
//! (`sluice dlq list`) and replayed through the current plugin version
//! (`sluice dlq replay`, see `replay`).

mod replay;

pub use replay::replay;

use crate::config::{Config, PipelineConfig};
use crate::encryption::{self, FieldCipher};
use crate::model::{SourceRecord, dead_letter_decl};
use crate::sink::Sink;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::sync::Arc;

/// Most dead letters one `list` or one replay run handles.
pub const MAX_DEAD_LETTERS: u32 = 10_000;

/// One dead letter, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadLetter {
    pub id: String,
    pub pipeline: String,
    pub plugin: String,
    pub plugin_version: String,
    pub plugin_hash: String,
    pub stage: String,
    pub reason: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp: Option<String>,
    pub key: Option<String>,
    pub value: Option<String>,
    /// `utf8`, or `base64` when the key or the value was not UTF-8.
    pub encoding: String,
    pub failed_at: chrono::DateTime<chrono::Utc>,
}

impl DeadLetter {
    fn from_row(row: Map<String, Value>) -> Result<Self, String> {
        serde_json::from_value(Value::Object(row))
            .map_err(|e| format!("unreadable dead letter: {e}"))
    }

    /// Decrypts a key and value that were stored encrypted.
    fn unseal(&mut self, cipher: Option<&FieldCipher>) -> Result<(), String> {
        let parts = [
            (&mut self.key, encryption::DEAD_LETTER_KEY),
            (&mut self.value, encryption::DEAD_LETTER_VALUE),
        ];
        for (text, context) in parts {
            let Some(sealed) = text.as_deref().filter(|t| encryption::is_sealed(t)) else {
                continue;
            };
            let cipher = cipher.ok_or_else(|| {
                format!(
                    "dead letter {} is encrypted; the config needs its [encryption] keys to read it",
                    self.id
                )
            })?;
            let value = cipher
                .open_value(context, sealed)
                .map_err(|e| format!("dead letter {}: {e}", self.id))?;
            *text = value.as_str().map(str::to_string);
        }
        Ok(())
    }

    /// The record it came from (headers are not kept in dead letters).
    pub fn to_record(&self) -> Result<SourceRecord, String> {
        let decode = |text: &Option<String>| -> Result<Option<Vec<u8>>, String> {
            use base64::Engine;
            match (text, self.encoding.as_str()) {
                (None, _) => Ok(None),
                (Some(t), "base64") => base64::engine::general_purpose::STANDARD
                    .decode(t)
                    .map(Some)
                    .map_err(|e| format!("dead letter {}: bad base64: {e}", self.id)),
                (Some(t), _) => Ok(Some(t.clone().into_bytes())),
            }
        };
        let timestamp = self
            .timestamp
            .as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.timestamp_millis());
        Ok(SourceRecord {
            topic: self.topic.clone(),
            partition: self.partition,
            offset: self.offset,
            timestamp,
            key: decode(&self.key)?,
            value: decode(&self.value)?,
            headers: Vec::new(),
        })
    }
}

/// Reads a pipeline's dead letters from `sink`, newest first; encrypted
/// keys and values are decrypted with `cipher`.
pub async fn read(
    sink: &Arc<dyn Sink>,
    target: &str,
    pipeline: &str,
    ids: &[String],
    limit: u32,
    cipher: Option<&FieldCipher>,
) -> anyhow::Result<Vec<DeadLetter>> {
    let rows = sink
        .read_dead_letters(target, &dead_letter_decl(), pipeline, ids, limit)
        .await
        .map_err(|e| anyhow::anyhow!("reading dead letters from {target}: {e}"))?;
    rows.into_iter()
        .map(|r| {
            let mut letter = DeadLetter::from_row(r).map_err(anyhow::Error::msg)?;
            letter.unseal(cipher).map_err(anyhow::Error::msg)?;
            Ok(letter)
        })
        .collect()
}

/// `sluice dlq list`: connects to the pipeline's dead-letter sink itself, so
/// it works while the host is down.
pub async fn list(config: &Config, pipeline: &str, limit: u32) -> anyhow::Result<Vec<DeadLetter>> {
    let p = find(config, pipeline)?;
    let (sink_name, target) = config.dead_letter_sink(p).map_err(anyhow::Error::msg)?;
    let cipher = config
        .encryption
        .as_ref()
        .map(FieldCipher::from_config)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let sink = crate::sink::connect(&sink_name, &config.sinks[&sink_name]).await?;
    let letters = read(&sink, &target, pipeline, &[], limit, cipher.as_ref()).await;
    // The MongoDB driver panics at exit if a client is still open.
    sink.close().await;
    letters
}

fn find<'a>(config: &'a Config, name: &str) -> anyhow::Result<&'a PipelineConfig> {
    config
        .pipelines
        .iter()
        .find(|p| p.name == name)
        .ok_or_else(|| {
            let known: Vec<&str> = config.pipelines.iter().map(|p| p.name.as_str()).collect();
            anyhow::anyhow!(
                "no pipeline '{name}' in the config (it has: {})",
                known.join(", ")
            )
        })
}
