//! Scheduled runs and the run ledger, on the real local services: bounded
//! runs over snapshotted offsets, cron timing, skipped overlapping ticks,
//! retries, catchup after a restart, backfills, and the CLI over the API.

use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use sluice::config::Config;
use sluice::ledger::{Ledger, Run, RunState, Trigger};
use sluice::{Host, RunMode};
use sluice_tests::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

async fn start(config: &Config) -> Running {
    let host = Host::start(config.clone()).await.unwrap();
    run_host(host)
}

/// The pipeline's runs, oldest first.
async fn runs(ledger: &Ledger, pipeline: &str) -> Vec<Run> {
    let mut runs = ledger.list(Some(pipeline), 10_000).await.unwrap();
    runs.reverse();
    runs
}

fn write_config(dir: &Path, toml: &str) -> (Config, PathBuf) {
    let path = sluice_tests::write_config(dir, toml);
    (Config::load(&path).unwrap(), path)
}

/// Current end offset of each partition.
fn high_watermarks(topic: &str, partitions: i32) -> BTreeMap<i32, i64> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .create()
        .unwrap();
    (0..partitions)
        .map(|p| {
            let (_, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap();
            (p, high)
        })
        .collect()
}

fn orders_pipeline(dir: &Path, topic: &str, extra: &str) -> (Config, PathBuf, String, String) {
    let pipeline = unique("sched");
    let table = format!("{pipeline}_orders");
    let routes = orders_routes(&table, &format!("{pipeline}_events"));
    let toml = host_toml(dir, "")
        + &pipeline_toml(&pipeline, "orders", topic, &format!("{routes}\n{extra}"));
    let (config, path) = write_config(dir, &toml);
    (config, path, pipeline, table)
}

