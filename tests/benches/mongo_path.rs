//! The MongoDB write path on FerretDB, before and after a change: two
//! `sluice` binaries (`SLUICE_BEFORE_BIN`, `SLUICE_AFTER_BIN`; built by
//! `scripts/bench-before-after.sh REF`) take turns on the same workloads
//! against the same local services, and each run is timed by its ledger
//! row (from the run's start to its end, process start-up excluded).
//!
//! Workloads, every output (and the dead letters) routed to FerretDB:
//! - new keys: EVENTS order events, each id once, into empty collections
//!   (the single-round-trip insert);
//! - existing keys: the same ids again with new contents (every document
//!   is replaced);
//! - repeated keys: ten versions of each order in a row (an order's
//!   lifecycle), so most batches hold several versions of their keys.
//!
//! `SLUICE_BENCH_EVENTS` (default 30,000) and `SLUICE_BENCH_ROUNDS`
//! (default 3) set the size.

use sluice::config::Config;
use sluice::ledger::Ledger;
use sluice_tests::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Event `i` as a version of order `id`, with its own status.
fn event(i: usize, id: usize, status: &str) -> (String, String) {
    let (key, value) = order_event(id);
    (key, value.replace("\"paid\"", &format!("\"{status}-{i}\"")))
}

/// `sluice run --until-drained` of `binary` over `topic`, writing `name`'s
/// collections: the run's duration, or why it failed.
async fn run(binary: &Path, dir: &Path, name: &str, topic: &str) -> Result<Duration, String> {
    let routes = format!(
        "routes.orders = {{ sink = \"mongodb\", name = \"{name}_orders\" }}\n\
         routes.order_events = {{ sink = \"mongodb\", name = \"{name}_events\" }}\n\
         batch = {{ max_records = 1000, max_wait = \"100ms\" }}\n\
         retry = {{ max_attempts = 1 }}"
    );
    let toml = host_toml(dir, "") + &pipeline_toml(name, "orders", topic, &routes);
    let config = write_config(dir, &toml);
    let out = Command::new(binary)
        .args(["run", "--until-drained", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let parsed = Config::parse(&toml, &config).unwrap();
    let ledger = Ledger::open_existing(&parsed).await.unwrap();
    let last = ledger.list(Some(name), 1).await.unwrap().remove(0);
    if !out.status.success() {
        let error = last.error.unwrap_or_default();
        return Err(error.chars().take(160).collect());
    }
    Ok(last.duration().unwrap())
}

async fn drop_collections(name: &str) {
    let db = mongo().await;
    for suffix in ["orders", "events", "dead_letters"] {
        let c = db.collection::<mongodb::bson::Document>(&format!("{name}_{suffix}"));
        let _ = c.drop().await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let bin =
        |var: &str| {
            PathBuf::from(std::env::var(var).unwrap_or_else(|_| {
                panic!("{var} is not set: run scripts/bench-before-after.sh REF")
            }))
        };
    let binaries = [
        ("before", bin("SLUICE_BEFORE_BIN")),
        ("after", bin("SLUICE_AFTER_BIN")),
    ];
    let events = env_or("SLUICE_BENCH_EVENTS", 30_000);
    let rounds = env_or("SLUICE_BENCH_ROUNDS", 3);
    let dir = plugins_dir(&[("orders", &plugin_wasm("orders", false))]);

    let (new_keys, existing, repeated) = (unique("mp_new"), unique("mp_again"), unique("mp_rep"));
    // Event i is a version of order i / versions.
    for (topic, versions, status) in [
        (&new_keys, 1, "paid"),
        (&existing, 1, "shipped"),
        (&repeated, 10, "v"),
    ] {
        create_topic(topic, 3).await;
        let all: Vec<_> = (0..events)
            .map(|i| event(i, i / versions, status))
            .collect();
        for chunk in all.chunks(10_000) {
            produce(&producer(), topic, chunk).await;
        }
    }

    let workloads = ["new keys", "existing keys", "repeated keys"];
    // results[workload][binary] = durations or failures
    let mut results = vec![vec![Vec::new(), Vec::new()]; workloads.len()];
    for round in 0..rounds {
        for turn in 0..2 {
            // Alternate which binary goes first.
            let b = (round + turn) % 2;
            let (label, binary) = &binaries[b];
            let name = unique(&format!("mp_{label}"));
            let new = run(binary, &dir, &name, &new_keys).await;
            let again = run(binary, &dir, &name, &existing).await;
            drop_collections(&name).await;
            let name = unique(&format!("mp_{label}"));
            let rep = run(binary, &dir, &name, &repeated).await;
            drop_collections(&name).await;
            eprintln!("round {round} {label}: new {new:?}, existing {again:?}, repeated {rep:?}");
            for (w, r) in [new, again, rep].into_iter().enumerate() {
                results[w][b].push(r);
            }
        }
    }

    println!(
        "MongoDB path on FerretDB 1.24, orders plugin, {events} events per workload, batch 1000, median of {rounds} alternating rounds:"
    );
    for (w, workload) in workloads.iter().enumerate() {
        let rate = |b: usize| -> Result<f64, String> {
            let mut ok = Vec::new();
            for r in &results[w][b] {
                ok.push(events as f64 / r.clone()?.as_secs_f64());
            }
            ok.sort_by(f64::total_cmp);
            Ok(ok[ok.len() / 2])
        };
        let show = |r: &Result<f64, String>| match r {
            Ok(v) => format!("{v:>8.0} records/s"),
            Err(e) => format!("failed: {e}"),
        };
        let (before, after) = (rate(0), rate(1));
        let ratio = match (&before, &after) {
            (Ok(b), Ok(a)) => format!("{:.2}x", a / b),
            _ => "-".into(),
        };
        println!(
            "  {workload:<14} before {}   after {}   after/before {ratio}",
            show(&before),
            show(&after)
        );
    }
}
