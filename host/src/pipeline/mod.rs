//! One pipeline: source batch -> plugin -> validated outputs -> sinks ->
//! offset commit. A batch is committed only after every sink acknowledged
//! it, and each batch is served by exactly one plugin version.
//!
//! - `continuous`: follows the topics as a member of the consumer group,
//!   recording rolling runs in the ledger;
//! - `bounded`: processes exactly a planned range of offsets (a scheduled
//!   run, a manual trigger, a backfill) and gives up on the first sink
//!   error, leaving the retry to the scheduler;
//! - `writer`: one batch: transform, route, write (isolating refused rows),
//!   retried while a sink is down;
//! - `exactly_once`: the batch and its offsets in one sink transaction;
//! - `transform`: the plugin call, halving a failing batch around the
//!   records that fail.

mod bounded;
mod continuous;
mod exactly_once;
mod stats;
mod transform;
mod writer;

pub use bounded::Bounds;
pub use stats::{Stats, StatsSnapshot, Trouble};

use crate::canary::Shadow;
use crate::config::{Config, OffsetStore, PipelineConfig};
use crate::ledger::{Ledger, PluginRef};
use crate::model::{Offsets, Partition};
use crate::router::{Route, Routes};
use crate::runtime::{Instance, Limits, PluginVersion, Registry};
use crate::sink::{Sink, SinkError, Sinks};
use crate::source::KafkaSource;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How often a pipeline whose tables are partitioned by day or month
/// prepares them again: partitions ahead, retention.
const PARTITION_CARE_EVERY: Duration = Duration::from_secs(3600);
pub use writer::OnSinkError;

pub struct Pipeline {
    pub config: PipelineConfig,
    global: Arc<Config>,
    registry: Arc<Registry>,
    sinks: Sinks,
    limits: Limits,
    instance: Option<Instance>,
    /// Routes resolved and prepared for the plugin version with this hash.
    /// The version hash they are for, and when they were last prepared.
    routes: Option<(String, Arc<Routes>, Instant)>,
    pub stats: Arc<Stats>,
    /// Batches in a row whose whole-batch call failed.
    failing_batches: u32,
    /// The canary running beside this pipeline, with `reload = "canary"`.
    shadow: Shadow,
    /// Where schema changes are recorded (see `recording_to`).
    ledger: Option<Arc<Ledger>>,
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
            shadow: Shadow::default(),
            ledger: None,
        }
    }

    /// Records the schema changes this pipeline's plugin versions make in
    /// `ledger`.
    pub fn recording_to(mut self, ledger: Arc<Ledger>) -> Self {
        self.ledger = Some(ledger);
        self
    }

    /// A fresh pipeline with the same config, plugin and sinks, sharing the
    /// counters: runs beside the continuous consumer (backfills) use one.
    pub fn sibling(&self) -> Pipeline {
        Pipeline {
            stats: self.stats.clone(),
            ledger: self.ledger.clone(),
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
    /// offsets in Kafka or, with offsets in the sink, those stored beside
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

    /// With offsets in the sink: the sink that stores them, by name.
    fn offset_store(&self) -> Option<(Arc<dyn Sink>, String)> {
        match self.config.offsets {
            OffsetStore::Kafka => None,
            OffsetStore::Sink => self
                .global
                .dead_letter_sink(&self.config)
                .ok()
                .and_then(|(name, _)| Some((self.sinks.get(&name)?.clone(), name))),
        }
    }

    /// The offsets stored beside the rows (offsets in the sink) of these
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
    /// tables, collections and indexes. Errors name the config key; sink
    /// errors are retried as `on_error` says.
    pub async fn prepare(
        &mut self,
        version: &PluginVersion,
        shutdown: &mut watch::Receiver<bool>,
        on_error: OnSinkError,
    ) -> anyhow::Result<Arc<Routes>> {
        self.prepare_routes(version, shutdown, on_error)
            .await?
            .ok_or_else(|| anyhow::anyhow!("the host is shutting down"))
    }

    /// `prepare`, retrying sink errors as `on_error` says; `None` if the
    /// host shut down meanwhile. Routes to tables partitioned by day or
    /// month are prepared again every `PARTITION_CARE_EVERY`, which adds
    /// the periods ahead and applies the retention.
    async fn prepare_routes(
        &mut self,
        version: &PluginVersion,
        shutdown: &mut watch::Receiver<bool>,
        on_error: OnSinkError,
    ) -> anyhow::Result<Option<Arc<Routes>>> {
        if let Some((hash, routes, prepared_at)) = &self.routes
            && *hash == version.hash
            && !(routes.all().any(Route::has_dated_partitions)
                && prepared_at.elapsed() >= PARTITION_CARE_EVERY)
        {
            return Ok(Some(routes.clone()));
        }
        let routes = Routes::resolve(&self.global, &self.config, version, &self.sinks)
            .map_err(anyhow::Error::msg)?;
        let routes = Arc::new(routes);
        let what = format!(
            "pipeline '{}': plugin {} ({} {}) prepares its sinks",
            self.config.name,
            version.path.display(),
            version.name,
            version.info.version
        );
        let prepared =
            writer::retry_sink(&self.stats, shutdown, on_error, &what, || routes.prepare()).await?;
        let Some(applied) = prepared else {
            return Ok(None);
        };
        if !applied.is_empty()
            && let Some(ledger) = &self.ledger
            && let Err(e) = ledger
                .record_schema_changes(&self.config.name, &PluginRef::from(version), &applied)
                .await
        {
            tracing::warn!(pipeline = %self.config.name, "schema changes applied but not recorded in the ledger: {e:#}");
        }
        self.routes = Some((version.hash.clone(), routes.clone(), Instant::now()));
        Ok(Some(routes))
    }

    /// Prepares the sinks for a version about to serve its first batch
    /// here. Changes the sinks refuse (see `sink::migrate`) quarantine it:
    /// the pipeline pauses before consuming anything, like for any
    /// version that cannot serve. `false` if the batch must not be fetched.
    pub(super) async fn prepare_or_quarantine(
        &mut self,
        version: &Arc<PluginVersion>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<bool> {
        match self
            .prepare_routes(version, shutdown, OnSinkError::RetryUntilShutdown)
            .await
        {
            Ok(prepared) => Ok(prepared.is_some()),
            Err(e) if e.downcast_ref::<SinkError>().is_some() => {
                self.registry.quarantine(version, format!("{e:#}"));
                Ok(false)
            }
            Err(e) => Err(e),
        }
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

impl From<&PluginVersion> for PluginRef {
    fn from(v: &PluginVersion) -> Self {
        PluginRef {
            name: v.name.clone(),
            version: v.info.version.clone(),
            hash: v.hash.clone(),
        }
    }
}
