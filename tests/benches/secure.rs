//! What security costs: the same order events drained by `sluice run
//! --until-drained` on the plaintext profile (Kafka PLAINTEXT, MariaDB and
//! FerretDB without TLS, the orders plugin) and on the secure profile
//! (`config/secure.toml`: SASL_SSL with SCRAM-SHA-512, TLS with
//! certificate checks to MariaDB, which also encrypts its files, and to
//! FerretDB; the orders plugin with `customer` and `event` declared
//! sensitive, so sluice encrypts both). Each round drains a fresh topic
//! with each profile, in alternating order; the time includes the start
//! (plugin load, connections, TLS handshakes). Prints records/s per run,
//! the medians and the secure ÷ plain ratio.
//!
//! `SLUICE_BENCH_EVENTS` (default 50,000) and `SLUICE_BENCH_ROUNDS`
//! (default 5). Needs the local services (`scripts/services.sh up`).

use sluice_tests::*;
use std::time::Instant;

#[tokio::main]
async fn main() {
    let events = env_or("SLUICE_BENCH_EVENTS", 50_000);
    let rounds = env_or("SLUICE_BENCH_ROUNDS", 5);
    let plain_dir = plugins_dir(&[("orders", &plugin_wasm("orders", false))]);
    let secure_dir = plugins_dir(&[("orders", &variant_wasm("orders", Some("sensitive")))]);
    let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    println!("{events} order events per run, {rounds} rounds, after a warm-up run of each");
    // Round "warm-up" (1,000 events, not counted): compiled-plugin caches,
    // first connections and first collections are made there.
    let sizes = std::iter::once(1_000).chain(std::iter::repeat_n(events, rounds));
    for (round, events) in sizes.enumerate() {
        let topic = unique("bench_secure");
        create_topic(&topic, 3).await;
        let batch: Vec<_> = (0..events).map(order_event).collect();
        produce(&producer(), &topic, &batch).await;
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for profile in order {
            let pipeline = unique("bench");
            let config = if profile == 0 {
                write_config(
                    &plain_dir,
                    &(host_toml(&plain_dir, "") + &orders_pipeline_toml(&pipeline, &topic, "")),
                )
            } else {
                secure::config(&secure_dir, &topic, &pipeline, &|t| t)
            };
            let started = Instant::now();
            let (ok, out, err) = secure::sluice(&["run", "--until-drained"], &config);
            let took = started.elapsed().as_secs_f64();
            assert!(ok, "{out}\n{err}");
            let rate = events as f64 / took;
            let name = ["plain ", "secure"][profile];
            if round == 0 {
                println!("warm-up: {name} {took:6.2} s");
                continue;
            }
            println!("round {round}: {name} {took:6.2} s, {rate:8.0} records/s");
            rates[profile].push(rate);
        }
    }
    let [plain, secure] = rates.map(median);
    println!(
        "median: plain {plain:.0} records/s, secure {secure:.0} records/s; secure ÷ plain = {:.2}",
        secure / plain
    );
}
