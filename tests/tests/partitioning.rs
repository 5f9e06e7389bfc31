//! Partitioned tables and shard keys declared by a plugin, on the real
//! MariaDB and FerretDB: the orders example built with `partitioned`
//! spreads `orders` over 8 hash partitions, keeps one `order_history` row
//! per event in daily partitions of the record's time, and gives
//! `order_events` a shard key (which FerretDB cannot apply: said once).
//! An old daily table gets its partitions ahead and loses those past the
//! route's retention, both recorded in the ledger; a date-range query
//! reads one partition; changing the partitioning is refused.

use chrono::{Days, NaiveDate, Utc};
use sluice::config::Config;
use sluice::ledger::Ledger;
use sluice_tests::*;

/// The partitions of `table`, in order: (name, method).
async fn partitions(pool: &sqlx::MySqlPool, table: &str) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT PARTITION_NAME, PARTITION_METHOD FROM information_schema.PARTITIONS \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND PARTITION_NAME IS NOT NULL \
         ORDER BY PARTITION_ORDINAL_POSITION",
    )
    .bind(table)
    .fetch_all(pool)
    .await
    .unwrap()
}

fn day_name(day: NaiveDate) -> String {
    day.format("p%Y%m%d").to_string()
}

/// `order_history` as a host made it ten days ago (partitions from then to
/// five days ago), never cared for since.
async fn create_old_history(pool: &sqlx::MySqlPool, table: &str, today: NaiveDate) {
    let start = today - Days::new(10);
    let mut parts = vec![format!("PARTITION p_before VALUES LESS THAN ('{start}')")];
    for d in 0..6 {
        let day = start + Days::new(d);
        parts.push(format!(
            "PARTITION {} VALUES LESS THAN ('{}')",
            day_name(day),
            day + Days::new(1)
        ));
    }
    parts.push("PARTITION p_future VALUES LESS THAN (MAXVALUE)".into());
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE `{table}` (`order_id` VARCHAR(64) NOT NULL, `at` DATETIME(6) NOT NULL, \
         `status` VARCHAR(32) NULL, `total` DECIMAL(12,2) NOT NULL, PRIMARY KEY (`order_id`, `at`)) \
         ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_nopad_bin \
         PARTITION BY RANGE COLUMNS (`at`) ({})",
        parts.join(", ")
    )))
    .execute(pool)
    .await
    .unwrap();
    // A row from eight days ago: past the retention, dropped with its day.
    let old = (today - Days::new(8)).and_hms_opt(12, 0, 0).unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO `{table}` VALUES ('old-1', '{old}', 'paid', 1.00)"
    )))
    .execute(pool)
    .await
    .unwrap();
}

