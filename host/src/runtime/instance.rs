//! A live instance of a plugin version, with limits applied to every call.

use super::bindings::Transform;
use super::engine::{EPOCH_TICK, State};
use super::plugin::PluginVersion;
use sluice_plugin_sdk::abi::{self, BatchResult};
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
    /// The instance trapped (panic, limit, timeout): it must be discarded.
    #[error("plugin trapped: {0}")]
    Trap(String),
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
        matches!(self, CallError::Trap(reason) if reason.starts_with(TIMEOUT))
    }
}

const TIMEOUT: &str = "exceeded the time limit";

pub struct Instance {
    pub version: Arc<PluginVersion>,
    store: Store<State>,
    bindings: Transform,
    limits: Limits,
}

impl Instance {
    pub fn new(version: Arc<PluginVersion>, limits: Limits) -> Result<Self, CallError> {
        let (store, bindings) = version
            .instantiate(&limits)
            .map_err(|e| CallError::Trap(format!("{e:#}")))?;
        Ok(Instance {
            version,
            store,
            bindings,
            limits,
        })
    }

    /// Runs `transform` on a packed batch. After `Err(Trap)` the instance's
    /// state is undefined: drop it and build a new one.
    pub fn transform(&mut self, batch: &[u8]) -> Result<BatchResult, CallError> {
        let bindings = &self.bindings;
        let packed = with_deadline(&mut self.store, self.limits.batch_timeout, |s| {
            bindings.call_transform(s, batch)
        })?
        .map_err(CallError::Failed)?;
        let printed = self.store.data().output.take();
        if !printed.is_empty() {
            tracing::debug!(plugin = %self.version.name, "plugin printed: {printed}");
        }
        // The packed result starts with its output count: check it first.
        let outputs = packed
            .get(..4)
            .map_or(0, |n| u32::from_le_bytes(n.try_into().unwrap()) as usize);
        if outputs > self.limits.max_output_records {
            return Err(CallError::Limit(format!(
                "{outputs} outputs for one call, more than limits.max_output_records ({})",
                self.limits.max_output_records
            )));
        }
        if packed.len() > self.limits.max_output_bytes {
            return Err(CallError::Limit(format!(
                "{} bytes of output for one call, more than limits.max_output_mib ({} MiB)",
                packed.len(),
                self.limits.max_output_bytes >> 20
            )));
        }
        let result =
            abi::decode_result(&packed).map_err(|e| CallError::Malformed(e.to_string()))?;
        Ok(result)
    }
}

/// Calls into the guest with an epoch deadline; traps become `CallError::Trap`
/// with a readable reason (timeout and memory limit named as such).
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
        let reason = match e.downcast_ref::<wasmtime::Trap>() {
            Some(wasmtime::Trap::Interrupt) => {
                format!("{TIMEOUT} of {timeout:?} (limits.batch_timeout)")
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
        if printed.is_empty() {
            CallError::Trap(reason)
        } else {
            CallError::Trap(format!(
                "{reason}; the plugin printed: {}",
                last_lines(&printed)
            ))
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
