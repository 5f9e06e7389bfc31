//! Last write wins: for each key, the version from the last valid record
//! (by partition offset) is what both sinks hold, whatever the number of
//! versions in a batch or across batches, after replays and after kills;
//! a delete (an `op: delete` event or a tombstone) is a version too: the
//! key holds nothing until a later record writes it again.
//!
//! Hand-picked cases first (an order's lifecycle in one batch, ten
//! versions of a key, an existing key updated twice, keys that differ only
//! by a trailing space, case or Unicode form). Then random streams checked
//! against an independent model, row by row: seeded (the seed is printed;
//! `SLUICE_MODEL_SEED` replays a stream), over a small key space with hot
//! keys, valid and invalid events, deletes and tombstones interleaved
//! (several operations per key, often in one batch), random batch sizes and
//! production bursts, through the `sluice` binary into the real MariaDB
//! and FerretDB, with the two offset stores side by side (a pipeline with
//! offsets in Kafka writing MariaDB + FerretDB, one with `offsets =
//! "mysql"` writing MariaDB only), with and without SIGKILLs of the host.
//!
//! CI runs 5 streams of 5,000 events, two of them with 3 kills each. The
//! long run (12 streams of 20,000 events without kills, 12 with 6 kills):
//!
//!     SLUICE_MODEL_STREAMS=12 SLUICE_MODEL_EVENTS=20000 SLUICE_MODEL_KILLS=6 \
//!       cargo test -p sluice-tests --test last_write_wins random -- --nocapture --test-threads=1

use serde_json::{Value, json};
use sluice_tests::*;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Keys two sinks could confuse if either compared loosely: a trailing
/// space, case, and `é` precomposed vs `e` + combining accent.
const LOOKALIKE_KEYS: [&str; 5] = ["pad-id", "pad-id ", "Pad-id", "caf\u{e9}", "cafe\u{301}"];

fn order(id: &str, status: &str, cents: u64) -> Value {
    json!({"id": id, "customer": "ada", "total": cents as f64 / 100.0,
        "created_at": "2024-05-01T10:00:00Z", "status": status})
}

