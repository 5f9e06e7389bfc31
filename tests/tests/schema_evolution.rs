//! Declared schema that evolves, against the real MariaDB and FerretDB:
//! each declaration change either migrates the table or collection (and
//! old rows stay, new rows fit) or is refused with the reason and nothing
//! changes. Then a hot reload that adds a column and an index while events
//! flow into a large table, and one the host refuses.

use serde_json::json;
use sluice::model::Row;
use sluice::sink::{MongoSink, MysqlSink, Sink, SinkError};
use sluice_plugin_sdk::schema::{Output, Type};
use sluice_tests::*;
use sqlx::Row as _;
use std::time::{Duration, Instant};

fn orders_v1() -> Output {
    Output::table("orders")
        .field("order_id", Type::text(64))
        .primary_key(["order_id"])
        .field("customer", Type::text(128))
        .index("by_customer", ["customer"])
        .field("total", Type::decimal(12, 2))
        .optional("status", Type::text(32))
}

fn order(id: &str, decl: &Output) -> Row {
    let mut fields = serde_json::Map::new();
    for f in &decl.fields {
        let value = match f.ty {
            Type::Text(_) => json!(format!("{}-{id}", &f.name[..1])),
            Type::Decimal { .. } => json!("12.50"),
            Type::Integer => json!(7),
            Type::Timestamp => json!("2024-05-01T10:00:00.000000Z"),
            _ => json!(null),
        };
        fields.insert(f.name.clone(), value);
    }
    fields.insert("order_id".into(), json!(id));
    Row::upsert(json!(id), fields)
}

async fn show_create(pool: &sqlx::MySqlPool, table: &str) -> String {
    let (_, ddl): (String, String) =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("SHOW CREATE TABLE `{table}`")))
            .fetch_one(pool)
            .await
            .unwrap();
    ddl
}

/// What happened to one declaration change: the statements run, or the
/// refusal.
fn outcome(result: &Result<Vec<sluice::model::Applied>, SinkError>) -> String {
    match result {
        Ok(applied) if applied.is_empty() => "nothing to do".into(),
        Ok(applied) => applied
            .iter()
            .map(|a| a.statement.clone())
            .collect::<Vec<_>>()
            .join("; "),
        Err(e) => format!("refused: {e}"),
    }
}

