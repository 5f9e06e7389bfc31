//! Consumer-group rebalances: a second `sluice` joins the group mid-run and
//! later leaves with SIGTERM; the partitions move twice, nothing is lost,
//! and the writes never stall for long.

use sluice_tests::*;
use std::time::{Duration, Instant};

const EVENTS: usize = 30_000;

/// Records a stopped host processed, from its exit summary.
fn records_in(name: &std::path::Path) -> u64 {
    let out = std::fs::read_to_string(name.with_extension("out")).unwrap();
    out.split_once("': ")
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no summary in {out:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_host_joining_and_leaving_the_group_loses_nothing_and_stalls_little() {
    let dir = plugins_dir(&[("orders", &plugin_wasm("orders", false))]);
    let topic = unique("rebalance");
    create_topic(&topic, 4).await;
    let pipeline = unique("rebalance");
    let table = format!("{pipeline}_orders");
    let toml = with_session_timeout(&host_toml(&dir, ""), 10_000)
        + &orders_pipeline_toml(&pipeline, &topic, "");
    let config = write_config(&dir, &toml);
    sluice_bin();
    let producing = spawn_producer(&topic, EVENTS, 500, Duration::from_millis(500), order_event);

    let pool = mysql().await;
    let rows = || async { table_rows(&pool, &table).await.unwrap_or(0) };
    let started = Instant::now();
    let mut first = start_sluice(&config, &dir.join("first"));
    let mut second: Option<KillOnDrop> = None;
    let (mut last, mut last_change, mut longest_stall) = (0, Instant::now(), Duration::ZERO);
    let mut timeline = Vec::new();
    loop {
        let now = rows().await;
        if now != last {
            // Stalls count from the first row on (start-up is not a stall).
            if last > 0 {
                longest_stall = longest_stall.max(last_change.elapsed());
            }
            (last, last_change) = (now, Instant::now());
        }
        let t = started.elapsed();
        if second.is_none() && t > Duration::from_secs(8) && timeline.is_empty() {
            second = Some(start_sluice(&config, &dir.join("second")));
            timeline.push(format!("second host joined at {t:.1?} ({now} rows)"));
        }
        if t > Duration::from_secs(25)
            && let Some(mut s) = second.take()
        {
            s.sigterm();
            timeline.push(format!(
                "second host left (SIGTERM) at {:.1?} ({} rows)",
                started.elapsed(),
                rows().await
            ));
        }
        if now == EVENTS as i64 {
            break;
        }
        assert!(t < Duration::from_secs(240), "stuck at {now} rows");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    producing.await.unwrap();
    first.sigterm();
    for line in &timeline {
        println!("{line}");
    }
    let (all, distinct) = count_rows(&pool, &table).await;
    let (by_first, by_second) = (
        records_in(&dir.join("first")),
        records_in(&dir.join("second")),
    );
    println!(
        "rebalance: {EVENTS} events, {all} rows ({distinct} distinct), processed {by_first} by the first host and {by_second} by the second (replays after a move: {}), longest stall {longest_stall:.1?}, took {:.1?}",
        (by_first + by_second) as i64 - EVENTS as i64,
        started.elapsed()
    );
    assert!(by_second > 0, "the second host got partitions");
    assert_eq!(timeline.len(), 2, "{timeline:?}");
    assert_eq!((all, distinct), (EVENTS as i64, EVENTS as i64));
    assert!(
        longest_stall < Duration::from_secs(10),
        "no stall longer than the session timeout: {longest_stall:?}"
    );
}
