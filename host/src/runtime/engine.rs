//! One wasmtime engine for the process: component model on, epoch
//! interruption for time limits, and a ticker thread driving the epoch.

use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::time::Duration;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, StoreLimits};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// Most compiled plugins kept in the cache; the least recently used go.
const CACHE_ENTRIES: usize = 64;

/// Trims the cache to `CACHE_ENTRIES`, oldest (by modification) first.
fn evict(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    if files.len() <= CACHE_ENTRIES {
        return;
    }
    files.sort();
    for (_, path) in &files[..files.len() - CACHE_ENTRIES] {
        let _ = std::fs::remove_file(path);
    }
}

/// How often the epoch advances: the granularity of `batch_timeout`.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Per-store host state: the WASI context the pipeline granted, the
/// plugin's captured output, and limits.
pub struct State {
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub limits: StoreLimits,
    pub output: super::wasi::Output,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

#[derive(Clone)]
pub struct Runtime {
    pub engine: Engine,
    pub linker: std::sync::Arc<Linker<State>>,
    /// Folder of compiled components, so a restart does not recompile.
    cache: Option<PathBuf>,
}

impl Runtime {
    /// The runtime a host config asks for; compiled plugins are kept in
    /// `STATE_DIR/compiled` (created if needed).
    pub fn for_config(config: &crate::config::Config) -> anyhow::Result<Self> {
        let cache = config.state_dir.join("compiled");
        std::fs::create_dir_all(&cache)
            .map_err(|e| anyhow::anyhow!("state_dir: cannot create {}: {e}", cache.display()))?;
        Ok(Runtime {
            cache: Some(cache),
            ..Self::build(&config.engine, true)?
        })
    }

    /// A runtime with default settings and no cache.
    pub fn new() -> anyhow::Result<Self> {
        Self::build(&Default::default(), true)
    }

    /// For the limits-overhead benchmark only: no epoch interruption, so
    /// `limits.batch_timeout` cannot be enforced.
    pub fn without_time_limits() -> anyhow::Result<Self> {
        Self::build(&Default::default(), false)
    }

    /// Compiles a component, or loads it from the cache. Cache entries are
    /// keyed by the content hash and the engine's compatibility hash (its
    /// version and settings), so a changed engine never loads a stale one.
    pub fn compile(&self, bytes: &[u8], hash: &str) -> wasmtime::Result<Component> {
        let Some(dir) = &self.cache else {
            return Component::new(&self.engine, bytes);
        };
        let mut engine_key = std::collections::hash_map::DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut engine_key);
        let path = dir.join(format!("{hash}-{:016x}.cwasm", engine_key.finish()));
        if path.exists() {
            // SAFETY: files in the cache are written only by `serialize`
            // below, into the host's own state folder, under a name that
            // carries this engine's compatibility hash.
            match unsafe { Component::deserialize_file(&self.engine, &path) } {
                Ok(component) => {
                    // Marks it recently used, for `evict`.
                    let _ = std::fs::File::options()
                        .append(true)
                        .open(&path)
                        .and_then(|f| f.set_modified(std::time::SystemTime::now()));
                    return Ok(component);
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), "compiled-plugin cache entry unusable, recompiling: {e}")
                }
            }
        }
        let component = Component::new(&self.engine, bytes)?;
        let tmp = path.with_extension("tmp");
        let written = component
            .serialize()
            .and_then(|b| Ok(std::fs::write(&tmp, b)?))
            .and_then(|()| Ok(std::fs::rename(&tmp, &path)?));
        if let Err(e) = written {
            tracing::warn!(file = %path.display(), "cannot cache the compiled plugin: {e}");
        }
        evict(dir);
        Ok(component)
    }

    fn build(settings: &crate::config::EngineConfig, time_limits: bool) -> anyhow::Result<Self> {
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(time_limits)
            .max_wasm_stack(settings.stack_kib << 10);
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        // Plugins built for wasm32-wasip2 import WASI interfaces through std;
        // they are linked, but each store's WasiCtx holds only what its
        // pipeline granted (see `wasi::context`).
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("sluice-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })?;
        Ok(Runtime {
            engine,
            linker: std::sync::Arc::new(linker),
            cache: None,
        })
    }
}
