//! Plugins that misbehave on purpose (`plugins/hostile`, test only): every
//! case is contained, named in a clear error or dead letter, and the host
//! and its other pipelines keep going.

use mongodb::bson::{Document, doc};
use sluice::config::Config;
use sluice::{Host, RunMode};
use sluice_tests::*;
use std::path::Path;
use std::time::Duration;

async fn count(collection: &str) -> u64 {
    mongo()
        .await
        .collection::<Document>(collection)
        .count_documents(doc! {})
        .await
        .unwrap()
}

async fn rows(table: &str) -> i64 {
    let (n,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM `{table}`"
    )))
    .fetch_one(&mysql().await)
    .await
    .unwrap();
    n
}

fn good(range: std::ops::Range<usize>) -> Vec<(String, String)> {
    range
        .map(|i| (format!("good-{i}"), format!("value {i}")))
        .collect()
}

/// (key, dead-letter stage, a fragment of the reason).
const HOSTILE: [(&str, &str, &str); 11] = [
    (
        "loop",
        "trap",
        "exceeded the time limit of 5s (limits.batch_timeout)",
    ),
    (
        "bomb",
        "trap",
        "exceeded the memory limit (limits.memory_mib)",
    ),
    ("recurse", "trap", "wasm stack overflow (deep recursion)"),
    // The panic message comes from the plugin's captured stderr.
    ("panic", "trap", "hostile panic"),
    ("trap-on-me", "trap", "unreachable"),
    (
        "flood",
        "trap",
        "more than limits.max_output_records (10000)",
    ),
    ("big", "trap", "more than limits.max_output_mib (4 MiB)"),
    ("wrong-type", "schema", "field 'n'"),
    ("no-key", "schema", "id"),
    ("undeclared", "schema", "undeclared_output"),
    ("oversize", "schema", "label"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hostile_record_is_contained_and_the_rest_of_its_batch_delivered() {
    init_logs();
    let dir = plugins_dir(&[("hostile", &hostile_wasm(None))]);
    let topic = unique("hostile");
    create_topic(&topic, 1).await;
    let pipeline = unique("hostile");
    let limits = "limits = { batch_timeout = \"5s\", memory_mib = 256, max_output_records = 10000, max_output_mib = 4, quarantine_after = 100 }";
    let toml = host_toml(&dir, "[engine]\nstack_kib = 256\n")
        + &hostile_pipeline(&pipeline, &topic, limits);
    let config = Config::parse(&toml, Path::new("hostile.toml")).unwrap();

    // Each hostile record sits between good ones, all in one batch.
    let mut events = Vec::new();
    let probes = ["read-file", "socket", "env"];
    let keys = HOSTILE.iter().map(|(k, _, _)| *k).chain(probes);
    for (i, key) in keys.enumerate() {
        events.extend(good(i * 3..i * 3 + 3));
        events.push((key.to_string(), "{}".to_string()));
    }
    produce(&producer(), &topic, &events).await;
    let good_count = events.len() - HOSTILE.len() - probes.len();

    let host = Host::start(config.clone()).await.unwrap();
    let ledger = host.ledger.clone();
    let started = std::time::Instant::now();
    host.run(std::future::pending(), RunMode::Once)
        .await
        .unwrap();
    println!(
        "{} records, {} hostile, processed in {:?}",
        events.len(),
        HOSTILE.len(),
        started.elapsed()
    );

    assert_eq!(rows(&format!("{pipeline}_rows")).await, good_count as i64);
    assert_eq!(
        count(&format!("{pipeline}_events")).await,
        good_count as u64
    );
    let probe_docs: Vec<Document> = documents(&format!("{pipeline}_probes")).await;
    assert_eq!(probe_docs.len(), 3);
    for d in &probe_docs {
        let result = d.get_str("result").unwrap();
        println!("probe {}: {result}", d.get_str("id").unwrap());
        assert!(
            result.starts_with("denied"),
            "the sandbox let {} through: {result}",
            d.get_str("id").unwrap()
        );
    }

    let dead = mongo()
        .await
        .collection::<Document>(&format!("{pipeline}_dead_letters"));
    for (key, stage, fragment) in HOSTILE {
        let letters: Vec<Document> = {
            use futures::TryStreamExt;
            dead.find(doc! { "key": key })
                .await
                .unwrap()
                .try_collect()
                .await
                .unwrap()
        };
        assert!(!letters.is_empty(), "no dead letter for '{key}'");
        let reason = letters[0].get_str("reason").unwrap();
        println!(
            "| {key} | {} | {} |",
            letters[0].get_str("stage").unwrap(),
            reason.chars().take(160).collect::<String>()
        );
        assert_eq!(
            letters[0].get_str("stage").unwrap(),
            stage,
            "{key}: {reason}"
        );
        assert!(reason.contains(fragment), "{key}: {reason}");
        if stage == "trap" {
            assert!(reason.contains("plugin hostile 1.0.0"), "{key}: {reason}");
        }
    }
    let run = ledger.list(Some(&pipeline), 1).await.unwrap().remove(0);
    assert_eq!(run.records_in as usize, events.len());
}

#[test]
fn describe_time_misbehaviour_and_foreign_imports_are_refused_with_file_and_reason() {
    let cases = [
        ("describe-panic", "describe"),
        ("describe-no-pk", "primary key"),
        ("describe-dup-field", "twice"),
        ("describe-bad-name", "rows; DROP TABLE x"),
        (
            "describe-bad-partition",
            "declares an invalid schema: output 'rows': partitioning by hash of n into 4: the primary key (id) must include 'n'",
        ),
        (
            "import",
            "cannot instantiate (imports something the host does not provide?)",
        ),
        (
            "encoding-v0",
            "cannot read this host's batches (an empty batch failed: malformed packed batch: record count exceeds buffer); it was probably built with another sluice-plugin-sdk: rebuild it with the SDK for packed encoding version 1",
        ),
    ];
    for (feature, want) in cases {
        let wasm = hostile_wasm(Some(feature));
        let name = wasm.file_stem().unwrap().to_string_lossy().into_owned();
        let dir = plugins_dir(&[(&name, &wasm)]);
        let toml = config_toml(&dir, "p", &name, "t", "");
        let config = Config::parse(&toml, Path::new("t.toml")).unwrap();
        let err = Host::load_plugins(&config)
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        println!("| {feature} | {err} |");
        assert!(
            err.contains(&format!("{name}.wasm")) && err.contains(want),
            "{feature}: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_keeps_failing_is_quarantined_while_other_pipelines_flow_and_a_new_version_resumes()
 {
    init_logs();
    let hostile = std::fs::read(hostile_wasm(None)).unwrap();
    let dir = plugins_dir(&[
        ("hostile", &hostile_wasm(None)),
        ("orders", &plugin_wasm("orders", false)),
    ]);
    let (bad_topic, good_topic) = (unique("quarantine"), unique("healthy"));
    create_topic(&bad_topic, 1).await;
    create_topic(&good_topic, 1).await;
    let (bad, healthy) = (unique("failing"), unique("healthy"));
    let bad_extra =
        "batch = { max_records = 10, max_wait = \"2s\" }\nlimits = { quarantine_after = 2 }";
    let toml = host_toml(&dir, "")
        + &hostile_pipeline(&bad, &bad_topic, bad_extra)
        + &pipeline_toml(
            &healthy,
            "orders",
            &good_topic,
            &orders_routes(&format!("{healthy}_orders"), &format!("{healthy}_events")),
        );
    let config = Config::parse(&toml, Path::new("q.toml")).unwrap();

    // Three batches of ten, each with one record that panics.
    let mut events = Vec::new();
    for b in 0..3 {
        events.push(("panic".to_string(), "{}".to_string()));
        events.extend(good(b * 9..b * 9 + 9));
    }
    produce(&producer(), &bad_topic, &events).await;
    let host = Host::start(config).await.unwrap();
    let registry = host.registry.clone();
    let (bad_stats, ledger) = (host.stats[&bad].clone(), host.ledger.clone());
    let running = run_host(host);

    wait_for(Duration::from_secs(60), || async {
        bad_stats.paused.lock().unwrap().is_some()
    })
    .await;
    let why = bad_stats.paused.lock().unwrap().clone().unwrap();
    println!("paused: {why}");
    assert!(
        why.contains("quarantined") && why.contains("2 batches in a row failed"),
        "{why}"
    );
    assert_eq!(
        rows(&format!("{bad}_rows")).await,
        18,
        "two batches delivered except their poison records"
    );

    // The healthy pipeline keeps flowing beside the quarantined one.
    let orders: Vec<_> = (0..500).map(order_event).collect();
    produce(&producer(), &good_topic, &orders).await;
    wait_for(Duration::from_secs(60), || async {
        count_rows(&mysql().await, &format!("{healthy}_orders"))
            .await
            .0
            == 500
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        rows(&format!("{bad}_rows")).await,
        18,
        "the quarantined pipeline consumes nothing"
    );
    assert!(
        registry
            .serving("hostile")
            .unwrap_err()
            .to_string()
            .contains("quarantined")
    );

    // A new version lifts the quarantine; the third batch is processed.
    replace_atomically(&dir.join("hostile.wasm"), &new_version(&hostile));
    wait_for(Duration::from_secs(60), || async {
        rows(&format!("{bad}_rows")).await == 27
    })
    .await;
    assert!(bad_stats.paused.lock().unwrap().is_none());
    running.stop().await;
    let runs = ledger.list(Some(&bad), 100).await.unwrap();
    assert!(
        runs.iter().any(|r| r
            .error
            .as_deref()
            .is_some_and(|e| e.contains("quarantined"))),
        "{runs:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_plugin_file_pauses_its_pipeline_until_the_file_is_back() {
    init_logs();
    let wasm = plugin_wasm("orders", false);
    let dir = plugins_dir(&[("orders", &wasm)]);
    let topic = unique("removed");
    create_topic(&topic, 1).await;
    let pipeline = unique("removed");
    let table = format!("{pipeline}_orders");
    let toml = host_toml(&dir, "")
        + &pipeline_toml(
            &pipeline,
            "orders",
            &topic,
            &orders_routes(&table, &format!("{pipeline}_events")),
        );
    let host = Host::start(Config::parse(&toml, Path::new("r.toml")).unwrap())
        .await
        .unwrap();
    let stats = host.stats[&pipeline].clone();
    let running = run_host(host);
    let db = mysql().await;
    produce(
        &producer(),
        &topic,
        &(0..100).map(order_event).collect::<Vec<_>>(),
    )
    .await;
    wait_for(Duration::from_secs(60), || async {
        count_rows(&db, &table).await.0 == 100
    })
    .await;

    std::fs::remove_file(dir.join("orders.wasm")).unwrap();
    wait_for(Duration::from_secs(30), || async {
        stats.paused.lock().unwrap().is_some()
    })
    .await;
    println!("paused: {}", stats.paused.lock().unwrap().clone().unwrap());
    produce(
        &producer(),
        &topic,
        &(100..200).map(order_event).collect::<Vec<_>>(),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        count_rows(&db, &table).await.0,
        100,
        "nothing consumed while the file is gone"
    );

    std::fs::copy(&wasm, dir.join("orders.wasm")).unwrap();
    wait_for(Duration::from_secs(60), || async {
        count_rows(&db, &table).await == (200, 200)
    })
    .await;
    running.stop().await;
}

/// The probes' results, by pipeline: `{id: result}`.
async fn probe_results(pipeline: &str) -> std::collections::BTreeMap<String, String> {
    documents(&format!("{pipeline}_probes"))
        .await
        .iter()
        .map(|d| {
            let id = d.get_str("id").unwrap().to_string();
            (id, d.get_str("result").unwrap().to_string())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_open_exactly_what_the_pipeline_names_and_a_lying_describe_loses_nothing() {
    init_logs();
    let dir = plugins_dir(&[
        ("hostile", &hostile_wasm(None)),
        ("liar", &hostile_wasm(Some("describe-lie"))),
    ]);
    let granted_dir = dir.join("granted");
    std::fs::create_dir_all(&granted_dir).unwrap();
    std::fs::write(granted_dir.join("hello.txt"), "hello").unwrap();
    let topic = unique("grants");
    create_topic(&topic, 1).await;
    let kafka = kafka_brokers();
    let mysql_port = mysql_url()
        .rsplit(':')
        .next()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    // Each probe's value names what it tries to reach.
    let probes = [
        ("env", "PATH"),
        ("read-file", "/granted/hello.txt"),
        ("socket", kafka.as_str()),
        ("clock", ""),
        ("random", ""),
    ];
    let events: Vec<(String, String)> = probes
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .chain(good(0..5))
        .collect();
    produce(&producer(), &topic, &events).await;
    // Outside what is granted: another file and another port.
    let outside = unique("grants_outside");
    create_topic(&outside, 1).await;
    produce(
        &producer(),
        &outside,
        &[
            ("read-file".to_string(), "/etc/passwd".to_string()),
            ("socket".to_string(), format!("127.0.0.1:{mysql_port}")),
        ],
    )
    .await;

    let (sealed_a, sealed_b, granted, granted_outside, liar) = (
        unique("sealed_a"),
        unique("sealed_b"),
        unique("granted"),
        unique("granted_out"),
        unique("liar"),
    );
    let grants = format!(
        "[pipelines.grants]\nenv = [\"PATH\"]\nread_dirs = {{ \"/granted\" = \"{}\" }}\nconnect = [\"{kafka}\"]\nclock = true\nrandom = true\n",
        granted_dir.display()
    );
    let toml = host_toml(&dir, "")
        + &hostile_pipeline(&sealed_a, &topic, "")
        + &hostile_pipeline(&sealed_b, &topic, "")
        + &hostile_pipeline(&granted, &topic, &grants)
        + &hostile_pipeline(&granted_outside, &outside, &grants)
        + &pipeline_toml(
            &liar,
            "liar",
            &topic,
            &format!("routes.events = {{ sink = \"mongodb\", name = \"{liar}_events\" }}"),
        );
    let config = Config::parse(&toml, Path::new("grants.toml")).unwrap();
    let host = Host::start(config).await.unwrap();
    host.run(std::future::pending(), RunMode::Once)
        .await
        .unwrap();

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (a, b) = (
        probe_results(&sealed_a).await,
        probe_results(&sealed_b).await,
    );
    let g = probe_results(&granted).await;
    for (name, results) in [("sealed", &a), ("granted", &g)] {
        for (probe, result) in results {
            println!("| {probe} | {name} | {result} |");
        }
    }
    for probe in ["env", "read-file", "socket"] {
        assert!(
            a[probe].starts_with("denied"),
            "sealed {probe}: {}",
            a[probe]
        );
        assert!(g[probe].starts_with("ok"), "granted {probe}: {}", g[probe]);
    }
    assert!(
        g["env"].contains("1 environment variables, PATH="),
        "{}",
        g["env"]
    );
    assert_eq!(g["read-file"], "ok: read 5 bytes of /granted/hello.txt");
    assert_eq!(a["clock"], "ok: 0", "the sealed clock reads 1970-01-01");
    let granted_secs: u64 = g["clock"].trim_start_matches("ok: ").parse().unwrap();
    assert!(granted_secs.abs_diff(now) < 600, "{}", g["clock"]);
    assert_eq!(
        a["random"], b["random"],
        "sealed randomness is a fixed sequence"
    );
    assert_ne!(a["random"], g["random"]);

    let out = probe_results(&granted_outside).await;
    println!("outside the grants: {out:?}");
    assert!(
        out["read-file"].starts_with("denied"),
        "{}",
        out["read-file"]
    );
    assert!(out["socket"].starts_with("denied"), "{}", out["socket"]);

    // `describe` declared only `events` but every record goes to `secret`:
    // nothing is written anywhere undeclared, every record is a dead letter.
    let dead: Vec<Document> = documents(&format!("{liar}_dead_letters")).await;
    assert_eq!(dead.len(), events.len());
    for d in &dead {
        let reason = d.get_str("reason").unwrap();
        assert_eq!(d.get_str("stage").unwrap(), "schema", "{reason}");
        assert!(reason.contains("secret"), "{reason}");
    }
    println!("describe-lie: {}", dead[0].get_str("reason").unwrap());
    let collections = mongo().await.list_collection_names().await.unwrap();
    assert!(!collections.iter().any(|c| c.contains("secret")));
    assert_eq!(count(&format!("{liar}_events")).await, 0);
}
