//! Native test harness: run a plugin's `Transform` on plain records with
//! `cargo test`, through the same packed encoding the host uses, and check
//! every output against the plugin's own declaration.

use crate::abi::{self, Headers, Record};
use crate::{Transform, transform_packed};
use serde_json::Value;

/// An input record for tests. Only the value is required.
#[derive(Debug, Clone, Default)]
pub struct TestRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl TestRecord {
    pub fn value(value: impl Into<Vec<u8>>) -> Self {
        TestRecord {
            topic: "test".into(),
            value: Some(value.into()),
            ..Default::default()
        }
    }

    pub fn json(value: Value) -> Self {
        Self::value(value.to_string())
    }

    /// A record with a key and no value: Kafka's delete marker.
    pub fn tombstone(key: impl Into<Vec<u8>>) -> Self {
        TestRecord {
            topic: "test".into(),
            key: Some(key.into()),
            ..Default::default()
        }
    }

    pub fn key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    pub fn header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.into(), Some(value.into())));
        self
    }
}

/// What a test run produced.
#[derive(Debug, Default)]
pub struct TestOutput {
    /// (output name, normalised value, source record index), in emit order.
    pub outputs: Vec<(String, Value, usize)>,
    /// (source record index, reason) for rejected records.
    pub rejected: Vec<(usize, String)>,
    /// (output name, normalised key fields, source record index) of deletes,
    /// in emit order.
    pub deletes: Vec<(String, Value, usize)>,
}

impl TestOutput {
    /// The values emitted on one output.
    pub fn on(&self, output: &str) -> Vec<&Value> {
        self.outputs
            .iter()
            .filter(|(o, ..)| o == output)
            .map(|(_, v, _)| v)
            .collect()
    }
}

/// Runs `T` on `records`. Panics, like a failed assertion, if the plugin's
/// declaration is invalid or an output breaks it (the host would send such
/// an output to dead letters).
pub fn run<T: Transform>(records: &[TestRecord]) -> TestOutput {
    let plugin = T::describe();
    if let Err(e) = plugin.validate() {
        panic!("plugin '{}' declares an invalid schema: {e}", plugin.name);
    }
    let mut w = abi::BatchWriter::default();
    for (i, r) in records.iter().enumerate() {
        let record = Record {
            topic: &r.topic,
            partition: r.partition,
            offset: if r.offset == 0 { i as i64 } else { r.offset },
            timestamp: r.timestamp,
            key: r.key.as_deref(),
            value: r.value.as_deref(),
            headers: Headers::EMPTY,
        };
        w.push(
            &record,
            r.headers.iter().map(|(n, v)| (n.as_str(), v.as_deref())),
        );
    }
    let packed = transform_packed::<T>(&w.finish()).expect("transform failed the whole batch");
    let result = abi::decode_result(&packed).expect("result encoding");
    let mut out = TestOutput::default();
    for o in result.outputs {
        let decl = plugin
            .get_output(&o.output)
            .unwrap_or_else(|| panic!("output '{}' is not declared", o.output));
        let mut value: Value = serde_json::from_slice(&o.value).expect("output is JSON");
        if o.op == abi::Op::Delete {
            let key = decl.check_key(value).unwrap_or_else(|e| {
                panic!("delete on '{}' from record {}: {e}", o.output, o.source)
            });
            out.deletes
                .push((o.output, Value::Object(key), o.source as usize));
            continue;
        }
        if let Err(e) = decl.check_value(&mut value) {
            panic!(
                "output '{}' from record {} breaks its schema: {e}",
                o.output, o.source
            );
        }
        out.outputs.push((o.output, value, o.source as usize));
    }
    out.rejected = result
        .errors
        .into_iter()
        .map(|e| (e.source as usize, e.reason))
        .collect();
    out
}