#[tokio::test]
async fn table_declaration_changes_migrate_or_are_refused_on_mariadb() {
    let sink = MysqlSink::connect(&mysql_url(), 4).unwrap();
    let pool = mysql().await;
    let v1 = orders_v1();
    // (change, new declaration, rows before, expected: Ok(statement part) or Err(refusal part))
    let cases: Vec<(&str, Output, bool, Result<&str, &str>)> = vec![
        (
            "a new output",
            v1.clone(),
            false,
            Ok("CREATE TABLE IF NOT EXISTS"),
        ),
        (
            "a new optional field",
            v1.clone().optional("channel", Type::text(16)),
            true,
            Ok("ADD COLUMN `channel` VARCHAR(16) NULL, ALGORITHM=INSTANT"),
        ),
        (
            "a new index",
            v1.clone().index("by_status", ["status"]),
            true,
            Ok("ADD INDEX `by_status` (`status`), ALGORITHM=INPLACE, LOCK=NONE"),
        ),
        (
            "a wider text",
            replace_field(&v1, "customer", Type::text(256), false),
            true,
            Ok("MODIFY COLUMN `customer` VARCHAR(256)"),
        ),
        (
            "a wider decimal",
            replace_field(&v1, "total", Type::decimal(14, 2), false),
            true,
            Ok("MODIFY COLUMN `total` DECIMAL(14,2)"),
        ),
        (
            "a field that became optional",
            replace_field(&v1, "total", Type::decimal(12, 2), true),
            true,
            Ok("MODIFY COLUMN `total` DECIMAL(12,2) NULL"),
        ),
        (
            "a field no longer declared",
            without_field(&v1, "total"),
            true,
            Ok("MODIFY COLUMN `total` decimal(12,2) NULL"),
        ),
        (
            "a new required field, empty table",
            v1.clone().field("channel", Type::text(16)),
            false,
            Ok("ADD COLUMN `channel` VARCHAR(16) NOT NULL"),
        ),
        (
            "a narrower text",
            replace_field(&v1, "customer", Type::text(16), false),
            true,
            Err(
                "field 'customer': the column is varchar(128) and the new declaration says text(16)",
            ),
        ),
        (
            "a changed type",
            replace_field(&v1, "total", Type::Integer, false),
            true,
            Err("field 'total': the column is decimal(12,2) and the new declaration says integer"),
        ),
        (
            "a changed primary key",
            Output {
                primary_key: vec!["order_id".into(), "customer".into()],
                ..v1.clone()
            },
            true,
            Err(
                "primary key: the table's is (order_id), the new declaration's is (order_id, customer)",
            ),
        ),
        (
            "a new required field, table with rows",
            v1.clone().field("channel", Type::text(16)),
            true,
            Err("field 'channel': new and required (text(16)), but the table has rows"),
        ),
    ];
    let mut report = vec!["| change | MariaDB: what the host did |".to_string()];
    report.push("|---|---|".into());
    for (change, new, rows_before, expected) in cases {
        let table = unique("evolve");
        if change != "a new output" {
            sink.prepare(&table, &v1).await.unwrap();
            if rows_before {
                sink.write(&table, &v1, &[order("old-1", &v1)])
                    .await
                    .unwrap();
            }
        }
        let before = match change {
            "a new output" => String::new(),
            _ => show_create(&pool, &table).await,
        };
        let result = sink.prepare(&table, &new).await;
        let did = outcome(&result);
        let one_line = did.split_whitespace().collect::<Vec<_>>().join(" ");
        report.push(format!("| {change} | {} |", one_line.replace('|', "/")));
        match expected {
            Ok(statement) => {
                assert!(
                    did.contains(statement),
                    "{change}: expected {statement} in: {did}"
                );
                // Old rows stay; a row of the new declaration fits.
                sink.write(&table, &new, &[order("new-1", &new)])
                    .await
                    .unwrap_or_else(|e| panic!("{change}: writing after the change: {e}"));
                let (rows,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT COUNT(*) FROM `{table}`"
                )))
                .fetch_one(&pool)
                .await
                .unwrap();
                assert_eq!(rows, 1 + i64::from(rows_before), "{change}");
                // Applied once, it is done: the same declaration plans nothing.
                let again = sink.plan(&table, &new).await.unwrap();
                assert!(again.is_empty(), "{change}: planned again: {again}");
            }
            Err(refusal) => {
                assert!(
                    matches!(result, Err(SinkError::Incompatible(_))),
                    "{change}: {did}"
                );
                assert!(
                    did.contains(refusal),
                    "{change}: expected {refusal} in: {did}"
                );
                assert!(did.contains(&table), "{change}: names the table: {did}");
                assert_eq!(
                    show_create(&pool, &table).await,
                    before,
                    "{change}: a refused change leaves the table as it was"
                );
            }
        }
    }
    println!("{}", report.join("\n"));
}

