//! 100,000 waiting events processed by one scheduled (bounded) run, against
//! the same events consumed by a continuous pipeline, in the same process
//! and on the same local services (Kafka, FerretDB, MariaDB). Each mode
//! gets its own consumer group, table and collection; the modes alternate
//! over rounds so neither always runs on a warmer database.

use sluice::config::Config;
use sluice::ledger::Ledger;
use sluice::{Host, RunMode};
use sluice_tests::*;
use std::path::Path;
use std::time::{Duration, Instant};

const EVENTS: usize = 100_000;
const ROUNDS: usize = 2;

fn config(dir: &Path, topic: &str, name: &str, schedule: &str) -> Config {
    let routes = orders_routes(&format!("{name}_orders"), &format!("{name}_events"));
    let extra =
        format!("{routes}\n{schedule}\nbatch = {{ max_records = 1000, max_wait = \"100ms\" }}");
    let toml = host_toml(dir, "") + &pipeline_toml(name, "orders", topic, &extra);
    Config::parse(&toml, Path::new("bench.toml")).unwrap()
}

/// One bounded run (what an interval tick starts), timed by the ledger.
async fn scheduled(dir: &Path, topic: &str) -> Duration {
    let name = unique("bench_sched");
    let config = config(dir, topic, &name, "schedule = { every = \"1h\" }");
    let host = Host::start(config.clone()).await.unwrap();
    host.run(std::future::pending(), RunMode::Once)
        .await
        .unwrap();
    let run = Ledger::open(&config)
        .await
        .unwrap()
        .list(Some(&name), 1)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(run.records_in as usize, EVENTS);
    run.duration().unwrap()
}

/// A continuous pipeline from start (group join included) to the last of
/// the events written.
async fn continuous(dir: &Path, topic: &str) -> Duration {
    let name = unique("bench_cont");
    let host = Host::start(config(dir, topic, &name, "")).await.unwrap();
    let stats = host.stats[&name].clone();
    let started = Instant::now();
    let task = run_host(host);
    while stats.snapshot().records_in < EVENTS as u64 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = started.elapsed();
    task.stop().await;
    took
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = plugins_dir(&[("orders", &plugin_wasm("orders", false))]);
    let topic = unique("bench_runs");
    create_topic(&topic, 3).await;
    let events: Vec<_> = (0..EVENTS).map(order_event).collect();
    for chunk in events.chunks(10_000) {
        produce(&producer(), &topic, chunk).await;
    }
    let rate = |d: Duration| EVENTS as f64 / d.as_secs_f64();
    let (mut sched, mut cont) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        if round % 2 == 0 {
            sched.push(scheduled(&dir, &topic).await);
            cont.push(continuous(&dir, &topic).await);
        } else {
            cont.push(continuous(&dir, &topic).await);
            sched.push(scheduled(&dir, &topic).await);
        }
        eprintln!(
            "round {round}: scheduled {:?}, continuous {:?}",
            sched[round], cont[round]
        );
    }
    let best = |v: &[Duration]| *v.iter().min().unwrap();
    let (s, c) = (best(&sched), best(&cont));
    println!(
        "{EVENTS} waiting order events -> MariaDB table + FerretDB collection, batch 1000, best of {ROUNDS} rounds:"
    );
    println!(
        "  continuous mode    {:>8.2?}  {:>7.0} records/s   (from start, group join included)",
        c,
        rate(c)
    );
    println!(
        "  one scheduled run  {:>8.2?}  {:>7.0} records/s   ({:.2}x continuous)",
        s,
        rate(s),
        rate(s) / rate(c)
    );
}
