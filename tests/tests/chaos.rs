//! Crash safety: the `sluice` binary is killed with SIGKILL at random
//! points while events flow, and restarted each time. At the end every
//! valid event is exactly one MySQL row and one MongoDB document, and the
//! dead letters hold exactly the bad events.
//!
//! A second pipeline on the same topic stores its offsets in MySQL
//! (`offsets = "mysql"`): triggers count every write of each of its rows,
//! and each row must have been written exactly once, kills or not.
//!
//! CI runs 100,000 events and 5 kills. The full run (1,000,000 events, 20
//! kills, ~10 minutes here) is:
//!
//!     SLUICE_CHAOS_EVENTS=1000000 SLUICE_CHAOS_KILLS=20 \
//!       cargo test --release -p sluice-tests --test chaos -- --nocapture

use sluice_tests::*;
use std::time::{Duration, Instant};

/// Every 500th event has no id: the plugin rejects it (a dead letter).
fn event(i: usize) -> (String, String) {
    if i % 500 == 499 {
        (format!("bad-{i}"), format!("{{\"customer\":\"c-{i}\"}}"))
    } else {
        order_event(i)
    }
}

/// Rows in `table`; 0 before the host created it.
async fn rows_now(pool: &sqlx::MySqlPool, table: &str) -> i64 {
    table_rows(pool, table).await.unwrap_or(0)
}

