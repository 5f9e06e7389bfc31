//! A healthy pipeline's throughput while a hostile one runs beside it in the
//! same host, as a ratio to the healthy pipeline alone, in one process run.
//!
//! Healthy: the orders plugin, continuous, 50,000 waiting order events on
//! its own topic (3 partitions), batch 1000, into a MariaDB table and a
//! FerretDB collection. Hostile: the test-only `hostile` plugin on a topic
//! (one partition) where every hundred records hold one `loop`, `bomb`,
//! `recurse`, `panic` and `trap-on-me` among good ones, batch 100, with a 1 s time limit, 64 MiB of
//! memory and quarantine disabled in effect, so it keeps misbehaving (and
//! keeps one blocking thread busy) for the whole measurement.
//!
//! The modes alternate over rounds (alone, beside, alone, beside, ...),
//! each round with fresh topics, tables, collections and consumer groups.

use sluice::Host;
use sluice::config::Config;
use sluice::pipeline::Stats;
use sluice_tests::*;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

const EVENTS: usize = 50_000;
const ROUNDS: usize = 6;
/// Hostile records per round: far more than it gets through meanwhile.
const HOSTILE_EVENTS: usize = 5_000;
/// In every hundred hostile records, these keys sit at these positions.
const MISBEHAVING: [(usize, &str); 5] = [
    (10, "loop"),
    (30, "bomb"),
    (50, "recurse"),
    (70, "panic"),
    (90, "trap-on-me"),
];
const HOSTILE_LIMITS: &str =
    "limits = { batch_timeout = \"1s\", memory_mib = 64, quarantine_after = 1000000 }";

fn healthy_toml(name: &str, topic: &str) -> String {
    let routes = orders_routes(&format!("{name}_orders"), &format!("{name}_events"));
    let extra = format!("{routes}\nbatch = {{ max_records = 1000, max_wait = \"100ms\" }}");
    pipeline_toml(name, "orders", topic, &extra)
}

fn hostile_toml(name: &str, topic: &str) -> String {
    let extra = format!(
        "routes.events = {{ sink = \"mongodb\", name = \"{name}_events\" }}\n\
         routes.probes = {{ sink = \"mongodb\", name = \"{name}_probes\" }}\n\
         routes.rows = {{ sink = \"mysql\", name = \"{name}_rows\" }}\n\
         batch = {{ max_records = 100, max_wait = \"100ms\" }}\n{HOSTILE_LIMITS}"
    );
    pipeline_toml(name, "hostile", topic, &extra)
}

fn hostile_events(round: usize) -> Vec<(String, String)> {
    (0..HOSTILE_EVENTS)
        .map(|i| {
            let key = MISBEHAVING
                .iter()
                .find(|(at, _)| i % 100 == *at)
                .map_or_else(|| format!("good-{round}-{i}"), |(_, k)| k.to_string());
            (key, format!("value {i}"))
        })
        .collect()
}

/// What one round measured.
struct Round {
    /// host.run started -> the last healthy event counted.
    total: Duration,
    /// First healthy batch counted -> the last one (group join excluded),
    /// and the records counted in between.
    steady: (Duration, usize),
    /// The hostile pipeline's counters when the healthy one finished.
    hostile: Option<HostileDid>,
}

struct HostileDid {
    records_in: u64,
    dead_letters: u64,
    failing_batches: u64,
}

impl Round {
    fn rate(&self) -> f64 {
        EVENTS as f64 / self.total.as_secs_f64()
    }
    fn steady_rate(&self) -> f64 {
        self.steady.1 as f64 / self.steady.0.as_secs_f64()
    }
}