fn keyed(events: &[Value]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|e| (e["id"].as_str().unwrap().to_string(), e.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_lifecycle_and_many_versions_in_one_batch_land_the_last_version_in_both_sinks() {
    let dir = plugins_dir(&[("orders", &plugin_wasm("orders", false))]);
    let topic = unique("lww");
    create_topic(&topic, 1).await;
    let pipeline = unique("lww");
    let (table, collection) = (format!("{pipeline}_orders"), format!("{pipeline}_events"));
    let batch = "batch = { max_records = 1000, max_wait = \"500ms\" }";
    let config = write_config(
        &dir,
        &(host_toml(&dir, "") + &orders_pipeline_toml(&pipeline, &topic, batch)),
    );

    // One batch: the lifecycle, ten versions of o-2, lookalike keys.
    let mut first: Vec<Value> = ["created", "paid", "shipped"]
        .iter()
        .map(|s| order("o-1", s, 1000))
        .collect();
    first.extend((1..=10).map(|v| order("o-2", &format!("v{v}"), 500)));
    first.extend(
        LOOKALIKE_KEYS
            .iter()
            .map(|k| order(k, &format!("is {k}"), 100)),
    );
    produce(&producer(), &topic, &keyed(&first)).await;
    let log = run_until_drained(&config);
    assert!(!log.contains("ignores trailing spaces"), "{log}");

    let pool = mysql().await;
    let (rows, docs) = statuses(&pool, &table, &collection).await;
    let mut want: BTreeMap<String, String> = [("o-1", "shipped"), ("o-2", "v10")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    want.extend(
        LOOKALIKE_KEYS
            .iter()
            .map(|k| (k.to_string(), format!("is {k}"))),
    );
    assert_eq!(rows, want, "MariaDB");
    assert_eq!(docs, want, "FerretDB");

    // A second batch updates existing keys twice each: the last one wins.
    let second: Vec<Value> = ["refunded", "closed"]
        .iter()
        .flat_map(|s| [order("o-1", s, 1000), order("pad-id ", s, 100)])
        .collect();
    produce(&producer(), &topic, &keyed(&second)).await;
    run_until_drained(&config);
    let (rows, docs) = statuses(&pool, &table, &collection).await;
    want.insert("o-1".into(), "closed".into());
    want.insert("pad-id ".into(), "closed".into());
    assert_eq!(rows, want, "MariaDB after the second batch");
    assert_eq!(docs, want, "FerretDB after the second batch");

    // A last version the database refuses: a dead letter, and the row
    // keeps what it held before that batch (the document has no such rule).
    cap_totals(&pool, &table, Some(50)).await;
    let third = [
        order("o-1", "reopened", 1000),
        order("o-1", "cancelled", 9900),
    ];
    produce(&producer(), &topic, &keyed(&third)).await;
    run_until_drained(&config);
    let (rows, docs) = statuses(&pool, &table, &collection).await;
    assert_eq!(rows["o-1"], "closed", "MariaDB refused the last version");
    assert_eq!(docs["o-1"], "cancelled", "FerretDB took it");
    let refused = documents(&format!("{pipeline}_dead_letters")).await;
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].get_str("stage").unwrap(), "sink");
    println!(
        "lifecycle: {} keys, each at its last version in both sinks",
        want.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_whose_keys_compare_loosely_is_reported_with_the_statement_that_fixes_it() {
    let dir = plugins_dir(&[("orders", &plugin_wasm("orders", false))]);
    let topic = unique("lww_pad");
    create_topic(&topic, 1).await;
    let pipeline = unique("lww_pad");
    let table = format!("{pipeline}_orders");
    let pool = mysql().await;
    // As an older sluice (or a DBA) made it: utf8mb4_bin pads with spaces.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE `{table}` (order_id VARCHAR(64) NOT NULL, customer VARCHAR(128) NOT NULL, \
         total DECIMAL(12,2) NOT NULL, created_at DATETIME(6) NOT NULL, status VARCHAR(32) NULL, \
         PRIMARY KEY (order_id)) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
    )))
    .execute(&pool)
    .await
    .unwrap();
    let config = write_config(
        &dir,
        &(host_toml(&dir, "") + &orders_pipeline_toml(&pipeline, &topic, "")),
    );
    produce(&producer(), &topic, &keyed(&[order("a", "one", 1)])).await;
    let log = run_until_drained(&config);
    let report = log
        .lines()
        .find(|l| l.contains("ignores trailing spaces or case"))
        .unwrap_or_else(|| panic!("no report of the loose collation in:\n{log}"));
    assert!(
        report.contains(&format!("`order_id` of table `{table}`")),
        "{report}"
    );
    assert!(report.contains("utf8mb4_bin"), "{report}");
    println!("reported: {report}");

    // The statement it gives works, and then the report is gone.
    let fix = report.split("fix it with: ").nth(1).unwrap();
    let fix = fix.split(" (first check").next().unwrap();
    sqlx::query(sqlx::AssertSqlSafe(fix.to_string()))
        .execute(&pool)
        .await
        .unwrap();
    produce(&producer(), &topic, &keyed(&[order("a ", "two", 1)])).await;
    let log = run_until_drained(&config);
    assert!(!log.contains("ignores trailing spaces"), "{log}");
    let (rows, _) = statuses(&pool, &table, &format!("{pipeline}_events")).await;
    assert_eq!(rows.len(), 2, "'a' and 'a ' are two rows now: {rows:?}");
}

