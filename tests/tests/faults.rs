//! Faults that stop and start the local services: a MariaDB outage, the
//! same for FerretDB, and a Kafka broker restart, each while events flow
//! into the `sluice` binary. They stop shared services, so they are
//! `#[ignore]`d in the parallel suite; `scripts/test.sh` runs them after it,
//! one at a time, with 10-second outages. The 30-second version:
//!
//!     SLUICE_OUTAGE_SECS=30 cargo test -p sluice-tests --test faults -- --ignored --test-threads=1 --nocapture

use sluice::api::Health;
use sluice_tests::*;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

const EVENTS: usize = 20_000;

fn services(action: &str, service: &str) {
    let status = Command::new(repo_root().join("scripts/services.sh"))
        .args([action, service])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "services.sh {action} {service}");
}

/// Resident memory of a process, in MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Documents in `collection`, or `None` while FerretDB does not answer.
async fn docs(db: &mongodb::Database, collection: &str) -> Option<i64> {
    // The estimate is the collection's own count: no scan (FerretDB's exact
    // count scans, which takes seconds on a busy machine).
    let collection = db.collection::<mongodb::bson::Document>(collection);
    let count = collection.estimated_document_count();
    match tokio::time::timeout(Duration::from_secs(5), count).await {
        Ok(Ok(n)) => Some(n as i64),
        _ => None,
    }
}

/// One observation of the run.
#[derive(Debug, Clone)]
struct Sample {
    at: f64,
    produced: usize,
    rows: Option<i64>,
    docs: Option<i64>,
    rss: f64,
    health: Option<Health>,
}

