//! Plugins that cannot load are refused with the file and the reason,
//! before anything connects to Kafka or a database.

use sluice::config::Config;
use sluice_tests::*;
use std::path::Path;

fn load(dir: &Path) -> String {
    let toml = config_toml(dir, "p", "orders", "t", "");
    let config = Config::parse(&toml, Path::new("t.toml")).unwrap();
    sluice::Host::load_plugins(&config)
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default()
}

#[test]
fn corrupt_truncated_or_missing_wasm_is_refused_with_file_and_reason() {
    let good = std::fs::read(plugin_wasm("orders", false)).unwrap();
    let cases: [(&str, Vec<u8>, &str); 3] = [
        (
            "not wasm",
            b"hello, I am a text file".to_vec(),
            "not a WebAssembly component",
        ),
        (
            "truncated",
            good[..good.len() / 2].to_vec(),
            "not a WebAssembly component",
        ),
        (
            "core module",
            b"\0asm\x01\0\0\0".to_vec(),
            "not a WebAssembly component",
        ),
    ];
    for (what, bytes, want) in cases {
        let dir = plugins_dir(&[]);
        std::fs::write(dir.join("orders.wasm"), bytes).unwrap();
        let err = load(&dir);
        assert!(
            err.contains("orders.wasm") && err.contains(want),
            "{what}: {err}"
        );
        assert!(
            err.contains("pipeline 'p': plugin 'orders'"),
            "{what}: {err}"
        );
    }
    let err = load(&plugins_dir(&[]));
    assert!(
        err.contains("orders.wasm") && err.contains("cannot read"),
        "{err}"
    );
    assert!(load(&plugins_dir(&[("orders", &plugin_wasm("orders", false))])).is_empty());
}
