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

/// A compiled plugin is native code the host runs: an entry is loaded only
/// if it carries the MAC made, with a key only this host's state folder
/// holds, over its name and bytes when the host wrote it. So a file
/// dropped or edited in the cache folder is recompiled, never run.
struct CacheKey([u8; 32]);

impl CacheKey {
    /// The state folder's key, made on first use (owner-only); a new key
    /// means every cache entry is recompiled.
    fn open(dir: &std::path::Path) -> std::io::Result<CacheKey> {
        let key = crate::config::private_key_file(&dir.join("cache.key"), 32)?;
        Ok(CacheKey(key.try_into().expect("32 bytes")))
    }

    /// HMAC-SHA-256 (RFC 2104) of `name` and `bytes`.
    fn mac(&self, name: &str, bytes: &[u8]) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let pad =
            |byte: u8| -> Vec<u8> { self.0.iter().chain(&[0; 32]).map(|k| k ^ byte).collect() };
        let inner = Sha256::new()
            .chain_update(pad(0x36))
            .chain_update((name.len() as u64).to_le_bytes())
            .chain_update(name)
            .chain_update(bytes)
            .finalize();
        Sha256::new()
            .chain_update(pad(0x5c))
            .chain_update(inner)
            .finalize()
            .into()
    }

    /// The entry's compiled bytes, if its MAC (the first 32 bytes) holds.
    fn open_entry<'a>(&self, name: &str, entry: &'a [u8]) -> Option<&'a [u8]> {
        let (mac, bytes) = entry.split_at_checked(32)?;
        let expected = self.mac(name, bytes);
        // Constant time: how many bytes matched must not show in timing.
        let differ = mac.iter().zip(&expected).fold(0u8, |d, (a, b)| d | (a ^ b));
        (differ == 0).then_some(bytes)
    }
}

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
    /// Folder of compiled components, so a restart does not recompile,
    /// and the key that authenticates its entries.
    cache: Option<(PathBuf, std::sync::Arc<CacheKey>)>,
}

impl Runtime {
    /// The runtime a host config asks for; compiled plugins are kept in
    /// `STATE_DIR/compiled` (created if needed).
    pub fn for_config(config: &crate::config::Config) -> anyhow::Result<Self> {
        let cache = config.state_dir.join("compiled");
        crate::config::create_private_dir(&cache)
            .map_err(|e| anyhow::anyhow!("state_dir: cannot create {}: {e}", cache.display()))?;
        if let Some(warning) = crate::config::exposed(&config.state_dir) {
            tracing::warn!("{warning}");
        }
        // Whoever may write the folder may replace the key and the entries
        // alike: then compile every time, trusting nothing in it.
        if [&config.state_dir, &cache]
            .iter()
            .any(|d| crate::config::writable_by_others(d))
        {
            tracing::warn!(
                "state_dir {} can be written by others: compiled plugins are not cached",
                config.state_dir.display()
            );
            return Self::build(&config.engine, true);
        }
        let key = CacheKey::open(&config.state_dir)
            .map_err(|e| anyhow::anyhow!("state_dir: cannot read or make the cache key: {e}"))?;
        Ok(Runtime {
            cache: Some((cache, std::sync::Arc::new(key))),
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
    /// version and settings), so a changed engine never loads a stale one,
    /// and authenticated (see `CacheKey`), so only entries this host wrote
    /// are loaded.
    pub fn compile(&self, bytes: &[u8], hash: &str) -> wasmtime::Result<Component> {
        let Some((dir, key)) = &self.cache else {
            return Component::new(&self.engine, bytes);
        };
        let mut engine_key = std::collections::hash_map::DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut engine_key);
        let name = format!("{hash}-{:016x}.cwasm", engine_key.finish());
        let path = dir.join(&name);
        if let Ok(entry) = std::fs::read(&path) {
            match key.open_entry(&name, &entry) {
                Some(compiled) => {
                    // SAFETY: the MAC proves this host serialized these
                    // bytes, with this engine (the name carries its
                    // compatibility hash), from the plugin of this hash.
                    match unsafe { Component::deserialize(&self.engine, compiled) } {
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
                None => tracing::warn!(
                    file = %path.display(),
                    "compiled-plugin cache entry failed its authentication (written by something other than this host?): discarded, recompiling"
                ),
            }
            let _ = std::fs::remove_file(&path);
        }
        let component = Component::new(&self.engine, bytes)?;
        let written = component
            .serialize()
            .map(|compiled| [key.mac(&name, &compiled).as_slice(), &compiled].concat())
            .and_then(|entry| Ok(crate::config::write_private(&path, &entry)?));
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