#[tokio::test]
async fn document_declaration_changes_add_indexes_or_are_refused_on_ferretdb() {
    let plaintext = sluice::config::SinkTls {
        mode: sluice::config::TlsMode::Disabled,
        ..Default::default()
    };
    let sink = MongoSink::connect(&mongo_uri(), None, "sluice", &plaintext)
        .await
        .unwrap();
    let v1 = Output::document("events")
        .field("order_id", Type::text(64))
        .primary_key(["order_id"])
        .field("customer", Type::text(64))
        .field("channel", Type::text(16))
        .index("by_customer", ["customer"]);
    let collection = unique("evolve_docs");
    let created = sink.prepare(&collection, &v1).await;
    assert!(
        outcome(&created).contains(r#"{"create":"#),
        "{}",
        outcome(&created)
    );
    sink.write(&collection, &v1, &[order("old-1", &v1)])
        .await
        .unwrap();

    let added = v1.clone().index("by_channel", ["channel"]);
    let did = outcome(&sink.prepare(&collection, &added).await);
    assert!(did.contains(r#""name":"by_channel""#), "{did}");

    // An index declared on other fields is refused; the old one stays.
    let mut changed = added.clone();
    changed.indexes[0].fields = vec!["customer".into(), "channel".into()];
    let refused = sink.prepare(&collection, &changed).await;
    let did = outcome(&refused);
    assert!(matches!(refused, Err(SinkError::Incompatible(_))), "{did}");
    assert!(
        did.contains("index 'by_customer' is on (customer) and the new declaration puts it on (customer, channel)"),
        "{did}"
    );
    let indexes = mongo()
        .await
        .run_command(mongodb::bson::doc! { "listIndexes": &collection })
        .await
        .unwrap();
    let by_customer = indexes
        .get_document("cursor")
        .unwrap()
        .get_array("firstBatch")
        .unwrap()
        .iter()
        .filter_map(|i| i.as_document())
        .find(|i| i.get_str("name") == Ok("by_customer"))
        .unwrap()
        .get_document("key")
        .unwrap()
        .keys()
        .cloned()
        .collect::<Vec<_>>();
    assert_eq!(by_customer, ["customer"]);
    assert!(sink.plan(&collection, &added).await.unwrap().is_empty());
    assert_eq!(documents(&collection).await.len(), 1, "the document stays");
}

fn replace_field(decl: &Output, name: &str, ty: Type, nullable: bool) -> Output {
    let mut new = decl.clone();
    let field = new.fields.iter_mut().find(|f| f.name == name).unwrap();
    field.ty = ty;
    field.nullable = nullable;
    new
}

fn without_field(decl: &Output, name: &str) -> Output {
    let mut new = decl.clone();
    new.fields.retain(|f| f.name != name);
    new
}

/// Config of one orders pipeline into `table` and `collection`.
fn orders_config(
    dir: &std::path::Path,
    pipeline: &str,
    topic: &str,
    table: &str,
    collection: &str,
) -> String {
    host_toml(dir, "")
        + &pipeline_toml(
            pipeline,
            "orders",
            topic,
            &format!(
                "{}\nbatch = {{ max_records = 2000, max_wait = \"100ms\" }}",
                orders_routes(table, collection)
            ),
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_adds_a_column_and_an_index_to_a_large_table_while_events_flow() {
    init_logs();
    let preloaded = env_or("SLUICE_SCHEMA_ROWS", 1_000_000);
    let events = env_or("SLUICE_SCHEMA_EVENTS", 100_000);
    let (topic, table, collection) = (unique("evolve"), unique("orders"), unique("events"));
    let pipeline = unique("evolve");
    create_topic(&topic, 3).await;
    let dir = plugins_dir(&[("orders", &plugin_wasm("orders", false))]);
    let config = sluice::config::Config::parse(
        &orders_config(&dir, &pipeline, &topic, &table, &collection),
        &dir.join("sluice.toml"),
    )
    .unwrap();

    // The table exists and holds `preloaded` rows before the host starts.
    let host = sluice::Host::start(config.clone()).await.unwrap();
    let pool = mysql().await;
    let started = Instant::now();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO `{table}` (order_id, customer, total, created_at, status) \
         SELECT CONCAT('pre-', seq), CONCAT('c-', seq % 1000), seq % 500, '2024-01-01 00:00:00', 'paid' \
         FROM seq_1_to_{preloaded}"
    )))
    .execute(&pool)
    .await
    .unwrap();
    println!("preloaded {preloaded} rows in {:?}", started.elapsed());

    // The events arrive over about 20 s, so the reloads land mid-stream.
    let chunks = events.div_ceil(500).max(1) as u32;
    let producing = spawn_producer(
        &topic,
        events,
        500,
        Duration::from_secs(20) / chunks,
        order_event,
    );
    let stats = host.stats[&pipeline].clone();
    let registry = host.registry.clone();
    let ledger = host.ledger.clone();
    let running = run_host(host);
    wait_for(Duration::from_secs(120), || async {
        stats.snapshot().records_in >= (events / 10) as u64
    })
    .await;
    let v1_hash = stats.serving.lock().unwrap().clone().unwrap();

    // A version the table cannot take is refused; v1 keeps serving.
    let narrow = std::fs::read(variant_wasm("orders", Some("narrow"))).unwrap();
    replace_atomically(&dir.join("orders.wasm"), &narrow);
    wait_for(Duration::from_secs(30), || async {
        !registry.rejections().is_empty()
    })
    .await;
    let refusal = registry.rejections().join("\n");
    println!("refused: {refusal}");
    assert_contains(
        &refusal,
        &[
            "orders.wasm (orders 3.0.0-narrow): schema change refused",
            "output 'orders'",
            "field 'customer': the column is varchar(128) and the new declaration says text(16)",
        ],
    );
    assert_eq!(registry.current("orders").unwrap().hash, v1_hash);

    // v3 adds `channel` and `by_channel` while events keep flowing.
    let v3 = std::fs::read(variant_wasm("orders", Some("v3"))).unwrap();
    let written = Instant::now();
    replace_atomically(&dir.join("orders.wasm"), &v3);
    wait_for(Duration::from_secs(120), || async {
        stats.serving.lock().unwrap().as_deref() != Some(&v1_hash)
    })
    .await;
    let reload = written.elapsed();
    let in_at_switch = stats.snapshot().records_in;
    wait_for(Duration::from_secs(300), || async {
        stats.snapshot().records_in >= events as u64
    })
    .await;
    producing.await.unwrap();
    running.stop().await;

    let total = preloaded + events;
    let (rows, distinct) = count_rows(&pool, &table).await;
    let (v3_rows,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM `{table}` WHERE channel = 'web'"
    )))
    .fetch_one(&pool)
    .await
    .unwrap();
    let docs = documents(&collection).await.len();
    let changes = ledger.schema_changes(100).await.unwrap();
    let ddl: Vec<_> = changes
        .iter()
        .filter(|c| c.applied.target == table && c.plugin_version == "3.0.0")
        .collect();
    let ddl_ms: u64 = ddl.iter().map(|c| c.applied.took_ms).sum();
    println!(
        "schema reload under load: {preloaded} rows + {events} events; file written -> v3 serving in {reload:?} \
         (DDL {ddl_ms} ms: {}); records in at the switch {in_at_switch}; rows {rows}, distinct {distinct}, \
         written by v3 {v3_rows}, documents {docs}, dead letters {}",
        ddl.iter()
            .map(|c| format!("{} {} ms", c.applied.statement, c.applied.took_ms))
            .collect::<Vec<_>>()
            .join("; "),
        stats.snapshot().dead_letters
    );
    assert_eq!(
        (rows, distinct),
        (total as i64, total as i64),
        "0 lost, 0 duplicated"
    );
    assert_eq!(docs, events, "every event's document, once");
    assert_eq!(stats.snapshot().dead_letters, 0);
    assert!(
        v3_rows > 0 && (v3_rows as usize) < events,
        "both versions served: {v3_rows}"
    );
    assert_eq!(ddl.len(), 2, "add column + add index recorded: {ddl:?}");
    assert!(
        ddl[1].applied.statement.contains("ADD COLUMN `channel`"),
        "{ddl:?}"
    );
    assert!(
        ddl[0].applied.statement.contains("ADD INDEX `by_channel`"),
        "{ddl:?}"
    );
    let index: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT INDEX_NAME FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() \
         AND TABLE_NAME = '{table}' AND INDEX_NAME = 'by_channel'"
    )))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(index.len(), 1);

    // The example's documented queries (docs/schema.md) use its indexes.
    for (query, index) in [
        (
            format!("SELECT order_id, total, status FROM `{table}` WHERE customer = 'c-7'"),
            "by_customer",
        ),
        (
            format!("SELECT COUNT(*) FROM `{table}` WHERE channel = 'web'"),
            "by_channel",
        ),
    ] {
        let explained = sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN {query}")))
            .fetch_one(&pool)
            .await
            .unwrap();
        let key: Option<String> = explained.try_get("key").unwrap();
        println!("EXPLAIN {query}: key {key:?}");
        assert_eq!(key.as_deref(), Some(index), "{query}");
    }
}

