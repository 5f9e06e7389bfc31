//! Sluice: Kafka -> sandboxed WebAssembly transform -> MongoDB / MySQL.
//!
//! `Host::start` loads the config's plugins, connects the sinks and creates
//! the declared tables, collections and indexes; `Host::run` consumes until
//! shutdown. `run(config, shutdown)` does both, for tests and `main`.

pub mod config;
pub mod pipeline;
pub mod router;
pub mod runtime;
pub mod sink;
pub mod source;

use config::Config;
use pipeline::{Pipeline, RunMode, Stats};
use runtime::{Registry, Runtime};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::watch;

pub struct Host {
    pub config: Arc<Config>,
    pub registry: Arc<Registry>,
    pipelines: Vec<Pipeline>,
    /// Per pipeline, live counters.
    pub stats: BTreeMap<String, Arc<Stats>>,
}

impl Host {
    /// Loads every `*.wasm` in the plugins folder without touching Kafka or
    /// databases. A plugin a pipeline names must load; others that fail are
    /// logged and skipped (a later fix to the file hot-loads them).
    pub fn load_plugins(config: &Config) -> anyhow::Result<Arc<Registry>> {
        let registry = Registry::new(Runtime::new()?, config.plugins_dir.clone());
        let needed: std::collections::BTreeSet<&str> =
            config.pipelines.iter().map(|p| p.plugin.as_str()).collect();
        let mut names: std::collections::BTreeSet<String> =
            needed.iter().map(|n| n.to_string()).collect();
        if let Ok(entries) = std::fs::read_dir(&config.plugins_dir) {
            for path in entries.flatten().map(|e| e.path()) {
                if path.extension().is_some_and(|e| e == "wasm")
                    && let Some(stem) = path.file_stem()
                {
                    names.insert(stem.to_string_lossy().into_owned());
                }
            }
        }
        for name in names {
            match registry.load(&name) {
                Ok(v) => {
                    tracing::info!(plugin = %v.name, version = %v.info.version, hash = %v.short_hash(),
                    outputs = v.info.outputs.len(), "plugin loaded")
                }
                Err(e) if needed.contains(name.as_str()) => {
                    let pipeline = config
                        .pipelines
                        .iter()
                        .find(|p| p.plugin == name)
                        .map(|p| p.name.as_str());
                    anyhow::bail!(
                        "pipeline '{}': plugin '{name}': {e}",
                        pipeline.unwrap_or_default()
                    );
                }
                Err(e) => {
                    tracing::warn!(plugin = %name, "plugin not loaded (no pipeline uses it): {e}")
                }
            }
        }
        Ok(registry)
    }

    /// Loads plugins, connects sinks, creates tables/collections/indexes.
    pub async fn start(config: Config) -> anyhow::Result<Host> {
        let config = Arc::new(config);
        let registry = Self::load_plugins(&config)?;
        let sinks = sink::connect_all(&config.sinks).await?;
        for (name, sink) in &sinks {
            sink.healthcheck()
                .await
                .map_err(|e| anyhow::anyhow!("sink '{name}' is not reachable: {e}"))?;
        }
        let (_never, mut no_shutdown) = watch::channel(false);
        let mut pipelines = Vec::new();
        let mut stats = BTreeMap::new();
        for p in &config.pipelines {
            let mut pipeline =
                Pipeline::new(p.clone(), config.clone(), registry.clone(), sinks.clone());
            pipeline.prepare(&mut no_shutdown).await?;
            stats.insert(p.name.clone(), pipeline.stats.clone());
            pipelines.push(pipeline);
        }
        Ok(Host {
            config,
            registry,
            pipelines,
            stats,
        })
    }

    /// Runs every pipeline until `shutdown` resolves (or, in `UntilDrained`
    /// mode, until all are caught up). Hot-reloads plugins meanwhile.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()>,
        mode: RunMode,
    ) -> anyhow::Result<()> {
        let _watcher = runtime::watch(self.registry.clone()).map_err(|e| {
            anyhow::anyhow!("cannot watch {}: {e}", self.config.plugins_dir.display())
        })?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        for p in self.pipelines {
            tasks.spawn(p.run(stop_rx.clone(), mode));
        }
        let reporter = tokio::spawn(report_progress(self.stats.clone()));
        tokio::pin!(shutdown);
        let mut first_error = None;
        loop {
            tokio::select! {
                _ = &mut shutdown, if !*stop_tx.borrow() => {
                    tracing::info!("shutdown requested: finishing batches in flight");
                    let _ = stop_tx.send(true);
                }
                joined = tasks.join_next() => match joined {
                    None => break,
                    Some(Ok(Ok(_))) => {}
                    Some(Ok(Err(e))) => {
                        tracing::error!("{e:#}");
                        first_error.get_or_insert(e);
                        let _ = stop_tx.send(true);
                    }
                    Some(Err(e)) => {
                        first_error.get_or_insert(anyhow::anyhow!("pipeline task panicked: {e}"));
                        let _ = stop_tx.send(true);
                    }
                }
            }
        }
        reporter.abort();
        first_error.map_or(Ok(()), Err)
    }
}

/// Starts a host for `config` and runs it until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    Host::start(config)
        .await?
        .run(shutdown, RunMode::Continuous)
        .await
}

async fn report_progress(stats: BTreeMap<String, Arc<Stats>>) {
    let mut last = BTreeMap::new();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
    tick.tick().await;
    loop {
        tick.tick().await;
        for (name, s) in &stats {
            let now = s.snapshot();
            if last.get(name) != Some(&now) {
                tracing::info!(pipeline = %name, records_in = now.records_in, rows_written = now.rows_written,
                    dead_letters = now.dead_letters, batches = now.batches, "progress");
                last.insert(name.clone(), now);
            }
        }
    }
}
