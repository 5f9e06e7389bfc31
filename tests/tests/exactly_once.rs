//! `offsets = "mysql"`: a batch's rows, its dead letters and its consumer
//! offsets commit in one MySQL transaction, so a record is written once
//! even when Kafka forgets what was consumed.

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use sluice::Host;
use sluice::config::Config;
use sluice_tests::*;
use std::path::Path;
use std::time::Duration;

const PARTITIONS: i32 = 2;

fn exactly_once_toml(dir: &Path, pipeline: &str, topic: &str) -> String {
    host_toml(dir, "") + &exactly_once_pipeline_toml(pipeline, topic, "")
}

/// The next offsets the group stored in MySQL, summed over partitions.
async fn stored_offsets(pool: &sqlx::MySqlPool, group: &str) -> i64 {
    let (sum,): (Option<i64>,) = sqlx::query_as(
        "SELECT CAST(SUM(next_offset) AS SIGNED) FROM sluice_offsets WHERE group_id = ?",
    )
    .bind(group)
    .fetch_one(pool)
    .await
    .unwrap();
    sum.unwrap_or(0)
}

/// A consumer of `group` on the topic's partitions, outside the group's
/// membership (for reading and moving its committed offsets).
fn group_consumer(group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap()
}

fn all_partitions(topic: &str, offset: Offset) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, offset).unwrap();
    }
    tpl
}

/// The offsets Kafka holds for the group, summed over partitions.
async fn kafka_committed(group: &str, topic: &str) -> i64 {
    let (group, tpl) = (group.to_string(), all_partitions(topic, Offset::Invalid));
    tokio::task::spawn_blocking(move || {
        let committed = group_consumer(&group)
            .committed_offsets(tpl, Duration::from_secs(10))
            .unwrap();
        committed
            .elements()
            .iter()
            .map(|e| e.offset().to_raw().unwrap_or(0).max(0))
            .sum()
    })
    .await
    .unwrap()
}

/// Makes Kafka forget: the group's committed offsets go back to 0, as if
/// the host died after the MySQL commit and before the Kafka one.
async fn rewind_kafka(group: &str, topic: &str) {
    let (group, tpl) = (group.to_string(), all_partitions(topic, Offset::Offset(0)));
    tokio::task::spawn_blocking(move || group_consumer(&group).commit(&tpl, CommitMode::Sync))
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_commits_with_its_offsets_and_is_never_written_twice_even_when_kafka_forgets() {
    init_logs();
    let dir = plugins_dir(&[("orders", &plugin_wasm("orders", false))]);
    let topic = unique("exactly_once");
    create_topic(&topic, PARTITIONS).await;
    let pipeline = unique("exactly_once");
    let group = format!("sluice-{pipeline}");
    let (table, events, dead_letters) = (
        format!("{pipeline}_orders"),
        format!("{pipeline}_events"),
        format!("{pipeline}_dead_letters"),
    );
    let toml = exactly_once_toml(&dir, &pipeline, &topic);
    let config = || Config::parse(&toml, Path::new("exactly_once.toml")).unwrap();
    let host = Host::start(config()).await.unwrap();
    let stats = host.stats[&pipeline].clone();
    // The database refuses orders of 250 or more: their dead letters are
    // part of the same transaction as the rows.
    let pool = mysql().await;
    cap_totals(&pool, &table, Some(250)).await;
    let running = run_host(host);

    // 600 orders, 100 of them refused (totals are (i % 300) + 0.25), and a
    // record that is not JSON.
    let mut input: Vec<_> = (0..600).map(order_event).collect();
    input.push(("not-json".into(), "{oops".into()));
    produce(&producer(), &topic, &input).await;
    wait_for(Duration::from_secs(60), || async {
        stored_offsets(&pool, &group).await == 601
    })
    .await;
    assert_eq!(count_rows(&pool, &table).await, (500, 500));
    assert_eq!(table_rows(&pool, &events).await, Some(600));
    assert_eq!(table_rows(&pool, &dead_letters).await, Some(101));
    running.stop().await;
    // Kafka got the same offsets, after MySQL.
    assert_eq!(kafka_committed(&group, &topic).await, 601);

    // Kafka forgets; the rows are marked so a rewrite would show.
    rewind_kafka(&group, &topic).await;
    assert_eq!(kafka_committed(&group, &topic).await, 0);
    for change in [
        format!("UPDATE `{table}` SET status = 'kept'"),
        format!("UPDATE `{events}` SET big_spender = 2"),
        format!("DELETE FROM `{dead_letters}`"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(change))
            .execute(&pool)
            .await
            .unwrap();
    }

    // Restarted, the host consumes all 601 records again and skips them:
    // nothing is transformed or written a second time.
    let host = Host::start(config()).await.unwrap();
    let stats2 = host.stats[&pipeline].clone();
    let running = run_host(host);
    wait_for(Duration::from_secs(60), || async {
        stats2.snapshot().already_written == 601
    })
    .await;
    let later: Vec<_> = (600..650).map(order_event).collect();
    produce(&producer(), &topic, &later).await;
    wait_for(Duration::from_secs(60), || async {
        stored_offsets(&pool, &group).await == 651
    })
    .await;
    running.stop().await;

    for (t, marked, n) in [
        (&table, "status = 'kept'", 500),
        (&events, "big_spender = 2", 600),
    ] {
        let (kept,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM `{t}` WHERE {marked}"
        )))
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(
            kept, n,
            "{t}: rows written before the restart were not rewritten"
        );
    }
    assert_eq!(count_rows(&pool, &table).await, (550, 550));
    assert_eq!(table_rows(&pool, &events).await, Some(650));
    assert_eq!(
        table_rows(&pool, &dead_letters).await,
        Some(0),
        "dead letters of the skipped records were not written again"
    );
    assert_eq!(stats2.snapshot().records_in, 50, "only the new records");
    assert_eq!(stats.snapshot().already_written, 0);
    assert_eq!(kafka_committed(&group, &topic).await, 651);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_needs_every_output_in_the_one_mysql_sink() {
    init_logs();
    let dir = plugins_dir(&[("orders", &plugin_wasm("orders", false))]);
    let toml = exactly_once_toml(&dir, "eo_routes", "eo_routes_topic");
    // The document output left to its default, the only mongodb sink.
    let unrouted = toml.replace(
        "routes.order_events = { sink = \"mysql\", name = \"eo_routes_events\" }",
        "",
    );
    let config = Config::parse(&unrouted, Path::new("eo.toml")).unwrap();
    let e = Host::start(config)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        e.contains("pipelines[name=eo_routes].routes.order_events: output 'order_events' of plugin 'orders' goes to sink 'mongodb', but offsets = \"mysql\""),
        "{e}"
    );
    assert!(
        e.contains("add routes.order_events = { sink = \"mysql\" }"),
        "{e}"
    );
}
