//! The `sluice` binary: help, `validate`, and a clean exit on SIGTERM with
//! offsets committed.

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use sluice_tests::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn every_command_has_help() {
    let commands: [&[&str]; 20] = [
        &["--help"],
        &["run", "--help"],
        &["validate", "--help"],
        &["runs", "--help"],
        &["runs", "show", "--help"],
        &["trigger", "--help"],
        &["backfill", "--help"],
        &["pipelines", "--help"],
        &["plugins", "--help"],
        &["plugins", "promote", "--help"],
        &["plugins", "rollback", "--help"],
        &["help", "plugins"],
        &["dlq", "--help"],
        &["dlq", "list", "--help"],
        &["dlq", "replay", "--help"],
        &["decrypt", "--help"],
        &["schema", "--help"],
        &["schema", "plan", "--help"],
        &["schema", "explain", "--help"],
        &["schema", "history", "--help"],
    ];
    for args in commands {
        let out = Command::new(sluice_bin()).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage: sluice"),
            "{args:?}"
        );
    }
}

#[test]
fn validate_shows_routes_and_names_the_bad_key() {
    let dir = plugins_dir(&[("orders", &plugin_wasm("orders", false))]);
    let routes = "routes.orders = { sink = \"mysql\", name = \"shop_orders\" }";
    let toml = config_toml(&dir, "shop", "orders", "orders", routes);
    let out = Command::new(sluice_bin())
        .args(["validate", "--config"])
        .arg(write_config(&dir, &toml))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("orders (Table) -> sink 'mysql', shop_orders"),
        "{stdout}"
    );
    assert!(
        stdout.contains("order_events (Document) -> sink 'mongodb', order_events"),
        "{stdout}"
    );

    let broken = [
        (
            "max_records",
            "max_recrods",
            "pipelines[0].batch.max_recrods: unknown field",
        ),
        (
            "routes.orders",
            "routes.ordrs",
            "routes.ordrs: plugin 'orders' declares no output 'ordrs' (it declares: orders, order_events)",
        ),
    ];
    for (from, to, want) in broken {
        let config = write_config(&dir, &toml.replace(from, to));
        let out = Command::new(sluice_bin())
            .args(["validate", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(&config.display().to_string()),
            "names the file: {stderr}"
        );
        assert!(stderr.contains(want), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_after_work_commits_offsets_and_exits_zero() {
    let topic = unique("term");
    let table = unique("orders");
    let pipeline = unique("term");
    create_topic(&topic, 2).await;
    let events: Vec<_> = (0..3_000)
        .map(|i| (format!("o-{i}"), format!(r#"{{"id":"o-{i}","customer":"c","total":1.5,"created_at":"2024-01-01T00:00:00Z"}}"#)))
        .collect();
    produce(&producer(), &topic, &events).await;

    let dir = plugins_dir(&[("orders", &plugin_wasm("orders", false))]);
    // Fresh names for both outputs: nothing lands in the demo's collections.
    let collection = unique("order_events");
    let routes = format!(
        "routes.orders = {{ sink = \"mysql\", name = \"{table}\" }}\nroutes.order_events = {{ sink = \"mongodb\", name = \"{collection}\" }}"
    );
    let config = write_config(
        &dir,
        &config_toml(&dir, &pipeline, "orders", &topic, &routes),
    );
    let mut child = Command::new(sluice_bin())
        .args(["run", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let pool = mysql().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows: Result<(i64,), _> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM `{table}`"
        )))
        .fetch_one(&pool)
        .await;
        if rows.is_ok_and(|(n,)| n == 3_000) {
            break;
        }
        assert!(Instant::now() < deadline, "rows did not arrive");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "sluice did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
    let mut summary = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut summary).unwrap();
    assert!(summary.contains("3000 records in"), "{summary}");

    // The group's committed offsets reached the end of both partitions.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("group.id", format!("sluice-{pipeline}"))
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&topic, 0);
    tpl.add_partition(&topic, 1);
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    let mut total = 0;
    for e in committed.elements() {
        let (_, high) = consumer
            .fetch_watermarks(&topic, e.partition(), Duration::from_secs(10))
            .unwrap();
        assert_eq!(
            e.offset(),
            Offset::Offset(high),
            "partition {}",
            e.partition()
        );
        total += high;
    }
    assert_eq!(total, 3_000);
}