// ---------------------------------------------------------------- model

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Valid,
    /// `{"id": key, "op": "delete"}`: the order and its document go.
    Delete,
    /// No value (Kafka's delete marker) under the order's key: the same.
    Tombstone,
    /// The plugin rejects it: a dead letter, stage `plugin`.
    NotJson,
    NoId,
    /// The document is written; the table row breaks its declaration: a
    /// dead letter, stage `schema`.
    BadTime,
    BadTotal,
    LongStatus,
}

struct Event {
    seq: usize,
    key: String,
    kind: Kind,
    /// `None`: a tombstone.
    value: Option<String>,
    /// What the orders table and the events would hold for it.
    status: String,
    cents: u64,
}

impl Event {
    fn generate(dice: &mut Dice, seq: usize, keys: &[String]) -> Event {
        // Half the events go to three hot keys: many versions per batch.
        let key = if dice.chance(0.5) {
            keys[dice.below(3)].clone()
        } else {
            dice.pick(keys).clone()
        };
        let kind = match dice.below(100) {
            0..68 => Kind::Valid,
            68..74 => Kind::Delete,
            74..80 => Kind::Tombstone,
            80..84 => Kind::NotJson,
            84..88 => Kind::NoId,
            88..92 => Kind::BadTime,
            92..96 => Kind::BadTotal,
            _ => Kind::LongStatus,
        };
        let cents = dice.below(20_000) as u64;
        let status = match kind {
            Kind::LongStatus => format!("v{seq}-{}", "x".repeat(40)),
            _ => format!("v{seq}"),
        };
        let mut value = json!({"id": key, "customer": format!("c-{}", seq % 7),
            "total": cents as f64 / 100.0, "created_at": "2024-05-01T10:00:00Z",
            "status": status, "seq": seq});
        match kind {
            Kind::Valid | Kind::LongStatus | Kind::Tombstone => {}
            Kind::Delete => value = json!({"id": key, "op": "delete", "seq": seq}),
            Kind::NotJson => value = json!(format!("{{not json {seq}")),
            Kind::NoId => value["id"] = Value::Null,
            Kind::BadTime => value["created_at"] = json!("soon"),
            Kind::BadTotal => value["total"] = json!(1.234),
        }
        let value = match value {
            _ if kind == Kind::Tombstone => None,
            Value::String(text) => Some(text),
            other => Some(other.to_string()),
        };
        Event {
            seq,
            key,
            kind,
            value,
            status,
            cents,
        }
    }

    /// A delete or tombstone of `key`.
    fn closing(seq: usize, key: &str, kind: Kind) -> Event {
        let value = match kind {
            Kind::Delete => Some(json!({"id": key, "op": "delete", "seq": seq}).to_string()),
            _ => None,
        };
        Event {
            seq,
            key: key.to_string(),
            kind,
            value,
            status: String::new(),
            cents: 0,
        }
    }

    fn decimal(&self) -> String {
        format!("{}.{:02}", self.cents / 100, self.cents % 100)
    }
}

/// What the sinks must hold, computed from the events alone.
#[derive(Default)]
struct Model {
    /// order id -> (customer, total, status) of the last valid row.
    rows: BTreeMap<String, (String, String, String)>,
    /// order id -> (status, big spender) of the last document.
    documents: BTreeMap<String, (String, bool)>,
    /// (topic/partition/offset + suffix, stage) of every dead letter.
    dead_letters: BTreeSet<(String, String)>,
}

