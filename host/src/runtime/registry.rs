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
}

impl Registry {
    pub fn new(runtime: Runtime, dir: PathBuf) -> Arc<Self> {
        Arc::new(Registry {
            runtime,
            dir,
            current: RwLock::default(),
            rejections: Default::default(),
        })
    }

    pub fn current(&self, name: &str) -> Option<Arc<PluginVersion>> {
        self.current.read().unwrap().get(name).cloned()
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
    /// second event for one write).
    pub fn is_current(&self, name: &str, hash: &str) -> bool {
        self.current(name).is_some_and(|v| v.hash == hash)
    }
}
