//! Reads and checks the golden vectors of the packed encoding
//! (`plugin-sdk/tests/vectors/`, specified in `docs/plugin-abi.md`).
//!
//! Shared by the SDK's test (`plugin-sdk/tests/abi_vectors.rs`) and the
//! host's (`host/tests/abi_vectors.rs`, through `#[path]`), so both check the
//! same things the same way. Uses only `sluice_plugin_sdk` and `serde_json`.

#![allow(dead_code)]

use serde_json::Value;
use sluice_plugin_sdk::abi::{
    self, BatchResult, BatchWriter, DecodeError, Encoding, Headers, Op, OutputRecord, Problem,
    Record, RecordError,
};
use std::path::{Path, PathBuf};

/// The vectors' folder. The SDK and the host are siblings in the repository,
/// so the same relative path works from either crate.
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugin-sdk/tests/vectors")
}

/// One vector: `NAME.hex` (the bytes) and `NAME.json` (what they mean).
pub struct Vector {
    pub name: String,
    pub bytes: Vec<u8>,
    pub json: Value,
}

/// Every vector, by name.
pub fn vectors() -> Vec<Vector> {
    let dir = dir();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter_map(|file| file.strip_suffix(".json").map(str::to_owned))
        .collect();
    names.sort();
    assert!(!names.is_empty(), "no vectors in {}", dir.display());
    names
        .into_iter()
        .map(|name| {
            let read = |ext: &str| {
                let path = dir.join(format!("{name}.{ext}"));
                std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            };
            let bytes = parse_hex(&read("hex")).unwrap_or_else(|e| panic!("{name}.hex: {e}"));
            let json =
                serde_json::from_str(&read("json")).unwrap_or_else(|e| panic!("{name}.json: {e}"));
            Vector { name, bytes, json }
        })
        .collect()
}

/// The `.hex` syntax: `#` starts a comment to the end of the line; what is
/// left, without whitespace, is an even number of hex digits.
pub fn parse_hex(text: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = text
        .lines()
        .flat_map(|line| line.split('#').next().unwrap().bytes())
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    if !digits.len().is_multiple_of(2) {
        return Err("odd number of hex digits".into());
    }
    digits
        .chunks(2)
        .map(|pair| {
            let pair = std::str::from_utf8(pair).map_err(|e| e.to_string())?;
            u8::from_str_radix(pair, 16).map_err(|_| format!("not hex: {pair:?}"))
        })
        .collect()
}

/// A decoded record, owned, to compare with the JSON.
#[derive(Debug, PartialEq, Eq)]
pub struct OwnedRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl OwnedRecord {
    pub fn of(r: &Record<'_>) -> Self {
        OwnedRecord {
            topic: r.topic.into(),
            partition: r.partition,
            offset: r.offset,
            timestamp: r.timestamp,
            key: r.key.map(<[u8]>::to_vec),
            value: r.value.map(<[u8]>::to_vec),
            headers: r
                .headers
                .iter()
                .map(|(n, v)| (n.into(), v.map(<[u8]>::to_vec)))
                .collect(),
        }
    }

    fn from_json(j: &Value) -> Self {
        OwnedRecord {
            topic: text(&j["topic"]),
            partition: j["partition"].as_i64().expect("partition") as i32,
            offset: j["offset"].as_i64().expect("offset"),
            timestamp: (!j["timestamp"].is_null()).then(|| j["timestamp"].as_i64().unwrap()),
            key: opt_bytes(&j["key"]),
            value: opt_bytes(&j["value"]),
            headers: j["headers"]
                .as_array()
                .expect("headers")
                .iter()
                .map(|h| (text(&h["name"]), opt_bytes(&h["value"])))
                .collect(),
        }
    }
}

fn text(j: &Value) -> String {
    j.as_str()
        .unwrap_or_else(|| panic!("not a string: {j}"))
        .into()
}

/// Bytes in the JSON: a string (its UTF-8) or `{"hex": "..."}`.
fn bytes(j: &Value) -> Vec<u8> {
    match j {
        Value::String(s) => s.as_bytes().to_vec(),
        Value::Object(o) => parse_hex(o["hex"].as_str().expect("hex string")).unwrap(),
        _ => panic!("not bytes: {j}"),
    }
}

/// `null` is absent.
fn opt_bytes(j: &Value) -> Option<Vec<u8>> {
    (!j.is_null()).then(|| bytes(j))
}

fn result_from_json(j: &Value) -> BatchResult {
    BatchResult {
        outputs: j["outputs"]
            .as_array()
            .expect("outputs")
            .iter()
            .map(|o| OutputRecord {
                source: o["source"].as_u64().expect("source") as u32,
                op: match o["op"].as_str() {
                    None | Some("upsert") => Op::Upsert,
                    Some("delete") => Op::Delete,
                    Some(other) => panic!("unknown op {other:?}"),
                },
                output: text(&o["output"]),
                value: bytes(&o["value"]),
            })
            .collect(),
        errors: j["errors"]
            .as_array()
            .expect("errors")
            .iter()
            .map(|e| RecordError {
                source: e["source"].as_u64().expect("source") as u32,
                reason: text(&e["reason"]),
            })
            .collect(),
    }
}

