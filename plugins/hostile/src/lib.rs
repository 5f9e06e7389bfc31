//! TEST ONLY: a plugin that misbehaves on purpose, so the host's sandbox can
//! be tested. Never route real data through it.
//!
//! Declared outputs (default build):
//! - document `events`: `id` text (required), `value` text, `note` text,
//!   `seq` integer (the last three optional);
//! - document `probes`: `id` text, `result` text (both required);
//! - table `rows`: `id` text(128) primary key, `n` integer, `label` text(16).
//!
//! What each record does depends on its key (UTF-8):
//!
//! | key          | behaviour                                                        |
//! |--------------|------------------------------------------------------------------|
//! | `loop`       | spins forever                                                    |
//! | `bomb`       | allocates and touches 1 MiB blocks until allocation fails        |
//! | `recurse`    | recurses until the wasm stack overflows                          |
//! | `panic`      | `panic!("hostile panic")`                                        |
//! | `trap-on-me` | executes `unreachable`                                           |
//! | `read-file`  | reads `/etc/passwd` (or the path in the value), reports on `probes` |
//! | `socket`     | connects to `127.0.0.1:9092` (or the value), reports on `probes` |
//! | `env`        | counts environment variables and reads `HOME` (or the value), reports on `probes` |
//! | `clock`      | reports the wall clock's Unix seconds on `probes`                |
//! | `random`     | reports a number drawn from WASI randomness on `probes`          |
//! | `flood`      | emits 200,000 `events` documents (20 times the test's limit)     |
//! | `big`        | emits one `events` document whose `note` is 10 MiB long          |
//! | `wrong-type` | emits a `rows` row whose integer `n` is a string                 |
//! | `no-key`     | emits a `rows` row without its primary key `id`                  |
//! | `undeclared` | emits to the undeclared output `undeclared_output`               |
//! | `oversize`   | emits a `rows` row whose `label` is longer than 16 characters    |
//! | other / none | behaves: one `events` document and one `rows` row (see below)    |
//!
//! Probe results are `"ok: <summary>"` if the operation worked and
//! `"denied: <error>"` if it failed; probes never fail the record. A probe
//! record's value, unless it is `{}` or empty, names what to probe.
//!
//! Well-behaved records emit `events` `{id, value}` (value: the record value
//! as lossy UTF-8 text, null if absent) and `rows` `{id, n, label}` (n: the
//! value's length in bytes, label: `"well-behaved"`). `id` is the key (lossy
//! UTF-8), or `p<partition>-o<offset>` if the record has no key; keys longer
//! than 128 characters are rejected.
//!
//! Features (each changes `describe()`; build one `.wasm` per feature):
//! - `describe-panic`: `describe()` panics;
//! - `describe-no-pk`: table `rows` has no primary key;
//! - `describe-dup-field`: table `rows` declares field `id` twice;
//! - `describe-bad-name`: an extra table output named `rows; DROP TABLE x`;
//! - `describe-lie`: declares only `events`, but every record is emitted
//!   (only) to the undeclared output `secret` as `{id, value}`;
//! - `describe-bad-partition`: table `rows` is partitioned by a hash of
//!   `n`, which its primary key (`id`) does not include.

use sluice_plugin_sdk::prelude::*;
use sluice_plugin_sdk::reject;
use std::hint::black_box;

pub struct Hostile;

/// Maximum length of `rows.id` (the primary key).
pub const ID_MAX: u32 = 128;
/// Maximum length of `rows.label`; `oversize` breaks it.
pub const LABEL_MAX: u32 = 16;
/// How many documents `flood` emits for its one record.
pub const FLOOD_COUNT: u64 = 200_000;
/// Length of the `note` that `big` emits: 10 MiB.
pub const BIG_NOTE_BYTES: usize = 10 << 20;

fn events() -> Output {
    Output::document("events")
        .field("id", Type::Text(None))
        .optional("value", Type::Text(None))
        .optional("note", Type::Text(None))
        .optional("seq", Type::Integer)
}

fn probes() -> Output {
    Output::document("probes")
        .field("id", Type::Text(None))
        .field("result", Type::Text(None))
}

fn rows() -> Output {
    let rows = Output::table("rows").field("id", Type::text(ID_MAX));
    let rows = if cfg!(feature = "describe-dup-field") {
        rows.field("id", Type::text(ID_MAX))
    } else {
        rows
    };
    let rows = rows
        .field("n", Type::Integer)
        .field("label", Type::text(LABEL_MAX));
    let rows = if cfg!(feature = "describe-bad-partition") {
        rows.partition_by_hash("n", 4)
    } else {
        rows
    };
    if cfg!(feature = "describe-no-pk") {
        rows
    } else {
        rows.primary_key(["id"])
    }
}

