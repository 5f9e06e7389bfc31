//! The audit log: who called the API and what changed the code the host
//! runs. One JSON object per line in `STATE_DIR/audit.log` (owner-only,
//! opened for appending only, never rewritten): every API request with
//! its remote address and outcome (denied ones too), and every plugin
//! load, reload, rejection, canary promotion, rollback and quarantine.

use serde_json::{Value, json};
use std::io::Write;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

static LOG: OnceLock<Mutex<std::fs::File>> = OnceLock::new();

/// Opens (creates) the audit log; until then `record` writes nothing (the
/// CLI's own commands are not audited, the host they call is).
pub fn open(state_dir: &Path) -> std::io::Result<()> {
    crate::config::create_private_dir(state_dir)?;
    let path = state_dir.join("audit.log");
    let file = crate::config::open_private_append(&path)?;
    let _ = LOG.set(Mutex::new(file));
    Ok(())
}

/// Appends one event: `{"time": ..., "event": EVENT, ...fields}`. Secret
/// values are scrubbed like every other output.
pub fn record(event: &str, fields: Value) {
    let Some(log) = LOG.get() else { return };
    let mut line = json!({
        "time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "event": event,
    });
    if let (Some(line), Value::Object(fields)) = (line.as_object_mut(), fields) {
        line.extend(fields);
    }
    let text = crate::config::scrub(&line.to_string()).into_owned() + "\n";
    let mut file = log.lock().unwrap_or_else(|e| e.into_inner());
    if let Err(e) = file.write_all(text.as_bytes()) {
        tracing::error!("cannot write the audit log: {e}");
    }
}