#[tokio::test]
async fn schema_plan_prints_the_statements_or_the_refusal_and_changes_nothing() {
    let (topic, table, collection) = (unique("plan"), unique("orders"), unique("events"));
    let pipeline = unique("plan");
    create_topic(&topic, 1).await;
    let dir = plugins_dir(&[("orders", &plugin_wasm("orders", false))]);
    let config = write_config(
        &dir,
        &orders_config(&dir, &pipeline, &topic, &table, &collection),
    );
    // A first run creates the table and collection (recorded in the ledger).
    let (ok, _, err) = sluice_cli(&["run", "--until-drained"], &config);
    assert!(ok, "{err}");
    let pool = mysql().await;
    let before = show_create(&pool, &table).await;

    let v3 = variant_wasm("orders", Some("v3"));
    let (ok, out, err) = sluice_cli(&["schema", "plan", v3.to_str().unwrap()], &config);
    assert!(ok, "{out}{err}");
    assert_contains(
        &out,
        &[
            "orders 3.0.0",
            &format!("{table}: add column `channel` text(32)"),
            &format!("ALTER TABLE `{table}` ADD COLUMN `channel` VARCHAR(32) NULL"),
            &format!("ALTER TABLE `{table}` ADD INDEX `by_channel` (`channel`)"),
            &format!("{collection}: up to date"),
            "2 change(s) would run",
        ],
    );

    let narrow = variant_wasm("orders", Some("narrow"));
    let (ok, out, err) = sluice_cli(&["schema", "plan", narrow.to_str().unwrap()], &config);
    assert!(!ok, "a refused plan exits non-zero:\n{out}");
    assert!(
        out.contains(&format!(
            "{table}: REFUSED: field 'customer': the column is varchar(128) and the new declaration says text(16)"
        )),
        "{out}"
    );
    assert!(err.contains("the host would refuse this version"), "{err}");
    assert_eq!(
        show_create(&pool, &table).await,
        before,
        "plan changes nothing"
    );

    let (ok, out, err) = sluice_cli(&["schema", "explain", "orders"], &config);
    assert!(ok, "{err}");
    println!("{out}");
    assert_contains(
        &out,
        &[
            &format!("table `{table}`: about 0 rows, 5 columns"),
            "primary key (order_id)",
            "index by_customer (customer)",
            "not partitioned",
        ],
    );
    let (ok, out, err) = sluice_cli(&["schema", "explain"], &config);
    assert!(ok, "{err}");
    assert!(
        out.contains("not sharded (the server is not a sharded cluster)"),
        "{out}"
    );

    let (ok, out, err) = sluice_cli(&["schema", "history"], &config);
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("CREATE TABLE IF NOT EXISTS `{table}`")),
        "{out}"
    );
    assert!(out.contains("orders 1.0.0"), "{out}");
}

