//! Hot reload: watch the plugins folder, wait for writes to settle, load
//! the new version off the hot path, publish it in the registry.
//!
//! Editors and `cp` write a file in several steps; loading on the first
//! event would compile half a file. So each changed path waits until no
//! event arrived for `SETTLE` and its size and mtime are unchanged.

use super::registry::Registry;
use notify::{EventKind, RecursiveMode, Watcher};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const SETTLE: Duration = Duration::from_millis(100);

/// Starts watching; the returned guard keeps the watcher alive.
pub fn watch(registry: Arc<Registry>) -> notify::Result<notify::RecommendedWatcher> {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && matches!(
                event.kind,
                EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_)
            )
        {
            for path in event.paths {
                if path.extension().is_some_and(|e| e == "wasm") {
                    let _ = tx.send((path, Instant::now()));
                }
            }
        }
    })?;
    watcher.watch(&registry.dir, RecursiveMode::NonRecursive)?;
    tokio::spawn(settle_and_load(registry, rx));
    Ok(watcher)
}

async fn settle_and_load(
    registry: Arc<Registry>,
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
            let registry = registry.clone();
            let result = tokio::task::spawn_blocking(move || reload(&registry, path, first)).await;
            if let Ok(Some(again)) = result {
                pending.insert(again, (first, Instant::now()));
            }
        }
    }
}

/// Loads a settled file. Returns the path again if it is still changing.
fn reload(registry: &Registry, path: PathBuf, detected_at: Instant) -> Option<PathBuf> {
    let name = path.file_stem()?.to_string_lossy().into_owned();
    let Ok(before) = std::fs::metadata(&path) else {
        tracing::warn!(plugin = %name, file = %path.display(),
            "plugin file removed; pipelines using it pause until it is back");
        registry.removed(&name, &path);
        return None;
    };
    std::thread::sleep(Duration::from_millis(20));
    let after = std::fs::metadata(&path).ok()?;
    if before.len() != after.len() || before.modified().ok() != after.modified().ok() {
        return Some(path);
    }
    let bytes = std::fs::read(&path).ok()?;
    if registry.is_current(&name, &hex::encode(Sha256::digest(&bytes))) {
        return None;
    }
    match registry.load_path(&path, detected_at) {
        Ok(v) => tracing::info!(plugin = %name, version = %v.info.version, hash = %v.short_hash(),
            load_ms = detected_at.elapsed().as_millis() as u64, "plugin reloaded; pipelines switch at their next batch"),
        Err(e) => {
            tracing::error!(plugin = %name, file = %path.display(),
                "plugin reload rejected, previous version keeps serving: {e}");
            registry.reject(e.to_string());
        }
    }
    None
}
