//! The contract of one call into a plugin: the limits it runs under, the
//! deadline, and how a failure is reported.

use super::engine::{EPOCH_TICK, State};
use std::sync::Arc;
use std::time::Duration;
use wasmtime::Store;

/// Sandbox limits applied to each instance, and what it may reach.
#[derive(Debug, Clone)]
pub struct Limits {
    /// WASI capabilities (none by default).
    pub grants: Arc<crate::config::GrantsConfig>,
    pub memory_bytes: usize,
    pub batch_timeout: Duration,
    /// Most outputs (plus errors) one call may return.
    pub max_output_records: usize,
    /// Most bytes one call's packed result may take.
    pub max_output_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits::from(&crate::config::LimitsConfig::default())
    }
}

impl Limits {
    /// A pipeline's limits and grants.
    pub fn for_pipeline(p: &crate::config::PipelineConfig) -> Self {
        Limits {
            grants: Arc::new(p.grants.clone()),
            ..Limits::from(&p.limits)
        }
    }
}

impl From<&crate::config::LimitsConfig> for Limits {
    fn from(c: &crate::config::LimitsConfig) -> Self {
        Limits {
            grants: Default::default(),
            memory_bytes: (c.memory_mib as usize) << 20,
            batch_timeout: c.batch_timeout,
            max_output_records: c.max_output_records,
            max_output_bytes: (c.max_output_mib as usize) << 20,
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The instance trapped (panic, memory or stack limit): it must be
    /// discarded.
    #[error("plugin trapped: {0}")]
    Trap(String),
    /// The call ran out of time (an endless loop, or a batch too slow); the
    /// instance must be discarded.
    #[error("plugin trapped: {0}")]
    Timeout(String),
    /// The plugin returned an error for the whole batch.
    #[error("plugin failed the batch: {0}")]
    Failed(String),
    /// The plugin returned bytes that are not a valid result.
    #[error("plugin returned a malformed result: {0}")]
    Malformed(String),
    /// The result is larger than the pipeline's limits allow.
    #[error("plugin output over the limit: {0}")]
    Limit(String),
}

impl CallError {
    /// The call ran out of time (an endless loop, or a batch too slow).
    pub fn is_timeout(&self) -> bool {
        matches!(self, CallError::Timeout(_))
    }

    /// The instance is in an undefined state after this error.
    pub fn discards_instance(&self) -> bool {
        match self {
            CallError::Trap(_) | CallError::Timeout(_) => true,
            CallError::Failed(_) | CallError::Malformed(_) | CallError::Limit(_) => false,
        }
    }
}

/// Calls into the guest with an epoch deadline; traps become
/// `CallError::Trap` or `Timeout` with a readable reason (the memory limit
/// named as such).
pub(super) fn with_deadline<R>(
    store: &mut Store<State>,
    timeout: Duration,
    call: impl FnOnce(&mut Store<State>) -> wasmtime::Result<R>,
) -> Result<R, CallError> {
    let ticks = (timeout.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64;
    store.set_epoch_deadline(ticks);
    let result = call(store);
    store.set_epoch_deadline(u64::MAX / 2);
    result.map_err(|e| {
        // A panicking Rust plugin prints why before it traps.
        let printed = store.data().output.take();
        let cause = root_cause(&e);
        let timed_out = matches!(
            e.downcast_ref::<wasmtime::Trap>(),
            Some(wasmtime::Trap::Interrupt)
        );
        let reason = match e.downcast_ref::<wasmtime::Trap>() {
            Some(wasmtime::Trap::Interrupt) => {
                format!("exceeded the time limit of {timeout:?} (limits.batch_timeout)")
            }
            Some(wasmtime::Trap::StackOverflow) => "wasm stack overflow (deep recursion)".into(),
            Some(trap) if cause == trap.to_string() => cause,
            Some(trap) => format!("{trap}: {cause}"),
            // StoreLimits' growth failure arrives as a plain error.
            None if cause.contains("growing memory") => {
                format!("exceeded the memory limit (limits.memory_mib): {cause}")
            }
            None => cause,
        };
        let reason = if printed.is_empty() {
            reason
        } else {
            format!("{reason}; the plugin printed: {}", last_lines(&printed))
        };
        if timed_out {
            CallError::Timeout(reason)
        } else {
            CallError::Trap(reason)
        }
    })
}

/// The end of a plugin's output, on one line: enough for a panic message.
fn last_lines(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("note: run with `RUST_BACKTRACE"))
        .collect();
    let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
    match tail.char_indices().nth(500) {
        Some((cut, _)) => format!("{}…", &tail[..cut]),
        None => tail,
    }
}

fn root_cause(e: &wasmtime::Error) -> String {
    e.chain().last().map(|c| c.to_string()).unwrap_or_default()
}