/// Encodes records the way the host's pipeline does: a `BatchWriter` sized
/// up front, headers passed beside each record.
pub fn encode_records(records: &[OwnedRecord]) -> Vec<u8> {
    let size = records
        .iter()
        .map(|r| r.value.as_ref().map_or(0, Vec::len) + 64);
    let mut w = BatchWriter::with_capacity(size.sum());
    for r in records {
        let record = Record {
            topic: &r.topic,
            partition: r.partition,
            offset: r.offset,
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
    assert_eq!(w.len(), records.len());
    w.finish()
}

/// The error class a vector names (`"error"` in its JSON) for a problem.
pub fn class(p: Problem) -> &'static str {
    match p {
        Problem::Truncated => "truncated",
        Problem::TrailingBytes => "trailing-bytes",
        Problem::InvalidUtf8 => "invalid-utf8",
        Problem::CountExceedsBuffer => "count-exceeds-buffer",
        Problem::WrongEncoding => "wrong-encoding",
        Problem::Version(_) => "version",
        Problem::UnknownOp => "unknown-op",
        _ => "unknown",
    }
}

/// Checks one vector: a valid one decodes to its JSON and encodes (from the
/// JSON, and again from what was decoded) to its bytes exactly; an invalid
/// one is refused for the reason it names. Returns what went wrong.
pub fn check(v: &Vector) -> Result<(), String> {
    let encoding = match v.json["encoding"].as_str() {
        Some("batch") => Encoding::Batch,
        Some("result") => Encoding::Result,
        other => return Err(format!("unknown encoding {other:?}")),
    };
    if let Some(error) = v.json.get("error") {
        let got = match encoding {
            Encoding::Batch => abi::decode_batch(&v.bytes).map(|_| ()),
            Encoding::Result => abi::decode_result(&v.bytes).map(|_| ()),
        };
        return check_refused(v, got, error.as_str().unwrap_or_default());
    }
    // Results of an older version are still read (never written again).
    let version = v.json["version"].as_u64().unwrap_or_default();
    let current = u64::from(encoding.version());
    let readable = match encoding {
        Encoding::Batch => current..=current,
        Encoding::Result => u64::from(abi::OLDEST_RESULT_VERSION)..=current,
    };
    if !readable.contains(&version) {
        return Err(format!("version {version} is not one this SDK reads"));
    }
    match encoding {
        Encoding::Batch => {
            let expected: Vec<OwnedRecord> = v.json["batch"]
                .as_array()
                .ok_or("no \"batch\" array")?
                .iter()
                .map(OwnedRecord::from_json)
                .collect();
            let decoded = abi::decode_batch(&v.bytes).map_err(|e| format!("decode: {e}"))?;
            let owned: Vec<_> = decoded.iter().map(OwnedRecord::of).collect();
            if owned != expected {
                return Err(format!("decoded {owned:#?}\nexpected {expected:#?}"));
            }
            same_bytes(
                "encode_batch(decoded)",
                &abi::encode_batch(&decoded),
                &v.bytes,
            )?;
            same_bytes("BatchWriter(json)", &encode_records(&expected), &v.bytes)
        }
        Encoding::Result => {
            let expected = result_from_json(&v.json["result"]);
            let decoded = abi::decode_result(&v.bytes).map_err(|e| format!("decode: {e}"))?;
            if decoded != expected {
                return Err(format!("decoded {decoded:#?}\nexpected {expected:#?}"));
            }
            let count = abi::result_output_count(&v.bytes);
            if count != Some(expected.outputs.len() as u32) {
                return Err(format!("result_output_count: {count:?}"));
            }
            if version < current {
                return Ok(());
            }
            same_bytes(
                "encode_result(json)",
                &abi::encode_result(&expected),
                &v.bytes,
            )
        }
    }
}

fn check_refused(v: &Vector, got: Result<(), DecodeError>, error: &str) -> Result<(), String> {
    let e = match got {
        Ok(()) => return Err(format!("decoded, but must be refused ({error})")),
        Err(e) => e,
    };
    if class(e.problem) != error {
        return Err(format!(
            "refused as {:?} ({e}), expected {error}",
            e.problem
        ));
    }
    if let Problem::Version(found) = e.problem {
        let named = v.json["found_version"].as_u64();
        if named != Some(u64::from(found)) {
            return Err(format!("found version {found}, the JSON says {named:?}"));
        }
        let message = e.to_string();
        let both = [found, v_encoding(v).version()].map(|n| format!("version {n}"));
        if !both.iter().all(|n| message.contains(n)) {
            return Err(format!(
                "the message does not name both versions: {message}"
            ));
        }
    }
    Ok(())
}

fn same_bytes(what: &str, got: &[u8], expected: &[u8]) -> Result<(), String> {
    if got == expected {
        return Ok(());
    }
    let at = got
        .iter()
        .zip(expected)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(expected.len()));
    Err(format!(
        "{what}: {} bytes, expected {}; first difference at byte {at}",
        got.len(),
        expected.len()
    ))
}

/// Checks every vector, and panics listing all that fail.
pub fn check_all() -> usize {
    let vectors = vectors();
    let failures: Vec<String> = vectors
        .iter()
        .filter_map(|v| check(v).err().map(|e| format!("{}: {e}", v.name)))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    vectors.len()
}

fn v_encoding(v: &Vector) -> Encoding {
    match v.json["encoding"].as_str() {
        Some("batch") => Encoding::Batch,
        _ => Encoding::Result,
    }
}
