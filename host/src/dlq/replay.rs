//! Replaying dead letters: their records go through a plugin version
//! again, without moving any offset.

use super::{DeadLetter, MAX_DEAD_LETTERS, read};
use crate::ledger::RunTotals;
use crate::model::Batch;
use crate::pipeline::{OnSinkError, Pipeline};
use crate::runtime::PluginVersion;
use std::sync::Arc;
use tokio::sync::watch;

/// Sends dead letters (this pipeline's, or those in `ids`) through
/// `version` again, without moving any offset. The letters whose record
/// now goes through are deleted; a record that fails again has its dead
/// letter rewritten with the new reason. Returns the run's note.
pub async fn replay(
    pipeline: &mut Pipeline,
    ids: &[String],
    version: &Arc<PluginVersion>,
    shutdown: &mut watch::Receiver<bool>,
    totals: &mut RunTotals,
) -> anyhow::Result<String> {
    let routes = pipeline
        .prepare(version, shutdown, OnSinkError::Fail)
        .await?;
    let dl = &routes.dead_letter;
    let name = pipeline.config.name.clone();
    let cipher = dl.sealing.as_ref().map(|s| s.cipher.as_ref());
    let letters = read(&dl.sink, &dl.target, &name, ids, MAX_DEAD_LETTERS, cipher).await?;
    if letters.is_empty() {
        return Ok("no dead letters to replay".into());
    }
    // Stored times have millisecond precision.
    let started = chrono::DateTime::from_timestamp_millis(chrono::Utc::now().timestamp_millis())
        .unwrap_or_default();
    // One record per source position, even if it left several letters.
    let mut seen = std::collections::HashSet::new();
    let records = letters
        .iter()
        .filter(|l| seen.insert((l.topic.clone(), l.partition, l.offset)))
        .map(DeadLetter::to_record)
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    for chunk in records.chunks(pipeline.config.batch.max_records) {
        let batch = Batch {
            records: chunk.to_vec(),
        };
        let done = pipeline.rewrite(&batch, version, shutdown).await?;
        totals.add(&batch, done);
    }
    // Letters this replay did not rewrite: their record went through.
    let old: Vec<String> = letters.iter().map(|l| l.id.clone()).collect();
    let after = read(&dl.sink, &dl.target, &name, &old, MAX_DEAD_LETTERS, cipher).await?;
    let again: std::collections::HashSet<&str> = after
        .iter()
        .filter(|l| l.failed_at >= started)
        .map(|l| l.id.as_str())
        .collect();
    let through: Vec<String> = old
        .iter()
        .filter(|id| !again.contains(id.as_str()))
        .cloned()
        .collect();
    dl.sink
        .delete(&dl.target, &dl.decl, &through)
        .await
        .map_err(|e| anyhow::anyhow!("deleting replayed dead letters from {}: {e}", dl.target))?;
    Ok(format!(
        "replayed {} dead letters: {} went through (deleted), {} failed again",
        letters.len(),
        through.len(),
        again.len()
    ))
}
