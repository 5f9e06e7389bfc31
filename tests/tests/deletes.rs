//! Deletes and tombstones, hand-picked: a plugin's delete (here the orders
//! example's `{"op": "delete"}` event and a Kafka tombstone of the order's
//! key) removes the row from MariaDB and the document from FerretDB; in one
//! batch the last operation on a key wins; deleting a key that holds
//! nothing is fine, so a replay changes nothing; a delete the database
//! refuses is a dead letter; the ledger counts deletes beside writes.
//! Random streams of upserts, deletes and tombstones, with kills, are
//! checked against a model in `last_write_wins.rs`.

use serde_json::{Value, json};
use sluice_tests::*;
use std::collections::BTreeMap;
use std::path::Path;

fn order(id: &str, status: &str) -> (String, Option<String>) {
    let event = json!({"id": id, "customer": "ada", "total": 12.5,
        "created_at": "2024-05-01T10:00:00Z", "status": status});
    (id.to_string(), Some(event.to_string()))
}

fn delete(id: &str) -> (String, Option<String>) {
    (
        id.to_string(),
        Some(json!({"id": id, "op": "delete"}).to_string()),
    )
}

fn tombstone(id: &str) -> (String, Option<String>) {
    (id.to_string(), None)
}

/// What the table and the collection hold: order id -> status.
async fn held(
    pool: &sqlx::MySqlPool,
    pipeline: &str,
) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    statuses(
        pool,
        &format!("{pipeline}_orders"),
        &format!("{pipeline}_events"),
    )
    .await
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The latest ledger run of `pipeline`: (rows written, keys deleted) per output.
async fn last_run(config: &Path, pipeline: &str) -> (Value, Value) {
    let text = std::fs::read_to_string(config).unwrap();
    let parsed = sluice::config::Config::parse(&text, config).unwrap();
    let ledger = sluice::ledger::Ledger::open_existing(&parsed)
        .await
        .unwrap();
    let run = ledger.list(Some(pipeline), 1).await.unwrap().remove(0);
    (json!(run.outputs), json!(run.deletes))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_and_tombstones_remove_rows_and_documents_and_the_last_operation_wins() {
    let dir = plugins_dir(&[("orders", &plugin_wasm("orders", false))]);
    let topic = unique("deletes");
    create_topic(&topic, 1).await;
    let pipeline = unique("deletes");
    let batch = "batch = { max_records = 1000, max_wait = \"500ms\" }";
    let config = write_config(
        &dir,
        &(host_toml(&dir, "") + &orders_pipeline_toml(&pipeline, &topic, batch)),
    );
    let (producer, pool) = (producer(), mysql().await);

    // One batch, several operations per key: o-1 is deleted after two
    // versions, o-2 deleted by a tombstone and then written again.
    let first = [
        order("o-1", "created"),
        order("o-1", "paid"),
        delete("o-1"),
        order("o-2", "created"),
        tombstone("o-2"),
        order("o-2", "reborn"),
        order("o-3", "created"),
        order("o-5", "created"),
    ];
    produce_at(&producer, &topic, &first).await;
    run_until_drained(&config);
    let want = map(&[("o-2", "reborn"), ("o-3", "created"), ("o-5", "created")]);
    assert_eq!(held(&pool, &pipeline).await, (want.clone(), want));
    assert_eq!(
        last_run(&config, &pipeline).await,
        (
            json!({"orders": 3, "order_events": 3}),
            json!({"orders": 1, "order_events": 1})
        ),
        "the ledger counts what the last operation per key did"
    );

    // A tombstone of an existing key, and a delete of one never written.
    produce_at(&producer, &topic, &[tombstone("o-3"), delete("o-4")]).await;
    run_until_drained(&config);
    let want = map(&[("o-2", "reborn"), ("o-5", "created")]);
    assert_eq!(held(&pool, &pipeline).await, (want.clone(), want.clone()));
    assert_eq!(
        last_run(&config, &pipeline).await.1,
        json!({"orders": 2, "order_events": 2})
    );

    // A replay of the whole topic into the same table and collection (a
    // second pipeline, its own consumer group) ends where the first did.
    let replay = unique("replay");
    let routes = format!(
        "{batch}\nroutes.orders = {{ sink = \"mysql\", name = \"{pipeline}_orders\" }}\nroutes.order_events = {{ sink = \"mongodb\", name = \"{pipeline}_events\" }}"
    );
    let replay_config = dir.join("replay.toml");
    std::fs::write(
        &replay_config,
        host_toml(&dir, "") + &pipeline_toml(&replay, "orders", &topic, &routes),
    )
    .unwrap();
    run_until_drained(&replay_config);
    assert_eq!(held(&pool, &pipeline).await, (want.clone(), want));
    assert!(
        documents(&format!("{replay}_dead_letters"))
            .await
            .is_empty()
    );

    // A delete the database refuses (a row that another table's foreign
    // key points at) is a dead letter; the row stays, the document goes.
    let (collation,): (String,) = sqlx::query_as(
        "SELECT COLLATION_NAME FROM information_schema.COLUMNS \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND COLUMN_NAME = 'order_id'",
    )
    .bind(format!("{pipeline}_orders"))
    .fetch_one(&pool)
    .await
    .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE `{pipeline}_shipments` (order_id VARCHAR(64) COLLATE {collation} NOT NULL, \
         FOREIGN KEY (order_id) REFERENCES `{pipeline}_orders` (order_id)) \
         ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
    )))
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO `{pipeline}_shipments` VALUES ('o-5')"
    )))
    .execute(&pool)
    .await
    .unwrap();
    produce_at(&producer, &topic, &[delete("o-5"), delete("o-2")]).await;
    run_until_drained(&config);
    let (rows, docs) = held(&pool, &pipeline).await;
    assert_eq!(
        rows,
        map(&[("o-5", "created")]),
        "MariaDB refused one delete"
    );
    assert!(docs.is_empty(), "FerretDB took both: {docs:?}");
    let letters = documents(&format!("{pipeline}_dead_letters")).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let reason = letters[0].get_str("reason").unwrap();
    assert_eq!(letters[0].get_str("stage").unwrap(), "sink");
    assert!(
        reason.contains("refused the delete of 'orders'") && reason.contains("foreign key"),
        "{reason}"
    );
    assert_eq!(
        last_run(&config, &pipeline).await.1,
        json!({"orders": 1, "order_events": 2})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_answering_in_result_version_1_keeps_working() {
    // The orders plugin built to answer as every plugin from before deletes
    // did (packed result version 1, no op byte; tombstones rejected).
    let old = variant_wasm("orders", Some("result-v1"));
    let dir = plugins_dir(&[("orders", &old)]);
    let topic = unique("result_v1");
    create_topic(&topic, 1).await;
    let pipeline = unique("result_v1");
    let config = write_config(
        &dir,
        &(host_toml(&dir, "") + &orders_pipeline_toml(&pipeline, &topic, "")),
    );
    let events = [
        order("o-1", "created"),
        order("o-2", "paid"),
        tombstone("o-1"),
    ];
    produce_at(&producer(), &topic, &events).await;
    run_until_drained(&config);
    let pool = mysql().await;
    let want = map(&[("o-1", "created"), ("o-2", "paid")]);
    assert_eq!(held(&pool, &pipeline).await, (want.clone(), want));
    let letters = documents(&format!("{pipeline}_dead_letters")).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].get_str("reason").unwrap(), "record has no value");
}