/// Creates the pipelines' tables (a host that starts and never runs) and
/// triggers that count each write of a row of `tables` in
/// `PIPELINE_writes` (an upsert that changes nothing counts too).
async fn count_writes(
    pool: &sqlx::MySqlPool,
    config: &std::path::Path,
    pipeline: &str,
    tables: &[&str],
) {
    let text = std::fs::read_to_string(config).unwrap();
    drop(
        sluice::Host::start(sluice::config::Config::parse(&text, config).unwrap())
            .await
            .unwrap(),
    );
    let counts = format!("{pipeline}_writes");
    let mut ddl = vec![format!(
        "CREATE TABLE `{counts}` (tbl VARCHAR(255), order_id VARCHAR(64), n INT, PRIMARY KEY (tbl, order_id))"
    )];
    for table in tables {
        for event in ["INSERT", "UPDATE"] {
            ddl.push(format!(
                "CREATE TRIGGER `{table}_{event}` AFTER {event} ON `{table}` FOR EACH ROW INSERT INTO `{counts}` VALUES ('{table}', NEW.order_id, 1) ON DUPLICATE KEY UPDATE n = n + 1"
            ));
        }
    }
    for statement in ddl {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(pool)
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_with_sigkill_at_random_points_it_loses_and_duplicates_nothing() {
    let events = env_or("SLUICE_CHAOS_EVENTS", 100_000);
    let kills = env_or("SLUICE_CHAOS_KILLS", 5);
    let seed = Dice::seed_from_env("SLUICE_CHAOS_SEED");
    println!("chaos: {events} events, {kills} kills, seed {seed}");
    let mut dice = Dice::new(seed);

    let dir = plugins_dir(&[("orders", &plugin_wasm("orders", false))]);
    let topic = unique("chaos");
    create_topic(&topic, 3).await;
    let pipeline = unique("chaos");
    let (table, collection) = (format!("{pipeline}_orders"), format!("{pipeline}_events"));
    // A killed consumer's partitions wait for its session to time out
    // before the restarted host gets them: keep that short.
    let eo = format!("{pipeline}_eo");
    let batch = "batch = { max_records = 1000, max_wait = \"100ms\" }";
    let toml = with_session_timeout(&host_toml(&dir, ""), 6000)
        + &orders_pipeline_toml(&pipeline, &topic, batch)
        + &exactly_once_pipeline_toml(&eo, &topic, batch);
    let config = write_config(&dir, &toml);
    let pool = mysql().await;
    count_writes(
        &pool,
        &config,
        &pipeline,
        &[&table, &format!("{eo}_orders")],
    )
    .await;
    let log = dir.join("sluice");
    sluice_bin();

    // The producer writes all events while the host is killed and restarted.
    let producing = spawn_producer(&topic, events, 5_000, Duration::from_millis(250), event);

    let started = Instant::now();
    let mut timeline = Vec::new();
    for kill in 1..=kills {
        let before = rows_now(&pool, &table).await;
        let mut child = start_sluice(&config, &log);
        let spawned = Instant::now();
        // Kill while it works: once rows move, after a random while more.
        wait_for(Duration::from_secs(120), || async {
            rows_now(&pool, &table).await > before
        })
        .await;
        tokio::time::sleep(dice.between(Duration::ZERO, Duration::from_secs(3))).await;
        child.0.kill().unwrap(); // SIGKILL
        child.0.wait().unwrap();
        let rows = rows_now(&pool, &table).await;
        timeline.push(format!(
            "kill {kill} at {:.1}s, {:.1?} after start: {before} -> {rows} rows",
            started.elapsed().as_secs_f64(),
            spawned.elapsed()
        ));
    }
    producing.await.unwrap();

    // The last start runs until everything is in, then stops cleanly.
    let valid = (0..events).filter(|i| i % 500 != 499).count() as i64;
    let bad = events as i64 - valid;
    let mut child = start_sluice(&config, &log);
    let limit = Duration::from_secs(120 + events as u64 / 1_000);
    let (eo_table, eo_dead_letters) = (format!("{eo}_orders"), format!("{eo}_dead_letters"));
    wait_for(limit, || async {
        count_rows(&pool, &table).await.0 >= valid && count_rows(&pool, &eo_table).await.0 >= valid
    })
    .await;
    let dead_letters = format!("{pipeline}_dead_letters");
    wait_for(Duration::from_secs(60), || async {
        documents(&dead_letters).await.len() as i64 >= bad
            && rows_now(&pool, &eo_dead_letters).await >= bad
    })
    .await;
    child.sigterm();
    let took = started.elapsed();

    let (rows, distinct) = count_rows(&pool, &table).await;
    let docs = mongo()
        .await
        .collection::<mongodb::bson::Document>(&collection)
        .count_documents(mongodb::bson::doc! {})
        .await
        .unwrap() as i64;
    let dead = documents(&dead_letters).await;
    let dead_keys: std::collections::BTreeSet<String> = dead
        .iter()
        .map(|d| d.get_str("key").unwrap().to_string())
        .collect();
    for line in &timeline {
        println!("{line}");
    }
    println!(
        "chaos result: {kills} kills, {events} events produced ({valid} valid, {bad} bad), {rows} rows ({distinct} distinct), {docs} documents, {} dead letters, missing {}, duplicated {}, took {took:.1?}",
        dead.len(),
        valid - distinct,
        rows - distinct
    );
    let writes = |table: &str| {
        let query = format!(
            "SELECT COUNT(*), CAST(COALESCE(SUM(n > 1), 0) AS SIGNED) FROM `{pipeline}_writes` WHERE tbl = '{table}'"
        );
        let pool = pool.clone();
        async move {
            sqlx::query_as::<_, (i64, i64)>(sqlx::AssertSqlSafe(query))
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let (eo_rows, eo_distinct) = count_rows(&pool, &eo_table).await;
    let (written, rewritten) = writes(&table).await;
    let (eo_written, eo_rewritten) = writes(&eo_table).await;
    println!(
        "offsets in kafka: {written} rows written, {rewritten} of them more than once (absorbed by the upsert); offsets in mysql: {eo_rows} rows ({eo_distinct} distinct), {eo_written} written, {eo_rewritten} more than once, {} dead letters",
        rows_now(&pool, &eo_dead_letters).await
    );
    assert_eq!((rows, distinct, docs), (valid, valid, valid));
    assert_eq!((eo_rows, eo_distinct, eo_written), (valid, valid, valid));
    assert_eq!(
        eo_rewritten, 0,
        "offsets = \"mysql\": every row written once"
    );
    assert_eq!(rows_now(&pool, &eo_dead_letters).await, bad);
    assert_eq!(dead.len() as i64, bad, "one dead letter per bad event");
    assert!(dead_keys.iter().all(|k| k.starts_with("bad-")));
    assert_eq!(dead_keys.len() as i64, bad);
    let log = std::fs::read_to_string(log.with_extension("log")).unwrap_or_default();
    assert!(!log.contains("panicked"), "{log}");
}
