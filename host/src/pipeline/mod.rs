//! One pipeline: Kafka batch -> plugin -> validated outputs -> sinks ->
//! offset commit. A batch is committed only after every sink acknowledged
//! it, and each batch is served by exactly one plugin version.
//!
//! Two ways to consume: `run_continuous` follows the topics as a member of
//! the consumer group, recording rolling runs in the ledger; `run_bounded`
//! processes exactly a planned range of offsets (a scheduled run, a manual
//! trigger, a backfill) and gives up on the first sink error, leaving the
//! retry to the scheduler.

mod stats;
mod transform;

pub use stats::{Stats, StatsSnapshot};

use crate::canary::BatchDiff;
use crate::config::{Config, OffsetStore, PipelineConfig, ReloadMode};
use crate::dlq;
use crate::router::{self, DeadLetterContext, Route, Routed, Routes, Stage};
use crate::runtime::{CallError, Instance, Limits, PluginVersion, Registry};
use crate::scheduler::ledger::{Ledger, NewRun, PluginRef, RunState, RunTotals, Trigger};
use crate::sink::{Offsets, Partition, Row, SinkError, SinkTransaction, Sinks, Transactional};
use crate::source::{Batch, KafkaSource, PartitionRange, headers};
use rdkafka::Message as _;
use rdkafka::message::OwnedMessage;
use sluice_plugin_sdk::abi::{BatchResult, BatchWriter, Headers, Record};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// What a degraded pipeline reports while its offset commits fail.
const COMMITTING: &str = "committing offsets";
/// A bounded run that gets no record for this long fails (and is retried).
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Pipeline {
    pub config: PipelineConfig,
    global: Arc<Config>,
    registry: Arc<Registry>,
    sinks: Sinks,
    limits: Limits,
    instance: Option<Instance>,
    /// Routes resolved and prepared for the plugin version with this hash.
    routes: Option<(String, Arc<Routes>)>,
    pub stats: Arc<Stats>,
    /// Batches in a row whose whole-batch call failed.
    failing_batches: u32,
    /// The canary's instance and routes, when one runs in shadow.
    shadow: Option<Instance>,
    shadow_routes: Option<(String, Arc<Routes>)>,
}

/// A canary's call on the current batch, running beside the writes.
struct Shadow {
    version: Arc<PluginVersion>,
    task: tokio::task::JoinHandle<(Option<Instance>, Result<BatchResult, CallError>)>,
}

impl Pipeline {
    pub fn new(
        config: PipelineConfig,
        global: Arc<Config>,
        registry: Arc<Registry>,
        sinks: Sinks,
    ) -> Self {
        let limits = Limits::for_pipeline(&config);
        Pipeline {
            config,
            global,
            registry,
            sinks,
            limits,
            instance: None,
            routes: None,
            stats: Arc::default(),
            failing_batches: 0,
            shadow: None,
            shadow_routes: None,
        }
    }

    /// A fresh pipeline with the same config, plugin and sinks, sharing the
    /// counters: runs beside the continuous consumer (backfills) use one.
    pub fn sibling(&self) -> Pipeline {
        Pipeline {
            stats: self.stats.clone(),
            ..Pipeline::new(
                self.config.clone(),
                self.global.clone(),
                self.registry.clone(),
                self.sinks.clone(),
            )
        }
    }

    pub fn global_config(&self) -> &Config {
        &self.global
    }

    /// The plugin version currently loaded for this pipeline.
    pub fn version(&self) -> anyhow::Result<Arc<PluginVersion>> {
        self.registry
            .serving(&self.config.plugin)
            .map_err(|e| anyhow::anyhow!("pipeline '{}': {e}", self.config.name))
    }

