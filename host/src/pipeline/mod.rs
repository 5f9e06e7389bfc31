//! One pipeline: Kafka batch -> plugin -> validated outputs -> sinks ->
//! offset commit. A batch is committed only after every sink acknowledged
//! it, and each batch is served by exactly one plugin version.

mod stats;
mod transform;

pub use stats::{Stats, StatsSnapshot};

use crate::config::{Config, PipelineConfig};
use crate::router::{self, DeadLetterContext, Routes, Stage};
use crate::runtime::{Instance, Limits, PluginVersion, Registry};
use crate::sink::{Row, SinkError, Sinks};
use crate::source::{Batch, KafkaSource, headers};
use rdkafka::Message as _;
use sluice_plugin_sdk::abi::{BatchWriter, Headers, Record};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Whether a pipeline runs forever or stops once caught up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunMode {
    Continuous,
    /// Process what the topics held at start, then stop.
    UntilDrained,
}

const MAX_BACKOFF: Duration = Duration::from_secs(30);

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
}

impl Pipeline {
    pub fn new(
        config: PipelineConfig,
        global: Arc<Config>,
        registry: Arc<Registry>,
        sinks: Sinks,
    ) -> Self {
        let limits = Limits::from(&config.limits);
        Pipeline {
            config,
            global,
            registry,
            sinks,
            limits,
            instance: None,
            routes: None,
            stats: Arc::default(),
        }
    }

    fn version(&self) -> anyhow::Result<Arc<PluginVersion>> {
        self.registry.current(&self.config.plugin).ok_or_else(|| {
            anyhow::anyhow!(
                "pipeline '{}': plugin '{}' is not loaded",
                self.config.name,
                self.config.plugin
            )
        })
    }

