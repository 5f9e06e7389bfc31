//! One batch: transform it, route the outputs, write them, and count what
//! was written. A row the database refuses for its own sake becomes a dead
//! letter (the batch is halved around it); any other sink error is retried
//! (continuous pipelines) or fails the run (bounded runs).

use super::{Pipeline, Stats, Trouble, transform};
use crate::config::OffsetStore;
use crate::model::{Batch, BatchDone, Row, SourceRecord, Stage};
use crate::retry::{Backoff, GaveUp, retry};
use crate::router::{self, DeadLetterContext, Route, Routed, Routes};
use crate::runtime::PluginVersion;
use crate::sink::{SinkError, SinkTransaction};
use sluice_plugin_sdk::abi::{BatchWriter, Headers, Record};
use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How a batch meets a failing sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnSinkError {
    /// A continuous pipeline: retry until it works or the host shuts down,
    /// so no data is dropped.
    RetryUntilShutdown,
    /// A run: the first error fails it (the scheduler retries the run).
    Fail,
}

impl Pipeline {
    /// A continuous pipeline's batch: sink errors are retried; `None` if
    /// the host shut down before the batch was written.
    pub(super) async fn follow(
        &mut self,
        batch: &Batch,
        version: &Arc<PluginVersion>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<Option<BatchDone>> {
        let store = self.config.offsets;
        self.deliver(
            batch,
            version,
            shutdown,
            OnSinkError::RetryUntilShutdown,
            store,
        )
        .await
    }

    /// A scheduled or manual run's batch: the first sink error fails it.
    pub(super) async fn run_batch(
        &mut self,
        batch: &Batch,
        version: &Arc<PluginVersion>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<BatchDone> {
        let store = self.config.offsets;
        self.deliver(batch, version, shutdown, OnSinkError::Fail, store)
            .await?
            .ok_or_else(|| anyhow::anyhow!("the host is shutting down"))
    }

    /// A backfill's or a dead-letter replay's batch: records already
    /// processed are processed again, and no offset is stored anywhere.
    pub async fn rewrite(
        &mut self,
        batch: &Batch,
        version: &Arc<PluginVersion>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<BatchDone> {
        self.deliver(
            batch,
            version,
            shutdown,
            OnSinkError::Fail,
            OffsetStore::Kafka,
        )
        .await?
        .ok_or_else(|| anyhow::anyhow!("the host is shutting down"))
    }

    /// Transforms and writes one batch; offsets in the sink make it one
    /// transaction with them. `None` if the host shut down while a sink
    /// error was being retried.
    async fn deliver(
        &mut self,
        batch: &Batch,
        version: &Arc<PluginVersion>,
        shutdown: &mut watch::Receiver<bool>,
        on_error: OnSinkError,
        offsets: OffsetStore,
    ) -> anyhow::Result<Option<BatchDone>> {
        let routes = match self.prepare_routes(version, shutdown, on_error).await {
            Ok(Some(routes)) => routes,
            Ok(None) => return Ok(None),
            Err(e) if on_error == OnSinkError::RetryUntilShutdown && *shutdown.borrow() => {
                tracing::warn!(pipeline = %self.config.name, "stopping before the batch was written: {e:#}");
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        self.switch_to(version);
        match offsets {
            OffsetStore::Kafka => {
                let all: Vec<&SourceRecord> = batch.records.iter().collect();
                self.write_direct(&all, version, &routes, shutdown, on_error)
                    .await
            }
            OffsetStore::Sink => {
                self.write_exactly_once(batch, version, &routes, shutdown, on_error)
                    .await
            }
        }
    }

    /// Transforms `records` and writes the outputs to each route's sink.
    async fn write_direct(
        &mut self,
        records: &[&SourceRecord],
        version: &Arc<PluginVersion>,
        routes: &Routes,
        shutdown: &mut watch::Receiver<bool>,
        on_error: OnSinkError,
    ) -> anyhow::Result<Option<BatchDone>> {
        let t = self.transform(records, version, routes).await?;
        let what = format!("pipeline '{}': writing batch", self.config.name);
        let ctx = self.dead_letter_context(version);
        let write =
            || async { write_all(routes, &t.routed, &t.records, &ctx, &mut Writes::Direct).await };
        let Some(refused) = retry_sink(&self.stats, shutdown, on_error, &what, write).await? else {
            return Ok(None);
        };
        Ok(Some(self.finish(t, refused, version).await))
    }

    pub(super) fn dead_letter_context<'a>(
        &'a self,
        version: &'a PluginVersion,
    ) -> DeadLetterContext<'a> {
        DeadLetterContext::new(&self.config.name, version)
    }

    /// Calls the plugin on `records` (isolating failing ones), starts the
    /// canary beside it, and routes the outputs.
    pub(super) async fn transform<'r>(
        &mut self,
        records: &[&'r SourceRecord],
        version: &Arc<PluginVersion>,
        routes: &Routes,
    ) -> anyhow::Result<Transformed<'r>> {
        let started = Instant::now();
        let plugin_records: Vec<Record<'r>> = records.iter().map(|r| to_record(r)).collect();
        let pack = |range: std::ops::Range<usize>| {
            let records = &records[range.clone()];
            let size = records
                .iter()
                .map(|r| r.value.as_ref().map_or(0, Vec::len) + 64);
            let mut writer = BatchWriter::with_capacity(size.sum());
            for (record, source) in plugin_records[range].iter().zip(records) {
                writer.push(record, source.header_pairs());
            }
            writer.finish()
        };
        let shadow = match self.config.reload {
            crate::config::ReloadMode::Canary => self.shadow.start(
                &self.registry,
                &self.config.plugin,
                version,
                &self.limits,
                || pack(0..records.len()),
            ),
            crate::config::ReloadMode::Immediate => None,
        };
        let transformed = transform::run(
            self.instance.take(),
            version.clone(),
            self.limits.clone(),
            records.len(),
            &pack,
        )
        .await?;
        self.count_failure(version, &transformed);
        self.instance = transformed.instance;
        let transform_ms = started.elapsed().as_millis() as u64;

        let ctx = self.dead_letter_context(version);
        let mut routed = router::route(&plugin_records, transformed.result, routes, &ctx);
        for (i, reason) in &transformed.trapped {
            routed
                .dead_letters
                .push(ctx.row(&plugin_records[*i], Stage::Trap, reason, ""));
        }
        for dl in &routed.dead_letters {
            tracing::debug!(pipeline = %self.config.name, id = %dl.id, reason = %dl.fields["reason"], "dead letter");
        }
        Ok(Transformed {
            records: plugin_records,
            routed,
            shadow,
            started,
            transform_ms,
        })
    }

    /// Counts a written batch, and compares the canary's outputs with it.
    pub(super) async fn finish(
        &mut self,
        t: Transformed<'_>,
        refused: Vec<Refused>,
        version: &PluginVersion,
    ) -> BatchDone {
        if let Some(call) = t.shadow {
            let (global, config, sinks) = (&self.global, &self.config, &self.sinks);
            let resolve = |v: &PluginVersion| Routes::resolve(global, config, v, sinks);
            let (canary, diff) = self
                .shadow
                .finish(call, &config.name, &t.records, &t.routed, resolve)
                .await;
            let promote_after = self.config.canary_batches;
            self.registry
                .observe(&self.config.plugin, &canary.hash, diff, promote_after);
        }
        let count = |delete: bool| -> BTreeMap<String, usize> {
            t.routed
                .rows
                .iter()
                .map(|(output, rows)| {
                    let n = rows.iter().filter(|r| r.delete == delete).count();
                    let lost = refused
                        .iter()
                        .filter(|r| r.output == *output && r.delete == delete)
                        .count();
                    (output.clone(), n - lost)
                })
                .filter(|(_, n)| *n > 0 || !delete)
                .collect()
        };
        let done = BatchDone {
            outputs: count(false),
            deletes: count(true),
            dead_letters: t.routed.dead_letters.len() + refused.len(),
            already_written: 0,
        };
        let written: usize = done.outputs.values().sum();
        Stats::add(&self.stats.deletes, done.deletes.values().sum());
        let records = t.records.len();
        Stats::add(&self.stats.batches, 1);
        Stats::add(&self.stats.records_in, records);
        Stats::add(&self.stats.rows_written, written);
        Stats::add(&self.stats.dead_letters, done.dead_letters);
        tracing::debug!(pipeline = %self.config.name, plugin = %version.name, records, rows = written,
            dead_letters = done.dead_letters, transform_ms = t.transform_ms,
            ms = t.started.elapsed().as_millis() as u64, "batch done");
        done
    }
}

/// A batch transformed and routed, ready to write.
pub(super) struct Transformed<'r> {
    /// The records as the plugin saw them; `routed` points into them.
    pub records: Vec<Record<'r>>,
    pub routed: Routed,
    shadow: Option<crate::canary::ShadowCall>,
    started: Instant,
    transform_ms: u64,
}

/// Runs a sink operation once (`Fail`: its error is returned), or retries
/// it with capped exponential backoff until it succeeds; `None` if the
/// host shut down meanwhile. While it fails, the pipeline is degraded.
pub(super) async fn retry_sink<T, F, Fut>(
    stats: &Stats,
    shutdown: &mut watch::Receiver<bool>,
    on_error: OnSinkError,
    what: &str,
    mut op: F,
) -> anyhow::Result<Option<T>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, SinkError>>,
{
    // A refused schema change is returned as it is, so that callers can
    // tell it (`downcast_ref::<SinkError>`) from a sink that is down.
    let error = |e: SinkError| match e {
        SinkError::Incompatible(why) => {
            anyhow::Error::new(SinkError::Incompatible(format!("{what}: {why}")))
        }
        other => anyhow::anyhow!("{what}: {other}"),
    };
    if on_error == OnSinkError::Fail {
        return op().await.map(Some).map_err(error);
    }
    let since = chrono::Utc::now();
    let backoff = Backoff::exponential(Duration::from_millis(200), MAX_BACKOFF);
    let result = retry(backoff, Some(shutdown), op, |e, _, delay| {
        if matches!(e, SinkError::Incompatible(_)) {
            return ControlFlow::Break(());
        }
        Stats::add(&stats.sink_retries, 1);
        stats.set_degraded(
            Trouble::Sink,
            format!("{what}: {e} (failing since {})", since.format("%H:%M:%S")),
        );
        tracing::warn!(
            "{what}: {e}; retrying in {delay:?} (nothing is committed until it succeeds)"
        );
        ControlFlow::Continue(())
    })
    .await;
    match result {
        Ok(done) => {
            if stats.clear_degraded(Trouble::Sink) {
                tracing::info!(
                    "{what}: succeeded again after {:.1}s; no longer failing",
                    (chrono::Utc::now() - since).as_seconds_f64()
                );
            }
            Ok(Some(done))
        }
        Err(GaveUp::Stopped(e)) => Err(error(e)),
        Err(GaveUp::ShutDown(e)) => {
            tracing::warn!("{what}: {e}; stopping for shutdown");
            Ok(None)
        }
    }
}

/// Where a batch's writes go: to each route's sink, or into one
/// transaction that also stores the offsets.
pub(super) enum Writes<'a> {
    Direct,
    Transaction(&'a mut dyn SinkTransaction),
}

impl Writes<'_> {
    async fn write(&mut self, route: &Route, rows: &[Row]) -> Result<(), SinkError> {
        match self {
            Writes::Direct => route.write(rows).await,
            Writes::Transaction(tx) => {
                let rows = route.sealed(rows);
                tx.write(&route.target, &route.stored, &rows).await
            }
        }
    }
}

