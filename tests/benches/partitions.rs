//! Partitioned vs plain tables: the MySQL sink's write path (the one every
//! pipeline batch takes: `Sink::write`, batches of 1,000 rows) writing the
//! same order-history rows into three tables that differ only in their
//! declared partitioning: none, by hash of the order id into 8, by day of
//! the event time (rows spread over the 8 days the table is made with).
//! Rounds alternate the order of the three; each round starts from empty
//! tables. Prints rows/s per round, the medians, each as a ratio to the
//! plain table, and `EXPLAIN PARTITIONS` of a one-day query on the daily
//! table (how many of its partitions it reads). Then what daily partitions
//! buy, on the last round's tables: a one-day aggregate, and removing a
//! day (`DELETE` on the plain table, `DROP PARTITION` on the daily one).
//!
//! `SLUICE_BENCH_ROWS` (default 200,000) and `SLUICE_BENCH_ROUNDS`
//! (default 3) set the size. Needs the local MariaDB (`scripts/services.sh`).

use chrono::{Days, Utc};
use serde_json::{Value, json};
use sluice::model::Row;
use sluice::sink::{MysqlSink, Sink};
use sluice_plugin_sdk::schema::{Output, Type};
use sluice_tests::*;
use std::time::Instant;

const BATCH: usize = 1000;

fn history(name: &str) -> Output {
    Output::table(name)
        .field("order_id", Type::text(64))
        .field("at", Type::Timestamp)
        .primary_key(["order_id", "at"])
        .optional("status", Type::text(32))
        .field("total", Type::decimal(12, 2))
}

/// Row `i`, as the router hands it to the sink (normalised values).
fn row(decl: &Output, i: usize, start_ms: i64) -> Row {
    // Spread over 8 days from the start, in a scrambled order.
    let spread = (i.wrapping_mul(2_654_435_761) % (8 * 86_400_000)) as i64;
    let status = ["created", "paid", "shipped"][i % 3];
    let mut value = json!({
        "order_id": format!("o-{i}"),
        "at": start_ms + spread,
        "status": status,
        "total": format!("{}.{:02}", i % 500, i % 100),
    });
    decl.check_value(&mut value).unwrap();
    let Value::Object(fields) = value else {
        unreachable!()
    };
    Row::upsert(json!(format!("o-{i}")), fields)
}

async fn drop_table(pool: &sqlx::MySqlPool, table: &str) {
    timed(pool, &format!("DROP TABLE IF EXISTS `{table}`")).await;
}

/// Runs `sql` once: milliseconds.
async fn timed(pool: &sqlx::MySqlPool, sql: &str) -> f64 {
    let started = Instant::now();
    sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(pool)
        .await
        .unwrap();
    started.elapsed().as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let rows = env_or("SLUICE_BENCH_ROWS", 200_000);
    let rounds = env_or("SLUICE_BENCH_ROUNDS", 3);
    let sink = MysqlSink::connect(&mysql_url(), 4).unwrap();
    let pool = mysql().await;
    let name = unique("bench_parts");
    let variants: Vec<(&str, Output)> = vec![
        ("plain", history(&format!("{name}_plain"))),
        (
            "hash(order_id, 8)",
            history(&format!("{name}_hash")).partition_by_hash("order_id", 8),
        ),
        (
            "day(at)",
            history(&format!("{name}_day")).partition_by_day("at"),
        ),
    ];
    let today = Utc::now().date_naive();
    let start_ms = today
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp_millis();
    let data: Vec<Row> = (0..rows)
        .map(|i| row(&variants[0].1, i, start_ms))
        .collect();
    let mut speeds = vec![Vec::new(); variants.len()];
    println!(
        "partitioned vs plain: {rows} rows per table in batches of {BATCH}, {rounds} round(s), MariaDB, Sink::write"
    );
    for round in 0..rounds {
        let mut order: Vec<usize> = (0..variants.len()).collect();
        order.rotate_left(round % variants.len());
        let mut line = format!("round {}:", round + 1);
        for v in order {
            let (label, decl) = &variants[v];
            drop_table(&pool, &decl.name).await;
            sink.prepare(&decl.name, decl).await.unwrap();
            let started = Instant::now();
            for batch in data.chunks(BATCH) {
                sink.write(&decl.name, decl, batch).await.unwrap();
            }
            let speed = rows as f64 / started.elapsed().as_secs_f64();
            speeds[v].push(speed);
            line += &format!(" {label} {speed:.0} rows/s;");
        }
        println!("{line}");
    }
    let plain = median(speeds[0].clone());
    for ((label, _), s) in variants.iter().zip(&speeds) {
        let m = median(s.clone());
        println!("median {label}: {m:.0} rows/s = {:.2}x plain", m / plain);
    }
    let daily = &variants[2].1.name;
    let (day, next) = (today + Days::new(2), today + Days::new(3));
    let explain = sqlx::query(sqlx::AssertSqlSafe(format!(
        "EXPLAIN PARTITIONS SELECT COUNT(*), SUM(total) FROM `{daily}` WHERE `at` >= '{day}' AND `at` < '{next}'"
    )))
    .fetch_all(&pool)
    .await
    .unwrap();
    let read: Option<String> = sqlx::Row::get(&explain[0], "partitions");
    let (total,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM information_schema.PARTITIONS \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?",
    )
    .bind(daily)
    .fetch_one(&pool)
    .await
    .unwrap();
    println!(
        "EXPLAIN PARTITIONS SELECT ... WHERE at >= '{day}' AND at < '{next}': reads partition(s) {} of {total}",
        read.unwrap_or_default()
    );
    // What the daily partitions buy: a one-day aggregate reads one
    // partition, and a day is removed by dropping its partition instead of
    // deleting its rows one by one.
    let plain_table = &variants[0].1.name;
    let one_day = format!("WHERE `at` >= '{day}' AND `at` < '{next}'");
    let sum = |table: &str| format!("SELECT COUNT(*), SUM(total) FROM `{table}` {one_day}");
    let (query_plain, query_daily) = (
        timed(&pool, &sum(plain_table)).await,
        timed(&pool, &sum(daily)).await,
    );
    println!(
        "one-day aggregate: plain {query_plain:.1} ms, daily {query_daily:.1} ms = {:.1}x faster",
        query_plain / query_daily
    );
    let (delete_plain, drop_daily) = (
        timed(&pool, &format!("DELETE FROM `{plain_table}` {one_day}")).await,
        timed(
            &pool,
            &format!(
                "ALTER TABLE `{daily}` DROP PARTITION {}",
                day.format("p%Y%m%d")
            ),
        )
        .await,
    );
    println!(
        "removing that day: DELETE on plain {delete_plain:.1} ms, DROP PARTITION on daily {drop_daily:.1} ms = {:.1}x faster",
        delete_plain / drop_daily
    );
    for (_, decl) in &variants {
        drop_table(&pool, &decl.name).await;
    }
}
