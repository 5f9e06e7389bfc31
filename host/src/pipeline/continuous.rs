//! A continuous pipeline: follows the topics as a member of the consumer
//! group until shutdown, picking up new plugin versions between batches.
//! The ledger gets one run per `roll_after`/`roll_records` slice and per
//! plugin version.

use super::{Pipeline, Trouble};
use crate::ledger::{Ledger, NewRun, PluginRef, RunState, RunTotals, Trigger};
use crate::model::{Batch, Offsets, Partition, PartitionRange};
use crate::runtime::PluginVersion;
use crate::source::{KafkaSource, Source, SourceError};
use std::time::{Duration, Instant};
use tokio::sync::watch;

impl Pipeline {
    /// Follows the topics until shutdown, as a member of the consumer group.
    pub async fn run_continuous(
        &mut self,
        mut shutdown: watch::Receiver<bool>,
        ledger: &Ledger,
    ) -> anyhow::Result<()> {
        let name = self.config.name.clone();
        let mut source = KafkaSource::subscribed(
            &self.global.kafka,
            &self.config.group_id(),
            &self.config.topics,
        )?;
        tracing::info!(pipeline = %name, topics = ?self.config.topics, group = %self.config.group_id(), "pipeline started (continuous)");
        let mut slice: Option<Slice> = None;
        let mut last_commit = Instant::now();
        let result = loop {
            if *shutdown.borrow() {
                break Ok(());
            }
            // A removed or quarantined plugin pauses the pipeline (nothing
            // is consumed) until a new version is loaded.
            // The version checked here serves the batch fetched next.
            let version = match self.version() {
                Ok(version) => version,
                Err(why) => {
                    if let Some(slice) = slice.take() {
                        slice.close(ledger, Err(&why)).await;
                    }
                    if self.stats.pause(Some(format!("{why:#}"))) {
                        tracing::error!(pipeline = %name, "paused: {why:#}");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(250)) => continue,
                        _ = shutdown.changed() => break Ok(()),
                    }
                }
            };
            // A new version's schema changes run before its first batch.
            match self.prepare_or_quarantine(&version, &mut shutdown).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => break Err(e),
            }
            if self.stats.pause(None) {
                tracing::info!(pipeline = %name, "resumed");
            }
            let batch = tokio::select! {
                batch = source.next_batch(self.config.batch.max_records, self.config.batch.max_wait) => batch?,
                _ = shutdown.changed() => break Ok(()),
            };
            if batch.is_empty() {
                if source.has_uncommitted() && last_commit.elapsed() >= Duration::from_secs(1) {
                    last_commit = Instant::now();
                    let result = source.commit_pending().await;
                    self.committed(result);
                }
                // An idle pipeline still closes its ledger run on time.
                if let Some(open) =
                    slice.take_if(|s| s.started.elapsed() >= self.config.schedule.roll_after)
                {
                    open.close(ledger, Ok(())).await;
                }
                continue;
            }
            if let Some(old) = slice.take_if(|s| s.hash != version.hash) {
                old.close(ledger, Ok(())).await;
            }
            let current = match &mut slice {
                Some(current) => current,
                None => slice.insert(Slice::open(ledger, &name, &version).await),
            };
            let new = current.new_partitions(&batch);
            if !new.is_empty() {
                // Records below the stored offsets are skipped, and were
                // counted by the run that wrote them.
                let floor = self.stored_offsets(new).await;
                current.record_start(ledger, &batch, &floor).await;
            }
            // The batch in flight is finished even if shutdown arrives now;
            // only a sink outage during shutdown leaves it uncommitted.
            let done = match self.follow(&batch, &version, &mut shutdown).await {
                Ok(Some(done)) => done,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            };
            last_commit = Instant::now();
            let result = source.commit(&batch).await;
            self.committed(result);
            source.advance(&batch);
            current.totals.add(&batch, done);
            let schedule = &self.config.schedule;
            if (current.started.elapsed() >= schedule.roll_after
                || current.totals.records_in >= schedule.roll_records)
                && let Some(full) = slice.take()
            {
                full.close(ledger, Ok(())).await;
            }
        };
        if let Some(slice) = slice {
            slice.close(ledger, result.as_ref().map(|_| ())).await;
        }
        tracing::info!(pipeline = %name, stats = ?self.stats.snapshot(), "pipeline stopped");
        result
    }

    /// Reports an offset commit of a continuous pipeline. A failed one is
    /// not retried in place: a consumer that stops polling cannot rejoin
    /// its group after a broker restart or a rebalance, so the commit would
    /// keep failing. The offsets go with the next commit; until then a
    /// restart replays the batch, which the upserts absorb.
    fn committed(&self, result: Result<(), SourceError>) {
        let name = &self.config.name;
        match result {
            Ok(()) => {
                if self.stats.clear_degraded(Trouble::Commit) {
                    tracing::info!(pipeline = %name, "offsets committed again");
                }
            }
            Err(e) => {
                tracing::warn!(pipeline = %name, "{e}; retried with the next commit (the batch is written)");
                let at = chrono::Utc::now().format("%H:%M:%S");
                self.stats.set_degraded(
                    Trouble::Commit,
                    format!("committing offsets: {e} (last failure {at})"),
                );
            }
        }
    }
}

