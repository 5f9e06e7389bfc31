//! A plugin version: one `.wasm` file compiled, checked and described.

use super::bindings::{Exports, Pre};
use super::engine::{Runtime, State};
use sha2::{Digest, Sha256};
use sluice_plugin_sdk::schema::Plugin;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Files larger than this are refused before compiling.
pub const MAX_PLUGIN_BYTES: u64 = 32 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {bytes} bytes is larger than the {MAX_PLUGIN_BYTES}-byte limit")]
    TooLarge { path: PathBuf, bytes: u64 },
    #[error("{path}: not a WebAssembly component: {reason}")]
    Compile { path: PathBuf, reason: String },
    #[error("{path}: cannot instantiate (imports something the host does not provide?): {reason}")]
    Instantiate { path: PathBuf, reason: String },
    #[error("{path}: describe() failed: {reason}")]
    Describe { path: PathBuf, reason: String },
    #[error(
        "{path}: plugin '{name}' cannot read this host's batches ({reason}); it was probably built with another sluice-plugin-sdk: rebuild it with the SDK for packed encoding version {version}",
        version = sluice_plugin_sdk::abi::BATCH_VERSION
    )]
    Encoding {
        path: PathBuf,
        name: String,
        reason: String,
    },
    #[error("{path}: plugin '{name}' declares an invalid schema: {reason}")]
    Schema {
        path: PathBuf,
        name: String,
        reason: String,
    },
}

/// A loaded, immutable plugin version. Pipelines hold an `Arc` to the
/// version they serve; a reload publishes a new one.
pub struct PluginVersion {
    /// The file stem: `plugins/orders.wasm` is plugin `orders`.
    pub name: String,
    pub path: PathBuf,
    /// SHA-256 of the file, hex: identifies the version everywhere.
    pub hash: String,
    pub info: Plugin,
    pub(super) pre: Pre,
    pub(super) runtime: Runtime,
    /// When the file change that produced this version was first seen.
    pub detected_at: Instant,
}

impl std::fmt::Debug for PluginVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} ({})",
            self.name,
            self.info.version,
            self.short_hash()
        )
    }
}

/// The first 12 characters of a content hash, as logs and the CLI show
/// it; a shorter text whole.
pub fn short_hash(hash: &str) -> &str {
    match hash.char_indices().nth(12) {
        Some((cut, _)) => &hash[..cut],
        None => hash,
    }
}

impl PluginVersion {
    pub fn short_hash(&self) -> &str {
        short_hash(&self.hash)
    }

    /// What the audit log says about this version.
    pub fn audit_fields(&self) -> serde_json::Value {
        serde_json::json!({
            "plugin": self.name,
            "version": self.info.version,
            "hash": self.hash,
            "file": self.path.display().to_string(),
        })
    }

    /// The `sluice:plugin` contract version the component was built
    /// against (the host loads every version in `wit/`).
    pub fn contract(&self) -> &'static str {
        self.pre.contract()
    }

    /// Reads a plugin file, refusing one over `MAX_PLUGIN_BYTES` unread.
    pub fn read(path: &Path) -> Result<Vec<u8>, LoadError> {
        let p = || path.to_path_buf();
        let meta =
            std::fs::metadata(path).map_err(|source| LoadError::Read { path: p(), source })?;
        if meta.len() > MAX_PLUGIN_BYTES {
            return Err(LoadError::TooLarge {
                path: p(),
                bytes: meta.len(),
            });
        }
        std::fs::read(path).map_err(|source| LoadError::Read { path: p(), source })
    }

    /// The content hash that identifies a version.
    pub fn hash_of(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    /// Compiles, pre-instantiates and describes the bytes of `path`.
    /// Blocking and CPU-heavy: call it off the async runtime.
    pub fn load(
        runtime: &Runtime,
        path: &Path,
        bytes: &[u8],
        detected_at: Instant,
    ) -> Result<Self, LoadError> {
        let p = || path.to_path_buf();
        let hash = Self::hash_of(bytes);
        let component = runtime
            .compile(bytes, &hash)
            .map_err(|e| LoadError::Compile {
                path: p(),
                reason: format!("{e:#}"),
            })?;
        let pre = runtime
            .linker
            .instantiate_pre(&component)
            .and_then(Pre::new)
            .map_err(|e| LoadError::Instantiate {
                path: p(),
                reason: format!("{e:#}"),
            })?;
        let name = path
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let mut version = PluginVersion {
            name,
            path: p(),
            hash,
            info: Plugin::new("", ""),
            pre,
            runtime: runtime.clone(),
            detected_at,
        };
        let (mut store, bindings) =
            version
                .instantiate(&super::Limits::default())
                .map_err(|e| LoadError::Instantiate {
                    path: p(),
                    reason: format!("{e:#}"),
                })?;
        let info =
            super::call::with_deadline(&mut store, super::Limits::default().batch_timeout, |s| {
                bindings.call_describe(s)
            })
            .map_err(|e| LoadError::Describe {
                path: p(),
                reason: e.to_string(),
            })?;
        info.validate().map_err(|reason| LoadError::Schema {
            path: p(),
            name: info.name.clone(),
            reason,
        })?;
        // A plugin built for another packed encoding would fail every batch
        // and send every record to dead letters: an empty batch tells now.
        let empty = sluice_plugin_sdk::abi::encode_batch([]);
        let encoding = |reason: String| LoadError::Encoding {
            path: p(),
            name: info.name.clone(),
            reason,
        };
        let answer =
            super::call::with_deadline(&mut store, super::Limits::default().batch_timeout, |s| {
                bindings.call_transform(s, &empty)
            })
            .map_err(|e| encoding(format!("an empty batch: {e}")))?
            .map_err(|e| encoding(format!("an empty batch failed: {e}")))?;
        sluice_plugin_sdk::abi::decode_result(&answer)
            .map_err(|e| encoding(format!("its answer to an empty batch: {e}")))?;
        version.info = info;
        Ok(version)
    }

    pub(super) fn instantiate(
        &self,
        limits: &super::Limits,
    ) -> wasmtime::Result<(wasmtime::Store<State>, Exports)> {
        let output = super::wasi::Output::default();
        let state = State {
            wasi: super::wasi::context(&limits.grants, &output)?,
            output,
            table: Default::default(),
            limits: wasmtime::StoreLimitsBuilder::new()
                .memory_size(limits.memory_bytes)
                .instances(16)
                .tables(16)
                .trap_on_grow_failure(true)
                .build(),
        };
        let mut store = wasmtime::Store::new(&self.runtime.engine, state);
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(u64::MAX / 2);
        let bindings = self.pre.instantiate(&mut store)?;
        Ok((store, bindings))
    }
}
