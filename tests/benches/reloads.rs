//! Hot-reload latency under load, and what reloads cost in correctness.
//!
//! Part 1: a continuous orders pipeline (3 partitions, batch 500) takes
//! 200,000 order events, written by a producer task paced over the reload
//! period, while `orders.wasm` is replaced 100 times: orders v1 and v2 in
//! turn, each with a unique custom section appended (a new content hash,
//! so the host really recompiles every one; its compiled cache is keyed by
//! the hash), half written in place with `std::fs::write`, half renamed
//! into place. Latency = file write started -> the pipeline's `serving`
//! hash equals the new file's SHA-256, and each reload is served before
//! the next. Then: rows = distinct ids = 200,000 in MariaDB, 200,000
//! documents in FerretDB, nothing lost, nothing processed twice.
//!
//! Part 2: events keep flowing at a low rate while a several-MiB build of
//! the orders plugin (dev profile: unoptimised, full debug info) and the
//! small release build are reloaded in turn, 20 each; the ratio big/small
//! comes from these interleaved reloads.

use mongodb::bson::doc;
use sha2::{Digest, Sha256};
use sluice::Host;
use sluice::config::Config;
use sluice::pipeline::Stats;
use sluice::runtime::Registry;
use sluice_tests::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

const EVENTS: usize = 200_000;
const RELOADS: usize = 100;
/// Reloads of each build (big, small) in part 2.
const BIG_RELOADS: usize = 20;
/// Part 2's event rate: this many every 100 ms.
const LOW_RATE_CHUNK: usize = 50;