/// The column's data type (`varchar`, `int`...), if the table has it.
async fn column_type(pool: &sqlx::MySqlPool, table: &str, column: &str) -> Option<String> {
    let found: Option<(String,)> = sqlx::query_as(
        "SELECT DATA_TYPE FROM information_schema.COLUMNS \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND COLUMN_NAME = ?",
    )
    .bind(table)
    .bind(column)
    .fetch_optional(pool)
    .await
    .unwrap();
    found.map(|(t,)| t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_shows_its_schema_plan_and_applies_it_only_when_promoted() {
    init_logs();
    let (topic, table, collection) = (unique("canary_plan"), unique("orders"), unique("events"));
    let pipeline = unique("canary_plan");
    create_topic(&topic, 1).await;
    let dir = plugins_dir(&[("orders", &plugin_wasm("orders", false))]);
    let toml = orders_config(&dir, &pipeline, &topic, &table, &collection)
        + "reload = \"canary\"\ncanary_batches = 0\n";
    let config = sluice::config::Config::parse(&toml, &dir.join("sluice.toml")).unwrap();
    let host = sluice::Host::start(config).await.unwrap();
    let (registry, stats) = (host.registry.clone(), host.stats[&pipeline].clone());
    let running = run_host(host);
    let pool = mysql().await;
    let p = producer();
    let events = |r: std::ops::Range<usize>| r.map(order_event).collect::<Vec<_>>();
    produce(&p, &topic, &events(0..100)).await;
    wait_for(Duration::from_secs(60), || async {
        stats.snapshot().records_in == 100
    })
    .await;

    let v3 = std::fs::read(variant_wasm("orders", Some("v3"))).unwrap();
    replace_atomically(&dir.join("orders.wasm"), &v3);
    wait_for(Duration::from_secs(60), || async {
        registry.candidate("orders").is_some()
    })
    .await;
    produce(&p, &topic, &events(100..200)).await;
    wait_for(Duration::from_secs(60), || async {
        stats.snapshot().records_in == 200
    })
    .await;
    let (_, report) = registry
        .states()
        .remove("orders")
        .and_then(|s| s.candidate)
        .unwrap();
    println!("canary report: {}", report.summary());
    assert_eq!(
        report.schema_plan,
        [
            format!("{table}: add column `channel` text(32)"),
            format!("{table}: add index `by_channel` on (`channel`)"),
        ]
    );
    assert!(
        column_type(&pool, &table, "channel").await.is_none(),
        "nothing is applied before promotion"
    );

    // The batch already being fetched at promotion is v1's; the next is v3's.
    registry.promote("orders").unwrap();
    for (range, total) in [(200..300, 300), (300..400, 400)] {
        produce(&p, &topic, &events(range)).await;
        wait_for(Duration::from_secs(60), || async {
            stats.snapshot().records_in == total
        })
        .await;
    }
    running.stop().await;
    assert!(column_type(&pool, &table, "channel").await.is_some());
    let (v3_rows,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM `{table}` WHERE channel = 'web'"
    )))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(v3_rows >= 100, "v3 serves after promotion: {v3_rows}");
    assert_eq!(count_rows(&pool, &table).await, (400, 400));
}

