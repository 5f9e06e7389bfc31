//! Canary reload (`reload = "canary"`): a new plugin version runs in shadow
//! on the live batches, writes nothing, is compared with the active
//! version, and is promoted after N clean batches or by hand, or rolled
//! back; promotions and rollbacks survive a restart.

use sluice::Host;
use sluice::config::Config;
use sluice::runtime::{PluginVersion, Registry};
use sluice_tests::*;
use std::time::Duration;

fn report(registry: &Registry, plugin: &str) -> Option<sluice::model::canary::Report> {
    registry
        .states()
        .remove(plugin)
        .and_then(|s| s.candidate)
        .map(|(_, r)| r)
}

async fn status_of(table: &str, id: &str) -> String {
    let (status,): (String,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT status FROM `{table}` WHERE order_id = '{id}'"
    )))
    .fetch_one(&mysql().await)
    .await
    .unwrap();
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_runs_in_shadow_is_reported_and_promoted_after_n_clean_batches() {
    init_logs();
    let v2 = std::fs::read(plugin_wasm("orders", true)).unwrap();
    let dir = plugins_dir(&[("orders", &plugin_wasm("orders", false))]);
    let topic = unique("canary");
    create_topic(&topic, 1).await;
    let pipeline = unique("canary");
    let table = format!("{pipeline}_orders");
    let port = free_port();
    let extra = format!(
        "{}\nbatch = {{ max_records = 50, max_wait = \"100ms\" }}\nreload = \"canary\"\ncanary_batches = 4",
        orders_routes(&table, &format!("{pipeline}_events"))
    );
    let toml = host_toml(&dir, &format!("[api]\nlisten = \"127.0.0.1:{port}\"\n"))
        + &pipeline_toml(&pipeline, "orders", &topic, &extra);
    let config_path = write_config(&dir, &toml);
    let host = Host::start(Config::load(&config_path).unwrap())
        .await
        .unwrap();
    let (registry, stats, ledger) = (
        host.registry.clone(),
        host.stats[&pipeline].clone(),
        host.ledger.clone(),
    );
    let running = run_host(host);
    let pool = mysql().await;
    let events = |r: std::ops::Range<usize>| r.map(order_event).collect::<Vec<_>>();

    produce(&producer(), &topic, &events(0..100)).await;
    wait_for(Duration::from_secs(60), || async {
        count_rows(&pool, &table).await.0 == 100
    })
    .await;
    let v1_hash = stats.serving.lock().unwrap().clone().unwrap();

    // v2 (uppercases `status`) arrives: it becomes the canary, v1 serves.
    replace_atomically(&dir.join("orders.wasm"), &v2);
    wait_for(Duration::from_secs(60), || async {
        registry.candidate("orders").is_some()
    })
    .await;
    produce(&producer(), &topic, &events(100..150)).await;
    wait_for(Duration::from_secs(60), || async {
        report(&registry, "orders").is_some_and(|r| r.records == 50)
    })
    .await;
    let r = report(&registry, "orders").unwrap();
    println!("canary report: {}", r.summary());
    assert_eq!(stats.serving.lock().unwrap().as_deref(), Some(&*v1_hash));
    assert_eq!(count_rows(&pool, &table).await.0, 150);
    assert_eq!(status_of(&table, "o-120").await, "paid", "v1 wrote it");
    assert_eq!(r.version, "2.0.0");
    assert_eq!(r.outputs["orders"], (50, 50));
    assert_eq!(r.differing_rows, 50, "each order's status differs");
    assert_eq!(r.dead_letters, (0, 0));
    assert!(r.clean_streak >= 1 && r.clean_streak < 4, "{r:?}");
    let sample = &r.samples[0];
    assert_eq!(sample.output, "orders");
    assert_eq!(sample.active.as_ref().unwrap()["status"], "paid");
    assert_eq!(sample.canary.as_ref().unwrap()["status"], "PAID");

    // What an operator sees.
    let (ok, out, err) = sluice_cli(&["plugins"], &config_path);
    println!("{out}");
    assert!(ok, "{err}");
    assert!(out.contains("canary orders 2.0.0 against 1.0.0"), "{out}");
    assert!(
        out.contains("differs: orders") && out.contains("PAID"),
        "{out}"
    );
    assert!(out.contains("sluice plugins promote orders"), "{out}");

    // Enough clean batches: promoted, and v2 writes from then on.
    produce(&producer(), &topic, &events(150..400)).await;
    wait_for(Duration::from_secs(60), || async {
        count_rows(&pool, &table).await.0 == 400
    })
    .await;
    let v2_hash = PluginVersion::hash_of(&v2);
    assert_eq!(stats.serving.lock().unwrap().as_deref(), Some(&*v2_hash));
    assert!(registry.candidate("orders").is_none());
    assert_eq!(status_of(&table, "o-399").await, "PAID", "v2 wrote it");
    assert_eq!(
        status_of(&table, "o-120").await,
        "paid",
        "the canary wrote nothing"
    );
    assert_eq!(count_rows(&pool, &table).await, (400, 400));
    running.stop().await;
    let runs = ledger.list(Some(&pipeline), 100).await.unwrap();
    let versions: std::collections::BTreeSet<_> = runs
        .iter()
        .filter_map(|r| r.plugin_version.clone())
        .collect();
    assert_eq!(versions.into_iter().collect::<Vec<_>>(), ["1.0.0", "2.0.0"]);
    assert_eq!(runs.iter().map(|r| r.records_in).sum::<u64>(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_is_never_promoted_rollback_sticks_across_restarts_and_promote_serves_a_new_one()
 {
    init_logs();
    let good_bytes = std::fs::read(hostile_wasm(None)).unwrap();
    let liar = std::fs::read(hostile_wasm(Some("describe-lie"))).unwrap();
    let dir = plugins_dir(&[("hostile", &hostile_wasm(None))]);
    let topic = unique("canary_fail");
    create_topic(&topic, 1).await;
    let pipeline = unique("canary_fail");
    let port = free_port();
    let extra = "batch = { max_records = 50, max_wait = \"100ms\" }\nreload = \"canary\"\ncanary_batches = 2";
    let toml = host_toml(&dir, &format!("[api]\nlisten = \"127.0.0.1:{port}\"\n"))
        + &hostile_pipeline(&pipeline, &topic, extra);
    let config_path = write_config(&dir, &toml);
    let rows = |n: i64| {
        let table = format!("{pipeline}_rows");
        async move {
            let (count,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT COUNT(*) FROM `{table}`"
            )))
            .fetch_one(&mysql().await)
            .await
            .unwrap();
            count == n
        }
    };
    let good = |r: std::ops::Range<usize>| {
        r.map(|i| (format!("good-{i}"), format!("value {i}")))
            .collect::<Vec<_>>()
    };

    let host = Host::start(Config::load(&config_path).unwrap())
        .await
        .unwrap();
    let (registry, stats) = (host.registry.clone(), host.stats[&pipeline].clone());
    let running = run_host(host);
    produce(&producer(), &topic, &good(0..50)).await;
    wait_for(Duration::from_secs(60), || rows(50)).await;
    let v1_hash = stats.serving.lock().unwrap().clone().unwrap();

    // A canary that declares only `events` (and emits undeclared outputs):
    // every batch is unclean.
    replace_atomically(&dir.join("hostile.wasm"), &liar);
    wait_for(Duration::from_secs(60), || async {
        registry.candidate("hostile").is_some()
    })
    .await;
    produce(&producer(), &topic, &good(50..200)).await;
    wait_for(Duration::from_secs(60), || async {
        report(&registry, "hostile").is_some_and(|r| r.records == 150)
    })
    .await;
    wait_for(Duration::from_secs(60), || rows(200)).await;
    let r = report(&registry, "hostile").unwrap();
    println!("failing canary: {}", r.summary());
    assert!(r.batches >= 3, "{r:?}");
    assert_eq!((r.clean_batches, r.clean_streak), (0, 0));
    // Its outputs cannot even be routed: `routes.probes` names an output
    // it no longer declares, which promoting it would break.
    let problem = r.last_failure.clone().unwrap();
    assert!(problem.contains("declares no output 'probes'"), "{problem}");
    assert_eq!(stats.serving.lock().unwrap().as_deref(), Some(&*v1_hash));

    // Rolled back by hand; the same file written again is not retried.
    let (ok, out, err) = sluice_cli(&["plugins", "rollback", "hostile"], &config_path);
    assert!(ok && out.contains("rolled back"), "{out}{err}");
    assert!(registry.candidate("hostile").is_none());
    std::fs::write(dir.join("hostile.wasm"), &liar).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(registry.candidate("hostile").is_none());
    let (ok, _, err) = sluice_cli(&["plugins", "promote", "hostile"], &config_path);
    assert!(!ok && err.contains("has no canary running"), "{err}");
    running.stop().await;

    // After a restart the promoted version serves, not the folder's file,
    // and the rolled-back file does not come back as a canary.
    let host = Host::start(Config::load(&config_path).unwrap())
        .await
        .unwrap();
    let (registry, stats) = (host.registry.clone(), host.stats[&pipeline].clone());
    assert_eq!(registry.current("hostile").unwrap().hash, v1_hash);
    assert!(registry.candidate("hostile").is_none());
    let running = run_host(host);

    // A new good version, promoted by hand before any clean streak.
    let v3 = new_version(&good_bytes);
    replace_atomically(&dir.join("hostile.wasm"), &v3);
    wait_for(Duration::from_secs(60), || async {
        registry.candidate("hostile").is_some()
    })
    .await;
    let (ok, out, err) = sluice_cli(&["plugins", "promote", "hostile"], &config_path);
    assert!(ok && out.contains("promoted"), "{out}{err}");
    produce(&producer(), &topic, &good(200..250)).await;
    wait_for(Duration::from_secs(60), || rows(250)).await;
    assert_eq!(
        stats.serving.lock().unwrap().as_deref(),
        Some(&*PluginVersion::hash_of(&v3))
    );
    running.stop().await;
}