fn orders_plugins() -> PathBuf {
    plugins_dir(&[("orders", &plugin_wasm("orders", false))])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_run_processes_exactly_its_snapshot_and_the_next_run_the_rest() {
    init_logs();
    let dir = orders_plugins();
    let topic = unique("sched_snapshot");
    create_topic(&topic, 3).await;
    // Small batches make the first run long enough to overlap the producer.
    let extra = "schedule = { every = \"2s\" }\nbatch = { max_records = 20, max_wait = \"50ms\" }";
    let (config, _, pipeline, table) = orders_pipeline(&dir, &topic, extra);
    let producer = producer();
    let first: Vec<_> = (0..3000).map(order_event).collect();
    produce(&producer, &topic, &first).await;
    let snapshot = high_watermarks(&topic, 3);

    let host = start(&config).await;
    let db = mysql().await;
    // Rows being written: the first run has taken its snapshot.
    wait_for(Duration::from_secs(60), || async {
        count_rows(&db, &table).await.0 > 0
    })
    .await;
    let mut second_started = None;
    for chunk in (3000..6000).collect::<Vec<_>>().chunks(300) {
        let events: Vec<_> = chunk.iter().copied().map(order_event).collect();
        produce(&producer, &topic, &events).await;
        second_started.get_or_insert_with(Utc::now);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for(Duration::from_secs(90), || async {
        count_rows(&db, &table).await == (6000, 6000)
    })
    .await;
    let ledger = Ledger::open(&config).await.unwrap();
    wait_for(Duration::from_secs(30), || async {
        runs(&ledger, &pipeline)
            .await
            .iter()
            .filter(|r| r.state == RunState::Succeeded)
            .map(|r| r.records_in)
            .sum::<u64>()
            == 6000
    })
    .await;
    host.stop().await;

    let all = runs(&ledger, &pipeline).await;
    let worked: Vec<&Run> = all.iter().filter(|r| r.records_in > 0).collect();
    let run1 = worked[0];
    println!(
        "first run: {} records, ended {:?}; second batch of events began {:?}",
        run1.records_in, run1.ended_at, second_started
    );
    assert_eq!(run1.trigger, Trigger::Schedule);
    assert_eq!(
        run1.records_in, 3000,
        "the first run processes exactly the 3,000 events waiting at its start"
    );
    for r in &run1.offsets {
        assert_eq!(
            r.to, snapshot[&r.partition],
            "run 1 stops at the snapshot of partition {}",
            r.partition
        );
    }
    assert!(
        second_started.unwrap() < run1.ended_at.unwrap(),
        "events arrived while run 1 was going, and were left to the next run"
    );
    assert!(worked.len() >= 2, "{worked:#?}");
    // No gap, no overlap: per partition, each run starts where the last ended.
    let mut next: BTreeMap<i32, i64> = (0..3).map(|p| (p, 0)).collect();
    for run in &worked {
        assert_eq!(run.state, RunState::Succeeded);
        let mut in_ranges = 0;
        for r in &run.offsets {
            assert_eq!(
                r.from, next[&r.partition],
                "run {} partition {}",
                run.id, r.partition
            );
            next.insert(r.partition, r.to);
            in_ranges += r.len();
        }
        assert_eq!(in_ranges, run.records_in, "run {}", run.id);
        assert_eq!(run.outputs.get("orders"), Some(&run.records_in));
        assert_eq!(run.plugin_version.as_deref(), Some("1.0.0"));
        assert_eq!(run.plugin_hash.as_ref().map(String::len), Some(64));
    }
    assert_eq!(next, high_watermarks(&topic, 3));
    assert_eq!(worked.iter().map(|r| r.records_in).sum::<u64>(), 6000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_schedule_fires_on_time_and_empty_runs_cost_nothing() {
    init_logs();
    let dir = orders_plugins();
    let topic = unique("sched_cron");
    create_topic(&topic, 1).await;
    let (config, _, pipeline, _) =
        orders_pipeline(&dir, &topic, "schedule = { cron = \"*/2 * * * * *\" }");
    let host = start(&config).await;
    tokio::time::sleep(Duration::from_secs(7)).await;
    host.stop().await;

    let ledger = Ledger::open(&config).await.unwrap();
    let ticks: Vec<Run> = runs(&ledger, &pipeline)
        .await
        .into_iter()
        .filter(|r| r.trigger == Trigger::Schedule)
        .collect();
    assert!(ticks.len() >= 3, "{ticks:#?}");
    for pair in ticks.windows(2) {
        let gap = pair[1].scheduled_for.unwrap() - pair[0].scheduled_for.unwrap();
        assert_eq!(gap.num_milliseconds(), 2000);
    }
    for run in &ticks {
        let due = run.scheduled_for.unwrap();
        assert_eq!(due.timestamp_subsec_millis(), 0);
        assert_eq!(due.timestamp() % 2, 0, "{due}");
        let late = run.started_at.unwrap() - due;
        println!(
            "run {} due {due} started {} ms late, took {:?}",
            run.id,
            late.num_milliseconds(),
            run.duration()
        );
        assert!(
            (0..500).contains(&late.num_milliseconds()),
            "started {late} after its time"
        );
        // A tick at the very moment the host stops is cut short by it.
        let last = run.id == ticks.last().unwrap().id;
        if last && run.state == RunState::Failed {
            let error = run.error.as_deref().unwrap_or_default();
            assert!(error.contains("shutting down"), "{error}");
            continue;
        }
        assert_eq!(run.state, RunState::Succeeded, "{run:#?}");
        assert_eq!(run.note.as_deref(), Some("nothing new"));
        assert!(
            run.duration().unwrap() < Duration::from_millis(500),
            "{:?}",
            run.duration()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticks_that_find_a_run_going_are_skipped_runs_never_overlap_and_late_runs_are_flagged() {
    init_logs();
    let dir = orders_plugins();
    let topic = unique("sched_overlap");
    create_topic(&topic, 1).await;
    let extra = "schedule = { every = \"300ms\", deadline = \"1s\" }\nbatch = { max_records = 10, max_wait = \"50ms\" }";
    let (config, _, pipeline, table) = orders_pipeline(&dir, &topic, extra);
    // 3,000 events in batches of 10: the first run takes about 2 s (1 s
    // was not always enough on a quiet machine), past its 1 s deadline.
    let events: Vec<_> = (0..3000).map(order_event).collect();
    produce(&producer(), &topic, &events).await;
    let host = start(&config).await;
    let db = mysql().await;
    wait_for(Duration::from_secs(120), || async {
        count_rows(&db, &table).await.0 == 3000
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    host.stop().await;

    let ledger = Ledger::open(&config).await.unwrap();
    let all = runs(&ledger, &pipeline).await;
    let skipped: Vec<&Run> = all
        .iter()
        .filter(|r| r.state == RunState::Skipped)
        .collect();
    let ran: Vec<&Run> = all
        .iter()
        .filter(|r| r.state != RunState::Skipped)
        .collect();
    println!(
        "{} runs, {} ticks skipped; first skip: {:?}",
        ran.len(),
        skipped.len(),
        skipped.first().and_then(|r| r.note.clone())
    );
    assert!(skipped.len() >= 3, "{all:#?}");
    let long_run = ran.iter().find(|r| r.records_in > 0).unwrap();
    assert!(
        skipped
            .iter()
            .any(|s| s.note.as_deref() == Some(&format!("run {} is still running", long_run.id)))
    );
    // The long run went past its 1 s deadline and is flagged; the short ones are not.
    assert!(long_run.duration().unwrap() > Duration::from_secs(1));
    assert!(long_run.deadline_exceeded, "{long_run:#?}");
    assert!(
        ran.iter()
            .filter(|r| r.duration().unwrap() < Duration::from_millis(900))
            .all(|r| !r.deadline_exceeded)
    );
    for pair in ran.windows(2) {
        assert!(
            pair[0].ended_at.unwrap() <= pair[1].started_at.unwrap(),
            "runs {} and {} overlap",
            pair[0].id,
            pair[1].id
        );
    }
    assert_eq!(ran.iter().map(|r| r.records_in).sum::<u64>(), 3000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_sink_fails_twice_succeeds_on_attempt_3_and_one_that_keeps_failing_fails() {
    init_logs();
    let dir = orders_plugins();
    let topic = unique("sched_retry");
    create_topic(&topic, 1).await;
    let extra = "schedule = { every = \"1h\" }\nretry = { max_attempts = 3, backoff = \"300ms\" }";
    let (config, path, pipeline, table) = orders_pipeline(&dir, &topic, extra);
    let events: Vec<_> = (0..100).map(order_event).collect();
    produce(&producer(), &topic, &events).await;

    let host = Host::start(config.clone()).await.unwrap(); // creates the table
    // The table refuses inserts while a budget of failures lasts. The
    // budget lives in a non-transactional table so the refused insert's
    // rollback keeps the decrement.
    let db = mysql().await;
    let budget = format!("{table}_failures");
    for sql in [
        format!("CREATE TABLE `{budget}` (n INT NOT NULL) ENGINE=MyISAM"),
        format!("INSERT INTO `{budget}` VALUES (2)"),
        format!(
            "CREATE TRIGGER `{table}_fail` BEFORE INSERT ON `{table}` FOR EACH ROW \
             IF (SELECT n FROM `{budget}`) > 0 THEN \
               UPDATE `{budget}` SET n = n - 1; \
               SIGNAL SQLSTATE 'HY000' SET MYSQL_ERRNO = 1205, MESSAGE_TEXT = 'injected failure'; \
             END IF"
        ),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&db)
            .await
            .unwrap();
    }
    let host = run_host(host);
    let ledger = Ledger::open(&config).await.unwrap();
    wait_for(Duration::from_secs(60), || async {
        runs(&ledger, &pipeline)
            .await
            .iter()
            .any(|r| r.state == RunState::Succeeded)
    })
    .await;
    host.stop().await;

    let all = runs(&ledger, &pipeline).await;
    let summary: Vec<_> = all
        .iter()
        .map(|r| (r.attempt, r.trigger, r.state, r.retry_of))
        .collect();
    println!("{summary:?}");
    let first = all[0].id;
    assert_eq!(
        summary,
        [
            (1, Trigger::Schedule, RunState::Failed, None),
            (2, Trigger::Retry, RunState::Failed, Some(first)),
            (3, Trigger::Retry, RunState::Succeeded, Some(first)),
        ]
    );
    assert!(
        all[0]
            .error
            .as_deref()
            .unwrap()
            .contains("injected failure"),
        "{:?}",
        all[0].error
    );
    let gap = all[2].started_at.unwrap() - all[1].ended_at.unwrap();
    assert!(
        gap.num_milliseconds() >= 480,
        "second backoff is ~600ms +-20%: {gap}"
    );
    assert_eq!(all[2].records_in, 100);
    assert_eq!(count_rows(&db, &table).await, (100, 100));

    // More failures than attempts: the run fails with the database's reason.
    sqlx::query(sqlx::AssertSqlSafe(format!("UPDATE `{budget}` SET n = 5")))
        .execute(&db)
        .await
        .unwrap();
    produce(&producer(), &topic, &[order_event(100)]).await;
    let toml = std::fs::read_to_string(&path)
        .unwrap()
        .replace("max_attempts = 3", "max_attempts = 2");
    let (config, _) = write_config(&dir, &toml);
    let host = Host::start(config).await.unwrap();
    let error = host
        .run(std::future::pending(), RunMode::Once)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("failed"), "{error:#}");
    let last: Vec<Run> = runs(&ledger, &pipeline).await.split_off(3);
    assert_eq!(last.len(), 2, "{last:#?}");
    assert!(
        last.iter().all(|r| r.state == RunState::Failed
            && r.error.as_deref().unwrap().contains("injected failure"))
    );
    assert_eq!(count_rows(&db, &table).await, (100, 100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_ticks_are_caught_up_once_or_not_at_all_and_the_ledger_survives_restarts() {
    init_logs();
    let dir = orders_plugins();
    let topic = unique("sched_catchup");
    create_topic(&topic, 1).await;
    let (one, none) = (unique("catchup_one"), unique("catchup_none"));
    let pipeline = |name: &str, catchup: &str| {
        let routes = orders_routes(&format!("{name}_orders"), &format!("{name}_events"));
        pipeline_toml(
            name,
            "orders",
            &topic,
            &format!("{routes}\nschedule = {{ every = \"1s\", catchup = \"{catchup}\" }}"),
        )
    };
    let toml = host_toml(&dir, "") + &pipeline(&one, "one") + &pipeline(&none, "none");
    let (config, path) = write_config(&dir, &toml);
    let ledger = Ledger::open(&config).await.unwrap();

    let host = start(&config).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    host.stop().await;
    let before = runs(&ledger, &one).await;
    assert!(before.len() >= 2, "{before:#?}");
    tokio::time::sleep(Duration::from_millis(4500)).await; // ~4 ticks missed

    let restarted_at = Utc::now();
    let host = start(&config).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    host.stop().await;

    let after_one = runs(&ledger, &one).await;
    let catchups: Vec<&Run> = after_one
        .iter()
        .filter(|r| r.trigger == Trigger::Catchup)
        .collect();
    assert_eq!(catchups.len(), 1, "{after_one:#?}");
    let note = catchups[0].note.clone().unwrap();
    println!("catchup run: {note}");
    let missed: u32 = note.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert!((3..=6).contains(&missed), "{note}");
    assert!(catchups[0].started_at.unwrap() - restarted_at < chrono::Duration::milliseconds(1500));
    let after_none = runs(&ledger, &none).await;
    assert!(after_none.iter().all(|r| r.trigger != Trigger::Catchup));
    let first_after: Vec<DateTime<Utc>> = after_none
        .iter()
        .filter_map(|r| {
            r.scheduled_for
                .filter(|t| *t > restarted_at - chrono::Duration::seconds(2))
        })
        .collect();
    assert!(
        !first_after.is_empty() && first_after[0] > restarted_at,
        "{after_none:#?}"
    );

    // Every run of the first session is still listed, through the CLI too.
    let out = std::process::Command::new(sluice_bin())
        .args([
            "runs",
            "--json",
            "--limit",
            "1000",
            "--pipeline",
            &one,
            "--config",
        ])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Vec<Run> = serde_json::from_slice(&out.stdout).unwrap();
    for run in &before {
        assert!(
            listed
                .iter()
                .any(|r| r.id == run.id && r.trigger == run.trigger),
            "run {} lost",
            run.id
        );
    }
    assert_eq!(listed.len(), after_one.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_of_a_processed_window_changes_no_counts_and_the_cli_drives_the_host() {
    init_logs();
    let dir = orders_plugins();
    let topic = unique("sched_backfill");
    create_topic(&topic, 2).await;
    let port = free_port();
    let pipeline = unique("backfill");
    let (table, collection) = (format!("{pipeline}_orders"), format!("{pipeline}_events"));
    // The ledger lives in MySQL this time.
    let extra = format!("[api]\nlisten = \"127.0.0.1:{port}\"\n[ledger]\nsink = \"mysql\"\n");
    let toml = host_toml(&dir, &extra)
        + &pipeline_toml(
            &pipeline,
            "orders",
            &topic,
            &format!(
                "{}\nschedule = {{ every = \"1h\" }}",
                orders_routes(&table, &collection)
            ),
        );
    let (config, path) = write_config(&dir, &toml);

    let window_start = Utc::now() - chrono::Duration::seconds(1);
    let mut events: Vec<_> = (0..500).map(order_event).collect();
    events.push(("broken".into(), "{not json".into()));
    produce(&producer(), &topic, &events).await;
    let window_end = Utc::now() + chrono::Duration::seconds(1);

    let host = start(&config).await;
    let db = mysql().await;
    let docs = mongo().await;
    wait_for(Duration::from_secs(60), || async {
        count_rows(&db, &table).await.0 == 500
    })
    .await;
    let ledger = Ledger::open(&config).await.unwrap();
    assert!(ledger.location.contains("sink 'mysql'"));
    let counts = || async {
        let events = docs.collection::<mongodb::bson::Document>(&collection);
        let dead = docs.collection::<mongodb::bson::Document>(&format!("{pipeline}_dead_letters"));
        (
            count_rows(&db, &table).await,
            events
                .count_documents(mongodb::bson::doc! {})
                .await
                .unwrap(),
            dead.count_documents(mongodb::bson::doc! {}).await.unwrap(),
        )
    };
    wait_for(Duration::from_secs(30), || async { counts().await.2 == 1 }).await;
    let before = counts().await;
    assert_eq!(before, ((500, 500), 500, 1));

    let cli = |args: Vec<String>| {
        let path = path.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let out = std::process::Command::new(sluice_bin())
                    .args(&args)
                    .arg("--config")
                    .arg(&path)
                    .output()
                    .unwrap();
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                println!("$ sluice {}\n{text}", args.join(" "));
                (out.status.success(), text)
            })
            .await
            .unwrap()
        }
    };
    let (ok, text) = cli(vec![
        "backfill".into(),
        pipeline.clone(),
        "--from".into(),
        window_start.to_rfc3339(),
        "--to".into(),
        window_end.to_rfc3339(),
    ])
    .await;
    assert!(ok, "{text}");
    let backfill_id: i64 = text.split_whitespace().nth(2).unwrap().parse().unwrap();
    // Triggered while the backfill may still be going: queued behind it.
    let (ok, text) = cli(vec!["trigger".into(), pipeline.clone()]).await;
    assert!(ok, "{text}");
    let manual_id: i64 = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    wait_for(Duration::from_secs(60), || async {
        ledger
            .get(backfill_id)
            .await
            .unwrap()
            .is_some_and(|r| r.state == RunState::Succeeded)
    })
    .await;
    let backfill = ledger.get(backfill_id).await.unwrap().unwrap();
    assert_eq!(
        (backfill.trigger, backfill.records_in, backfill.dead_letters),
        (Trigger::Backfill, 501, 1)
    );
    assert_eq!(
        counts().await,
        before,
        "a backfill of processed events changes no counts"
    );

    // The backfill did not move the group's offsets: the manual run after
    // it has nothing to do, and started only once the backfill ended.
    wait_for(Duration::from_secs(30), || async {
        ledger
            .get(manual_id)
            .await
            .unwrap()
            .is_some_and(|r| r.state == RunState::Succeeded)
    })
    .await;
    let manual = ledger.get(manual_id).await.unwrap().unwrap();
    assert_eq!(
        (manual.trigger, manual.note.as_deref()),
        (Trigger::Manual, Some("nothing new"))
    );
    assert!(manual.started_at.unwrap() >= backfill.ended_at.unwrap());
    println!(
        "manual run waited {:?} behind the backfill",
        manual.started_at.unwrap() - manual.queued_at
    );

    let (ok, text) = cli(vec!["pipelines".into()]).await;
    assert!(
        ok && text.contains(&pipeline)
            && text.contains("every 1h")
            && text.contains("orders 1.0.0"),
        "{text}"
    );
    let (ok, text) = cli(vec!["runs".into(), "--pipeline".into(), pipeline.clone()]).await;
    assert!(
        ok && text.contains("backfill") && text.contains("nothing new"),
        "{text}"
    );
    let (ok, text) = cli(vec!["runs".into(), "show".into(), backfill_id.to_string()]).await;
    assert!(ok && text.contains("trigger:       backfill"), "{text}");
    let (ok, text) = cli(vec!["trigger".into(), "no_such_pipeline".into()]).await;
    assert!(
        !ok && text.contains("no pipeline 'no_such_pipeline'"),
        "{text}"
    );
    host.stop().await;
    let (ok, text) = cli(vec!["pipelines".into()]).await;
    assert!(!ok && text.contains("is `sluice run` running"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_on_a_topic_that_does_not_exist_fails_at_once_naming_it() {
    init_logs();
    let dir = orders_plugins();
    let topic = unique("no_such_topic");
    let extra = "schedule = { every = \"1h\" }\nretry = { max_attempts = 3, backoff = \"1s\" }";
    let (config, _path, pipeline, _table) = orders_pipeline(&dir, &topic, extra);
    let host = Host::start(config.clone()).await.unwrap();
    let started = std::time::Instant::now();
    let error = host
        .run(std::future::pending(), RunMode::Once)
        .await
        .unwrap_err();
    let took = started.elapsed();
    println!("{error:#} after {took:?}");
    assert!(
        took < Duration::from_secs(15),
        "a missing topic will not appear by waiting: failed after {took:?}"
    );
    let ledger = Ledger::open(&config).await.unwrap();
    let all = runs(&ledger, &pipeline).await;
    assert_eq!(
        all.len(),
        1,
        "no retry of a run that cannot succeed: {all:#?}"
    );
    assert_eq!(all[0].state, RunState::Failed);
    let why = all[0].error.as_deref().unwrap();
    assert!(
        why.contains(&format!("topic '{topic}' does not exist")),
        "{why}"
    );
}