#[tokio::test]
async fn a_host_whose_plugin_the_table_cannot_take_does_not_start_and_says_why() {
    let (topic, table, collection) = (unique("refuse"), unique("orders"), unique("events"));
    let pipeline = unique("refuse");
    // The table exists as v1 made it, with a row.
    let sink = MysqlSink::connect(&mysql_url(), 2).unwrap();
    let v1 = Output::table("orders")
        .field("order_id", Type::text(64))
        .primary_key(["order_id"])
        .field("customer", Type::text(128))
        .field("total", Type::decimal(12, 2))
        .field("created_at", Type::Timestamp)
        .optional("status", Type::text(32));
    sink.prepare(&table, &v1).await.unwrap();
    sink.write(&table, &v1, &[order("old-1", &v1)])
        .await
        .unwrap();
    let pool = mysql().await;
    let before = show_create(&pool, &table).await;

    let dir = plugins_dir(&[("orders", &variant_wasm("orders", Some("narrow")))]);
    let toml = orders_config(&dir, &pipeline, &topic, &table, &collection);
    let config = sluice::config::Config::parse(&toml, &dir.join("sluice.toml")).unwrap();
    let error = match sluice::Host::start(config).await {
        Ok(_) => panic!("the host started with a plugin its table cannot take"),
        Err(e) => format!("{e:#}"),
    };
    assert_contains(
        &error,
        &[
            &format!("pipeline '{pipeline}'"),
            "orders.wasm (orders 3.0.0-narrow)",
            "output 'orders' (sink 'mysql')",
            "field 'customer': the column is varchar(128) and the new declaration says text(16)",
        ],
    );
    assert_eq!(show_create(&pool, &table).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_the_table_no_longer_takes_when_it_would_serve_is_quarantined_and_nothing_is_lost()
 {
    init_logs();
    let (topic, table, collection) = (unique("late"), unique("orders"), unique("events"));
    let pipeline = unique("late");
    create_topic(&topic, 1).await;
    let v1 = std::fs::read(plugin_wasm("orders", false)).unwrap();
    let dir = plugins_dir(&[("orders", &plugin_wasm("orders", false))]);
    let toml = orders_config(&dir, &pipeline, &topic, &table, &collection)
        + "reload = \"canary\"\ncanary_batches = 0\n";
    let config = sluice::config::Config::parse(&toml, &dir.join("sluice.toml")).unwrap();
    let host = sluice::Host::start(config).await.unwrap();
    let (registry, stats) = (host.registry.clone(), host.stats[&pipeline].clone());
    let running = run_host(host);
    let (p, pool) = (producer(), mysql().await);
    let events = |r: std::ops::Range<usize>| r.map(order_event).collect::<Vec<_>>();
    produce(&p, &topic, &events(0..100)).await;
    wait_for(Duration::from_secs(60), || async {
        stats.snapshot().records_in == 100
    })
    .await;

    // v3 is admitted as a canary (it adds `channel`), then someone adds a
    // `channel` of another type by hand before it is promoted.
    replace_atomically(
        &dir.join("orders.wasm"),
        &std::fs::read(variant_wasm("orders", Some("v3"))).unwrap(),
    );
    wait_for(Duration::from_secs(60), || async {
        registry.candidate("orders").is_some()
    })
    .await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER TABLE `{table}` ADD COLUMN channel INT NULL"
    )))
    .execute(&pool)
    .await
    .unwrap();
    // The batch already being fetched at promotion is v1's.
    registry.promote("orders").unwrap();
    produce(&p, &topic, &events(100..200)).await;

    // Planned again before its first batch, v3 is refused: quarantined, the
    // pipeline pauses and consumes nothing.
    wait_for(Duration::from_secs(60), || async {
        stats.paused.lock().unwrap().is_some()
    })
    .await;
    let paused = stats.paused.lock().unwrap().clone().unwrap();
    println!("paused: {paused}");
    assert_contains(
        &paused,
        &[
            "quarantined",
            "output 'orders' (sink 'mysql')",
            "field 'channel': the column is int",
            "the new declaration says text(32)",
        ],
    );
    let consumed = stats.snapshot().records_in;
    produce(&p, &topic, &events(200..300)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        stats.snapshot().records_in,
        consumed,
        "nothing consumed while paused"
    );
    assert!(
        column_type(&pool, &table, "channel").await.as_deref() != Some("varchar"),
        "v3's change was not applied"
    );

    // v1 again (a new file) serves: the table takes it, nothing was lost.
    replace_atomically(&dir.join("orders.wasm"), &new_version(&v1));
    wait_for(Duration::from_secs(60), || async {
        stats.snapshot().records_in == 300
    })
    .await;
    running.stop().await;
    assert_eq!(count_rows(&pool, &table).await, (300, 300));
    assert_eq!(stats.snapshot().dead_letters, 0);
}
