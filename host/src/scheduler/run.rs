//! Executing one run: plan its offset range, process it, retry failed
//! attempts with exponential backoff and jitter, flag a missed deadline,
//! and record every attempt in the ledger.

use crate::ledger::{Ledger, NewRun, PluginRef, RunState, RunTotals, Trigger};
use crate::model::PartitionRange;
use crate::pipeline::Bounds;
use crate::pipeline::Pipeline;
use crate::retry::{Backoff, sleep_unless_shutdown};
use crate::source::{KafkaSource, SourceError};
use chrono::{DateTime, Utc};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// A run to start.
#[derive(Debug, Clone)]
pub struct RunRequest {
    pub trigger: Trigger,
    /// The schedule tick it is for, if any.
    pub scheduled_for: Option<DateTime<Utc>>,
    pub work: Work,
    pub note: Option<String>,
}

/// Which records a run processes.
#[derive(Debug, Clone)]
pub enum Work {
    /// From the group's committed offsets to the ends seen at the start;
    /// offsets are committed as batches are written.
    Pending,
    /// Records whose Kafka timestamps fall in `[from, to)`; offsets are not
    /// committed, the writes are idempotent upserts.
    Window {
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    },
    /// Dead letters (all of the pipeline's, or these ids) sent through the
    /// plugin again; offsets are not touched.
    Replay { ids: Vec<String> },
}

impl RunRequest {
    pub fn new(trigger: Trigger, work: Work) -> Self {
        RunRequest {
            trigger,
            scheduled_for: None,
            work,
            note: None,
        }
    }

    pub fn ledger_row<'a>(&self, pipeline: &'a str, state: RunState) -> NewRun<'a> {
        NewRun {
            pipeline,
            trigger: self.trigger,
            state,
            scheduled_for: self.scheduled_for,
            attempt: 1,
            retry_of: None,
            note: self.note.clone(),
        }
    }
}

/// Runs `request` on `pipeline` (ledger row `id` already created) until an
/// attempt succeeds or `retry.max_attempts` failed. Returns the final state.
pub async fn execute(
    pipeline: &mut Pipeline,
    ledger: &Ledger,
    id: i64,
    request: &RunRequest,
    mut shutdown: watch::Receiver<bool>,
) -> RunState {
    let name = pipeline.config.name.clone();
    let retry = pipeline.config.retry.clone();
    let deadline = pipeline.config.schedule.deadline;
    let started = Instant::now();
    let mut late = false;
    let mut plan: Option<Vec<PartitionRange>> = None;
    let mut run_id = id;
    let mut delays = attempt_delays(retry.backoff);
    for attempt in 1..=retry.max_attempts {
        if attempt > 1 {
            let row = NewRun {
                pipeline: &name,
                trigger: Trigger::Retry,
                state: RunState::Running,
                scheduled_for: request.scheduled_for,
                attempt,
                retry_of: Some(id),
                note: None,
            };
            match ledger.create(&row).await {
                Ok(new_id) => run_id = new_id,
                Err(e) => tracing::warn!(pipeline = %name, "run ledger: {e:#}"),
            }
        }
        tracing::info!(pipeline = %name, run = run_id, trigger = request.trigger.as_str(), attempt, "run started");
        let mut totals = RunTotals::default();
        let result = {
            let work = attempt_once(
                pipeline,
                ledger,
                run_id,
                request,
                &mut plan,
                &mut shutdown,
                &mut totals,
            );
            tokio::pin!(work);
            let overdue = deadline.map(|d| started + d);
            loop {
                tokio::select! {
                    result = &mut work => break result,
                    _ = sleep_until(overdue), if !late => {
                        late = true;
                        tracing::warn!(pipeline = %name, run = run_id, deadline = ?deadline.unwrap_or_default(),
                            "run is past its deadline (schedule.deadline); it keeps going");
                        if let Err(e) = ledger.flag_deadline_exceeded(run_id).await {
                            tracing::warn!(pipeline = %name, "run ledger: {e:#}");
                        }
                    }
                }
            }
        };
        let elapsed = started.elapsed();
        match result {
            Ok(note) => {
                // Keep the request's own note (e.g. the catchup's) on its row.
                let note = match (&request.note, note) {
                    (Some(asked), Some(note)) if attempt == 1 => Some(format!("{asked}; {note}")),
                    (_, note) => note,
                };
                finish(
                    ledger,
                    run_id,
                    RunState::Succeeded,
                    &totals,
                    None,
                    note.as_deref(),
                )
                .await;
                let per_s = totals.records_in as f64 / elapsed.as_secs_f64().max(1e-9);
                tracing::info!(pipeline = %name, run = run_id, attempt, records_in = totals.records_in,
                    outputs = ?totals.outputs, dead_letters = totals.dead_letters,
                    ms = elapsed.as_millis() as u64, records_per_s = per_s as u64,
                    note = note.as_deref().unwrap_or(""), "run succeeded");
                return RunState::Succeeded;
            }
            Err(e) => {
                let error = format!("{e:#}");
                finish(
                    ledger,
                    run_id,
                    RunState::Failed,
                    &totals,
                    Some(&error),
                    None,
                )
                .await;
                if attempt == retry.max_attempts || is_permanent(&e) || *shutdown.borrow() {
                    tracing::error!(pipeline = %name, run = run_id, attempt, "run failed: {error}");
                    return RunState::Failed;
                }
                let wait = delays.next_delay();
                tracing::warn!(pipeline = %name, run = run_id, attempt, max_attempts = retry.max_attempts,
                    "run attempt failed: {error}; retrying in {wait:?}");
                if !sleep_unless_shutdown(wait, &mut shutdown).await {
                    return RunState::Failed;
                }
            }
        }
    }
    RunState::Failed
}

