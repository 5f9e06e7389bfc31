//! Calling the plugin for a batch, off the async runtime, with isolation.
//!
//! If the whole-batch call fails (trap, limit, error), the batch is split in
//! halves until the failing records stand alone: they go to dead letters
//! with the reason, the rest is delivered. A time-out is handled record by
//! record instead, so a looping record costs two time limits (the whole
//! batch's, then its own), not one per split level. A trapped instance is
//! discarded and rebuilt from the pre-instantiated component.

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
    let mut plugin = Plugin {
        instance,
        version,
        limits,
    };
    let isolated = isolate(&mut plugin, count, pack).await?;
    Ok(Transformed {
        result: isolated.result,
        trapped: isolated.trapped,
        instance: plugin.instance,
        isolated: isolated.split,
    })
}

/// One call on a packed (sub-)batch: the plugin, or a double in tests.
trait Call {
    /// `Err` only if the call could not be made at all.
    async fn call(&mut self, packed: Vec<u8>) -> anyhow::Result<Result<BatchResult, CallError>>;

    /// Why a record failed, for its dead letter.
    fn reason(&self, e: &CallError) -> String;
}

/// What `isolate` made of a batch.
struct Isolated {
    result: BatchResult,
    trapped: Vec<(usize, String)>,
    split: bool,
}

/// Calls `plugin` on the whole batch, then on halves of a failing part
/// until its failing records stand alone.
async fn isolate(
    plugin: &mut impl Call,
    count: usize,
    pack: impl Fn(Range<usize>) -> Vec<u8>,
) -> anyhow::Result<Isolated> {
    let mut out = Isolated {
        result: BatchResult::default(),
        trapped: vec![],
        split: false,
    };
    let mut failing = match plugin.call(pack(0..count)).await? {
        Ok(result) => {
            out.result = result;
            return Ok(out);
        }
        Err(e) => {
            tracing::warn!(
                records = count,
                "batch failed ({e}); isolating the failing records"
            );
            out.split = true;
            vec![(0..count, e)]
        }
    };
    while let Some((range, error)) = failing.pop() {
        if range.len() == 1 || error.is_timeout() {
            for i in range.clone() {
                let result = if range.len() == 1 {
                    Err(error.clone())
                } else {
                    plugin.call(pack(i..i + 1)).await?
                };
                match result {
                    Ok(r) => merge(&mut out.result, r, i),
                    Err(e) => out.trapped.push((i, plugin.reason(&e))),
                }
            }
            continue;
        }
        let mid = range.start + range.len() / 2;
        for half in [mid..range.end, range.start..mid] {
            match plugin.call(pack(half.clone())).await? {
                Ok(r) => merge(&mut out.result, r, half.start),
                Err(e) => failing.push((half, e)),
            }
        }
    }
    Ok(out)
}

/// The real plugin: one instance, rebuilt after a trap.
struct Plugin {
    instance: Option<Instance>,
    version: Arc<PluginVersion>,
    limits: Limits,
}

impl Call for Plugin {
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

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_plugin_sdk::abi::{self, OutputRecord, Record};

    /// A plugin double: one output per record, except that a batch holding
    /// a record whose offset is in `bad` fails whole (as a trap would), and
    /// one holding an offset in `slow` times out.
    struct Double {
        bad: Vec<i64>,
        slow: Vec<i64>,
        calls: usize,
    }

    impl Call for Double {
        async fn call(
            &mut self,
            packed: Vec<u8>,
        ) -> anyhow::Result<Result<BatchResult, CallError>> {
            self.calls += 1;
            let records = abi::decode_batch(&packed).unwrap();
            if let Some(r) = records.iter().find(|r| self.slow.contains(&r.offset)) {
                return Ok(Err(CallError::Timeout(format!(
                    "offset {} looped",
                    r.offset
                ))));
            }
            if let Some(r) = records.iter().find(|r| self.bad.contains(&r.offset)) {
                return Ok(Err(CallError::Trap(format!("offset {} trapped", r.offset))));
            }
            let outputs = records
                .iter()
                .enumerate()
                .map(|(i, r)| OutputRecord {
                    source: i as u32,
                    op: Default::default(),
                    output: "o".into(),
                    value: r.offset.to_string().into_bytes(),
                })
                .collect();
            Ok(Ok(BatchResult {
                outputs,
                errors: vec![],
            }))
        }

        fn reason(&self, e: &CallError) -> String {
            e.to_string()
        }
    }

    /// Records at offsets 0..count, packed by range.
    fn pack(range: Range<usize>) -> Vec<u8> {
        let records: Vec<Record> = range.map(crate::router::testing::record).collect();
        abi::encode_batch(&records)
    }

    /// Each output's (source index, the offset it says it came from).
    fn sources(result: &BatchResult) -> Vec<(u32, i64)> {
        let mut s: Vec<_> = result
            .outputs
            .iter()
            .map(|o| (o.source, String::from_utf8_lossy(&o.value).parse().unwrap()))
            .collect();
        s.sort();
        s
    }

    #[tokio::test]
    async fn a_failing_batch_is_halved_until_its_failing_records_stand_alone() {
        let mut plugin = Double {
            bad: vec![7, 42],
            slow: vec![],
            calls: 0,
        };
        let out = isolate(&mut plugin, 100, pack).await.unwrap();
        assert!(out.split);
        let trapped: Vec<usize> = out.trapped.iter().map(|(i, _)| *i).collect();
        assert_eq!(trapped, [7, 42]);
        assert!(
            out.trapped[0].1.contains("offset 7 trapped"),
            "{:?}",
            out.trapped
        );
        let got = sources(&out.result);
        assert_eq!(got.len(), 98);
        assert!(
            got.iter().all(|&(source, offset)| source as i64 == offset),
            "every output points at the record it came from"
        );
        // Two failing records in 100: about 2 x 2 x log2(100) calls, not 100.
        assert!(plugin.calls <= 30, "{} calls", plugin.calls);
    }

    #[tokio::test]
    async fn a_timed_out_part_is_retried_record_by_record_not_halved() {
        let mut plugin = Double {
            bad: vec![],
            slow: vec![3],
            calls: 0,
        };
        let out = isolate(&mut plugin, 8, pack).await.unwrap();
        let trapped: Vec<usize> = out.trapped.iter().map(|(i, _)| *i).collect();
        assert_eq!(trapped, [3]);
        assert_eq!(sources(&out.result).len(), 7);
        assert_eq!(
            plugin.calls,
            1 + 8,
            "the whole batch, then each record once"
        );
    }

    #[tokio::test]
    async fn a_healthy_batch_is_one_call() {
        let mut plugin = Double {
            bad: vec![],
            slow: vec![],
            calls: 0,
        };
        let out = isolate(&mut plugin, 50, pack).await.unwrap();
        assert!(!out.split && out.trapped.is_empty());
        assert_eq!((sources(&out.result).len(), plugin.calls), (50, 1));
    }
}