/// A row or delete the database refused (it went to dead letters).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Refused {
    output: String,
    delete: bool,
}

/// All writes of one batch. Safe to repeat: every write is an upsert or a
/// delete of a key. A row (or delete) the database refuses for its own
/// sake (constraint, type, size) becomes a dead letter with the database's
/// reason, and the rest is written; returns what was refused. Any other
/// error (the database down, a permission) fails the whole write, to be
/// retried.
pub(super) async fn write_all(
    routes: &Routes,
    routed: &Routed,
    records: &[Record<'_>],
    ctx: &DeadLetterContext<'_>,
    writes: &mut Writes<'_>,
) -> Result<Vec<Refused>, SinkError> {
    let mut refused = Vec::new();
    let mut letters = Vec::new();
    for (output, rows) in &routed.rows {
        let route = &routes.outputs[output];
        for (i, reason) in write_isolating(route, rows, writes).await? {
            let record = &records[routed.sources[output][i]];
            let what = if rows[i].delete {
                "the delete of"
            } else {
                "output"
            };
            let reason = format!(
                "sink '{}' refused {what} '{output}' (id {}) in {}: {reason}",
                route.sink_name, rows[i].id, route.target
            );
            letters.push(ctx.row(record, Stage::Sink, &reason, &format!("/{output}/sink")));
            refused.push(Refused {
                output: output.clone(),
                delete: rows[i].delete,
            });
        }
    }
    writes
        .write(&routes.dead_letter, &routed.dead_letters)
        .await?;
    if let Some(first) = letters.first() {
        tracing::warn!(pipeline = %ctx.pipeline, refused = letters.len(),
            "rows refused by the database went to dead letters; first: {}", first.fields["reason"]);
        writes.write(&routes.dead_letter, &letters).await?;
    }
    Ok(refused)
}

/// Writes `rows`, halving around refused ones until each stands alone;
/// returns those (index, the database's reason).
async fn write_isolating(
    route: &Route,
    rows: &[Row],
    writes: &mut Writes<'_>,
) -> Result<Vec<(usize, String)>, SinkError> {
    let mut refused = Vec::new();
    let mut pending = Vec::new();
    pending.push(0..rows.len());
    while let Some(range) = pending.pop() {
        if range.is_empty() {
            continue;
        }
        match writes.write(route, &rows[range.clone()]).await {
            Ok(()) => {}
            Err(SinkError::Refused(reason)) if range.len() == 1 => {
                refused.push((range.start, reason))
            }
            Err(SinkError::Refused(_)) => {
                let mid = range.start + range.len() / 2;
                pending.push(mid..range.end);
                pending.push(range.start..mid);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(refused)
}

/// The record as the plugin sees it (headers travel in the packed batch).
fn to_record(r: &SourceRecord) -> Record<'_> {
    Record {
        topic: &r.topic,
        partition: r.partition,
        offset: r.offset,
        timestamp: r.timestamp,
        key: r.key.as_deref(),
        value: r.value.as_deref(),
        headers: Headers::EMPTY,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::testing::{config, context, memory_sinks, orders, plugin, record};
    use serde_json::Value;

    /// Ten orders `k0`..`k9` from records 0..9, routed to in-memory sinks.
    fn ten_orders() -> (
        Routes,
        BTreeMap<String, crate::sink::MemorySink>,
        Vec<Record<'static>>,
        Routed,
    ) {
        let config = config("", "");
        let (sinks, memory) = memory_sinks(&config);
        let routes =
            Routes::for_declaration(&config, &config.pipelines[0], "orders", &plugin(), &sinks)
                .unwrap();
        let records: Vec<_> = (0..10).map(record).collect();
        let ids: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
        let rows: Vec<(u32, &str, i64)> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (i as u32, id.as_str(), i as i64))
            .collect();
        let routed = router::route(&records, orders(&rows), &routes, &context());
        (routes, memory, records, routed)
    }

    #[tokio::test]
    async fn a_batch_is_halved_around_refused_rows_and_the_rest_is_written() {
        let (routes, memory, records, routed) = ten_orders();
        let rows = &memory["rows"];
        rows.refuse(&Value::from("k3"));
        rows.refuse(&Value::from("k7"));
        let refused = write_all(&routes, &routed, &records, &context(), &mut Writes::Direct)
            .await
            .unwrap();
        let outputs: Vec<_> = refused.iter().map(|r| r.output.as_str()).collect();
        assert_eq!(outputs, ["orders", "orders"]);
        let written: Vec<String> = rows
            .rows("orders")
            .iter()
            .map(|r| r.id.to_string())
            .collect();
        assert_eq!(written.len(), 8, "{written:?}");
        assert!(
            !written.contains(&"\"k3\"".to_string()) && !written.contains(&"\"k7\"".to_string())
        );
        // 10 -> 5+5 -> each half split until k3 and k7 stand alone: 13 calls,
        // far from one per row plus one per level.
        assert_eq!(rows.write_calls(), 13);
        let letters = memory["docs"].rows("sluice_dead_letters");
        let reasons: Vec<&str> = letters
            .iter()
            .map(|l| l.fields["reason"].as_str().unwrap())
            .collect();
        assert_eq!(letters.len(), 2, "{reasons:?}");
        assert!(
            reasons.iter().all(
                |r| r.starts_with("sink 'rows' refused output 'orders' (id \"k")
                    && r.ends_with("refused")
            ),
            "{reasons:?}"
        );
    }

    #[tokio::test]
    async fn a_sink_that_is_down_is_retried_and_a_pending_commit_failure_stays_reported() {
        let (routes, memory, records, routed) = ten_orders();
        memory["rows"].fail_next_writes(2);
        let stats = Stats::default();
        stats.set_degraded(Trouble::Commit, "committing offsets: broker gone".into());
        let (_tx, mut shutdown) = watch::channel(false);
        let ctx = context();
        let write =
            || async { write_all(&routes, &routed, &records, &ctx, &mut Writes::Direct).await };
        let written = retry_sink(
            &stats,
            &mut shutdown,
            OnSinkError::RetryUntilShutdown,
            "writing",
            write,
        )
        .await
        .unwrap();
        assert_eq!(written, Some(vec![]));
        assert_eq!(memory["rows"].rows("orders").len(), 10);
        assert_eq!(stats.snapshot().sink_retries, 2);
        assert_eq!(
            stats.degraded().as_deref(),
            Some("committing offsets: broker gone"),
            "the write's success must not clear the commit's failure"
        );
    }

    #[tokio::test]
    async fn a_run_fails_on_the_first_sink_error_and_a_shutdown_stops_the_retries() {
        let (routes, memory, records, routed) = ten_orders();
        let stats = Stats::default();
        let ctx = context();
        let write =
            || async { write_all(&routes, &routed, &records, &ctx, &mut Writes::Direct).await };
        memory["rows"].fail_next_writes(1);
        let (tx, mut shutdown) = watch::channel(false);
        let e = retry_sink(
            &stats,
            &mut shutdown,
            OnSinkError::Fail,
            "writing batch",
            write,
        )
        .await
        .unwrap_err();
        assert_eq!(e.to_string(), "writing batch: memory sink: down");
        assert_eq!(
            stats.degraded(),
            None,
            "a run does not degrade the pipeline"
        );

        memory["rows"].fail_next_writes(u32::MAX);
        tx.send(true).unwrap();
        let stopped = retry_sink(
            &stats,
            &mut shutdown,
            OnSinkError::RetryUntilShutdown,
            "writing",
            write,
        )
        .await
        .unwrap();
        assert_eq!(stopped, None);
        assert!(memory["rows"].rows("orders").is_empty());
    }
}