/// One attempt. `Ok(Some(note))` for a run with nothing to do.
async fn attempt_once(
    pipeline: &mut Pipeline,
    ledger: &Ledger,
    id: i64,
    request: &RunRequest,
    plan: &mut Option<Vec<PartitionRange>>,
    shutdown: &mut watch::Receiver<bool>,
    totals: &mut RunTotals,
) -> anyhow::Result<Option<String>> {
    // One plugin version serves the whole attempt; reloads apply to the next.
    let version = pipeline.version()?;
    ledger.start(id, &PluginRef::from(&*version)).await?;
    let bounds = match &request.work {
        Work::Replay { ids } => {
            return crate::dlq::replay(pipeline, ids, &version, shutdown, totals)
                .await
                .map(Some);
        }
        Work::Window { from, to } => Bounds::Window {
            from: from.timestamp_millis(),
            to: to.timestamp_millis(),
        },
        Work::Pending => Bounds::Pending,
    };
    let kafka = &pipeline.global_config().kafka;
    let group = pipeline.config.group_id();
    let topics = &pipeline.config.topics;
    let planning = async {
        anyhow::Ok(match (bounds, plan.as_ref()) {
            (Bounds::Window { .. }, Some(planned)) => planned.clone(),
            (Bounds::Window { from, to }, None) => {
                KafkaSource::between_times(kafka, &group, topics, from, to).await?
            }
            (Bounds::Pending, planned) => {
                let mut ranges = KafkaSource::pending(kafka, &group, topics).await?;
                // A retry finishes the original range: newer records belong
                // to the next run.
                if let Some(planned) = planned {
                    for r in &mut ranges {
                        let end = planned
                            .iter()
                            .find(|p| p.topic == r.topic && p.partition == r.partition)
                            .map_or(r.from, |p| p.to);
                        r.to = r.to.min(end).max(r.from);
                    }
                }
                ranges
            }
        })
    };
    // Planning retries while a fresh broker loads its coordinator: do not
    // hold up a shutdown for it.
    let ranges = tokio::select! {
        ranges = planning => ranges?,
        _ = shutdown.changed() => anyhow::bail!("the host is shutting down"),
    };
    plan.get_or_insert_with(|| ranges.clone());
    if ranges.iter().all(PartitionRange::is_empty) {
        return Ok(Some("nothing new".into()));
    }
    // The plan, until the run records what it did: if the host dies, the
    // next one counts what was committed of it. Records below offsets
    // stored beside the rows are skipped: counted by the run that wrote them.
    let partitions = ranges
        .iter()
        .map(|r| (r.topic.clone(), r.partition))
        .collect();
    let floor = pipeline.stored_offsets(partitions).await;
    let planned: Vec<PartitionRange> = ranges
        .iter()
        .map(|r| {
            let from = floor
                .get(&(r.topic.clone(), r.partition))
                .map_or(r.from, |&f| f.max(r.from));
            PartitionRange {
                from: from.min(r.to),
                ..r.clone()
            }
        })
        .collect();
    ledger.record_offsets(id, &planned).await?;
    pipeline
        .run_bounded(&ranges, bounds, &version, shutdown, totals)
        .await?;
    Ok(None)
}

async fn finish(
    ledger: &Ledger,
    id: i64,
    state: RunState,
    totals: &RunTotals,
    error: Option<&str>,
    note: Option<&str>,
) {
    if let Err(e) = ledger.finish(id, state, totals, error, note).await {
        tracing::warn!(run = id, "run ledger: {e:#}");
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Waits between attempts of a run: `retry.backoff * 2^(attempt-1)`, +-20%
/// jitter so retries of many pipelines spread out.
fn attempt_delays(base: Duration) -> Backoff {
    Backoff::exponential(base, base.saturating_mul(1 << 16)).with_jitter()
}

/// Retrying the attempt cannot help (a topic that does not exist).
fn is_permanent(e: &anyhow::Error) -> bool {
    e.downcast_ref::<SourceError>()
        .is_some_and(SourceError::is_permanent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter() {
        let mut delays = attempt_delays(Duration::from_millis(100));
        for attempt in 1..=4 {
            let want = 100.0 * f64::from(1 << (attempt - 1));
            let got = delays.next_delay().as_millis() as f64;
            assert!(
                got >= want * 0.8 - 1.0 && got <= want * 1.2 + 1.0,
                "{attempt}: {got}"
            );
        }
    }
}
