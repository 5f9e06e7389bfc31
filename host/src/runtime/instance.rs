//! A live instance of a plugin version, with limits applied to every call.

use super::bindings::Exports;
use super::call::{CallError, Limits, with_deadline};
use super::engine::State;
use super::plugin::PluginVersion;
use sluice_plugin_sdk::abi::{self, BatchResult};
use std::sync::Arc;
use wasmtime::Store;

pub struct Instance {
    pub version: Arc<PluginVersion>,
    store: Store<State>,
    bindings: Exports,
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
        // The packed result's header holds its output count: check it first
        // (no count, e.g. another ABI version: decode_result says why below).
        let outputs = abi::result_output_count(&packed).map_or(0, |n| n as usize);
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

/// One blocking call, on `instance` or a new one; returns the instance if
/// it is still healthy (a trapped one is dropped).
pub fn call_once(
    instance: Option<Instance>,
    version: Arc<PluginVersion>,
    limits: Limits,
    packed: &[u8],
) -> (Option<Instance>, Result<BatchResult, CallError>) {
    let mut instance = match instance {
        Some(i) => i,
        None => match Instance::new(version, limits) {
            Ok(i) => i,
            Err(e) => return (None, Err(e)),
        },
    };
    let result = instance.transform(packed);
    let healthy = !result.as_ref().is_err_and(CallError::discards_instance);
    (healthy.then_some(instance), result)
}