impl Model {
    fn of(events: &[Event], at: &[(i32, i64)], topic: &str) -> Model {
        let mut order: Vec<usize> = (0..events.len()).collect();
        order.sort_by_key(|&i| at[i]);
        let mut model = Model::default();
        for i in order {
            let (e, (partition, offset)) = (&events[i], at[i]);
            let letter = |suffix: &str, stage: &str| {
                (
                    format!("{topic}/{partition}/{offset}{suffix}"),
                    stage.to_string(),
                )
            };
            let customer = format!("c-{}", e.seq % 7);
            match e.kind {
                Kind::Delete | Kind::Tombstone => {
                    model.rows.remove(&e.key);
                    model.documents.remove(&e.key);
                    continue;
                }
                Kind::NotJson | Kind::NoId => {
                    model.dead_letters.insert(letter("", "plugin"));
                    continue;
                }
                Kind::Valid => {
                    model
                        .rows
                        .insert(e.key.clone(), (customer, e.decimal(), e.status.clone()));
                }
                Kind::BadTime | Kind::BadTotal | Kind::LongStatus => {
                    model.dead_letters.insert(letter("/orders/1", "schema"));
                }
            }
            let big = e.kind != Kind::BadTotal && e.cents >= 10_000;
            model
                .documents
                .insert(e.key.clone(), (e.status.clone(), big));
        }
        model
    }

    /// Every difference between the model and what a sink holds.
    fn compare(&self, got: &Model, sink: &str) -> Vec<String> {
        let mut out = Vec::new();
        diff(&mut out, &format!("{sink} rows"), &self.rows, &got.rows);
        diff(
            &mut out,
            &format!("{sink} documents"),
            &self.documents,
            &got.documents,
        );
        let (want, have) = (&self.dead_letters, &got.dead_letters);
        for missing in want.difference(have) {
            out.push(format!("{sink} dead letters: missing {missing:?}"));
        }
        for extra in have.difference(want) {
            out.push(format!("{sink} dead letters: unexpected {extra:?}"));
        }
        out
    }
}

fn diff<V: PartialEq + std::fmt::Debug>(
    out: &mut Vec<String>,
    what: &str,
    want: &BTreeMap<String, V>,
    got: &BTreeMap<String, V>,
) {
    let keys: BTreeSet<&String> = want.keys().chain(got.keys()).collect();
    for key in keys {
        let (w, g) = (want.get(key), got.get(key));
        if w != g {
            out.push(format!("{what}: key {key:?}: model {w:?}, sink {g:?}"));
        }
    }
}

/// What a pipeline wrote: its table, its events (a collection, or a table
/// with `offsets = "mysql"`) and its dead letters, in the model's terms.
async fn sinks_of(pool: &sqlx::MySqlPool, pipeline: &str, in_mysql: bool) -> Model {
    let mut got = Model::default();
    let rows: Vec<(String, String, String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT order_id, customer, CAST(total AS CHAR), status FROM `{pipeline}_orders`"
    )))
    .fetch_all(pool)
    .await
    .unwrap();
    for (id, customer, total, status) in rows {
        got.rows.insert(id, (customer, total, status));
    }
    let strip = |id: &str| id[pipeline.len() + 1..].to_string();
    if in_mysql {
        let events: Vec<(String, String, bool)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT order_id, JSON_UNQUOTE(JSON_EXTRACT(event, '$.status')), big_spender FROM `{pipeline}_events`"
        )))
        .fetch_all(pool)
        .await
        .unwrap();
        for (id, status, big) in events {
            got.documents.insert(id, (status, big));
        }
        let letters: Vec<(String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT id, stage FROM `{pipeline}_dead_letters`"
        )))
        .fetch_all(pool)
        .await
        .unwrap();
        got.dead_letters = letters
            .iter()
            .map(|(id, s)| (strip(id), s.clone()))
            .collect();
    } else {
        for d in documents(&format!("{pipeline}_events")).await {
            let event = d.get_document("event").unwrap();
            let status = event.get_str("status").unwrap().to_string();
            let big = d.get_bool("big_spender").unwrap();
            got.documents
                .insert(d.get_str("_id").unwrap().to_string(), (status, big));
        }
        for d in documents(&format!("{pipeline}_dead_letters")).await {
            let id = strip(d.get_str("id").unwrap());
            got.dead_letters
                .insert((id, d.get_str("stage").unwrap().to_string()));
        }
    }
    got
}

/// What one stream did, for the summary line.
struct Outcome {
    mismatches: Vec<String>,
    summary: String,
}