impl Transform for Hostile {
    fn describe() -> Plugin {
        if cfg!(feature = "describe-panic") {
            panic!("hostile describe panic");
        }
        let plugin = Plugin::new("hostile", "1.0.0");
        if cfg!(feature = "describe-lie") {
            return plugin.output(events());
        }
        let plugin = plugin.output(events()).output(probes()).output(rows());
        if cfg!(feature = "describe-bad-name") {
            plugin.output(
                Output::table("rows; DROP TABLE x")
                    .field("id", Type::text(ID_MAX))
                    .primary_key(["id"]),
            )
        } else {
            plugin
        }
    }

    fn process(record: &Record, out: &mut Emitter) -> Result<(), Error> {
        let id = match record.key {
            Some(k) => String::from_utf8_lossy(k).into_owned(),
            None => format!("p{}-o{}", record.partition, record.offset),
        };
        let value = record
            .value
            .map(|v| String::from_utf8_lossy(v).into_owned());
        if cfg!(feature = "describe-lie") {
            return out.emit("secret", json!({ "id": id, "value": value }));
        }
        match record.key.map(|_| id.as_str()) {
            Some("loop") => spin(),
            Some("bomb") => bomb(),
            Some("recurse") => {
                black_box(recurse(black_box(0)));
                Ok(())
            }
            Some("panic") => panic!("hostile panic"),
            Some("trap-on-me") => trap(),
            Some("read-file") => {
                let path = target(&value, "/etc/passwd");
                out.emit("probes", json!({ "id": id, "result": read_file(path) }))
            }
            Some("socket") => {
                let address = target(&value, "127.0.0.1:9092");
                out.emit("probes", json!({ "id": id, "result": socket(address) }))
            }
            Some("env") => {
                let name = target(&value, "HOME");
                out.emit("probes", json!({ "id": id, "result": env(name) }))
            }
            Some("clock") => out.emit("probes", json!({ "id": id, "result": clock() })),
            Some("random") => out.emit("probes", json!({ "id": id, "result": random() })),
            Some("flood") => {
                for seq in 0..FLOOD_COUNT {
                    out.emit("events", json!({ "id": id, "seq": seq }))?;
                }
                Ok(())
            }
            Some("big") => out.emit(
                "events",
                json!({ "id": id, "note": "x".repeat(BIG_NOTE_BYTES) }),
            ),
            Some("wrong-type") => out.emit(
                "rows",
                json!({ "id": id, "n": "not an integer", "label": "wrong-type" }),
            ),
            Some("no-key") => out.emit("rows", json!({ "n": 1, "label": "no-key" })),
            Some("undeclared") => out.emit("undeclared_output", json!({ "id": id })),
            Some("oversize") => out.emit(
                "rows",
                json!({ "id": id, "n": 1, "label": "x".repeat(LABEL_MAX as usize * 4) }),
            ),
            _ => {
                if id.chars().count() > ID_MAX as usize {
                    return Err(reject!("key is longer than {ID_MAX} characters"));
                }
                let n = record.value.map_or(0, <[u8]>::len);
                out.emit("events", json!({ "id": id, "value": value }))?;
                out.emit("rows", json!({ "id": id, "n": n, "label": "well-behaved" }))
            }
        }
    }
}

#[cfg(not(feature = "encoding-v0"))]
export!(Hostile);

/// An SDK before the versioned encoding read the first four bytes as the
/// record count, found the buffer too short for it and failed the batch.
#[cfg(all(target_arch = "wasm32", feature = "encoding-v0"))]
const _: () = {
    struct Unversioned;
    impl sluice_plugin_sdk::guest::Guest for Unversioned {
        fn describe() -> sluice_plugin_sdk::guest::PluginInfo {
            sluice_plugin_sdk::guest::plugin_info(<Hostile as Transform>::describe())
        }
        fn transform(batch: Vec<u8>) -> Result<Vec<u8>, String> {
            let count = batch
                .get(..4)
                .map_or(0, |b| u32::from_le_bytes(b.try_into().unwrap()) as usize);
            if count.saturating_mul(36) > batch.len() {
                return Err("malformed packed batch: record count exceeds buffer".into());
            }
            Ok(Vec::new())
        }
    }
    sluice_plugin_sdk::guest::export_transform!(Unversioned with_types_in sluice_plugin_sdk::guest::bindings);
};

/// Spins forever; `black_box` keeps the optimiser from removing the loop.
fn spin() -> ! {
    let mut i = 0u64;
    loop {
        i = black_box(i.wrapping_add(1));
    }
}

/// Allocates and touches 1 MiB blocks, keeping them all, until allocation
/// fails (which aborts: a trap in wasm).
fn bomb() -> ! {
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    loop {
        let block = black_box(vec![0xA5u8; 1 << 20]);
        blocks.push(block);
        black_box(&mut blocks);
    }
}