/// Runs the binary while `service` is stopped for `SLUICE_OUTAGE_SECS`
/// (default `secs`) after 10 s of traffic; prints a timeline and checks
/// that every event arrived exactly once.
async fn outage(service: &'static str, secs: u64) {
    let outage = Duration::from_secs(
        std::env::var("SLUICE_OUTAGE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(secs),
    );
    let dir = plugins_dir(&[("orders", &plugin_wasm("orders", false))]);
    let topic = unique("outage");
    create_topic(&topic, 3).await;
    let pipeline = unique("outage");
    let (table, collection) = (format!("{pipeline}_orders"), format!("{pipeline}_events"));
    let port = free_port();
    let toml = host_toml(&dir, &format!("[api]\nlisten = \"127.0.0.1:{port}\"\n"))
        + &orders_pipeline_toml(&pipeline, &topic, "");
    let config = write_config(&dir, &toml);
    let mut child = start_sluice(&config, &dir.join("sluice"));
    let pid = child.0.id();
    let client = Arc::new(api_client(&config));

    // Events flow over the whole test: 10 s before, the outage, and after.
    let produced = Arc::new(AtomicUsize::new(0));
    let span = outage + Duration::from_secs(20);
    let per_tick = EVENTS / (span.as_millis() as usize / 250);
    let producing = tokio::spawn({
        let (topic, produced) = (topic.clone(), produced.clone());
        async move {
            let mut p = restartable_producer();
            let mut next = 0;
            while next < EVENTS {
                let end = (next + per_tick).min(EVENTS);
                let events: Vec<_> = (next..end).map(order_event).collect();
                produce_through_restarts(&mut p, &topic, &events).await;
                next = end;
                produced.store(next, Relaxed);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    });

    let started = Instant::now();
    let mut samples: Vec<Sample> = Vec::new();
    // One pool and one client for the whole test: both reconnect by
    // themselves once the service is back.
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .acquire_timeout(Duration::from_secs(1))
        .connect_lazy(&mysql_url())
        .unwrap();
    let mut options = mongodb::options::ClientOptions::parse(mongo_uri())
        .await
        .unwrap();
    options.server_selection_timeout = Some(Duration::from_secs(1));
    let db = mongodb::Client::with_options(options)
        .unwrap()
        .database("sluice");
    let observe = || {
        let (table, collection, client) = (table.clone(), collection.clone(), client.clone());
        let (pool, db) = (pool.clone(), db.clone());
        let produced = produced.load(Relaxed);
        async move {
            let health = tokio::task::spawn_blocking(move || client.get::<Health>("/v1/health"))
                .await
                .unwrap()
                .ok();
            Sample {
                at: started.elapsed().as_secs_f64(),
                produced,
                rows: table_rows(&pool, &table).await,
                docs: docs(&db, &collection).await,
                rss: rss_mib(pid),
                health,
            }
        }
    };
    let before_end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < before_end {
        samples.push(observe().await);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let down_at = started.elapsed().as_secs_f64();
    services("down", service);
    let outage_end = Instant::now() + outage;
    while Instant::now() < outage_end {
        samples.push(observe().await);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    services("up", service);
    let up_at = started.elapsed().as_secs_f64();
    producing.await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        samples.push(observe().await);
        let last = samples.last().unwrap();
        if last.rows == Some(EVENTS as i64) && last.docs == Some(EVENTS as i64) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not all events arrived: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    child.sigterm();

    // The timeline.
    let written = |s: &Sample| match service {
        "ferretdb" => s.docs,
        _ => s.rows,
    };
    let resumed = samples
        .iter()
        .filter(|s| s.at > up_at)
        .find(|s| {
            written(s).unwrap_or(0)
                > samples
                    .iter()
                    .filter(|p| p.at <= up_at)
                    .filter_map(written)
                    .max()
                    .unwrap_or(0)
        })
        .map_or(f64::NAN, |s| s.at);
    // While the database does not answer, the last count seen stands.
    let mut seen = 0;
    let lag_peak = samples
        .iter()
        .map(|s| {
            seen = written(s).unwrap_or(seen);
            s.produced as i64 - seen
        })
        .max()
        .unwrap_or(0);
    let steady = samples
        .iter()
        .filter(|s| s.at < down_at)
        .map(|s| s.rss)
        .fold(0.0, f64::max);
    let peak = samples
        .iter()
        .filter(|s| s.at >= down_at && s.at <= up_at)
        .map(|s| s.rss)
        .fold(0.0, f64::max);
    let degraded: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.health.as_ref().is_some_and(|h| h.status == "degraded"))
        .collect();
    println!(
        "{service} outage: stopped at {down_at:.1}s for {outage:?}, started again at {up_at:.1}s, writes resumed at {resumed:.1}s; lag peak {lag_peak} events; host RSS steady {steady:.0} MiB, peak during the outage {peak:.0} MiB; degraded in {} samples, e.g. {:?}; all {EVENTS} events written once, in {:.1}s",
        degraded.len(),
        degraded
            .first()
            .and_then(|s| s.health.as_ref())
            .map(|h| &h.degraded),
        started.elapsed().as_secs_f64()
    );
    let (all, distinct) = count_rows(&mysql().await, &table).await;
    assert_eq!((all, distinct), (EVENTS as i64, EVENTS as i64));
    // A database outage fails writes; a broker outage only delays records.
    if service != "kafka" {
        assert!(!degraded.is_empty(), "the host said it was degraded");
    }
    assert_eq!(
        samples
            .last()
            .unwrap()
            .health
            .as_ref()
            .map(|h| h.status.as_str()),
        Some("ok"),
        "healthy again"
    );
    assert!(
        peak < steady + 256.0,
        "memory stays bounded: {steady} -> {peak} MiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "stops MariaDB; run alone (scripts/test.sh does)"]
async fn a_mariadb_outage_holds_offsets_reports_degraded_and_loses_nothing() {
    outage("mariadb", 30).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "stops FerretDB; run alone (scripts/test.sh does)"]
async fn a_ferretdb_outage_holds_offsets_reports_degraded_and_loses_nothing() {
    outage("ferretdb", 30).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "restarts Kafka; run alone (scripts/test.sh does)"]
async fn a_broker_restart_mid_run_loses_nothing() {
    outage("kafka", 10).await;
}
