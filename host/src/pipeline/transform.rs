//! Calling the plugin for a batch, off the async runtime, with isolation.
//!
//! If the whole-batch call fails (trap, limit, error), the batch is split in
//! halves until the failing records stand alone: they go to dead letters
//! with the reason, the rest is delivered. A time-out is handled record by
//! record instead, so a looping record costs two time limits (the whole
//! batch's, then its own), not one per split level. A trapped instance is discarded and rebuilt from the
//! pre-instantiated component.

use crate::runtime::{CallError, Instance, Limits, PluginVersion, call_once};
use sluice_plugin_sdk::abi::BatchResult;
use std::ops::Range;
use std::sync::Arc;

pub struct Transformed {
    pub result: BatchResult,
    /// Records that failed alone: (index in batch, reason).
    pub trapped: Vec<(usize, String)>,
    /// The instance to reuse for the next batch, if still healthy.
    pub instance: Option<Instance>,
    /// The whole-batch call failed and the batch was split.
    pub isolated: bool,
}

/// Transforms records `0..count`; `pack(range)` encodes a sub-batch.
pub async fn run(
    instance: Option<Instance>,
    version: Arc<PluginVersion>,
    limits: Limits,
    count: usize,
    pack: impl Fn(Range<usize>) -> Vec<u8>,
) -> anyhow::Result<Transformed> {
    let mut caller = Caller {
        instance,
        version,
        limits,
    };
    let mut out = Transformed {
        result: BatchResult::default(),
        trapped: vec![],
        instance: None,
        isolated: false,
    };
    let first = caller.call(pack(0..count)).await?;
    let mut failing = match first {
        Ok(result) => {
            out.result = result;
            out.instance = caller.instance;
            return Ok(out);
        }
        Err(e) => {
            tracing::warn!(plugin = %caller.version.name, records = count,
                "batch failed ({e}); isolating the failing records");
            out.isolated = true;
            vec![(0..count, e)]
        }
    };
    while let Some((range, error)) = failing.pop() {
        if range.len() == 1 || error.is_timeout() {
            for i in range.clone() {
                let result = if range.len() == 1 {
                    Err(error.clone())
                } else {
                    caller.call(pack(i..i + 1)).await?
                };
                match result {
                    Ok(r) => merge(&mut out.result, r, i),
                    Err(e) => out.trapped.push((i, caller.reason(&e))),
                }
            }
            continue;
        }
        let mid = range.start + range.len() / 2;
        for half in [mid..range.end, range.start..mid] {
            match caller.call(pack(half.clone())).await? {
                Ok(r) => merge(&mut out.result, r, half.start),
                Err(e) => failing.push((half, e)),
            }
        }
    }
    out.instance = caller.instance;
    Ok(out)
}

struct Caller {
    instance: Option<Instance>,
    version: Arc<PluginVersion>,
    limits: Limits,
}

impl Caller {
    /// One call on a blocking thread; a trapped instance is dropped.
    async fn call(&mut self, packed: Vec<u8>) -> anyhow::Result<Result<BatchResult, CallError>> {
        let instance = self.instance.take();
        let (version, limits) = (self.version.clone(), self.limits.clone());
        let (instance, result) =
            tokio::task::spawn_blocking(move || call_once(instance, version, limits, &packed))
                .await?;
        self.instance = instance;
        Ok(result)
    }

    fn reason(&self, e: &CallError) -> String {
        let v = &self.version;
        format!(
            "{e} (plugin {} {}, {})",
            v.name,
            v.info.version,
            v.short_hash()
        )
    }
}

/// Adds a sub-batch's result, its record indices shifted by `offset`.
fn merge(into: &mut BatchResult, r: BatchResult, offset: usize) {
    let offset = offset as u32;
    into.outputs.extend(r.outputs.into_iter().map(|mut o| {
        o.source += offset;
        o
    }));
    into.errors.extend(r.errors.into_iter().map(|mut e| {
        e.source += offset;
        e
    }));
}