/// The ledger run a continuous pipeline is currently adding to.
struct Slice {
    id: Option<i64>,
    hash: String,
    started: Instant,
    totals: RunTotals,
    /// Where the slice started in each partition it has seen, as recorded
    /// in the ledger (`to` = `from`): if the host dies, the next one counts
    /// what the slice committed from there.
    starts: Vec<PartitionRange>,
}

impl Slice {
    async fn open(ledger: &Ledger, pipeline: &str, version: &PluginVersion) -> Slice {
        let new = NewRun {
            pipeline,
            trigger: Trigger::Continuous,
            state: RunState::Running,
            scheduled_for: None,
            attempt: 1,
            retry_of: None,
            note: None,
        };
        let id = match ledger.create(&new).await {
            Ok(id) => ledger
                .start(id, &PluginRef::from(version))
                .await
                .map(|()| id),
            Err(e) => Err(e),
        };
        Slice {
            id: id
                .inspect_err(|e| tracing::warn!(pipeline, "run ledger: {e:#}"))
                .ok(),
            hash: version.hash.clone(),
            started: Instant::now(),
            totals: RunTotals::default(),
            starts: Vec::new(),
        }
    }

    fn has_seen(&self, (topic, partition): &Partition) -> bool {
        self.starts
            .iter()
            .any(|r| r.topic == *topic && r.partition == *partition)
    }

    /// The partitions of `batch` this slice has not seen yet.
    fn new_partitions(&self, batch: &Batch) -> Vec<Partition> {
        batch
            .first_offsets()
            .into_keys()
            .filter(|p| !self.has_seen(p))
            .collect()
    }

    /// Records the slice's start in the partitions `batch` adds to it: the
    /// batch's first offset there, or `floor` if further.
    async fn record_start(&mut self, ledger: &Ledger, batch: &Batch, floor: &Offsets) {
        for (partition, first) in batch.first_offsets() {
            if self.has_seen(&partition) {
                continue;
            }
            let from = floor.get(&partition).map_or(first, |&f| f.max(first));
            let (topic, partition) = partition;
            self.starts.push(PartitionRange {
                topic,
                partition,
                from,
                to: from,
            });
        }
        let Some(id) = self.id else { return };
        if let Err(e) = ledger.record_offsets(id, &self.starts).await {
            tracing::warn!(run = id, "run ledger: {e:#}");
        }
    }

    async fn close(self, ledger: &Ledger, result: Result<(), &anyhow::Error>) {
        let Some(id) = self.id else { return };
        let (state, error) = match result {
            Ok(()) => (RunState::Succeeded, None),
            Err(e) => (RunState::Failed, Some(format!("{e:#}"))),
        };
        if let Err(e) = ledger
            .finish(id, state, &self.totals, error.as_deref(), None)
            .await
        {
            tracing::warn!(run = id, "run ledger: {e:#}");
        }
    }
}