/// Generates one stream from `seed`, runs it through the `sluice` binary
/// (killed `kills` times while it works) and compares every sink with the
/// model, and the ledger's record counts with the events.
async fn run_stream(seed: u64, events: usize, kills: usize) -> Outcome {
    let started = Instant::now();
    let mut dice = Dice::new(seed);
    let mut keys: Vec<String> = (0..2 + dice.below(20)).map(|i| format!("o-{i}")).collect();
    keys.extend(LOOKALIKE_KEYS.iter().map(|k| k.to_string()));
    let batch = *dice.pick(&[3, 10, 50, 200, 1000]);
    let mut stream: Vec<Event> = (0..events)
        .map(|seq| Event::generate(&mut dice, seq, &keys))
        .collect();
    // The stream ends by deleting about half the keys (at least one), so
    // that what the sinks hold at the end depends on deletes being done.
    for (i, key) in keys.iter().enumerate() {
        if i == 0 || dice.chance(0.5) {
            let kind = *dice.pick(&[Kind::Delete, Kind::Tombstone]);
            stream.push(Event::closing(stream.len(), key, kind));
        }
    }
    let events = stream.len();

    let dir = plugins_dir(&[("orders", &plugin_wasm("orders", false))]);
    let topic = unique("model");
    create_topic(&topic, 3).await;
    let (pipeline, eo) = (unique("model"), unique("model_eo"));
    let batch_toml = format!("batch = {{ max_records = {batch}, max_wait = \"50ms\" }}");
    let toml = with_session_timeout(&host_toml(&dir, ""), 6000)
        + &orders_pipeline_toml(&pipeline, &topic, &batch_toml)
        + &exactly_once_pipeline_toml(&eo, &topic, &batch_toml);
    let config = write_config(&dir, &toml);
    let log = dir.join("sluice");
    let groups = [format!("sluice-{pipeline}"), format!("sluice-{eo}")];
    let committed = |group: &str| committed_offsets(group, &topic).values().sum::<i64>();

    // Production in random bursts while the host runs; kills at random
    // points, each once the restarted host has committed something.
    let mut kill_at: Vec<usize> = (0..kills).map(|_| dice.below(events)).collect();
    kill_at.sort();
    let mut host = start_sluice(&config, &log);
    let mut since_start = 0;
    let (producer, mut at, mut produced, mut killed) = (producer(), Vec::new(), 0, 0);
    while produced < events {
        let chunk = (1 + dice.below(200)).min(events - produced);
        let sent: Vec<(String, Option<String>)> = stream[produced..produced + chunk]
            .iter()
            .map(|e| (e.key.clone(), e.value.clone()))
            .collect();
        at.extend(produce_at(&producer, &topic, &sent).await);
        produced += chunk;
        tokio::time::sleep(Duration::from_millis(dice.below(60) as u64)).await;
        if kill_at.first().is_some_and(|&k| k < produced) {
            kill_at.remove(0);
            // (A host that caught up has nothing more to commit.)
            let end = at.len() as i64;
            wait_for(Duration::from_secs(120), || async {
                let now = committed(&groups[0]);
                now > since_start || now == end
            })
            .await;
            tokio::time::sleep(dice.between(Duration::ZERO, Duration::from_secs(1))).await;
            host.0.kill().unwrap(); // SIGKILL
            host.0.wait().unwrap();
            killed += 1;
            since_start = committed(&groups[0]);
            host = start_sluice(&config, &log);
        }
    }
    // Drained once both groups committed the end; a host that stalls is a
    // mismatch too, reported with the sinks' contents.
    let end = at.len() as i64;
    let deadline = Instant::now() + Duration::from_secs(120 + events as u64 / 50);
    let mut mismatches = Vec::new();
    while groups.iter().any(|g| committed(g) < end) {
        if Instant::now() > deadline {
            let stuck: Vec<_> = groups.iter().map(|g| (g, committed(g))).collect();
            mismatches.push(format!("not drained: committed {stuck:?} of {end}"));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if mismatches.is_empty() {
        host.sigterm();
    }
    drop(host);

    let model = Model::of(&stream, &at, &topic);
    let pool = mysql().await;
    mismatches.extend(model.compare(&sinks_of(&pool, &pipeline, false).await, "kafka offsets:"));
    mismatches.extend(model.compare(&sinks_of(&pool, &eo, true).await, "mysql offsets:"));

    // The ledger counts each record once, interrupted runs included.
    let text = std::fs::read_to_string(&config).unwrap();
    let parsed = sluice::config::Config::parse(&text, &config).unwrap();
    let ledger = sluice::ledger::Ledger::open_existing(&parsed)
        .await
        .unwrap();
    let mut interrupted = 0;
    for name in [&pipeline, &eo] {
        let runs = ledger.list(Some(name), 100_000).await.unwrap();
        let counted: u64 = runs.iter().map(|r| r.records_in).sum();
        let cut: Vec<_> = runs
            .iter()
            .filter(|r| r.state == sluice::ledger::RunState::Interrupted)
            .collect();
        interrupted += cut.iter().filter(|r| r.records_in > 0).count();
        if counted != events as u64 {
            mismatches.push(format!(
                "ledger of {name}: {counted} records in over {} runs ({} interrupted), {events} produced",
                runs.len(),
                cut.len()
            ));
        }
    }
    let host_log = std::fs::read_to_string(log.with_extension("log")).unwrap_or_default();
    if host_log.contains("panicked") {
        mismatches.push(format!("the host panicked:\n{host_log}"));
    }
    if let Some(line) = host_log.lines().rev().find(|l| l.contains("retrying in")) {
        println!("  last retry in the host's log: {line}");
    }
    let summary = format!(
        "seed {seed}: {events} events ({} valid, {} deletes, {} tombstones) over {} keys, batch {batch}, {killed} kills, {} interrupted runs with records; model: {} rows, {} documents, {} dead letters; {} mismatches; {:.1?}",
        stream.iter().filter(|e| e.kind == Kind::Valid).count(),
        stream.iter().filter(|e| e.kind == Kind::Delete).count(),
        stream.iter().filter(|e| e.kind == Kind::Tombstone).count(),
        keys.len(),
        interrupted,
        model.rows.len(),
        model.documents.len(),
        model.dead_letters.len(),
        mismatches.len(),
        started.elapsed()
    );
    Outcome {
        mismatches,
        summary,
    }
}

/// Runs `streams` streams (seeds from `SLUICE_MODEL_SEED` or the clock)
/// and fails with every mismatch and the seed that found it.
async fn check_streams(streams: usize, events: usize, kills: usize) {
    let first = Dice::seed_from_env("SLUICE_MODEL_SEED");
    let mut failed = Vec::new();
    for i in 0..streams as u64 {
        let seed = first.wrapping_add(i);
        println!(
            "model: stream {} of {streams}, seed {seed} (SLUICE_MODEL_SEED={seed} replays it)",
            i + 1
        );
        let outcome = run_stream(seed, events, kills).await;
        println!("model: {}", outcome.summary);
        for m in outcome.mismatches.iter().take(20) {
            println!("  {m}");
        }
        if !outcome.mismatches.is_empty() {
            failed.push(seed);
        }
    }
    assert!(
        failed.is_empty(),
        "streams that differ from the model, by seed: {failed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_streams_match_the_model() {
    check_streams(
        env_or("SLUICE_MODEL_STREAMS", 3),
        env_or("SLUICE_MODEL_EVENTS", 5_000),
        0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_streams_match_the_model_with_the_host_killed() {
    check_streams(
        env_or("SLUICE_MODEL_STREAMS", 2),
        env_or("SLUICE_MODEL_EVENTS", 5_000),
        env_or("SLUICE_MODEL_KILLS", 3),
    )
    .await;
}
