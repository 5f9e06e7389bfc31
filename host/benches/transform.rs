//! Transform throughput: the `orders` plugin run natively (plain Rust, the
//! baseline) against the same code compiled to wasm32-wasip2 and run in the
//! host's sandbox (memory limit and epoch deadline on), same batches, same
//! process. Run with `scripts/bench.sh` (builds the plugin first).

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
    let wasm = std::env::var("ORDERS_WASM")
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
        .load_path(std::path::Path::new(&wasm), Instant::now())
        .expect("load orders.wasm");
    let mut instance = Instance::new(version, Limits::default()).unwrap();

    let mut native = Vec::new();
    let mut wasm = Vec::new();
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
    }
    let rate = |d: Duration| RECORDS as f64 / d.as_secs_f64();
    let best = |v: &[Duration]| *v.iter().min().unwrap();
    let (n, w) = (rate(best(&native)), rate(best(&wasm)));
    println!(
        "orders plugin, {RECORDS} records of ~{avg} bytes, batch {batch_size}, best of {ROUNDS} rounds:"
    );
    println!("  native  {:>9.0} records/s", n);
    println!("  wasm    {:>9.0} records/s   ({:.2}x native)", w, w / n);
}

fn time(f: impl FnOnce()) -> Duration {
    let start = Instant::now();
    f();
    start.elapsed()
}