async fn round(dir: &Path, round: usize, beside: bool) -> Round {
    let (topic, name) = (unique("iso_healthy"), unique("iso_ok"));
    create_topic(&topic, 3).await;
    let events: Vec<_> = (0..EVENTS).map(order_event).collect();
    let p = producer();
    for chunk in events.chunks(10_000) {
        produce(&p, &topic, chunk).await;
    }
    let mut toml = host_toml(dir, "") + &healthy_toml(&name, &topic);
    let bad = unique("iso_bad");
    if beside {
        let bad_topic = unique("iso_hostile");
        // One partition: records arrive in the order written, so every
        // batch of 100 holds all five misbehaviours. (Keyed records of
        // several partitions are hashed by key: all `loop`s would share one
        // partition, and the consumer may not reach it for a while.)
        create_topic(&bad_topic, 1).await;
        produce(&p, &bad_topic, &hostile_events(round)).await;
        toml += &hostile_toml(&bad, &bad_topic);
    }
    let config = Config::parse(&toml, Path::new("isolation.toml")).unwrap();
    let host = Host::start(config).await.unwrap();
    let stats = host.stats[&name].clone();
    let bad_stats: Option<Arc<Stats>> = beside.then(|| host.stats[&bad].clone());
    let started = Instant::now();
    let task = run_host(host);
    let mut first: Option<(Instant, u64)> = None;
    loop {
        let n = stats.records_in.load(Relaxed);
        if n > 0 && first.is_none() {
            first = Some((Instant::now(), n));
        }
        if n >= EVENTS as u64 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "healthy pipeline stuck at {n} of {EVENTS}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let end = Instant::now();
    let total = end - started;
    let (first_at, first_n) = first.unwrap();
    let hostile = bad_stats.map(|s| HostileDid {
        records_in: s.records_in.load(Relaxed),
        dead_letters: s.dead_letters.load(Relaxed),
        failing_batches: s.failing_batches.load(Relaxed),
    });
    task.stop().await;
    assert_eq!(stats.records_in.load(Relaxed), EVENTS as u64);
    assert_eq!(stats.dead_letters.load(Relaxed), 0);
    Round {
        total,
        steady: (end - first_at, EVENTS - first_n as usize),
        hostile,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = plugins_dir(&[
        ("orders", &plugin_wasm("orders", false)),
        ("hostile", &hostile_wasm(None)),
    ]);
    println!(
        "{EVENTS} waiting order events -> MariaDB table + FerretDB collection, batch 1000, continuous; \
         alone vs beside a hostile pipeline in the same host, rounds alternating:"
    );
    let (mut alone, mut beside) = (Vec::new(), Vec::new());
    for r in 0..ROUNDS {
        let hostile = r % 2 == 1;
        let got = round(&dir, r, hostile).await;
        let mode = if hostile { "beside hostile" } else { "alone" };
        println!(
            "  round {r}: {mode:<14} {:>7.2?} {:>6.0} records/s (steady {:>6.0}){}",
            got.total,
            got.rate(),
            got.steady_rate(),
            got.hostile.as_ref().map_or(String::new(), |h| format!(
                "; hostile meanwhile: records_in {}, dead_letters {}, failing_batches {}, {} records still waiting",
                h.records_in,
                h.dead_letters,
                h.failing_batches,
                HOSTILE_EVENTS as u64 - h.records_in
            ))
        );
        if let Some(h) = &got.hostile {
            assert!(
                h.records_in > 0 && h.records_in < HOSTILE_EVENTS as u64,
                "the hostile pipeline must keep misbehaving the whole time (records_in {})",
                h.records_in
            );
        }
        if hostile {
            beside.push(got);
        } else {
            alone.push(got);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);

    let best = |v: &[Round], rate: fn(&Round) -> f64| v.iter().map(rate).fold(0.0, f64::max);
    let (a, b) = (best(&alone, Round::rate), best(&beside, Round::rate));
    let (sa, sb) = (
        best(&alone, Round::steady_rate),
        best(&beside, Round::steady_rate),
    );
    let pairs: Vec<String> = alone
        .iter()
        .zip(&beside)
        .map(|(a, b)| format!("{:.2}x", b.rate() / a.rate()))
        .collect();
    println!("best of {} rounds per mode:", ROUNDS / 2);
    println!(
        "  healthy alone           {a:>6.0} records/s   (from host run to the last event, group join included; steady {sa:.0})"
    );
    println!(
        "  healthy beside hostile  {b:>6.0} records/s   {:.2}x alone (steady {sb:.0}, {:.2}x); round by round (beside / the alone round before it): {}",
        b / a,
        sb / sa,
        pairs.join(" ")
    );
    println!(
        "  hostile meanwhile: every 100 records 1 loop, 1 bomb, 1 recurse, 1 panic, 1 trap-on-me; batch 100, batch_timeout 1s, memory_mib 64, quarantine_after 1000000"
    );
}