fn routes(pipeline: &str, retention: &str) -> String {
    orders_routes(&format!("{pipeline}_orders"), &format!("{pipeline}_events"))
        + &format!(
            "\nroutes.order_history = {{ sink = \"mysql\", name = \"{pipeline}_history\"{retention} }}"
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_partitions_are_created_cared_for_and_pruned() {
    let wasm = variant_wasm("orders", Some("partitioned"));
    let dir = plugins_dir(&[("orders", &wasm)]);
    let topic = unique("parts");
    create_topic(&topic, 2).await;
    let pipeline = unique("parts");
    let (orders, history) = (format!("{pipeline}_orders"), format!("{pipeline}_history"));
    let toml = host_toml(&dir, "")
        + &pipeline_toml(
            &pipeline,
            "orders",
            &topic,
            &routes(&pipeline, ", retention = \"3d\""),
        );
    let config = write_config(&dir, &toml);
    let pool = mysql().await;
    let today = Utc::now().date_naive();
    create_old_history(&pool, &history, today).await;

    let events: Vec<_> = (0..500).map(order_event).collect();
    produce(&producer(), &topic, &events).await;
    let log = run_until_drained(&config);

    // orders: KEY partitioning into 8, every order once.
    let spread = partitions(&pool, &orders).await;
    assert_eq!(spread.len(), 8, "{spread:?}");
    assert!(
        spread.iter().all(|(_, method)| method == "KEY"),
        "{spread:?}"
    );
    assert_eq!(count_rows(&pool, &orders).await, (500, 500));

    // order_history: periods ahead added, days past the retention dropped
    // (with the old row), today's rows in today's partition.
    let names: Vec<String> = partitions(&pool, &history)
        .await
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    let mut want: Vec<String> = (0..11)
        .map(|d| day_name(today - Days::new(3) + Days::new(d)))
        .collect();
    want.push("p_future".into());
    assert_eq!(names, want, "3 days back (retention) to 7 ahead");
    let (rows, _) = count_rows(&pool, &history).await;
    assert_eq!(rows, 500, "one row per event; the old one dropped");

    let parsed = Config::load(&config).unwrap();
    let ledger = Ledger::open_existing(&parsed).await.unwrap();
    let changes: Vec<String> = ledger
        .schema_changes(100)
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.pipeline == pipeline)
        .map(|c| format!("{}: {}", c.applied.target, c.applied.what))
        .collect();
    let expected_drop = format!(
        "{history}: drop 8 partition(s) with rows older than {} (retention): p_before, {}",
        today - Days::new(3),
        (0..7)
            .map(|d| day_name(today - Days::new(10) + Days::new(d)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for want in [
        format!("{orders}: create table"),
        format!(
            "{history}: add 12 partition(s) ahead, up to {} (by day of at)",
            today + Days::new(8)
        ),
        expected_drop,
    ] {
        assert!(changes.contains(&want), "{want}\nnot in {changes:#?}");
    }

    // A date-range query reads today's partition only.
    let tomorrow = today + Days::new(1);
    let explain = sqlx::query(sqlx::AssertSqlSafe(format!(
        "EXPLAIN PARTITIONS SELECT COUNT(*) FROM `{history}` WHERE `at` >= '{today}' AND `at` < '{tomorrow}'"
    )))
    .fetch_all(&pool)
    .await
    .unwrap();
    let read: Vec<Option<String>> = explain
        .iter()
        .map(|row| sqlx::Row::get(row, "partitions"))
        .collect();
    println!("EXPLAIN PARTITIONS (one day of {history}): partitions {read:?}");
    assert_eq!(read, [Some(day_name(today))]);

    // FerretDB does not shard: said once, nothing fails.
    assert_eq!(
        log.matches("shard key (order_id) not applied: the server is not a sharded cluster")
            .count(),
        1,
        "{log}"
    );
    let (ok, out, err) = sluice_cli(&["schema", "explain", "order_history"], &config);
    assert!(ok, "{err}");
    assert_contains(&out, &["partitioned by day of at", &day_name(today)]);
}

#[tokio::test]
async fn changing_the_partitioning_or_a_retention_without_days_is_refused() {
    let plain = plugin_wasm("orders", false);
    let dir = plugins_dir(&[("orders", &plain)]);
    let topic = unique("parts_change");
    create_topic(&topic, 1).await;
    let pipeline = unique("parts_change");
    let orders = format!("{pipeline}_orders");
    let config = write_config(
        &dir,
        &(host_toml(&dir, "") + &orders_pipeline_toml(&pipeline, &topic, "")),
    );
    let (ok, _, err) = sluice_cli(&["run", "--until-drained"], &config);
    assert!(ok, "{err}");

    let partitioned = variant_wasm("orders", Some("partitioned"));
    let (ok, out, _) = sluice_cli(&["schema", "plan", partitioned.to_str().unwrap()], &config);
    assert!(!ok, "a refused plan exits non-zero:\n{out}");
    assert!(
        out.contains(&format!(
            "{orders}: REFUSED: partitioning: the table is not partitioned, the new declaration says partitioned by hash of order_id into 8"
        )),
        "{out}"
    );
    assert!(partitions(&mysql().await, &orders).await.is_empty());

    // A retention on a table that is not partitioned by day or month.
    let toml = std::fs::read_to_string(&config).unwrap().replace(
        &format!("name = \"{orders}\" }}"),
        &format!("name = \"{orders}\", retention = \"30d\" }}"),
    );
    std::fs::write(&config, toml).unwrap();
    let (ok, out, err) = sluice_cli(&["run", "--until-drained"], &config);
    assert!(!ok, "{out}");
    assert!(
        err.contains(&format!(
            "pipelines[name={pipeline}].routes.orders.retention: output 'orders' is not partitioned; a retention drops whole partitions"
        )),
        "{err}"
    );
}
