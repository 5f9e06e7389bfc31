//! Transform throughput: the `orders` plugin run natively (plain Rust, the
//! baseline) against the same code compiled to wasm32-wasip2 and run in the
//! host's sandbox (memory limit and epoch deadline on), same batches, same
//! process; and the sandbox with its limits off, to price the limits. Run
//! with `scripts/bench.sh` (builds the plugin first).

use sluice::runtime::{Instance, Limits, Registry, Runtime};
use sluice_plugin_sdk::abi::{self, BatchWriter, Headers, Record};
use std::time::{Duration, Instant};

const RECORDS: usize = 200_000;
const ROUNDS: usize = 5;

fn main() {
    let batch_size: usize = std::env::var("BATCH")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(1000);
    let wasm_path = std::env::var("ORDERS_WASM")
        .expect("ORDERS_WASM=path/to/orders.wasm (scripts/bench.sh sets it)");
    let values: Vec<String> = (0..RECORDS)
        .map(|i| {
            format!(
                r#"{{"id":"o-{i}","customer":"customer-{}","total":{}.25,"created_at":"2026-11-30T10:00:00Z","status":"paid","items":[{{"sku":"sku-{}","qty":2}}]}}"#,
                i % 97,
                i % 300,
                i % 11
            )
        })
        .collect();
    let avg = values.iter().map(String::len).sum::<usize>() / RECORDS;
    let batches: Vec<Vec<u8>> = values
        .chunks(batch_size)
        .enumerate()
        .map(|(b, chunk)| {
            let mut w = BatchWriter::default();
            for (i, v) in chunk.iter().enumerate() {
                let record = Record {
                    topic: "orders",
                    partition: 0,
                    offset: (b * batch_size + i) as i64,
                    timestamp: Some(1_700_000_000_000),
                    key: None,
                    value: Some(v.as_bytes()),
                    headers: Headers::EMPTY,
                };
                w.push(&record, []);
            }
            w.finish()
        })
        .collect();

    let registry = Registry::new(Runtime::new().unwrap(), std::path::PathBuf::from("."));
    let version = registry
        .load_path(std::path::Path::new(&wasm_path), Instant::now())
        .expect("load orders.wasm");
    let mut instance = Instance::new(version, Limits::default()).unwrap();
    // The same plugin with the limits off: no epoch interruption compiled
    // in (so no time limit), no memory or output caps.
    let unlimited = Registry::new(
        Runtime::without_time_limits().unwrap(),
        std::path::PathBuf::from("."),
    );
    let unlimited_version = unlimited
        .load_path(std::path::Path::new(&wasm_path), Instant::now())
        .expect("load orders.wasm");
    let no_limits = Limits {
        memory_bytes: usize::MAX,
        max_output_records: usize::MAX,
        max_output_bytes: usize::MAX,
        ..Limits::default()
    };
    let mut unlimited_instance = Instance::new(unlimited_version, no_limits).unwrap();
    // Memory: the epoch checks are code; instances are otherwise the same.
    let wasm_bytes = std::fs::read(&wasm_path).unwrap();
    let compiled = |engine: &wasmtime::Engine| {
        wasmtime::component::Component::new(engine, &wasm_bytes)
            .and_then(|c| c.serialize())
            .unwrap()
            .len()
    };
    let (code_on, code_off) = (
        compiled(&registry.runtime.engine),
        compiled(&unlimited.runtime.engine),
    );

    let mut native = Vec::new();
    let mut wasm = Vec::new();
    let mut wasm_unlimited = Vec::new();
    for _ in 0..ROUNDS {
        // Interleave so machine noise hits both alike.
        native.push(time(|| {
            for b in &batches {
                let out = sluice_plugin_sdk::transform_packed::<orders::Orders>(b).unwrap();
                assert!(abi::decode_result(&out).unwrap().errors.is_empty());
            }
        }));
        wasm.push(time(|| {
            for b in &batches {
                assert!(instance.transform(b).unwrap().errors.is_empty());
            }
        }));
        wasm_unlimited.push(time(|| {
            for b in &batches {
                assert!(unlimited_instance.transform(b).unwrap().errors.is_empty());
            }
        }));
    }
    let rate = |d: Duration| RECORDS as f64 / d.as_secs_f64();
    let best = |v: &[Duration]| *v.iter().min().unwrap();
    let (n, w, u) = (
        rate(best(&native)),
        rate(best(&wasm)),
        rate(best(&wasm_unlimited)),
    );
    println!(
        "orders plugin, {RECORDS} records of ~{avg} bytes, batch {batch_size}, best of {ROUNDS} rounds:"
    );
    println!("  native  {:>9.0} records/s", n);
    println!("  wasm    {:>9.0} records/s   ({:.2}x native)", w, w / n);
    println!(
        "  wasm, limits off {:>9.0} records/s   (limits on = {:.2}x limits off)",
        u,
        w / u
    );
    println!(
        "  compiled plugin: {} KiB with limits, {} KiB without ({:.2}x); per-instance memory is the same",
        code_on / 1024,
        code_off / 1024,
        code_on as f64 / code_off as f64
    );

    if let Ok(v2) = std::env::var("ORDERS_V2_WASM") {
        let l = reload_latencies(
            std::path::Path::new(&wasm_path),
            std::path::Path::new(&v2),
            20,
        );
        let size = std::fs::metadata(&wasm_path).unwrap().len() / 1024;
        println!(
            "hot reload of the {size} KiB plugin, file renamed into place -> new version current, 20 reloads: p50 {:?}, max {:?}",
            l[l.len() / 2],
            l[l.len() - 1]
        );
    }
}

/// Hot reload: a new file renamed into a watched folder until the registry
/// serves it, alternating two versions. Returns sorted latencies.
fn reload_latencies(v1: &std::path::Path, v2: &std::path::Path, reloads: usize) -> Vec<Duration> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = std::env::temp_dir().join(format!("sluice-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let target = dir.join("orders.wasm");
    std::fs::copy(v1, &target).unwrap();
    let registry = Registry::new(Runtime::new().unwrap(), dir.clone());
    registry.load("orders").unwrap();
    let _watcher = rt.block_on(async {
        sluice::runtime::watch(
            registry.clone(),
            std::sync::Arc::new(sluice::runtime::AdmitAll),
        )
        .unwrap()
    });
    let mut latencies = Vec::new();
    for i in 0..reloads {
        let source = if i % 2 == 0 { v2 } else { v1 };
        let before = registry.current("orders").unwrap().hash.clone();
        let tmp = dir.join("orders.wasm.tmp");
        std::fs::copy(source, &tmp).unwrap();
        let start = Instant::now();
        std::fs::rename(&tmp, &target).unwrap();
        while registry.current("orders").unwrap().hash == before {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "reload never happened"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        latencies.push(start.elapsed());
    }
    latencies.sort();
    let _ = std::fs::remove_dir_all(&dir);
    latencies
}

fn time(f: impl FnOnce()) -> Duration {
    let start = Instant::now();
    f();
    start.elapsed()
}
