//! The golden vectors of the packed encoding (`tests/vectors/`, specified in
//! `docs/plugin-abi.md`): this SDK must decode each valid one to its JSON,
//! encode it back to the same bytes, and refuse each invalid one.

mod support;

use sluice_plugin_sdk::abi::{self, Encoding};
use sluice_plugin_sdk::prelude::*;
use std::path::Path;

#[test]
fn golden_vectors_decode_encode_and_refuse_as_specified() {
    let checked = support::check_all();
    assert!(checked >= 20, "only {checked} vectors");
}

#[test]
fn every_vector_has_its_bytes_and_meaning() {
    let mut stems = std::collections::BTreeMap::<String, Vec<String>>::new();
    for entry in std::fs::read_dir(support::dir()).unwrap() {
        let file = entry.unwrap().file_name().into_string().unwrap();
        let (stem, ext) = file.rsplit_once('.').expect("NAME.hex or NAME.json");
        stems.entry(stem.into()).or_default().push(ext.into());
    }
    for (stem, mut exts) in stems {
        exts.sort();
        assert_eq!(exts, ["hex", "json"], "{stem}");
    }
    for v in support::vectors() {
        let description = v.json["description"].as_str().unwrap_or_default();
        assert!(!description.is_empty(), "{}: no description", v.name);
        let prefix = match v.json["encoding"].as_str() {
            _ if v.json.get("error").is_some() => "bad-",
            Some("batch") => "batch-",
            _ => "result-",
        };
        assert!(
            v.name.starts_with(prefix),
            "{}: name it {prefix}...",
            v.name
        );
    }
}

/// The cases issue 12 asks for, so none is dropped by accident.
#[test]
fn the_vectors_cover_the_required_cases() {
    let names: Vec<String> = support::vectors().into_iter().map(|v| v.name).collect();
    for required in [
        "batch-empty",
        "batch-one-record",
        "batch-absent-and-empty",
        "batch-headers",
        "batch-unicode",
        "batch-binary-and-limits",
        "result-empty",
        "result-outputs-and-errors",
        "bad-batch-truncated",
        "bad-batch-trailing-bytes",
        "bad-batch-version-0",
        "bad-batch-version-2",
        "bad-batch-topic-not-utf8",
        "bad-batch-count-exceeds-buffer",
        "bad-result-truncated",
        "bad-result-trailing-bytes",
        "bad-result-version-0",
        "bad-result-version-3",
        "result-deletes",
        "result-v1-outputs-and-errors",
        "bad-result-unknown-op",
        "bad-result-reason-not-utf8",
    ] {
        assert!(names.iter().any(|n| n == required), "missing {required}");
    }
}

fn spec() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/plugin-abi.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Each `<!-- vector: NAME -->` in the spec is followed by a fenced block
/// whose hex is exactly that vector.
#[test]
fn the_spec_examples_are_golden_vectors() {
    let spec = spec();
    let vectors = support::vectors();
    let mut examples = 0;
    for (at, _) in spec.match_indices("<!-- vector: ") {
        let rest = &spec[at + "<!-- vector: ".len()..];
        let name = &rest[..rest.find(" -->").expect("-->")];
        let block = rest
            .split("```")
            .nth(1)
            .expect("a fenced block after the marker");
        let block = block.split_once('\n').map_or("", |(_, body)| body);
        let bytes = support::parse_hex(block).unwrap_or_else(|e| panic!("spec, {name}: {e}"));
        let vector = vectors
            .iter()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("spec names vector {name}, which does not exist"));
        assert_eq!(
            bytes, vector.bytes,
            "the spec's {name} differs from the vector"
        );
        examples += 1;
    }
    assert!(examples >= 1, "the spec has no worked example");
}

#[test]
fn every_vector_is_listed_in_the_spec() {
    let spec = spec();
    for v in support::vectors() {
        assert!(
            spec.contains(&format!("`{}`", v.name)),
            "docs/plugin-abi.md does not list `{}`",
            v.name
        );
    }
}

struct Echo;

impl Transform for Echo {
    fn describe() -> Plugin {
        Plugin::new("echo", "1.0.0")
    }

    fn process(record: &Record, out: &mut Emitter) -> Result<(), Error> {
        match record.value {
            Some(_) => out.emit("o", json!({ "offset": record.offset })),
            None => Err(Error("record has no value".into())),
        }
    }
}

/// What a plugin does with each batch vector: a valid batch gives a
/// result of this version; an invalid one fails the call with the
/// decoder's reason, which the host shows as "plugin failed the batch".
#[test]
fn plugins_answer_batch_vectors_in_this_version() {
    for v in support::vectors() {
        if v.json["encoding"] != "batch" {
            continue;
        }
        let answer = sluice_plugin_sdk::transform_packed::<Echo>(&v.bytes);
        match v.json.get("error") {
            None => {
                let packed = answer.unwrap_or_else(|e| panic!("{}: {e}", v.name));
                assert_eq!(packed[..4], abi::RESULT_HEADER, "{}", v.name);
                let result = abi::decode_result(&packed).unwrap();
                let records = v.json["batch"].as_array().unwrap().len();
                assert_eq!(result.outputs.len() + result.errors.len(), records);
            }
            Some(_) => {
                let e = answer.expect_err(&v.name);
                let expected = abi::decode_batch(&v.bytes).unwrap_err();
                assert_eq!(expected.encoding, Encoding::Batch);
                assert_eq!(e, expected.to_string(), "{}", v.name);
            }
        }
    }
}