/// Recurses until the stack overflows. The work after the call keeps it from
/// becoming a loop or a tail call; the `black_box`ed exit never happens.
/// Frames are small, so wasmtime's own stack limit is what runs out (not
/// Rust's 1 MiB shadow stack in linear memory).
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    if black_box(depth) == u64::MAX {
        return 0;
    }
    black_box(recurse(depth + 1)).wrapping_add(depth)
}

fn trap() -> ! {
    #[cfg(target_arch = "wasm32")]
    core::arch::wasm32::unreachable();
    #[cfg(not(target_arch = "wasm32"))]
    std::process::abort();
}

/// What a probe record asks for: its value, unless that is `{}` or empty.
fn target<'a>(value: &'a Option<String>, default: &'a str) -> &'a str {
    match value.as_deref() {
        Some(v) if !v.is_empty() && v != "{}" => v,
        _ => default,
    }
}

fn read_file(path: &str) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => format!("ok: read {} bytes of {path}", text.len()),
        Err(e) => format!("denied: {e}"),
    }
}

fn socket(address: &str) -> String {
    match std::net::TcpStream::connect(address) {
        Ok(_) => format!("ok: connected to {address}"),
        Err(e) => format!("denied: {e}"),
    }
}

/// `vars_os` rather than `vars`: `vars` panics on a non-UTF-8 variable.
fn env(name: &str) -> String {
    let count = std::env::vars_os().count();
    match std::env::var(name) {
        Ok(v) => format!("ok: {count} environment variables, {name}={v}"),
        Err(e) if count > 0 => format!("ok: {count} environment variables, {name}: {e}"),
        Err(e) => format!("denied: {count} environment variables, {name}: {e}"),
    }
}

fn clock() -> String {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => format!("ok: {}", d.as_secs()),
        Err(e) => format!("denied: {e}"),
    }
}

/// `RandomState` keys its hasher from WASI randomness.
fn random() -> String {
    use std::hash::BuildHasher;
    let state = std::collections::hash_map::RandomState::new();
    format!("ok: {:016x}", state.hash_one(0u8))
}

#[cfg(all(
    test,
    not(any(
        feature = "describe-panic",
        feature = "describe-no-pk",
        feature = "describe-dup-field",
        feature = "describe-bad-name",
        feature = "describe-lie",
        feature = "describe-bad-partition"
    ))
))]
mod tests {
    use super::*;
    use sluice_plugin_sdk::testing::{TestRecord, run};

    #[test]
    fn declares_events_probes_and_rows() {
        let plugin = Hostile::describe();
        plugin.validate().unwrap();
        assert_eq!(
            (plugin.name.as_str(), plugin.version.as_str()),
            ("hostile", "1.0.0")
        );
        let names: Vec<_> = plugin.outputs.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["events", "probes", "rows"]);
        assert_eq!(plugin.get_output("rows").unwrap().primary_key, ["id"]);
    }

    #[test]
    fn ordinary_keys_behave() {
        let out = run::<Hostile>(&[
            TestRecord::value("hello").key("k1"),
            TestRecord::value("héllo wörld").key("another-key"),
        ]);
        assert!(out.rejected.is_empty());
        assert_eq!(
            out.on("events"),
            vec![
                &json!({"id": "k1", "value": "hello"}),
                &json!({"id": "another-key", "value": "héllo wörld"}),
            ]
        );
        assert_eq!(
            out.on("rows"),
            vec![
                &json!({"id": "k1", "n": 5, "label": "well-behaved"}),
                &json!({"id": "another-key", "n": 13, "label": "well-behaved"}),
            ]
        );
        assert!(out.on("probes").is_empty());
        let sources: Vec<_> = out.outputs.iter().map(|(_, _, s)| *s).collect();
        assert_eq!(sources, [0, 0, 1, 1]);
    }

    #[test]
    fn missing_key_or_value_still_behaves() {
        let mut no_key = TestRecord::value("v");
        no_key.partition = 3;
        no_key.offset = 42;
        let no_value = TestRecord {
            key: Some(b"k".to_vec()),
            ..Default::default()
        };
        let out = run::<Hostile>(&[no_key, no_value]);
        assert!(out.rejected.is_empty());
        assert_eq!(
            out.on("events"),
            vec![
                &json!({"id": "p3-o42", "value": "v"}),
                &json!({"id": "k", "value": null}),
            ]
        );
        assert_eq!(
            out.on("rows")[1],
            &json!({"id": "k", "n": 0, "label": "well-behaved"})
        );
    }

    #[test]
    fn too_long_keys_are_rejected_not_emitted() {
        let out = run::<Hostile>(&[
            TestRecord::value("v").key("k".repeat(ID_MAX as usize + 1)),
            TestRecord::value("v").key("k".repeat(ID_MAX as usize)),
        ]);
        assert_eq!(
            out.rejected,
            [(0, format!("key is longer than {ID_MAX} characters"))]
        );
        assert_eq!(out.on("rows").len(), 1);
    }
}