    /// The next offset to process per partition, as committed: the group's
    /// offsets in Kafka or, with `offsets = "mysql"`, those stored beside
    /// the rows where they are further (Kafka's commit comes second).
    /// (A future that owns what it needs: the pipeline itself is not `Sync`.)
    pub fn committed_offsets(
        &self,
    ) -> impl std::future::Future<Output = anyhow::Result<Offsets>> + Send + 'static {
        let (global, config) = (self.global.clone(), self.config.clone());
        let store = self.offset_store();
        async move {
            let group = config.group_id();
            let pending = KafkaSource::pending(&global.kafka, &group, &config.topics).await?;
            let mut committed: Offsets = pending
                .into_iter()
                .map(|r| ((r.topic, r.partition), r.from))
                .collect();
            if let Some((sink, name)) = store
                && let Some(store) = sink.transactional()
            {
                let partitions: Vec<Partition> = committed.keys().cloned().collect();
                let stored = store
                    .stored_offsets(&group, &partitions)
                    .await
                    .map_err(|e| anyhow::anyhow!("sink '{name}': {e}"))?;
                for (partition, next) in stored {
                    let e = committed.entry(partition).or_insert(next);
                    *e = (*e).max(next);
                }
            }
            Ok(committed)
        }
    }

    /// With `offsets = "mysql"`: the sink that stores the offsets, by name.
    fn offset_store(&self) -> Option<(Arc<dyn crate::sink::Sink>, String)> {
        match self.config.offsets {
            OffsetStore::Kafka => None,
            OffsetStore::Mysql => router::dead_letter_sink(&self.global, &self.config)
                .ok()
                .and_then(|(name, _)| Some((self.sinks.get(&name)?.clone(), name))),
        }
    }

    /// The offsets stored beside the rows (`offsets = "mysql"`) of these
    /// partitions; none with offsets in Kafka, or if they cannot be read.
    pub fn stored_offsets(
        &self,
        partitions: Vec<Partition>,
    ) -> impl std::future::Future<Output = Offsets> + Send + 'static {
        let (store, pipeline) = (self.offset_store(), self.config.name.clone());
        let group = self.config.group_id();
        async move {
            let Some((sink, name)) = store else {
                return Offsets::new();
            };
            let Some(store) = sink.transactional() else {
                return Offsets::new();
            };
            store
                .stored_offsets(&group, &partitions)
                .await
                .inspect_err(|e| tracing::warn!(pipeline, "sink '{name}': {e}"))
                .unwrap_or_default()
        }
    }

    /// Resolves this pipeline's routes for a plugin version and creates
    /// tables, collections and indexes. Errors name the config key.
    /// `persist`: retry sink errors until shutdown instead of failing.
    pub async fn prepare(
        &mut self,
        version: &PluginVersion,
        shutdown: &mut watch::Receiver<bool>,
        persist: bool,
    ) -> anyhow::Result<Arc<Routes>> {
        if let Some((hash, routes)) = &self.routes
            && *hash == version.hash
        {
            return Ok(routes.clone());
        }
        let routes = Routes::resolve(&self.global, &self.config, version, &self.sinks)
            .map_err(anyhow::Error::msg)?;
        let routes = Arc::new(routes);
        let what = format!("pipeline '{}': preparing sinks", self.config.name);
        attempt(&self.stats, shutdown, persist, &what, || routes.prepare()).await?;
        self.routes = Some((version.hash.clone(), routes.clone()));
        Ok(routes)
    }

    /// Follows the topics until shutdown, as a member of the consumer group.
    /// Picks up new plugin versions between batches; the ledger gets one
    /// run per `roll_after`/`roll_records` slice and per plugin version.
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
                if slice
                    .as_ref()
                    .is_some_and(|s| s.started.elapsed() >= self.config.schedule.roll_after)
                {
                    slice.take().unwrap().close(ledger, Ok(())).await;
                }
                continue;
            }
            if slice.as_ref().is_some_and(|s| s.hash != version.hash) {
                slice.take().unwrap().close(ledger, Ok(())).await;
            }
            if slice.is_none() {
                slice = Some(Slice::open(ledger, &name, &version).await);
            }
            let current = slice.as_mut().unwrap();
            let new = current.new_partitions(&batch);
            if !new.is_empty() {
                // Records below the stored offsets are skipped, and were
                // counted by the run that wrote them.
                let floor = self.stored_offsets(new).await;
                let current = slice.as_mut().unwrap();
                current.record_start(ledger, &batch, &floor).await;
            }
            let current = slice.as_mut().unwrap();
            // The batch in flight is finished even if shutdown arrives now;
            // only a sink outage during shutdown leaves it uncommitted.
            let done = match self
                .process(&batch, &version, &mut shutdown, Delivery::Follow)
                .await
            {
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
            if current.started.elapsed() >= schedule.roll_after
                || current.totals.records_in >= schedule.roll_records
            {
                slice.take().unwrap().close(ledger, Ok(())).await;
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
    fn committed(&self, result: anyhow::Result<()>) {
        let name = &self.config.name;
        match result {
            Ok(()) => {
                if self.stats.clear_degraded(COMMITTING) {
                    tracing::info!(pipeline = %name, "offsets committed again");
                }
            }
            Err(e) => {
                tracing::warn!(pipeline = %name, "{e:#}; retried with the next commit (the batch is written)");
                let at = chrono::Utc::now().format("%H:%M:%S");
                self.stats
                    .set_degraded(format!("{COMMITTING}: {e:#} (last failure {at})"));
            }
        }
    }

    /// Processes exactly `ranges` with one plugin version and stops. Commits
    /// offsets after each batch when `commit` (a backfill does not). The
    /// first sink error ends the attempt; totals count what was written.
    pub async fn run_bounded(
        &mut self,
        ranges: &[PartitionRange],
        window: Option<(i64, i64)>,
        version: &Arc<PluginVersion>,
        shutdown: &mut watch::Receiver<bool>,
        totals: &mut RunTotals,
    ) -> anyhow::Result<()> {
        let commit = window.is_none();
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
            let delivery = if commit {
                Delivery::Run
            } else {
                Delivery::Rewrite
            };
            let Some(done) = self.process(&batch, version, shutdown, delivery).await? else {
                unreachable!("a bounded run does not wait for sinks")
            };
            if commit {
                source.commit(&batch).await?;
            }
            source.advance(&batch);
            totals.add(&batch, done);
        }
        Ok(())
    }

    /// Sends dead letters (this pipeline's, or those in `ids`) through
    /// `version` again, without moving any offset. The letters whose record
    /// now goes through are deleted; a record that fails again has its dead
    /// letter rewritten with the new reason. Returns the run's note.
    pub async fn replay(
        &mut self,
        ids: &[String],
        version: &Arc<PluginVersion>,
        shutdown: &mut watch::Receiver<bool>,
        totals: &mut RunTotals,
    ) -> anyhow::Result<String> {
        let routes = self.prepare(version, shutdown, false).await?;
        let dl = &routes.dead_letter;
        let name = self.config.name.clone();
        let letters = dlq::read(&dl.sink, &dl.target, &name, ids, dlq::MAX_DEAD_LETTERS).await?;
        if letters.is_empty() {
            return Ok("no dead letters to replay".into());
        }
        // Stored times have millisecond precision.
        let started =
            chrono::DateTime::from_timestamp_millis(chrono::Utc::now().timestamp_millis())
                .unwrap_or_default();
        // One record per source position, even if it left several letters.
        let mut seen = std::collections::HashSet::new();
        let messages = letters
            .iter()
            .filter(|l| seen.insert((l.topic.clone(), l.partition, l.offset)))
            .map(dlq::DeadLetter::to_message)
            .collect::<Result<Vec<_>, _>>()
            .map_err(anyhow::Error::msg)?;
        for chunk in messages.chunks(self.config.batch.max_records) {
            let batch = Batch {
                messages: chunk.to_vec(),
            };
            let Some(done) = self
                .process(&batch, version, shutdown, Delivery::Rewrite)
                .await?
            else {
                unreachable!("a replay does not wait for sinks")
            };
            totals.add(&batch, done);
        }
        // Letters this replay did not rewrite: their record went through.
        let old: Vec<String> = letters.iter().map(|l| l.id.clone()).collect();
        let after = dlq::read(&dl.sink, &dl.target, &name, &old, dlq::MAX_DEAD_LETTERS).await?;
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
            .map_err(|e| {
                anyhow::anyhow!("deleting replayed dead letters from {}: {e}", dl.target)
            })?;
        Ok(format!(
            "replayed {} dead letters: {} went through (deleted), {} failed again",
            letters.len(),
            through.len(),
            again.len()
        ))
    }

    /// Transforms and writes one batch. How sink errors and offsets are
    /// handled depends on `delivery`. Returns `Ok(None)` if a continuous
    /// pipeline was shut down before the batch was written.
    async fn process(
        &mut self,
        batch: &Batch,
        version: &Arc<PluginVersion>,
        shutdown: &mut watch::Receiver<bool>,
        delivery: Delivery,
    ) -> anyhow::Result<Option<BatchDone>> {
        let persist = delivery == Delivery::Follow;
        let routes = match self.prepare(version, shutdown, persist).await {
            Ok(routes) => routes,
            Err(e) if persist && *shutdown.borrow() => {
                tracing::warn!(pipeline = %self.config.name, "stopping before the batch was written: {e:#}");
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        self.switch_to(version);
        if delivery == Delivery::Rewrite || self.config.offsets == OffsetStore::Kafka {
            let all: Vec<&OwnedMessage> = batch.messages.iter().collect();
            return self
                .transform_and_write(&all, version, &routes, shutdown, persist, None)
                .await
                .map(|written| written.map(Written::unwrap_done));
        }

        // Exactly-once: what the sink's offsets say is written is skipped,
        // and the rest commits in one transaction with the new offsets,
        // provided nobody moved them since they were read.
        let store = routes.dead_letter.sink.transactional().ok_or_else(|| {
            anyhow::anyhow!(
                "pipeline '{}': offsets = \"mysql\" but sink '{}' has no transactions",
                self.config.name,
                routes.dead_letter.sink_name
            )
        })?;
        let group = self.config.group_id();
        let batch_next = batch.next_offsets();
        let partitions: Vec<Partition> = batch_next.keys().cloned().collect();
        loop {
            let what = format!("pipeline '{}': reading offsets", self.config.name);
            let read = || store.stored_offsets(&group, &partitions);
            let stored = match attempt(&self.stats, shutdown, persist, &what, read).await {
                Ok(stored) => stored,
                Err(_) if persist => return Ok(None),
                Err(e) => return Err(e),
            };
            let todo: Vec<&OwnedMessage> = batch
                .messages
                .iter()
                .filter(|m| {
                    stored
                        .get(&(m.topic().to_string(), m.partition()))
                        .is_none_or(|next| m.offset() >= *next)
                })
                .collect();
            let skipped = batch.len() - todo.len();
            if skipped > 0 {
                tracing::info!(pipeline = %self.config.name, skipped,
                    "skipping records already written (offsets stored in sink '{}')", routes.dead_letter.sink_name);
            }
            let mut done = if todo.is_empty() {
                BatchDone::default()
            } else {
                // A batch behind the stored offsets must not move them back.
                let mut next = batch_next.clone();
                for (partition, offset) in &mut next {
                    *offset = (*offset).max(stored.get(partition).copied().unwrap_or(0));
                }
                let exactly_once = ExactlyOnce {
                    store,
                    group: &group,
                    partitions: &partitions,
                    stored: &stored,
                    next,
                };
                let written = self
                    .transform_and_write(
                        &todo,
                        version,
                        &routes,
                        shutdown,
                        persist,
                        Some(exactly_once),
                    )
                    .await?;
                match written {
                    None => return Ok(None),
                    Some(Written::Done(done)) => done,
                    Some(Written::Moved) => {
                        tracing::warn!(pipeline = %self.config.name, ?partitions,
                            "another consumer of the group wrote these partitions meanwhile; reading their offsets again");
                        continue;
                    }
                }
            };
            Stats::add(&self.stats.already_written, skipped);
            done.already_written = skipped;
            return Ok(Some(done));
        }
    }

    /// Transforms `messages` and writes the outputs, directly or (with
    /// `exactly_once`) in one transaction with the offsets.
    async fn transform_and_write(
        &mut self,
        messages: &[&OwnedMessage],
        version: &Arc<PluginVersion>,
        routes: &Routes,
        shutdown: &mut watch::Receiver<bool>,
        persist: bool,
        exactly_once: Option<ExactlyOnce<'_>>,
    ) -> anyhow::Result<Option<Written>> {
        let started = Instant::now();
        let records: Vec<Record> = messages.iter().map(|m| to_record(m)).collect();
        let pack = |range: std::ops::Range<usize>| {
            let messages = &messages[range.clone()];
            let size = messages
                .iter()
                .map(|m| m.payload().map_or(0, <[u8]>::len) + 64);
            let mut writer = BatchWriter::with_capacity(size.sum());
            for (record, message) in records[range].iter().zip(messages) {
                writer.push(record, headers(message));
            }
            writer.finish()
        };
        let shadow = self.start_shadow(version, || pack(0..records.len()));
        let transformed = transform::run(
            self.instance.take(),
            version.clone(),
            self.limits.clone(),
            records.len(),
            &pack,
        )
        .await?;
        self.count_failure(version, &transformed);
        self.instance = transformed.instance;

        let transform_ms = started.elapsed().as_millis() as u64;
        let ctx = DeadLetterContext {
            pipeline: &self.config.name,
            plugin: version,
        };
        let mut routed = router::route(&records, transformed.result, routes, &ctx);
        for (i, reason) in &transformed.trapped {
            routed
                .dead_letters
                .push(ctx.row(&records[*i], Stage::Trap, reason, ""));
        }
        for dl in &routed.dead_letters {
            tracing::debug!(pipeline = %self.config.name, id = %dl.id, reason = %dl.fields["reason"], "dead letter");
        }

        let what = format!("pipeline '{}': writing batch", self.config.name);
        let write = || async {
            let Some(eo) = &exactly_once else {
                return write_all(routes, &routed, &records, &ctx, &mut Writes::Direct)
                    .await
                    .map(Some);
            };
            let (mut tx, locked) = eo.store.begin(eo.group, eo.partitions).await?;
            if locked != *eo.stored {
                return Ok(None);
            }
            let writes = &mut Writes::Transaction(&mut *tx);
            let refused = write_all(routes, &routed, &records, &ctx, writes).await?;
            tx.commit(&eo.next).await?;
            Ok(Some(refused))
        };
        let refused = match attempt(&self.stats, shutdown, persist, &what, write).await {
            Ok(Some(refused)) => refused,
            Ok(None) => return Ok(Some(Written::Moved)),
            Err(_) if persist => return Ok(None),
            Err(e) => return Err(e),
        };
        if let Some(shadow) = shadow {
            self.finish_shadow(shadow, &records, &routed).await;
        }
        let mut outputs: BTreeMap<String, usize> = routed
            .rows
            .iter()
            .map(|(k, v)| (k.clone(), v.len()))
            .collect();
        for output in &refused {
            *outputs.get_mut(output).unwrap() -= 1;
        }
        let done = BatchDone {
            outputs,
            dead_letters: routed.dead_letters.len() + refused.len(),
            already_written: 0,
        };
        let written: usize = done.outputs.values().sum();
        Stats::add(&self.stats.batches, 1);
        Stats::add(&self.stats.records_in, records.len());
        Stats::add(&self.stats.rows_written, written);
        Stats::add(&self.stats.dead_letters, done.dead_letters);
        tracing::debug!(pipeline = %self.config.name, records = records.len(), rows = written,
            dead_letters = done.dead_letters, transform_ms, ms = started.elapsed().as_millis() as u64, "batch done");
        Ok(Some(Written::Done(done)))
    }

    /// Starts the plugin's canary on the same batch, if one is running.
    fn start_shadow(
        &mut self,
        version: &PluginVersion,
        packed: impl FnOnce() -> Vec<u8>,
    ) -> Option<Shadow> {
        if self.config.reload != ReloadMode::Canary {
            return None;
        }
        let candidate = self
            .registry
            .candidate(&self.config.plugin)
            .filter(|c| c.hash != version.hash)?;
        if self
            .shadow
            .as_ref()
            .is_some_and(|i| i.version.hash != candidate.hash)
        {
            self.shadow = None;
        }
        let (instance, limits, packed) = (self.shadow.take(), self.limits.clone(), packed());
        let v = candidate.clone();
        let task =
            tokio::task::spawn_blocking(move || transform::call_once(instance, v, limits, &packed));
        Some(Shadow {
            version: candidate,
            task,
        })
    }

    /// Compares the canary's outputs with what the active version wrote,
    /// and reports the batch to the registry (which may promote it).
    async fn finish_shadow(&mut self, shadow: Shadow, records: &[Record<'_>], active: &Routed) {
        let (instance, result) = match shadow.task.await {
            Ok(done) => done,
            Err(e) => (None, Err(CallError::Trap(format!("canary call: {e}")))),
        };
        self.shadow = instance;
        let canary = &shadow.version;
        let diff = match result {
            Err(e) => BatchDiff::failed(records.len(), e.to_string()),
            Ok(result) => match self.shadow_routes(canary) {
                Err(e) => BatchDiff::failed(records.len(), e),
                Ok(routes) => {
                    let ctx = DeadLetterContext {
                        pipeline: &self.config.name,
                        plugin: canary,
                    };
                    let routed = router::route(records, result, &routes, &ctx);
                    crate::canary::compare(records.len(), active, &routed)
                }
            },
        };
        self.registry.observe(
            &self.config.plugin,
            &canary.hash,
            diff,
            self.config.canary_batches,
        );
    }

    /// The canary's routes: resolved (never prepared: it writes nothing).
    fn shadow_routes(&mut self, canary: &PluginVersion) -> Result<Arc<Routes>, String> {
        if let Some((hash, routes)) = &self.shadow_routes
            && *hash == canary.hash
        {
            return Ok(routes.clone());
        }
        let routes = Arc::new(Routes::resolve(
            &self.global,
            &self.config,
            canary,
            &self.sinks,
        )?);
        self.shadow_routes = Some((canary.hash.clone(), routes.clone()));
        Ok(routes)
    }

    /// Quarantines the version after `limits.quarantine_after` failing
    /// batches in a row; the batch itself is still delivered.
    fn count_failure(&mut self, version: &PluginVersion, transformed: &transform::Transformed) {
        if !transformed.isolated {
            self.failing_batches = 0;
            return;
        }
        self.failing_batches += 1;
        Stats::add(&self.stats.failing_batches, 1);
        let limit = self.config.limits.quarantine_after;
        if limit > 0 && self.failing_batches >= limit {
            let last = transformed.trapped.last().map_or("", |(_, r)| r.as_str());
            let reason = format!(
                "{} batches in a row failed in pipeline '{}' (limits.quarantine_after = {limit}); last: {last}",
                self.failing_batches, self.config.name
            );
            self.registry.quarantine(version, reason);
            self.failing_batches = 0;
        }
    }

    /// Moves to a new plugin version between batches.
    fn switch_to(&mut self, version: &Arc<PluginVersion>) {
        // The instance is this pipeline's own; `serving` is shared with
        // sibling pipelines (backfills) and only reports.
        if self
            .instance
            .as_ref()
            .is_some_and(|i| i.version.hash != version.hash)
        {
            self.instance = None;
        }
        let mut serving = self.stats.serving.lock().unwrap();
        if serving.as_deref() == Some(version.hash.as_str()) {
            return;
        }
        if serving.is_some() {
            let latency = version.detected_at.elapsed();
            let mut latencies = self.stats.reload_latencies.lock().unwrap();
            if latencies.len() >= stats::KEPT_LATENCIES {
                latencies.remove(0);
            }
            latencies.push(latency);
            tracing::info!(pipeline = %self.config.name, plugin = %version.name, version = %version.info.version,
                hash = %version.short_hash(), reload_ms = latency.as_millis() as u64, "now serving new plugin version");
        }
        *serving = Some(version.hash.clone());
    }
}

/// What one batch wrote.
#[derive(Default)]
pub struct BatchDone {
    pub outputs: BTreeMap<String, usize>,
    pub dead_letters: usize,
    /// Records skipped because the sink's stored offsets say they were
    /// written before (`offsets = "mysql"`).
    pub already_written: usize,
}

/// What `transform_and_write` did.
enum Written {
    Done(BatchDone),
    /// Exactly-once: another consumer moved the offsets since they were
    /// read; nothing was written.
    Moved,
}

impl Written {
    fn unwrap_done(self) -> BatchDone {
        match self {
            Written::Done(done) => done,
            Written::Moved => unreachable!("only exactly-once writes check the offsets"),
        }
    }
}

/// How `process` treats a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    /// A continuous pipeline: sink errors are retried until they succeed.
    Follow,
    /// A scheduled or manual run: the first sink error fails the run.
    Run,
    /// A backfill or a dead-letter replay: records already processed are
    /// processed again, and no offset is stored.
    Rewrite,
}

/// Exactly-once: the batch commits with its offsets if they are still
/// `stored` when the transaction locks them.
struct ExactlyOnce<'a> {
    store: &'a dyn Transactional,
    group: &'a str,
    partitions: &'a [Partition],
    stored: &'a Offsets,
    next: Offsets,
}

impl RunTotals {
    /// Adds a written batch: its counts and its offsets.
    pub fn add(&mut self, batch: &Batch, done: BatchDone) {
        self.records_in += (batch.len() - done.already_written) as u64;
        self.dead_letters += done.dead_letters as u64;
        for (output, n) in done.outputs {
            *self.outputs.entry(output).or_default() += n as u64;
        }
        let first = batch.first_offsets();
        for ((topic, partition), next) in batch.next_offsets() {
            let from = first[&(topic.clone(), partition)];
            match self
                .offsets
                .iter_mut()
                .find(|r| r.topic == topic && r.partition == partition)
            {
                Some(r) => {
                    r.from = r.from.min(from);
                    r.to = r.to.max(next);
                }
                None => self.offsets.push(PartitionRange {
                    topic,
                    partition,
                    from,
                    to: next,
                }),
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

    /// The partitions of `batch` this slice has not seen yet.
    fn new_partitions(&self, batch: &Batch) -> Vec<Partition> {
        let seen = |(topic, partition): &Partition| {
            self.starts
                .iter()
                .any(|r| r.topic == *topic && r.partition == *partition)
        };
        batch
            .first_offsets()
            .into_keys()
            .filter(|p| !seen(p))
            .collect()
    }

    /// Records the slice's start in the partitions `batch` adds to it: the
    /// batch's first offset there, or `floor` if further.
    async fn record_start(&mut self, ledger: &Ledger, batch: &Batch, floor: &Offsets) {
        for ((topic, partition), first) in batch.first_offsets() {
            if self
                .starts
                .iter()
                .any(|r| r.topic == topic && r.partition == partition)
            {
                continue;
            }
            let from = floor
                .get(&(topic.clone(), partition))
                .map_or(first, |&f| f.max(first));
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

/// Where a batch's writes go: to each route's sink, or into one
/// transaction that also stores the offsets.
enum Writes<'a> {
    Direct,
    Transaction(&'a mut dyn SinkTransaction),
}

impl Writes<'_> {
    async fn write(&mut self, route: &Route, rows: &[Row]) -> Result<(), SinkError> {
        match self {
            Writes::Direct => route.write(rows).await,
            Writes::Transaction(tx) => tx.write(&route.target, &route.decl, rows).await,
        }
    }
}

/// All writes of one batch. Safe to repeat: every write is an upsert.
/// A row the database refuses for its own sake (constraint, type, size)
/// becomes a dead letter with the database's reason, and the rest is
/// written; returns the output of each refused row. Any other error (the
/// database down, a permission) fails the whole write, to be retried.
async fn write_all(
    routes: &Routes,
    routed: &Routed,
    records: &[Record<'_>],
    ctx: &DeadLetterContext<'_>,
    writes: &mut Writes<'_>,
) -> Result<Vec<String>, SinkError> {
    let mut refused = Vec::new();
    let mut letters = Vec::new();
    for (output, rows) in &routed.rows {
        let route = &routes.outputs[output];
        for (i, reason) in write_isolating(route, rows, writes).await? {
            let record = &records[routed.sources[output][i]];
            let reason = format!(
                "sink '{}' refused output '{output}' (id {}) in {}: {reason}",
                route.sink_name, rows[i].id, route.target
            );
            letters.push(ctx.row(record, Stage::Sink, &reason, &format!("/{output}/sink")));
            refused.push(output.clone());
        }
    }
    writes
        .write(&routes.dead_letter, &routed.dead_letters)
        .await?;
    if let Some(first) = letters.first() {
        tracing::warn!(pipeline = %ctx.pipeline, refused = letters.len(),
            "rows refused by the database went to dead letters; first: {}", first.fields["reason"]);
        writes.write(&routes.dead_letter, &letters).await?;
    }
    Ok(refused)
}

/// Writes `rows`, halving around refused ones until each stands alone;
/// returns those (index, the database's reason).
async fn write_isolating(
    route: &Route,
    rows: &[Row],
    writes: &mut Writes<'_>,
) -> Result<Vec<(usize, String)>, SinkError> {
    let mut refused = Vec::new();
    let mut pending = Vec::new();
    pending.push(0..rows.len());
    while let Some(range) = pending.pop() {
        if range.is_empty() {
            continue;
        }
        match writes.write(route, &rows[range.clone()]).await {
            Ok(()) => {}
            Err(SinkError::Refused(reason)) if range.len() == 1 => {
                refused.push((range.start, reason))
            }
            Err(SinkError::Refused(_)) => {
                let mid = range.start + range.len() / 2;
                pending.push(mid..range.end);
                pending.push(range.start..mid);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(refused)
}

/// Runs `op` once (`persist` false: its error is returned), or retries it
/// with capped exponential backoff until it succeeds or shutdown is
/// requested: a continuous pipeline never gives up on its own, so data is
/// not dropped.
async fn attempt<T, F, Fut>(
    stats: &Stats,
    shutdown: &mut watch::Receiver<bool>,
    persist: bool,
    what: &str,
    op: F,
) -> anyhow::Result<T>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, SinkError>>,
{
    if !persist {
        return op().await.map_err(|e| anyhow::anyhow!("{what}: {e}"));
    }
    let mut backoff = Duration::from_millis(200);
    let since = chrono::Utc::now();
    loop {
        match op().await {
            Ok(done) => {
                if stats.degraded.lock().unwrap().take().is_some() {
                    tracing::info!(
                        "{what}: succeeded again after {:.1}s; no longer degraded",
                        (chrono::Utc::now() - since).as_seconds_f64()
                    );
                }
                return Ok(done);
            }
            Err(e) => {
                Stats::add(&stats.sink_retries, 1);
                stats.set_degraded(format!(
                    "{what}: {e} (failing since {})",
                    since.format("%H:%M:%S")
                ));
                tracing::warn!(
                    "{what}: {e}; retrying in {backoff:?} (nothing is committed until it succeeds)"
                );
                if *shutdown.borrow() {
                    anyhow::bail!("{what}: {e}");
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => anyhow::bail!("{what}: {e}"),
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

fn to_record(m: &rdkafka::message::OwnedMessage) -> Record<'_> {
    use rdkafka::Message;
    Record {
        topic: m.topic(),
        partition: m.partition(),
        offset: m.offset(),
        timestamp: m.timestamp().to_millis(),
        key: m.key(),
        value: m.payload(),
        headers: Headers::EMPTY,
    }
}