    /// Resolves this pipeline's routes for the current plugin version and
    /// creates tables, collections and indexes. Errors name the config key.
    pub async fn prepare(
        &mut self,
        shutdown: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<Arc<Routes>> {
        let version = self.version()?;
        if let Some((hash, routes)) = &self.routes
            && *hash == version.hash
        {
            return Ok(routes.clone());
        }
        let routes = Routes::resolve(&self.global, &self.config, &version, &self.sinks)
            .map_err(anyhow::Error::msg)?;
        let routes = Arc::new(routes);
        let name = self.config.name.clone();
        retry(
            &self.stats,
            shutdown,
            &format!("pipeline '{name}': preparing sinks"),
            || routes.prepare(),
        )
        .await?;
        self.routes = Some((version.hash.clone(), routes.clone()));
        Ok(routes)
    }

    pub async fn run(
        mut self,
        mut shutdown: watch::Receiver<bool>,
        mode: RunMode,
    ) -> anyhow::Result<Arc<Stats>> {
        let name = self.config.name.clone();
        let mut source = KafkaSource::new(
            &self.global.kafka,
            &self.config.group_id(),
            &self.config.topics,
        )?;
        if mode == RunMode::UntilDrained {
            source.snapshot_ends().await?;
        }
        tracing::info!(pipeline = %name, topics = ?self.config.topics, group = %self.config.group_id(), "pipeline started");
        let done = |source: &KafkaSource| mode == RunMode::UntilDrained && source.drained();
        while !*shutdown.borrow() && !done(&source) {
            let batch = tokio::select! {
                batch = source.next_batch(self.config.batch.max_records, self.config.batch.max_wait) => batch?,
                _ = shutdown.changed() => break,
            };
            if batch.is_empty() {
                continue;
            }
            // The batch in flight is finished even if shutdown arrives now;
            // only a sink outage during shutdown leaves it uncommitted.
            if !self.process(&batch, &mut shutdown).await? {
                break;
            }
            let commit = || async {
                source
                    .commit(&batch)
                    .await
                    .map_err(|e| SinkError::Unavailable(format!("{e:#}")))
            };
            retry(
                &self.stats,
                &mut shutdown,
                &format!("pipeline '{name}': committing offsets"),
                commit,
            )
            .await?;
            source.advance(&batch);
        }
        tracing::info!(pipeline = %name, stats = ?self.stats.snapshot(), "pipeline stopped");
        Ok(self.stats)
    }

    /// Transforms and writes one batch. `Ok(false)`: shutdown arrived while
    /// a sink was down; nothing was committed.
    async fn process(
        &mut self,
        batch: &Batch,
        shutdown: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<bool> {
        let started = Instant::now();
        let routes = match self.prepare(shutdown).await {
            Ok(routes) => routes,
            Err(e) if *shutdown.borrow() => {
                tracing::warn!(pipeline = %self.config.name, "stopping before the batch was written: {e:#}");
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        let version = self.version()?;
        self.switch_to(&version);

        let records: Vec<Record> = batch.messages.iter().map(to_record).collect();
        let mut writer = BatchWriter::with_capacity(
            batch
                .messages
                .iter()
                .map(|m| m.payload().map_or(0, <[u8]>::len) + 64)
                .sum(),
        );
        for (record, message) in records.iter().zip(&batch.messages) {
            writer.push(record, headers(message));
        }
        let transformed = transform::run(
            self.instance.take(),
            version.clone(),
            self.limits.clone(),
            writer.finish(),
            records.len(),
            |i| {
                let m = &batch.messages[i];
                let mut w = BatchWriter::default();
                w.push(&records[i], headers(m));
                w.finish()
            },
        )
        .await?;
        self.instance = transformed.instance;

        let transform_ms = started.elapsed().as_millis() as u64;
        let ctx = DeadLetterContext {
            pipeline: &self.config.name,
            plugin: &version,
        };
        let mut routed = router::route(&records, transformed.result, &routes, &ctx);
        for (i, reason) in &transformed.trapped {
            routed
                .dead_letters
                .push(ctx.row(&records[*i], Stage::Trap, reason, ""));
        }
        for dl in &routed.dead_letters {
            tracing::debug!(pipeline = %self.config.name, id = %dl.id, reason = %dl.fields["reason"], "dead letter");
        }

        let written: usize = routed.rows.values().map(Vec::len).sum();
        let what = format!("pipeline '{}': writing batch", self.config.name);
        let write = || write_all(&routes, &routed.rows, &routed.dead_letters);
        if retry(&self.stats, shutdown, &what, write).await.is_err() {
            return Ok(false);
        }
        Stats::add(&self.stats.batches, 1);
        Stats::add(&self.stats.records_in, batch.len());
        Stats::add(&self.stats.rows_written, written);
        Stats::add(&self.stats.dead_letters, routed.dead_letters.len());
        tracing::debug!(pipeline = %self.config.name, records = batch.len(), rows = written,
            dead_letters = routed.dead_letters.len(), transform_ms, ms = started.elapsed().as_millis() as u64, "batch done");
        Ok(true)
    }

    /// Moves to a new plugin version between batches.
    fn switch_to(&mut self, version: &Arc<PluginVersion>) {
        let mut serving = self.stats.serving.lock().unwrap();
        if serving.as_deref() == Some(version.hash.as_str()) {
            return;
        }
        if serving.is_some() {
            let latency = version.detected_at.elapsed();
            self.stats.reload_latencies.lock().unwrap().push(latency);
            tracing::info!(pipeline = %self.config.name, plugin = %version.name, version = %version.info.version,
                hash = %version.short_hash(), reload_ms = latency.as_millis() as u64, "now serving new plugin version");
        }
        *serving = Some(version.hash.clone());
        self.instance = None;
    }
}

/// All writes of one batch. Safe to repeat: every write is an upsert.
async fn write_all(
    routes: &Routes,
    rows: &std::collections::BTreeMap<String, Vec<Row>>,
    dead_letters: &[Row],
) -> Result<(), SinkError> {
    for (output, rows) in rows {
        routes.outputs[output].write(rows).await?;
    }
    routes.dead_letter.write(dead_letters).await
}

/// Retries `op` with capped exponential backoff until it succeeds or
/// shutdown is requested. Never gives up on its own: data is not dropped.
async fn retry<F, Fut>(
    stats: &Stats,
    shutdown: &mut watch::Receiver<bool>,
    what: &str,
    op: F,
) -> anyhow::Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), SinkError>>,
{
    let mut backoff = Duration::from_millis(200);
    loop {
        match op().await {
            Ok(()) => return Ok(()),
            Err(e) => {
                Stats::add(&stats.sink_retries, 1);
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
