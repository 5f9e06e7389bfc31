//! A bounded run: exactly a planned range of offsets (a scheduled run, a
//! manual trigger, a backfill) with one plugin version. The first sink
//! error ends the attempt; the scheduler retries the run.

use super::Pipeline;
use crate::ledger::RunTotals;
use crate::model::PartitionRange;
use crate::runtime::PluginVersion;
use crate::source::{KafkaSource, Source};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// A bounded run that gets no record for this long fails (and is retried).
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// What a bounded run does with offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bounds {
    /// A scheduled or manual run over what the group has not processed:
    /// offsets are committed after each batch.
    Pending,
    /// A backfill of the records whose timestamps fall in `[from, to)` ms:
    /// records are processed again, no offset is stored.
    Window { from: i64, to: i64 },
}

impl Pipeline {
    /// Processes exactly `ranges` with one plugin version and stops. The
    /// first sink error ends the attempt; totals count what was written.
    pub async fn run_bounded(
        &mut self,
        ranges: &[PartitionRange],
        bounds: Bounds,
        version: &Arc<PluginVersion>,
        shutdown: &mut watch::Receiver<bool>,
        totals: &mut RunTotals,
    ) -> anyhow::Result<()> {
        let window = match bounds {
            Bounds::Pending => None,
            Bounds::Window { from, to } => Some((from, to)),
        };
        let mut source =
            KafkaSource::bounded(&self.global.kafka, &self.config.group_id(), ranges, window)?;
        let mut last_progress = Instant::now();
        while !source.drained() {
            if *shutdown.borrow() {
                anyhow::bail!(
                    "the host is shutting down; the rest of the range goes to the next run"
                );
            }
            // The run keeps its version, but stops if it was quarantined
            // or its file removed.
            self.version()?;
            if last_progress.elapsed() > STALL_TIMEOUT {
                anyhow::bail!(
                    "kafka: no records for {STALL_TIMEOUT:?} although the range is not finished (broker unreachable?)"
                );
            }
            let batch = tokio::select! {
                batch = source.next_batch(self.config.batch.max_records, self.config.batch.max_wait) => batch?,
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        anyhow::bail!("the host is shutting down");
                    }
                    continue;
                }
            };
            if batch.is_empty() {
                continue;
            }
            last_progress = Instant::now();
            let done = match bounds {
                Bounds::Pending => {
                    let done = self.run_batch(&batch, version, shutdown).await?;
                    source.commit(&batch).await?;
                    done
                }
                Bounds::Window { .. } => self.rewrite(&batch, version, shutdown).await?,
            };
            source.advance(&batch);
            totals.add(&batch, done);
        }
        Ok(())
    }
}
