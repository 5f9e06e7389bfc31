//! Calling the plugin for a batch, off the async runtime, with isolation:
//! if the whole-batch call fails, each record is retried alone so one
//! poison record goes to dead letters and the rest are delivered.

use crate::runtime::{CallError, Instance, Limits, PluginVersion};
use sluice_plugin_sdk::abi::BatchResult;
use std::sync::Arc;

pub struct Transformed {
    pub result: BatchResult,
    /// Records whose call trapped or failed: (index in batch, reason).
    pub trapped: Vec<(usize, String)>,
    /// The instance to reuse for the next batch, if still healthy.
    pub instance: Option<Instance>,
}

pub async fn run(
    instance: Option<Instance>,
    version: Arc<PluginVersion>,
    limits: Limits,
    packed: Vec<u8>,
    count: usize,
    single: impl Fn(usize) -> Vec<u8>,
) -> anyhow::Result<Transformed> {
    let v = version.clone();
    let l = limits.clone();
    let (instance, result) = tokio::task::spawn_blocking(move || {
        let mut instance = match instance {
            Some(i) => i,
            None => match Instance::new(v, l) {
                Ok(i) => i,
                Err(e) => return (None, Err(e)),
            },
        };
        let result = instance.transform(&packed);
        let healthy = !matches!(result, Err(CallError::Trap(_)));
        (healthy.then_some(instance), result)
    })
    .await?;
    match result {
        Ok(result) => Ok(Transformed {
            result,
            trapped: vec![],
            instance,
        }),
        Err(e) => {
            tracing::warn!(plugin = ?version, records = count, "batch failed ({e}); retrying record by record");
            let singles: Vec<Vec<u8>> = (0..count).map(single).collect();
            Ok(
                tokio::task::spawn_blocking(move || isolate(instance, &version, &limits, singles))
                    .await?,
            )
        }
    }
}

fn isolate(
    mut instance: Option<Instance>,
    version: &Arc<PluginVersion>,
    limits: &Limits,
    singles: Vec<Vec<u8>>,
) -> Transformed {
    let mut out = Transformed {
        result: BatchResult::default(),
        trapped: vec![],
        instance: None,
    };
    for (i, packed) in singles.iter().enumerate() {
        let mut current = match instance.take() {
            Some(inst) => inst,
            None => match Instance::new(version.clone(), limits.clone()) {
                Ok(inst) => inst,
                Err(e) => {
                    out.trapped.push((i, e.to_string()));
                    continue;
                }
            },
        };
        match current.transform(packed) {
            Ok(r) => {
                let source = i as u32;
                out.result
                    .outputs
                    .extend(r.outputs.into_iter().map(|mut o| {
                        o.source = source;
                        o
                    }));
                out.result.errors.extend(r.errors.into_iter().map(|mut e| {
                    e.source = source;
                    e
                }));
                instance = Some(current);
            }
            Err(e) => {
                let reason = format!(
                    "{e} (plugin {} {}, {})",
                    version.name,
                    version.info.version,
                    version.short_hash()
                );
                out.trapped.push((i, reason));
                if !matches!(e, CallError::Trap(_)) {
                    instance = Some(current);
                }
            }
        }
    }
    out.instance = instance;
    out
}
