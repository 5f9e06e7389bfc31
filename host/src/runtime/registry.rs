//! Which version of each plugin is current. Pipelines read it between
//! batches; loads (at start-up and on reload) replace entries atomically.

use super::engine::Runtime;
use super::plugin::{LoadError, PluginVersion};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Instant;

pub struct Registry {
    pub runtime: Runtime,
    pub dir: PathBuf,
    current: RwLock<HashMap<String, Arc<PluginVersion>>>,
    /// Files refused on reload, newest last: what a status page would show.
    rejections: std::sync::Mutex<Vec<String>>,
    /// Versions (by content hash) that kept failing, and why.
    quarantined: std::sync::Mutex<HashMap<String, String>>,
    /// Plugins whose file was removed, and when.
    removed: std::sync::Mutex<HashMap<String, String>>,
}

/// Why a pipeline cannot be served right now.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Unavailable {
    #[error("plugin '{0}' is not loaded")]
    NotLoaded(String),
    #[error("plugin '{0}': {1}; pipelines using it are paused until the file is back")]
    Removed(String, String),
    #[error(
        "plugin '{name}' {version} ({hash}) is quarantined: {reason}; drop a new version into the plugins folder to resume"
    )]
    Quarantined {
        name: String,
        version: String,
        hash: String,
        reason: String,
    },
}

impl Registry {
    pub fn new(runtime: Runtime, dir: PathBuf) -> Arc<Self> {
        Arc::new(Registry {
            runtime,
            dir,
            current: RwLock::default(),
            rejections: Default::default(),
            quarantined: Default::default(),
            removed: Default::default(),
        })
    }

    pub fn current(&self, name: &str) -> Option<Arc<PluginVersion>> {
        self.current.read().unwrap().get(name).cloned()
    }

    /// The version a pipeline may run now, or why it must pause.
    pub fn serving(&self, name: &str) -> Result<Arc<PluginVersion>, Unavailable> {
        if let Some(why) = self.removed.lock().unwrap().get(name) {
            return Err(Unavailable::Removed(name.into(), why.clone()));
        }
        let version = self
            .current(name)
            .ok_or_else(|| Unavailable::NotLoaded(name.into()))?;
        if let Some(reason) = self.quarantined.lock().unwrap().get(&version.hash) {
            return Err(Unavailable::Quarantined {
                name: name.into(),
                version: version.info.version.clone(),
                hash: version.short_hash().into(),
                reason: reason.clone(),
            });
        }
        Ok(version)
    }

    /// Stops serving a version that keeps failing; a new file lifts it.
    pub fn quarantine(&self, version: &PluginVersion, reason: String) {
        tracing::error!(plugin = %version.name, version = %version.info.version, hash = %version.short_hash(),
            "plugin version quarantined: {reason}; its pipelines pause until a new version is dropped in");
        self.quarantined
            .lock()
            .unwrap()
            .insert(version.hash.clone(), reason);
    }

    /// The plugin's file is gone: its pipelines pause.
    pub fn removed(&self, name: &str, path: &Path) {
        self.removed
            .lock()
            .unwrap()
            .insert(name.into(), format!("{} was removed", path.display()));
    }

    /// Loads one plugin by name from the folder and makes it current.
    pub fn load(&self, name: &str) -> Result<Arc<PluginVersion>, LoadError> {
        self.load_path(&self.dir.join(format!("{name}.wasm")), Instant::now())
    }

    /// Loads a file and, if it is valid, makes it the current version of its
    /// plugin. On error the previous version stays current.
    pub fn load_path(
        &self,
        path: &Path,
        detected_at: Instant,
    ) -> Result<Arc<PluginVersion>, LoadError> {
        let version = Arc::new(PluginVersion::load(&self.runtime, path, detected_at)?);
        let mut current = self.current.write().unwrap();
        current.insert(version.name.clone(), version.clone());
        self.removed.lock().unwrap().remove(&version.name);
        Ok(version)
    }

    pub fn reject(&self, reason: String) {
        self.rejections.lock().unwrap().push(reason);
    }

    /// Reasons files were refused on reload, oldest first.
    pub fn rejections(&self) -> Vec<String> {
        self.rejections.lock().unwrap().clone()
    }

    /// Whether a file holds the version already current (a touch, or a
    /// second event for one write) and still served.
    pub fn is_current(&self, name: &str, hash: &str) -> bool {
        self.current(name).is_some_and(|v| v.hash == hash)
            && !self.removed.lock().unwrap().contains_key(name)
    }
}