/// Builds the orders plugin in the dev profile (no optimisation, full
/// debug info) into its own target folder, once.
fn big_orders_wasm() -> PathBuf {
    let plugins = repo_root().join("plugins");
    let target_dir = plugins.join("target/big");
    let status = std::process::Command::new(env!("CARGO"))
        .current_dir(&plugins)
        .args([
            "build",
            "--quiet",
            "--target",
            "wasm32-wasip2",
            "-p",
            "orders",
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("CARGO_PROFILE_DEV_OPT_LEVEL", "0")
        .env("CARGO_PROFILE_DEV_DEBUG", "true")
        .status()
        .expect("run cargo to build the big plugin");
    assert!(
        status.success(),
        "building the dev-profile orders plugin failed"
    );
    target_dir.join("wasm32-wasip2/debug/orders.wasm")
}

fn read_leb(b: &[u8], i: &mut usize) -> usize {
    let (mut value, mut shift) = (0usize, 0);
    loop {
        let byte = b[*i];
        *i += 1;
        value |= ((byte & 0x7f) as usize) << shift;
        shift += 7;
        if byte < 0x80 {
            return value;
        }
    }
}

/// Bytes of a component (nested core modules included) in code sections
/// and in `.debug_*` custom sections (DWARF, which wasmtime does not
/// compile unless debug info is turned on).
fn code_and_dwarf(b: &[u8]) -> (usize, usize) {
    let component = b[6] == 1; // layer byte: 0 core module, 1 component
    let (mut code, mut dwarf, mut i) = (0, 0, 8);
    while i < b.len() {
        let id = b[i];
        i += 1;
        let size = read_leb(b, &mut i);
        let payload = &b[i..i + size];
        match id {
            // A nested core module or component.
            1 | 4 if component => {
                let (c, d) = code_and_dwarf(payload);
                code += c;
                dwarf += d;
            }
            10 if !component => code += size,
            0 => {
                let mut j = 0;
                let len = read_leb(payload, &mut j);
                if payload[j..j + len].starts_with(b".debug_") {
                    dwarf += size;
                }
            }
            _ => {}
        }
        i += size;
    }
    (code, dwarf)
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// p50 / p99 / max of a set of latencies, sorted.
fn summary(v: &[Duration]) -> (Duration, Duration, Duration) {
    let mut v = v.to_vec();
    v.sort();
    (
        percentile(&v, 0.5),
        percentile(&v, 0.99),
        *v.last().unwrap(),
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One reload, timed.
#[derive(Clone, Copy)]
struct Reload {
    /// File write started -> the registry holds the new version.
    loaded: Duration,
    /// File write started -> a batch was served by the new version.
    served: Duration,
}

/// Writes `bytes` as the plugin (in place or renamed into place) and waits
/// until the pipeline serves a batch with it.
async fn reload(
    path: &Path,
    bytes: &[u8],
    atomically: bool,
    registry: &Registry,
    stats: &Stats,
) -> Reload {
    let hash = hex::encode(Sha256::digest(bytes));
    let written = Instant::now();
    if atomically {
        replace_atomically(path, bytes);
    } else {
        std::fs::write(path, bytes).unwrap();
    }
    let mut loaded = None;
    loop {
        if loaded.is_none() && registry.current("orders").is_some_and(|v| v.hash == hash) {
            loaded = Some(written.elapsed());
        }
        if stats.serving.lock().unwrap().as_deref() == Some(hash.as_str()) {
            let served = written.elapsed();
            return Reload {
                loaded: loaded.unwrap_or(served),
                served,
            };
        }
        assert!(
            written.elapsed() < Duration::from_secs(60),
            "version {} not served within 60 s (rejections: {:?})",
            &hash[..12],
            registry.rejections()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Writes order events `0..EVENTS`, paced so that they last until the
/// `RELOADS` reloads are done: every 50 ms, the events left divided by
/// the time the reloads left should take (their average so far, with a
/// margin). The rest goes out once the reloads are done.
async fn produce_paced(topic: String, reloads_done: Arc<AtomicUsize>) {
    let p = producer();
    let started = Instant::now();
    let mut next = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while next < EVENTS {
        tick.tick().await;
        let done = reloads_done.load(Relaxed);
        let n = if done >= RELOADS {
            (EVENTS - next).min(5_000)
        } else {
            let per_reload = if done == 0 {
                0.6
            } else {
                started.elapsed().as_secs_f64() / done as f64
            };
            let time_left = (RELOADS - done) as f64 * per_reload * 1.5 + 1.0;
            let rate = (EVENTS - next) as f64 / time_left;
            ((rate * 0.05).ceil() as usize).clamp(50, EVENTS - next)
        };
        let events: Vec<_> = (next..next + n).map(order_event).collect();
        produce(&p, &topic, &events).await;
        next += n;
    }
}

/// Writes order events from `from` on, `LOW_RATE_CHUNK` every 100 ms, until
/// told to stop; returns the next id.
async fn produce_slowly(topic: String, from: usize, keep: Arc<AtomicBool>) -> usize {
    let p = producer();
    let mut next = from;
    while keep.load(Relaxed) {
        let events: Vec<_> = (next..next + LOW_RATE_CHUNK).map(order_event).collect();
        produce(&p, &topic, &events).await;
        next += LOW_RATE_CHUNK;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    next
}

async fn documents(collection: &str) -> u64 {
    mongo()
        .await
        .collection::<mongodb::bson::Document>(collection)
        .count_documents(doc! {})
        .await
        .unwrap()
}

/// Waits until the pipeline counted `total` records, then checks the sinks.
async fn check_delivery(stats: &Stats, table: &str, collection: &str, total: usize) {
    wait_for(Duration::from_secs(180), || async {
        stats.records_in.load(Relaxed) >= total as u64
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let processed = stats.records_in.load(Relaxed);
    let (rows, distinct) = count_rows(&mysql().await, table).await;
    let docs = documents(collection).await;
    let lost = total as i64 - distinct;
    let duplicated = processed as i64 - distinct;
    println!(
        "  delivery: produced {total}, processed (records_in) {processed}, MariaDB rows {rows} / distinct ids {distinct}, FerretDB documents {docs}, lost {lost}, duplicated {duplicated}"
    );
    assert_eq!((rows, distinct), (total as i64, total as i64));
    assert_eq!(docs, total as u64);
    assert_eq!((lost, duplicated), (0, 0));
    assert_eq!(stats.dead_letters.load(Relaxed), 0);
}

fn line(label: &str, v: &[Reload]) -> (Duration, Duration) {
    let served: Vec<_> = v.iter().map(|r| r.served).collect();
    let loaded: Vec<_> = v.iter().map(|r| r.loaded).collect();
    let (p50, p99, max) = summary(&served);
    println!(
        "  {label:<34} {:>3} reloads: p50 {:>6.0} ms  p99 {:>6.0} ms  max {:>6.0} ms   (loaded: p50 {:.0} ms)",
        v.len(),
        ms(p50),
        ms(p99),
        ms(max),
        ms(summary(&loaded).0)
    );
    (p50, p99)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let v1 = std::fs::read(plugin_wasm("orders", false)).unwrap();
    let v2 = std::fs::read(plugin_wasm("orders", true)).unwrap();
    let big = std::fs::read(big_orders_wasm()).unwrap();
    let (small_code, _) = code_and_dwarf(&v1);
    let (big_code, big_dwarf) = code_and_dwarf(&big);
    assert!(
        big.len() >= 4 << 20,
        "the dev-profile plugin is only {} bytes",
        big.len()
    );

    let dir = plugins_dir(&[("orders", &plugin_wasm("orders", false))]);
    let path = dir.join("orders.wasm");
    let topic = unique("bench_reload");
    create_topic(&topic, 3).await;
    let name = unique("bench_reload");
    let (table, collection) = (format!("{name}_orders"), format!("{name}_events"));
    let extra = format!(
        "{}\nbatch = {{ max_records = 500, max_wait = \"100ms\" }}",
        orders_routes(&table, &collection)
    );
    let toml = host_toml(&dir, "") + &pipeline_toml(&name, "orders", &topic, &extra);
    let host = Host::start(Config::parse(&toml, Path::new("reload.toml")).unwrap())
        .await
        .unwrap();
    let (stats, registry, ledger) = (
        host.stats[&name].clone(),
        host.registry.clone(),
        host.ledger.clone(),
    );
    let running = run_host(host);

    // Part 1: 100 reloads while 200,000 events flow.
    let reloads_done = Arc::new(AtomicUsize::new(0));
    let producing = tokio::spawn(produce_paced(topic.clone(), reloads_done.clone()));
    wait_for(Duration::from_secs(60), || async {
        stats.records_in.load(Relaxed) > 0
    })
    .await;
    let part1 = Instant::now();
    let mut loaded_small = Vec::new();
    for k in 0..RELOADS {
        let base = if k % 2 == 0 { &v2 } else { &v1 };
        let atomically = (k / 2) % 2 == 1;
        let bytes = with_section(base, k as u64);
        loaded_small.push(reload(&path, &bytes, atomically, &registry, &stats).await);
        reloads_done.fetch_add(1, Relaxed);
    }
    let part1_took = part1.elapsed();
    producing.await.unwrap();
    let records_during = stats.records_in.load(Relaxed);

    println!(
        "hot reload under load: continuous orders pipeline, 3 partitions, batch 500, {RELOADS} reloads (orders v1/v2 in turn, each a new hash = a real recompile; half written in place, half renamed) in {part1_took:.1?} while {EVENTS} events flowed:"
    );
    line(
        &format!("small ({} KiB, release)", v1.len() >> 10),
        &loaded_small,
    );
    let in_place: Vec<_> = loaded_small
        .iter()
        .enumerate()
        .filter(|(k, _)| (k / 2) % 2 == 0)
        .map(|(_, r)| *r)
        .collect();
    let renamed: Vec<_> = loaded_small
        .iter()
        .enumerate()
        .filter(|(k, _)| (k / 2) % 2 == 1)
        .map(|(_, r)| *r)
        .collect();
    line("  of which written in place", &in_place);
    line("  of which renamed into place", &renamed);
    println!("  (records counted when the last reload was served: {records_during})");
    check_delivery(&stats, &table, &collection, EVENTS).await;

    // Part 2: big and small builds in turn, events flowing slowly.
    let keep = Arc::new(AtomicBool::new(true));
    let trickle = tokio::spawn(produce_slowly(topic.clone(), EVENTS, keep.clone()));
    let (mut big_r, mut small_r) = (Vec::new(), Vec::new());
    for k in 0..2 * BIG_RELOADS {
        let n = (RELOADS + k) as u64;
        let atomically = (k / 2) % 2 == 1;
        if k % 2 == 0 {
            let bytes = with_section(&big, n);
            big_r.push(reload(&path, &bytes, atomically, &registry, &stats).await);
        } else {
            let base = if (k / 2) % 2 == 0 { &v1 } else { &v2 };
            let bytes = with_section(base, n);
            small_r.push(reload(&path, &bytes, atomically, &registry, &stats).await);
        }
    }
    keep.store(false, Relaxed);
    let total = trickle.await.unwrap();
    println!(
        "big vs small plugin, {BIG_RELOADS} reloads each in turn, events flowing at {} records/s (p99 of {BIG_RELOADS} = the max):",
        LOW_RATE_CHUNK * 10
    );
    let (s50, s99) = line(
        &format!("small ({} KiB, release)", v1.len() >> 10),
        &small_r,
    );
    let (b50, b99) = line(
        &format!(
            "big ({:.1} MiB, dev profile)",
            big.len() as f64 / (1 << 20) as f64
        ),
        &big_r,
    );
    println!(
        "  big/small: p50 {:.2}x, p99 {:.2}x",
        b50.as_secs_f64() / s50.as_secs_f64(),
        b99.as_secs_f64() / s99.as_secs_f64(),
    );
    println!(
        "  sizes: small {} bytes, {} KiB of it code; big {} bytes, {} KiB of it code ({:.1}x small), {} KiB DWARF (.debug_* sections, not compiled by the host's engine)",
        v1.len(),
        small_code >> 10,
        big.len(),
        big_code >> 10,
        big_code as f64 / small_code as f64,
        big_dwarf >> 10
    );
    check_delivery(&stats, &table, &collection, total).await;

    running.stop().await;
    let host_seen = stats.reload_latencies.lock().unwrap().clone();
    let runs = ledger.list(Some(&name), 100_000).await.unwrap();
    let ledger_records: u64 = runs.iter().map(|r| r.records_in).sum();
    let versions: std::collections::BTreeSet<_> = runs
        .iter()
        .filter_map(|r| r.plugin_version.clone())
        .collect();
    println!(
        "  ledger: {} runs, records_in summed {ledger_records} (= {total} produced), plugin versions {versions:?}; rejected files {}",
        runs.len(),
        registry.rejections().len(),
    );
    let cache: u64 = std::fs::read_dir(dir.join("state/compiled"))
        .unwrap()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!(
        "  host's own reload_latencies (first file event -> served): {} recorded, p50 of part 1's {RELOADS} {:.0} ms; compiled-plugin cache now {:.0} MiB for {} versions (never evicted)",
        host_seen.len(),
        ms(summary(&host_seen[..RELOADS.min(host_seen.len())]).0),
        cache as f64 / (1 << 20) as f64,
        1 + RELOADS + 2 * BIG_RELOADS,
    );
    assert_eq!(ledger_records, total as u64);
    assert!(registry.rejections().is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}
