//! Sluice: Kafka -> sandboxed WebAssembly transform -> MongoDB / MySQL.
//!
//! `Host::start` loads the config's plugins, connects the sinks, creates
//! the declared tables, collections and indexes and opens the run ledger;
//! `Host::run` runs the pipelines by their schedules until shutdown.
//! `run(config, shutdown)` does both, for tests and `main`.

// Layers, bottom up; a module imports only from layers below it (checked
// by `layers::tests`, see docs/architecture.md).
pub mod api;
pub mod audit;
pub mod canary;
pub mod config;
pub mod dlq;
pub mod encryption;
#[cfg(test)]
mod layers;
pub mod ledger;
pub mod model;
pub mod pipeline;
pub mod retry;
pub mod router;
pub mod runtime;
pub mod scheduler;
pub mod schema;
pub mod sink;
pub mod source;

use config::Config;
use ledger::{Ledger, RunState, Trigger};
use pipeline::{OnSinkError, Pipeline, Stats};
use runtime::{Registry, Runtime};
use scheduler::{RunRequest, Work};
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
    pub ledger: Arc<Ledger>,
    sinks: sink::Sinks,
}

/// How `Host::run` runs the pipelines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunMode {
    /// Each pipeline by its schedule, until shutdown; the API is served.
    Scheduled,
    /// One manual run per pipeline over what its topics hold now, then stop.
    Once,
}

impl Host {
    /// Loads every `*.wasm` in the plugins folder without touching Kafka or
    /// databases. A plugin a pipeline names must load; others that fail are
    /// logged and skipped (a later fix to the file hot-loads them).
    pub fn load_plugins(config: &Config) -> anyhow::Result<Arc<Registry>> {
        let runtime = Runtime::for_config(config)?;
        let registry = Registry::new(runtime, config.plugins_dir.clone());
        let canary = config
            .pipelines
            .iter()
            .filter(|p| p.reload == config::ReloadMode::Canary)
            .map(|p| p.plugin.clone());
        registry.set_canary(canary, config.state_dir.join("promoted"));
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
            // A canary plugin first gets the version promoted before the
            // restart; a newer file in the folder becomes its canary.
            if let Some(kept) = registry.kept_copy(&name) {
                match registry.load_path(&kept, std::time::Instant::now()) {
                    Ok(v) => {
                        tracing::info!(plugin = %v.name, version = %v.info.version, hash = %v.short_hash(),
                            file = %kept.display(), "promoted version loaded")
                    }
                    Err(e) => tracing::warn!(plugin = %name, "kept promoted version unusable: {e}"),
                }
            }
            match registry.load(&name) {
                Ok(v) if registry.current(&name).is_some_and(|c| c.hash == v.hash) => {
                    tracing::info!(plugin = %v.name, version = %v.info.version, hash = %v.short_hash(),
                    outputs = v.info.outputs.len(), contract = %v.contract(), "plugin loaded");
                    audit::record("plugin loaded", v.audit_fields());
                }
                // Taken as a canary, or refused as rolled back: logged there.
                Ok(_) => {}
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
        audit::open(&config.state_dir).map_err(|e| {
            anyhow::anyhow!(
                "state_dir: cannot open {}: {e}",
                config.state_dir.join("audit.log").display()
            )
        })?;
        let registry = Self::load_plugins(&config)?;
        let ledger = Arc::new(Ledger::open(&config).await?);
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
                Pipeline::new(p.clone(), config.clone(), registry.clone(), sinks.clone())
                    .recording_to(ledger.clone());
            let version = pipeline.version()?;
            pipeline
                .prepare(&version, &mut no_shutdown, OnSinkError::RetryUntilShutdown)
                .await?;
            stats.insert(p.name.clone(), pipeline.stats.clone());
            pipelines.push(pipeline);
        }
        Ok(Host {
            config,
            registry,
            pipelines,
            stats,
            ledger,
            sinks,
        })
    }

    /// Runs the pipelines until `shutdown` resolves (or, in `Once` mode,
    /// until each finished its run). Hot-reloads plugins meanwhile.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()>,
        mode: RunMode,
    ) -> anyhow::Result<()> {
        let gate = Arc::new(schema::Gate {
            config: self.config.clone(),
            sinks: self.sinks.clone(),
            registry: self.registry.clone(),
        });
        let _watcher = runtime::watch(self.registry.clone(), gate).map_err(|e| {
            anyhow::anyhow!("cannot watch {}: {e}", self.config.plugins_dir.display())
        })?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        let mut api_pipelines = BTreeMap::new();
        for p in self.pipelines {
            let name = p.config.name.clone();
            let ledger = self.ledger.clone();
            let stop = stop_rx.clone();
            match mode {
                RunMode::Once => {
                    tasks.spawn(async move {
                        let mut p = p;
                        let request = RunRequest::new(Trigger::Manual, Work::Pending);
                        let id = ledger
                            .create(&request.ledger_row(&name, RunState::Running))
                            .await?;
                        match scheduler::execute(&mut p, &ledger, id, &request, stop).await {
                            RunState::Succeeded => Ok(()),
                            _ => Err(anyhow::anyhow!(
                                "pipeline '{name}': run {id} failed (see `sluice runs show {id}`)"
                            )),
                        }
                    });
                }
                RunMode::Scheduled => {
                    let schedule =
                        config::Schedule::from_config(&p.config.schedule).map_err(|(key, e)| {
                            anyhow::anyhow!("pipeline '{name}': schedule{key}: {e}")
                        })?;
                    let (handle, commands) = scheduler::Handle::new(&schedule);
                    api_pipelines.insert(name, (p.config.plugin.clone(), handle.clone()));
                    tasks.spawn(scheduler::drive(p, ledger, stop, commands, handle.status));
                }
            }
        }
        let api = match mode {
            RunMode::Scheduled if self.config.api.enabled => {
                let state = api::ApiState {
                    ledger: self.ledger.clone(),
                    registry: self.registry.clone(),
                    pipelines: api_pipelines,
                    stats: self.stats.clone(),
                };
                let mut stop = stop_rx.clone();
                let stopped = async move {
                    let _ = stop.wait_for(|s| *s).await;
                };
                let served = match api::token(&self.config, true) {
                    Ok(token) => api::serve(self.config.api.listen, token, state, stopped).await,
                    Err(e) => Err(e),
                };
                match served {
                    Ok(api) => Some(api),
                    Err(e) => {
                        let _ = stop_tx.send(true);
                        while tasks.join_next().await.is_some() {}
                        return Err(e);
                    }
                }
            }
            _ => None,
        };
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
                        if mode == RunMode::Scheduled {
                            let _ = stop_tx.send(true);
                        }
                    }
                    Some(Err(e)) => {
                        first_error.get_or_insert(anyhow::anyhow!("pipeline task panicked: {e}"));
                        let _ = stop_tx.send(true);
                    }
                }
            }
        }
        let _ = stop_tx.send(true);
        if let Some(api) = api {
            let _ = api.await;
        }
        reporter.abort();
        for sink in self.sinks.values() {
            sink.close().await;
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Starts a host for `config` and runs it until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    Host::start(config)
        .await?
        .run(shutdown, RunMode::Scheduled)
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
                    dead_letters = now.dead_letters, batches = now.batches,
                    already_written = now.already_written, "progress");
                last.insert(name.clone(), now);
            }
        }
    }
}
