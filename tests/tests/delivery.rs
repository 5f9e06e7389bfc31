//! Delivery when a database says no: a row refused for its own sake goes to
//! dead letters with the database's reason, and nothing else is held up.

use sluice::Host;
use sluice::config::Config;
use sluice_tests::*;
use std::path::Path;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_the_database_refuses_is_a_dead_letter_with_its_reason_and_the_rest_is_written() {
    init_logs();
    let dir = plugins_dir(&[("orders", &plugin_wasm("orders", false))]);
    let topic = unique("refused");
    create_topic(&topic, 2).await;
    let pipeline = unique("refused");
    let (table, collection) = (format!("{pipeline}_orders"), format!("{pipeline}_events"));
    let toml = host_toml(&dir, "") + &orders_pipeline_toml(&pipeline, &topic, "");
    let host = Host::start(Config::parse(&toml, Path::new("refused.toml")).unwrap())
        .await
        .unwrap();
    let stats = host.stats[&pipeline].clone();
    // The table exists now; the database refuses orders of 250 or more.
    let pool = mysql().await;
    cap_totals(&pool, &table, Some(250)).await;
    let running = run_host(host);

    // Totals are (i % 300) + 0.25: i % 300 >= 250 is refused, 100 of 600.
    let events: Vec<_> = (0..600).map(order_event).collect();
    produce(&producer(), &topic, &events).await;
    let dead_letters = format!("{pipeline}_dead_letters");
    wait_for(Duration::from_secs(60), || async {
        documents(&dead_letters).await.len() == 100
    })
    .await;
    wait_for(Duration::from_secs(60), || async {
        count_rows(&pool, &table).await == (500, 500)
    })
    .await;
    let dead = documents(&dead_letters).await;
    for d in &dead {
        let key = d.get_str("key").unwrap();
        let i: usize = key.trim_start_matches("o-").parse().unwrap();
        assert!(i % 300 >= 250, "{key} was refused");
        assert_eq!(d.get_str("stage").unwrap(), "sink");
        let reason = d.get_str("reason").unwrap();
        assert!(
            reason.contains("sink 'mysql' refused output 'orders'") && reason.contains("total_cap"),
            "{reason}"
        );
    }
    println!("refused: {}", dead[0].get_str("reason").unwrap());
    // The document output of those records was not refused: all written.
    assert_eq!(documents(&collection).await.len(), 600);

    // The pipeline moved on: later orders are written, nothing retried.
    let later: Vec<_> = (600..650).map(order_event).collect();
    produce(&producer(), &topic, &later).await;
    wait_for(Duration::from_secs(60), || async {
        count_rows(&pool, &table).await.0 == 550
    })
    .await;
    assert_eq!(stats.snapshot().sink_retries, 0);
    assert_eq!(stats.snapshot().dead_letters, 100);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_and_replayed_once_the_database_accepts_them() {
    init_logs();
    let dir = plugins_dir(&[("orders", &plugin_wasm("orders", false))]);
    let topic = unique("replay");
    create_topic(&topic, 1).await;
    let pipeline = unique("replay");
    let table = format!("{pipeline}_orders");
    let toml = host_toml(
        &dir,
        &format!("[api]\nlisten = \"127.0.0.1:{}\"\n", free_port()),
    ) + &orders_pipeline_toml(&pipeline, &topic, "");
    let config = write_config(&dir, &toml);
    let host = Host::start(Config::load(&config).unwrap()).await.unwrap();
    let ledger = host.ledger.clone();
    let pool = mysql().await;
    cap_totals(&pool, &table, Some(250)).await;
    let running = run_host(host);
    produce(
        &producer(),
        &topic,
        &(0..600).map(order_event).collect::<Vec<_>>(),
    )
    .await;
    let dead_letters = format!("{pipeline}_dead_letters");
    wait_for(Duration::from_secs(60), || async {
        documents(&dead_letters).await.len() == 100
    })
    .await;

    // Listed with their reason and source, straight from the sink.
    let (ok, out, err) = sluice_cli(&["dlq", "list", &pipeline, "-n", "3"], &config);
    println!("{out}");
    assert!(ok, "{err}");
    // Its sinks are closed before exit (the MongoDB driver panics otherwise).
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        out.contains("total_cap") && out.contains(&format!("{topic}/0@")),
        "{out}"
    );
    let (ok, json, err) = sluice_cli(&["dlq", "list", &pipeline, "-n", "500", "--json"], &config);
    assert!(ok, "{err}");
    let letters: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    assert_eq!(letters.len(), 100);

    // The cap rises to 275: of ten replayed, the five under it go through.
    cap_totals(&pool, &table, Some(275)).await;
    let pick = |range: std::ops::Range<usize>| -> Vec<String> {
        letters
            .iter()
            .filter(|l| {
                let i: usize = l["key"].as_str().unwrap()[2..].parse().unwrap();
                range.contains(&(i % 300))
            })
            .take(5)
            .map(|l| l["id"].as_str().unwrap().to_string())
            .collect()
    };
    let ids: Vec<String> = pick(250..275).into_iter().chain(pick(275..300)).collect();
    let mut args = vec!["dlq", "replay", pipeline.as_str()];
    for id in &ids {
        args.extend(["--id", id.as_str()]);
    }
    let replayed = |args: Vec<&str>| {
        let (ok, out, err) = sluice_cli(&args, &config);
        assert!(ok, "{err}");
        let run: i64 = out.split_whitespace().nth(2).unwrap().parse().unwrap();
        let ledger = ledger.clone();
        async move {
            wait_for(Duration::from_secs(60), || async {
                ledger.get(run).await.unwrap().unwrap().ended_at.is_some()
            })
            .await;
            ledger.get(run).await.unwrap().unwrap()
        }
    };
    let run = replayed(args).await;
    println!("{:?}: {:?} {:?}", run.trigger, run.note, run.error);
    assert_eq!(run.trigger.as_str(), "replay");
    assert_eq!(
        run.note.as_deref(),
        Some("replayed 10 dead letters: 5 went through (deleted), 5 failed again")
    );
    assert_eq!(count_rows(&pool, &table).await.0, 505);
    assert_eq!(documents(&dead_letters).await.len(), 95);

    // The constraint gone, one replay of everything empties the queue.
    cap_totals(&pool, &table, None).await;
    let run = replayed(vec!["dlq", "replay", pipeline.as_str()]).await;
    println!("{:?}", run.note);
    assert_eq!(count_rows(&pool, &table).await, (600, 600));
    assert!(documents(&dead_letters).await.is_empty());
    running.stop().await;
}
