//! Which version of each plugin is current. Pipelines read it between
//! batches; loads (at start-up and on reload) replace entries atomically.
//! For plugins in canary mode a new version becomes the *candidate*, run in
//! shadow until it is promoted to current or rolled back.

use super::engine::Runtime;
use super::plugin::{LoadError, PluginVersion};
use crate::model::canary::{BatchDiff, Report};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

pub struct Registry {
    pub runtime: Runtime,
    pub dir: PathBuf,
    current: RwLock<HashMap<String, Arc<PluginVersion>>>,
    /// Files refused on reload, newest last, at most `MAX_REJECTIONS`:
    /// what a status page would show.
    rejections: std::sync::Mutex<Vec<String>>,
    /// Versions (by content hash) that kept failing, and why.
    quarantined: std::sync::Mutex<HashMap<String, String>>,
    /// Plugins whose file was removed, and when.
    removed: std::sync::Mutex<HashMap<String, String>>,
    canary: Mutex<Canaries>,
}

#[derive(Default)]
struct Canaries {
    /// Plugins whose new versions run in shadow before they serve.
    plugins: HashSet<String>,
    /// Holds a copy of each canary plugin's promoted version, so that a
    /// restart serves it rather than the candidate in the plugins folder.
    kept_dir: Option<PathBuf>,
    candidates: HashMap<String, Candidate>,
    /// Versions rolled back, by hash: the same file is not tried again.
    rolled_back: HashSet<String>,
}

struct Candidate {
    version: Arc<PluginVersion>,
    bytes: Arc<Vec<u8>>,
    report: Report,
}

/// A plugin's state, for status pages.
pub struct PluginState {
    pub current: Option<Arc<PluginVersion>>,
    pub unavailable: Option<Unavailable>,
    pub canary_mode: bool,
    pub candidate: Option<(Arc<PluginVersion>, Report)>,
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

/// Checks a loaded version before it is published: one refused never
/// serves, and the version serving now goes on.
#[async_trait::async_trait]
pub trait Admission: Send + Sync {
    /// The changes publishing it will make, in words, or why it must not
    /// be published.
    async fn admit(&self, version: &PluginVersion) -> Result<Vec<String>, String>;
}

/// Admits every version: for hosts without sinks (benchmarks, tools).
pub struct AdmitAll;

#[async_trait::async_trait]
impl Admission for AdmitAll {
    async fn admit(&self, _version: &PluginVersion) -> Result<Vec<String>, String> {
        Ok(vec![])
    }
}

/// How many refused reloads the registry remembers.
pub const MAX_REJECTIONS: usize = 100;

impl Registry {
    pub fn new(runtime: Runtime, dir: PathBuf) -> Arc<Self> {
        Arc::new(Registry {
            runtime,
            dir,
            current: RwLock::default(),
            rejections: Default::default(),
            quarantined: Default::default(),
            removed: Default::default(),
            canary: Default::default(),
        })
    }

    /// Puts `plugins` in canary mode; promoted versions are kept in
    /// `kept_dir`. Call before loading.
    pub fn set_canary(&self, plugins: impl IntoIterator<Item = String>, kept_dir: PathBuf) {
        let mut canary = self.canary.lock().unwrap();
        canary.plugins = plugins.into_iter().collect();
        canary.rolled_back = std::fs::read_to_string(kept_dir.join(ROLLED_BACK))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect();
        canary.kept_dir = Some(kept_dir);
    }

