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
    let toml = host_toml(&dir, "")
        + &pipeline_toml(
            &pipeline,
            "orders",
            &topic,
            &orders_routes(&table, &collection),
        );
    let host = Host::start(Config::parse(&toml, Path::new("refused.toml")).unwrap())
        .await
        .unwrap();
    let stats = host.stats[&pipeline].clone();
    // The table exists now; the database refuses orders of 250 or more.
    let pool = mysql().await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER TABLE `{table}` ADD CONSTRAINT total_cap CHECK (total < 250)"
    )))
    .execute(&pool)
    .await
    .unwrap();
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
