//! Hot reload: watch the plugins folder, wait for writes to settle, load
//! the new version off the hot path, let the `Admission` check it (its
//! schema changes), publish it in the registry.
//!
//! Editors and `cp` write a file in several steps; loading on the first
//! event would compile half a file. So each changed path waits until no
//! event arrived for `SETTLE` and its size and mtime are unchanged.

use super::plugin::PluginVersion;
use super::registry::{Admission, Registry};
use notify::{EventKind, RecursiveMode, Watcher};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const SETTLE: Duration = Duration::from_millis(100);

/// Starts watching; the returned guard keeps the watcher alive.
pub fn watch(
    registry: Arc<Registry>,
    admission: Arc<dyn Admission>,
) -> notify::Result<notify::RecommendedWatcher> {
    let (tx, rx) = mpsc::unbounded_channel();
    let tx2 = tx.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                tracing::warn!("watching the plugins folder: {e}");
                return;
            }
        };
        if matches!(
            event.kind,
            EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_)
        ) {
            for path in event.paths {
                if path.extension().is_some_and(|e| e == "wasm") {
                    let _ = tx.send((path, Instant::now()));
                }
            }
        }
    })?;
    watcher.watch(&registry.dir, RecursiveMode::NonRecursive)?;
    // A file changed between the start-up load and now sent no event to
    // us: look at every file once (unchanged ones are skipped by hash).
    if let Ok(entries) = std::fs::read_dir(&registry.dir) {
        for path in entries.flatten().map(|e| e.path()) {
            if path.extension().is_some_and(|e| e == "wasm") {
                let _ = tx2.send((path, Instant::now()));
            }
        }
    }
    tokio::spawn(settle_and_load(registry, admission, rx));
    Ok(watcher)
}

async fn settle_and_load(
    registry: Arc<Registry>,
    admission: Arc<dyn Admission>,
    mut rx: mpsc::UnboundedReceiver<(PathBuf, Instant)>,
) {
    // path -> (first event, last event)
    let mut pending: HashMap<PathBuf, (Instant, Instant)> = HashMap::new();
    loop {
        // `None`: the channel closed; `Some(None)`: quiet for SETTLE.
        let next = if pending.is_empty() {
            rx.recv().await.map(Some)
        } else {
            match tokio::time::timeout(SETTLE, rx.recv()).await {
                Ok(event) => event.map(Some),
                Err(_elapsed) => Some(None),
            }
        };
        let Some(event) = next else { return };
        if let Some((path, at)) = event {
            pending
                .entry(path)
                .and_modify(|e| e.1 = at)
                .or_insert((at, at));
        }
        let ready: Vec<_> = pending
            .iter()
            .filter(|(_, (_, last))| last.elapsed() >= SETTLE)
            .map(|(p, (first, _))| (p.clone(), *first))
            .collect();
        for (path, first) in ready {
            pending.remove(&path);
            let loading = registry.clone();
            let result = tokio::task::spawn_blocking(move || reload(&loading, path, first)).await;
            match result {
                Ok(Reload::Again(path)) => {
                    pending.insert(path, (first, Instant::now()));
                }
                Ok(Reload::Loaded(version, bytes)) => {
                    admit(&registry, &*admission, version, bytes).await
                }
                Ok(Reload::Nothing) | Err(_) => {}
            }
        }
    }
}

enum Reload {
    /// Still changing: wait again.
    Again(PathBuf),
    /// A new version, compiled, not yet published.
    Loaded(Arc<PluginVersion>, Vec<u8>),
    Nothing,
}

/// Loads a settled file.
fn reload(registry: &Registry, path: PathBuf, detected_at: Instant) -> Reload {
    let Some(name) = path.file_stem().map(|s| s.to_string_lossy().into_owned()) else {
        return Reload::Nothing;
    };
    let Ok(before) = std::fs::metadata(&path) else {
        tracing::warn!(plugin = %name, file = %path.display(),
            "plugin file removed; pipelines using it pause until it is back");
        registry.removed(&name, &path);
        return Reload::Nothing;
    };
    std::thread::sleep(Duration::from_millis(20));
    let Ok(after) = std::fs::metadata(&path) else {
        return Reload::Nothing;
    };
    if before.len() != after.len() || before.modified().ok() != after.modified().ok() {
        tracing::debug!(plugin = %name, "file still changing; waiting for it to settle");
        return Reload::Again(path);
    }
    let loaded = PluginVersion::read(&path).and_then(|bytes| {
        if registry.is_current(&name, &PluginVersion::hash_of(&bytes)) {
            return Ok(None);
        }
        let version = registry.compile(&path, &bytes, detected_at)?;
        Ok(Some((version, bytes)))
    });
    match loaded {
        Ok(Some((version, bytes))) => Reload::Loaded(version, bytes),
        Ok(None) => {
            tracing::debug!(plugin = %name, "file event for a version already known; nothing to load");
            Reload::Nothing
        }
        Err(e) => {
            rejected(registry, &name, &path, e.to_string());
            Reload::Nothing
        }
    }
}

/// Publishes a loaded version its admission accepts.
async fn admit(
    registry: &Registry,
    admission: &dyn Admission,
    version: Arc<PluginVersion>,
    bytes: Vec<u8>,
) {
    let (name, path) = (version.name.clone(), version.path.clone());
    let schema_plan = match admission.admit(&version).await {
        Ok(plan) => plan,
        Err(why) => return rejected(registry, &name, &path, why),
    };
    let v = version.clone();
    registry.publish(version, Arc::new(bytes), schema_plan);
    let load_ms = v.detected_at.elapsed().as_millis() as u64;
    if registry.candidate(&name).is_some_and(|c| c.hash == v.hash) {
        tracing::info!(plugin = %name, version = %v.info.version, hash = %v.short_hash(),
            load_ms, "plugin reloaded as a canary");
        crate::audit::record("plugin canary", v.audit_fields());
    } else {
        tracing::info!(plugin = %name, version = %v.info.version, hash = %v.short_hash(),
            load_ms, "plugin reloaded; pipelines switch at their next batch");
        crate::audit::record("plugin reloaded", v.audit_fields());
    }
}

fn rejected(registry: &Registry, name: &str, path: &std::path::Path, why: String) {
    tracing::error!(plugin = %name, file = %path.display(),
        "plugin reload rejected, previous version keeps serving: {why}");
    crate::audit::record(
        "plugin rejected",
        serde_json::json!({ "plugin": name, "file": path.display().to_string(), "reason": why }),
    );
    registry.reject(why);
}