    /// The promoted copy of a canary plugin kept from an earlier run.
    pub fn kept_copy(&self, name: &str) -> Option<PathBuf> {
        let canary = self.canary.lock().unwrap();
        let path = canary.kept_dir.as_ref()?.join(format!("{name}.wasm"));
        (canary.plugins.contains(name) && path.is_file()).then_some(path)
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
    /// A canary already running is that new version: it is promoted.
    pub fn quarantine(&self, version: &PluginVersion, reason: String) {
        tracing::error!(plugin = %version.name, version = %version.info.version, hash = %version.short_hash(),
            "plugin version quarantined: {reason}; its pipelines pause until a new version is dropped in");
        crate::audit::record(
            "plugin quarantined",
            with_reason(version.audit_fields(), &reason),
        );
        self.quarantined
            .lock()
            .unwrap()
            .insert(version.hash.clone(), reason);
        let mut canary = self.canary.lock().unwrap();
        if canary.candidates.contains_key(&version.name) {
            tracing::warn!(plugin = %version.name, "the active version is quarantined: promoting its canary");
            let _ = self.promote_locked(&mut canary, &version.name);
        }
    }

    /// The plugin's file is gone: its pipelines pause.
    pub fn removed(&self, name: &str, path: &Path) {
        self.removed
            .lock()
            .unwrap()
            .insert(name.into(), format!("{} was removed", path.display()));
    }

    /// Loads one plugin by name from the folder (see `load_path`).
    pub fn load(&self, name: &str) -> Result<Arc<PluginVersion>, LoadError> {
        self.load_path(&self.dir.join(format!("{name}.wasm")), Instant::now())
    }

    /// Loads a file and, if it is valid, publishes it: as the current
    /// version of its plugin, or as the candidate of a canary plugin. On
    /// error nothing changes.
    pub fn load_path(
        &self,
        path: &Path,
        detected_at: Instant,
    ) -> Result<Arc<PluginVersion>, LoadError> {
        self.load_bytes(path, PluginVersion::read(path)?, detected_at)
    }

    /// `load_path` for bytes already read from `path`.
    pub fn load_bytes(
        &self,
        path: &Path,
        bytes: Vec<u8>,
        detected_at: Instant,
    ) -> Result<Arc<PluginVersion>, LoadError> {
        let version = self.compile(path, &bytes, detected_at)?;
        self.publish(version.clone(), Arc::new(bytes), vec![]);
        Ok(version)
    }

    /// Loads a version without publishing it (see `Admission`).
    pub fn compile(
        &self,
        path: &Path,
        bytes: &[u8],
        detected_at: Instant,
    ) -> Result<Arc<PluginVersion>, LoadError> {
        Ok(Arc::new(PluginVersion::load(
            &self.runtime,
            path,
            bytes,
            detected_at,
        )?))
    }

    /// Makes a loaded version current, or the canary of a canary plugin
    /// (whose report shows `schema_plan`, applied on promotion).
    pub fn publish(
        &self,
        version: Arc<PluginVersion>,
        bytes: Arc<Vec<u8>>,
        schema_plan: Vec<String>,
    ) {
        let name = version.name.clone();
        let mut canary = self.canary.lock().unwrap();
        self.removed.lock().unwrap().remove(&name);
        let stable = self.current(&name);
        if canary.plugins.contains(&name)
            && let Some(stable) = stable
        {
            if canary.rolled_back.contains(&version.hash) {
                tracing::warn!(plugin = %name, version = %version.info.version, hash = %version.short_hash(),
                    "this version was rolled back; the active version keeps serving (drop a different file to try again)");
                return;
            }
            if stable.hash == version.hash {
                // The active version's file is back: that ends a canary.
                if canary.candidates.remove(&name).is_some() {
                    tracing::info!(plugin = %name, "the active version's file is back; canary dropped");
                }
                return;
            }
            // Nothing to compare against while the active one is quarantined.
            if !self.quarantined.lock().unwrap().contains_key(&stable.hash) {
                tracing::info!(plugin = %name, version = %version.info.version, hash = %version.short_hash(),
                    active = %stable.info.version, "new version runs as a canary, in shadow, until promoted");
                let mut report = Report::new(&version.info.version, &version.hash);
                report.schema_plan = schema_plan;
                canary.candidates.insert(
                    name,
                    Candidate {
                        version,
                        bytes,
                        report,
                    },
                );
                return;
            }
        }
        canary.candidates.remove(&name);
        canary.keep(&version, &bytes);
        self.current.write().unwrap().insert(name, version);
    }

    /// The canary of a plugin, if one is running.
    pub fn candidate(&self, name: &str) -> Option<Arc<PluginVersion>> {
        let canary = self.canary.lock().unwrap();
        canary.candidates.get(name).map(|c| c.version.clone())
    }

    /// Adds a batch the canary `hash` ran in shadow; promotes it once
    /// `promote_after` (> 0) clean batches in a row are reached.
    pub fn observe(&self, name: &str, hash: &str, diff: BatchDiff, promote_after: u32) {
        let mut canary = self.canary.lock().unwrap();
        let Some(candidate) = canary.candidates.get_mut(name) else {
            return;
        };
        if candidate.version.hash != hash {
            return;
        }
        if let Some(failure) = &diff.failure {
            tracing::warn!(plugin = %name, version = %candidate.version.info.version, "canary batch failed: {failure}");
        }
        candidate.report.add(diff);
        if promote_after > 0 && candidate.report.clean_streak >= promote_after as u64 {
            tracing::info!(plugin = %name, "canary clean for {promote_after} batches in a row");
            let _ = self.promote_locked(&mut canary, name);
        }
    }

    /// Makes the canary current. Errors say why there is nothing to promote.
    pub fn promote(&self, name: &str) -> Result<Arc<PluginVersion>, String> {
        let mut canary = self.canary.lock().unwrap();
        self.promote_locked(&mut canary, name)
    }

    fn promote_locked(
        &self,
        canary: &mut Canaries,
        name: &str,
    ) -> Result<Arc<PluginVersion>, String> {
        let candidate = canary
            .candidates
            .remove(name)
            .ok_or_else(|| self.no_candidate(canary, name))?;
        let v = candidate.version;
        tracing::info!(plugin = %name, version = %v.info.version, hash = %v.short_hash(),
            report = %candidate.report.summary(), "canary promoted; pipelines switch at their next batch");
        crate::audit::record("plugin promoted", v.audit_fields());
        canary.keep(&v, &candidate.bytes);
        self.current.write().unwrap().insert(name.into(), v.clone());
        Ok(v)
    }

    /// Drops the canary; the active version keeps serving, and the same
    /// file is not taken as a canary again (also after a restart).
    pub fn rollback(&self, name: &str) -> Result<Arc<PluginVersion>, String> {
        let mut canary = self.canary.lock().unwrap();
        let candidate = canary
            .candidates
            .remove(name)
            .ok_or_else(|| self.no_candidate(&canary, name))?;
        let v = candidate.version;
        tracing::info!(plugin = %name, version = %v.info.version, hash = %v.short_hash(),
            report = %candidate.report.summary(), "canary rolled back; the active version keeps serving");
        crate::audit::record("plugin rolled back", v.audit_fields());
        canary.rolled_back.insert(v.hash.clone());
        if let Some(dir) = &canary.kept_dir {
            let list: Vec<&str> = canary.rolled_back.iter().map(String::as_str).collect();
            if let Err(e) =
                crate::config::write_private(&dir.join(ROLLED_BACK), list.join("\n").as_bytes())
            {
                tracing::warn!(plugin = %name, "cannot remember the rollback across restarts: {e}");
            }
        }
        Ok(v)
    }

    fn no_candidate(&self, canary: &Canaries, name: &str) -> String {
        if self.current(name).is_none() {
            format!("no plugin '{name}' is loaded")
        } else if !canary.plugins.contains(name) {
            format!(
                "plugin '{name}' is not in canary mode (set reload = \"canary\" on its pipelines)"
            )
        } else {
            format!(
                "plugin '{name}' has no canary running; drop a new version into the plugins folder first"
            )
        }
    }

    /// Every loaded plugin's state, by name.
    pub fn states(&self) -> std::collections::BTreeMap<String, PluginState> {
        let canary = self.canary.lock().unwrap();
        let names: std::collections::BTreeSet<String> = self
            .current
            .read()
            .unwrap()
            .keys()
            .chain(self.removed.lock().unwrap().keys())
            .cloned()
            .collect();
        names
            .into_iter()
            .map(|name| {
                let state = PluginState {
                    current: self.current(&name),
                    unavailable: self.serving(&name).err(),
                    canary_mode: canary.plugins.contains(&name),
                    candidate: canary
                        .candidates
                        .get(&name)
                        .map(|c| (c.version.clone(), c.report.clone())),
                };
                (name, state)
            })
            .collect()
    }

    /// Records why a file was refused; only the latest `MAX_REJECTIONS`
    /// are kept (a file rewritten badly in a loop must not grow memory).
    pub fn reject(&self, reason: String) {
        let mut rejections = self.rejections.lock().unwrap();
        if rejections.len() >= MAX_REJECTIONS {
            let over = rejections.len() + 1 - MAX_REJECTIONS;
            rejections.drain(..over);
        }
        rejections.push(reason);
    }

    /// Reasons files were refused on reload, oldest first.
    pub fn rejections(&self) -> Vec<String> {
        self.rejections.lock().unwrap().clone()
    }

    /// Whether a file holds a version already published (a touch, or a
    /// second event for one write) and still served, or one rolled back.
    pub fn is_current(&self, name: &str, hash: &str) -> bool {
        let canary = self.canary.lock().unwrap();
        if canary.rolled_back.contains(hash) {
            return true;
        }
        let published = self.current(name).is_some_and(|v| v.hash == hash)
            || canary
                .candidates
                .get(name)
                .is_some_and(|c| c.version.hash == hash);
        published && !self.removed.lock().unwrap().contains_key(name)
    }
}

/// File in the kept folder listing rolled-back hashes, one per line.
const ROLLED_BACK: &str = "rolled-back.txt";

impl Canaries {
    /// Keeps a copy of a canary plugin's current version.
    fn keep(&self, version: &PluginVersion, bytes: &[u8]) {
        let Some(dir) = &self.kept_dir else { return };
        if !self.plugins.contains(&version.name) {
            return;
        }
        let path = dir.join(format!("{}.wasm", version.name));
        let kept = crate::config::create_private_dir(dir)
            .and_then(|()| crate::config::write_private(&path, bytes));
        if let Err(e) = kept {
            tracing::warn!(plugin = %version.name, file = %path.display(),
                "cannot keep the promoted version; after a restart the plugins folder's file serves: {e}");
        }
    }
}

/// An audit entry's fields with the reason added.
fn with_reason(mut fields: serde_json::Value, reason: &str) -> serde_json::Value {
    fields["reason"] = reason.into();
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_latest_refused_reloads_are_kept() {
        let registry = Registry::new(Runtime::new().unwrap(), PathBuf::from("plugins"));
        for i in 0..(MAX_REJECTIONS * 3) {
            registry.reject(format!("refused #{i}"));
        }
        let kept = registry.rejections();
        assert_eq!(kept.len(), MAX_REJECTIONS);
        assert_eq!(
            kept.first().unwrap(),
            &format!("refused #{}", MAX_REJECTIONS * 2)
        );
        assert_eq!(
            kept.last().unwrap(),
            &format!("refused #{}", MAX_REJECTIONS * 3 - 1)
        );
    }
}
