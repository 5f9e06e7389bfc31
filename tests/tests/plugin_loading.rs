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
    let cases: [(&str, Vec<u8>, &str); 4] = [
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
        (
            "50 MiB file",
            vec![0; 50 << 20],
            "52428800 bytes is larger than the 33554432-byte limit",
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

#[test]
fn compiled_plugins_are_cached_so_a_restart_does_not_recompile() {
    let dir = plugins_dir(&[("orders", &plugin_wasm("orders", false))]);
    let toml = config_toml(&dir, "p", "orders", "t", "");
    let config = Config::parse(&toml, Path::new("t.toml")).unwrap();
    let cache = config.state_dir.join("compiled");
    let timed = || {
        let started = std::time::Instant::now();
        let registry = sluice::Host::load_plugins(&config).unwrap();
        assert_eq!(registry.current("orders").unwrap().info.name, "orders");
        started.elapsed()
    };
    let cold = timed();
    let entries: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert!(entries[0].extension().is_some_and(|e| e == "cwasm"));
    let warm = timed();
    println!(
        "load with compile {cold:?}, from the cache {warm:?} ({:.1}x faster)",
        cold.as_secs_f64() / warm.as_secs_f64()
    );
    assert!(warm < cold, "cache hit {warm:?} vs compile {cold:?}");
    // A damaged cache entry is recompiled, never trusted.
    std::fs::write(&entries[0], b"garbage").unwrap();
    timed();
    assert!(std::fs::read(&entries[0]).unwrap().len() > 1000);
}

/// Compiled plugins are native code: an entry this host did not write
/// (one byte changed, or another plugin's valid entry put in its place) is
/// discarded and the plugin compiled again from its `.wasm`. The state
/// folder, the cache, its key and its entries are the owner's only.
#[test]
fn a_tampered_or_swapped_compiled_plugin_is_recompiled_not_run() {
    use std::os::unix::fs::PermissionsExt;
    let dir = plugins_dir(&[
        ("orders", &plugin_wasm("orders", false)),
        ("uppercase", &plugin_wasm("uppercase", false)),
    ]);
    let toml = config_toml(&dir, "p", "orders", "t", "");
    let config = Config::parse(&toml, Path::new("t.toml")).unwrap();
    let load = || sluice::Host::load_plugins(&config).unwrap();
    let entry_of = |registry: &sluice::runtime::Registry, name: &str| {
        let hash = registry.current(name).unwrap().hash.clone();
        std::fs::read_dir(config.state_dir.join("compiled"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(&hash))
            .unwrap()
    };
    let registry = load();
    let (orders, uppercase) = (
        entry_of(&registry, "orders"),
        entry_of(&registry, "uppercase"),
    );
    let written = std::fs::read(&orders).unwrap();

    let mut flipped = written.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 1;
    std::fs::write(&orders, &flipped).unwrap();
    let registry = load();
    assert_eq!(registry.current("orders").unwrap().info.name, "orders");
    assert_eq!(
        std::fs::read(&orders).unwrap().len(),
        written.len(),
        "rewritten"
    );
    assert!(
        std::fs::read(&orders).unwrap() != flipped,
        "the flipped entry was loaded, not rewritten"
    );

    // A valid entry of this very host, for another plugin, under orders' name.
    std::fs::copy(&uppercase, &orders).unwrap();
    let registry = load();
    let version = registry.current("orders").unwrap();
    assert_eq!(
        version.info.name, "orders",
        "the swapped-in code was not run"
    );
    assert_ne!(
        std::fs::read(&orders).unwrap(),
        std::fs::read(&uppercase).unwrap()
    );

    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&config.state_dir), 0o700);
    assert_eq!(mode(&config.state_dir.join("compiled")), 0o700);
    assert_eq!(mode(&config.state_dir.join("cache.key")), 0o600);
    assert_eq!(mode(&orders), 0o600);
}

/// A plugin built against the frozen `sluice:plugin@0.1.0` WIT (no
/// partitioning or shard key in its declarations, packed results of
/// version 1), from `plugins/legacy_v0_1`, loads unchanged in this host
/// and writes through Kafka into MariaDB like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_built_against_contract_0_1_0_loads_and_writes() {
    let legacy = plugin_wasm("legacy_v0_1", false);
    let dir = plugins_dir(&[("legacy_v0_1", &legacy)]);
    let topic = unique("legacy");
    create_topic(&topic, 1).await;
    let pipeline = unique("legacy");
    let table = format!("{pipeline}_events");
    let routes = format!("routes.legacy_events = {{ sink = \"mysql\", name = \"{table}\" }}");
    let config = write_config(
        &dir,
        &(host_toml(&dir, "") + &pipeline_toml(&pipeline, "legacy_v0_1", &topic, &routes)),
    );

    let parsed = Config::load(&config).unwrap();
    let registry = sluice::Host::load_plugins(&parsed).unwrap();
    let version = registry.current("legacy_v0_1").unwrap();
    assert_eq!(version.contract(), "0.1.0");
    assert_eq!(sluice::runtime::CONTRACT, "0.2.0");
    let decl = version.info.get_output("legacy_events").unwrap();
    assert_eq!(
        (decl.partitioning.as_ref(), decl.shard_key.len()),
        (None, 0)
    );
    // The examples, built with today's SDK, are on the current contract.
    let orders = plugins_dir(&[("orders", &plugin_wasm("orders", false))]);
    let toml = config_toml(&orders, "p", "orders", "t", "");
    let registry = sluice::Host::load_plugins(&Config::parse(&toml, Path::new("t")).unwrap());
    assert_eq!(
        registry.unwrap().current("orders").unwrap().contract(),
        "0.2.0"
    );

    let events: Vec<(String, Option<String>)> = vec![
        ("a".into(), Some("first".into())),
        ("b".into(), Some("second \"quoted\"".into())),
        ("a".into(), Some("first, again".into())),
        ("c".into(), None),
    ];
    produce_at(&producer(), &topic, &events).await;
    let log = without_colours(&run_until_drained(&config));
    assert!(
        log.lines()
            .any(|l| l.contains("plugin loaded") && l.contains("contract=0.1.0")),
        "{log}"
    );
    let rows: Vec<(String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT id, body FROM `{table}` ORDER BY id"
    )))
    .fetch_all(&mysql().await)
    .await
    .unwrap();
    assert_eq!(
        rows,
        [
            ("a".to_string(), "first, again".to_string()),
            ("b".to_string(), "second \"quoted\"".to_string())
        ]
    );
    let letters = documents(&format!("{pipeline}_dead_letters")).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(
        letters[0].get_str("reason").unwrap(),
        "a record without a value"
    );
}

/// The log without its ANSI colour codes (`ESC [ … m`).
fn without_colours(log: &str) -> String {
    let mut plain = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            plain.push(c);
        }
    }
    plain
}
