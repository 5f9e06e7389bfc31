//! End to end on the real local services: Kafka -> orders plugin ->
//! MariaDB (orders table) + FerretDB (order_events documents) + dead letters.

use mongodb::bson::doc;
use sluice::RunMode;
use sluice::config::Config;
use sluice_tests::*;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_land_exactly_once_with_bad_ones_in_dead_letters() {
    init_logs();
    let topic = unique("orders");
    let table = unique("orders");
    let collection = unique("order_events");
    create_topic(&topic, 3).await;

    let events = orders_mix();
    produce(&producer(), &topic, &events).await;

    let dir = plugins_dir(&[("orders", &plugin_wasm("orders", false))]);
    let (config, pipeline) = orders_config(&dir, &topic, &table, &collection);
    let started = Instant::now();
    let host = sluice::Host::start(config).await.unwrap();
    let stats = host.stats[&pipeline].clone();
    host.run(std::future::pending(), RunMode::Once)
        .await
        .unwrap();
    println!("drained 10,000 events in {:?}", started.elapsed());

    let pool = mysql().await;
    let (rows, distinct) = count_rows(&pool, &table).await;
    let db = mongo().await;
    let docs = db
        .collection::<mongodb::bson::Document>(&collection)
        .count_documents(doc! {})
        .await
        .unwrap();
    let dead = db.collection::<mongodb::bson::Document>(&format!("{pipeline}_dead_letters"));
    let dead_count = dead.count_documents(doc! {}).await.unwrap();
    println!(
        "produced 10000, rows {rows}, documents {docs}, dead letters {dead_count}, duplicates {}",
        rows - distinct
    );
    assert_eq!(
        (rows, distinct),
        (9_400, 9_400),
        "every valid order once in MySQL"
    );
    assert_eq!(
        docs, 9_500,
        "valid orders plus the 100 whose bad timestamp only breaks the table"
    );
    assert_eq!(dead_count, 400);
    assert_eq!(stats.snapshot().records_in, 10_000);

    // Dead letters say why, and where the record came from.
    for (filter, want) in [
        (doc! {"key": "bad-3"}, "value is not valid JSON"),
        (doc! {"key": "noid-3"}, "order has no id"),
        (doc! {"key": "type-3"}, "invalid type: string \"lots\""),
        (
            doc! {"key": "ts-3"},
            "field 'created_at': 'yesterday' is not an RFC 3339 timestamp",
        ),
    ] {
        let d = dead
            .find_one(filter.clone())
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("dead letter for {filter}"));
        let reason = d.get_str("reason").unwrap();
        assert!(reason.contains(want), "{reason:?} should contain {want:?}");
        assert_eq!(d.get_str("topic").unwrap(), topic);
        assert!(d.get_i64("offset").is_ok() && d.get_str("value").is_ok());
    }
    assert_eq!(
        dead.count_documents(doc! {"stage": "schema"})
            .await
            .unwrap(),
        100
    );

    // Tables, collections and indexes were created from the declarations.
    let (key,): (String,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT COLUMN_NAME FROM information_schema.STATISTICS WHERE TABLE_NAME = '{table}' AND INDEX_NAME = 'by_customer'"
    )))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(key, "customer");
    let indexes = dead.list_index_names().await.unwrap();
    assert!(indexes.contains(&"by_pipeline".to_string()), "{indexes:?}");

    // Values land typed: decimal, UTC timestamp, nested document.
    let (total, created): (String, String) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT CAST(total AS CHAR), CAST(created_at AS CHAR) FROM `{table}` WHERE order_id = 'o-61'"
    )))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (total.as_str(), created.as_str()),
        ("61.25", "2024-05-01 10:01:01.000000")
    );
    let event = db
        .collection::<mongodb::bson::Document>(&collection)
        .find_one(doc! {"_id": "o-61"})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        event
            .get_document("event")
            .unwrap()
            .get_array("items")
            .unwrap()
            .len(),
        1
    );
    assert!(!event.get_bool("big_spender").unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_mid_stream_loses_and_duplicates_nothing_and_rejects_corrupt_wasm() {
    init_logs();
    let topic = unique("reload");
    let table = unique("orders");
    let collection = unique("order_events");
    create_topic(&topic, 3).await;
    let v1 = plugin_wasm("orders", false);
    let v2 = std::fs::read(plugin_wasm("orders", true)).unwrap();
    let dir = plugins_dir(&[("orders", &v1)]);
    let (config, pipeline) = orders_config(&dir, &topic, &table, &collection);
    let host = sluice::Host::start(config).await.unwrap();
    let stats = host.stats[&pipeline].clone();
    let registry = host.registry.clone();
    let ledger = host.ledger.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(host.run(async { stopped.await.unwrap_or(()) }, RunMode::Scheduled));

    // A producer keeps writing while the plugin changes under the host,
    // until told to stop; it returns how many events it wrote.
    let keep_producing = Arc::new(AtomicBool::new(true));
    let producing = tokio::spawn({
        let (topic, keep) = (topic.clone(), keep_producing.clone());
        async move {
            let p = producer();
            let mut next = 0;
            while keep.load(Ordering::Relaxed) {
                let events: Vec<_> = (next..next + 200).map(order_event).collect();
                produce(&p, &topic, &events).await;
                next += 200;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            next
        }
    });

    let pool = mysql().await;
    wait_for(Duration::from_secs(60), || async {
        count_rows(&pool, &table).await.0 >= 1_000
    })
    .await;
    let v1_hash = stats.serving.lock().unwrap().clone().unwrap();
    let written = Instant::now();
    replace_atomically(&dir.join("orders.wasm"), &v2);
    wait_for(Duration::from_secs(30), || async {
        stats.serving.lock().unwrap().as_deref() != Some(&v1_hash)
    })
    .await;
    let reload = written.elapsed();
    let v2_hash = stats.serving.lock().unwrap().clone().unwrap();
    println!("hot reload: file written -> v2 serving in {reload:?}");

    // A corrupt file, written in place non-atomically, is refused; v2 keeps serving.
    std::fs::write(
        dir.join("orders.wasm"),
        b"\0asm\x01\0\0\0 this is not a component",
    )
    .unwrap();
    wait_for(Duration::from_secs(30), || async {
        !registry.rejections().is_empty()
    })
    .await;
    let rejection = registry.rejections().join("\n");
    assert!(
        rejection.contains("orders.wasm: not a WebAssembly component"),
        "{rejection}"
    );
    assert_eq!(
        registry.current("orders").unwrap().hash,
        v2_hash,
        "corrupt wasm must not replace v2"
    );

    // The host keeps going after the refused file.
    let before = stats.snapshot().records_in;
    wait_for(Duration::from_secs(30), || async {
        stats.snapshot().records_in >= before + 1_000
    })
    .await;
    keep_producing.store(false, Ordering::Relaxed);
    let total = producing.await.unwrap();
    wait_for(Duration::from_secs(60), || async {
        count_rows(&pool, &table).await.0 >= total as i64
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();

    let (rows, distinct) = count_rows(&pool, &table).await;
    let by_status: Vec<(String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT status, COUNT(*) FROM `{table}` GROUP BY status ORDER BY status"
    )))
    .fetch_all(&pool)
    .await
    .unwrap();
    let docs = mongo()
        .await
        .collection::<mongodb::bson::Document>(&collection)
        .count_documents(doc! {})
        .await
        .unwrap();
    println!(
        "reload run: produced {total}, rows {rows}, distinct {distinct}, documents {docs}, by plugin version {by_status:?}"
    );
    assert_eq!(
        (rows, distinct, docs),
        (total as i64, total as i64, total as u64)
    );
    assert_eq!(
        by_status.len(),
        2,
        "both v1 ('paid') and v2 ('PAID') served: {by_status:?}"
    );
    assert_eq!(by_status.iter().map(|(_, n)| n).sum::<i64>(), total as i64);
    assert_eq!(stats.snapshot().dead_letters, 0);

    // The continuous pipeline's ledger: rolling runs, a new one when the
    // plugin version changed, together covering every record once.
    let runs = ledger.list(Some(&pipeline), 1000).await.unwrap();
    let versions: std::collections::BTreeSet<_> = runs
        .iter()
        .map(|r| r.plugin_version.clone().unwrap())
        .collect();
    assert_eq!(versions.into_iter().collect::<Vec<_>>(), ["1.0.0", "2.0.0"]);
    assert!(
        runs.iter()
            .all(|r| r.trigger == sluice::ledger::Trigger::Continuous
                && r.state == sluice::ledger::RunState::Succeeded)
    );
    assert_eq!(runs.iter().map(|r| r.records_in).sum::<u64>(), total as u64);
}

/// A pipeline running the orders plugin into a fresh table and collection.
fn orders_config(dir: &Path, topic: &str, table: &str, collection: &str) -> (Config, String) {
    let pipeline = unique("orders");
    let toml = config_toml(
        dir,
        &pipeline,
        "orders",
        topic,
        &orders_routes(table, collection),
    );
    (
        Config::parse(&toml, Path::new("orders.toml")).unwrap(),
        pipeline,
    )
}
