//! The Airflow part: when each pipeline runs, and the record of every run.
//!
//! A pipeline is `continuous` (one long consumer, rolling ledger runs) or
//! scheduled by interval or cron. A scheduled run processes exactly the
//! offsets pending at its start; runs of one pipeline never overlap: a tick
//! that finds a run going is recorded as skipped, a manual trigger or a
//! backfill is queued behind it.

mod run;

pub use run::{RunRequest, Work, execute};

use crate::config::{Catchup, Schedule};
use crate::ledger::{Ledger, RunState, Trigger};
use crate::model::{Offsets, PartitionRange};
use crate::pipeline::Pipeline;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// What the API asks of a pipeline's scheduler. Replies carry the run id.
pub enum Command {
    Trigger {
        reply: oneshot::Sender<Result<i64, Refused>>,
    },
    Backfill {
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        reply: oneshot::Sender<Result<i64, Refused>>,
    },
    /// Dead letters through the plugin again (all, or these ids).
    Replay {
        ids: Vec<String>,
        reply: oneshot::Sender<Result<i64, Refused>>,
    },
}

/// Why a command started no run.
#[derive(Debug)]
pub enum Refused {
    /// The request does not fit the pipeline (HTTP 409).
    Conflict(String),
    /// The host could not record the run (HTTP 500).
    Failed(String),
}

/// A pipeline's scheduling state, for `sluice pipelines`.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub schedule: String,
    pub next_run: Option<DateTime<Utc>>,
    pub running: Option<i64>,
    pub queued: usize,
}

/// How the API reaches one pipeline's scheduler.
#[derive(Clone)]
pub struct Handle {
    pub commands: mpsc::Sender<Command>,
    pub status: Arc<Mutex<Status>>,
}

impl Handle {
    pub fn new(schedule: &Schedule) -> (Handle, mpsc::Receiver<Command>) {
        let (tx, rx) = mpsc::channel(16);
        let status = Status {
            schedule: schedule.describe(),
            next_run: None,
            running: None,
            queued: 0,
        };
        let handle = Handle {
            commands: tx,
            status: Arc::new(Mutex::new(status)),
        };
        (handle, rx)
    }
}

/// Drives one pipeline by its schedule until shutdown; a run in progress
/// is finished (up to its current batch) before this returns.
pub async fn drive(
    pipeline: Pipeline,
    ledger: Arc<Ledger>,
    shutdown: watch::Receiver<bool>,
    commands: mpsc::Receiver<Command>,
    status: Arc<Mutex<Status>>,
) -> anyhow::Result<()> {
    let name = pipeline.config.name.clone();
    if let Err(e) = close_interrupted(&name, pipeline.committed_offsets(), &ledger).await {
        tracing::warn!(pipeline = %name, "run ledger: {e:#}");
    }
    let schedule = Schedule::from_config(&pipeline.config.schedule)
        .map_err(|(key, e)| anyhow::anyhow!("pipeline '{name}': schedule{key}: {e}"))?;
    if schedule.is_continuous() {
        drive_continuous(pipeline, ledger, shutdown, commands, status).await
    } else {
        drive_scheduled(pipeline, schedule, ledger, shutdown, commands, status).await
    }
}

/// Closes the runs a previous host left queued or running as interrupted,
/// each with the records it committed before the host died.
/// `committed` reads the pipeline's committed offsets (only if needed).
async fn close_interrupted(
    name: &str,
    committed: impl Future<Output = anyhow::Result<Offsets>>,
    ledger: &Ledger,
) -> anyhow::Result<()> {
    let runs = ledger.unfinished(name).await?;
    if runs.is_empty() {
        return Ok(());
    }
    let committed = tokio::time::timeout(std::time::Duration::from_secs(15), committed)
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within 15s")));
    for run in &runs {
        let (totals, note) = match &committed {
            Ok(committed) => committed_by(run, committed),
            Err(e) => (
                crate::ledger::RunTotals::default(),
                format!("what it committed is not known: cannot read the committed offsets: {e:#}"),
            ),
        };
        ledger.interrupt(run.id, &totals, &note).await?;
        tracing::warn!(pipeline = %name, run = run.id, records = totals.records_in,
            "a run left unfinished by a previous host is marked interrupted: {note}");
    }
    Ok(())
}

/// What an unfinished `run` committed, given the offsets committed now:
/// in each partition it recorded, from its start up to the committed
/// offset (and no further than its planned end, for a bounded run).
fn committed_by(
    run: &crate::ledger::Run,
    committed: &Offsets,
) -> (crate::ledger::RunTotals, String) {
    let bounded = match run.trigger {
        Trigger::Continuous => false,
        Trigger::Schedule | Trigger::Catchup | Trigger::Manual | Trigger::Retry => true,
        Trigger::Backfill | Trigger::Replay => {
            let why = "what it wrote is not known: a backfill or replay commits no offsets";
            return (crate::ledger::RunTotals::default(), why.into());
        }
    };
    let mut totals = crate::ledger::RunTotals::default();
    for r in &run.offsets {
        let Some(&next) = committed.get(&(r.topic.clone(), r.partition)) else {
            continue;
        };
        let to = if bounded { next.min(r.to) } else { next };
        if to > r.from {
            totals.records_in += (to - r.from) as u64;
            totals.offsets.push(PartitionRange { to, ..r.clone() });
        }
    }
    let note = format!(
        "{} records committed before the host stopped (counted from the committed offsets; outputs and dead letters were not recorded)",
        totals.records_in
    );
    (totals, note)
}

async fn drive_continuous(
    mut pipeline: Pipeline,
    ledger: Arc<Ledger>,
    shutdown: watch::Receiver<bool>,
    mut commands: mpsc::Receiver<Command>,
    status: Arc<Mutex<Status>>,
) -> anyhow::Result<()> {
    // Backfills run beside the consumer, on a sibling pipeline.
    let mut slot = Slot::new(pipeline.sibling(), ledger.clone(), shutdown.clone());
    let result = {
        let main = pipeline.run_continuous(shutdown.clone(), &ledger);
        tokio::pin!(main);
        loop {
            slot.report(&status, None);
            tokio::select! {
                result = &mut main => break result,
                Some(command) = commands.recv() => slot.command(command, false).await,
                done = slot.join() => slot.finished(done).await,
            }
        }
    };
    slot.wait().await;
    result
}

async fn drive_scheduled(
    pipeline: Pipeline,
    schedule: Schedule,
    ledger: Arc<Ledger>,
    mut shutdown: watch::Receiver<bool>,
    mut commands: mpsc::Receiver<Command>,
    status: Arc<Mutex<Status>>,
) -> anyhow::Result<()> {
    let name = pipeline.config.name.clone();
    let catchup = pipeline.config.schedule.catchup;
    let mut slot = Slot::new(pipeline, ledger.clone(), shutdown.clone());
    let now = Utc::now();
    let mut next = match ledger.last_tick(&name).await? {
        // First start: an interval runs now, a cron waits for its time.
        None => match schedule {
            Schedule::Every(_) => Some(now),
            _ => schedule.next_after(now),
        },
        Some(last) => match schedule.missed(last, now) {
            (0, _) | (_, None) => schedule.next_after(last),
            (missed, Some(latest)) => {
                if catchup == Catchup::One {
                    let request = RunRequest {
                        scheduled_for: Some(latest),
                        note: Some(format!(
                            "catching up {missed} tick(s) missed while the host was down"
                        )),
                        ..RunRequest::new(Trigger::Catchup, Work::Pending)
                    };
                    slot.submit(request).await?;
                } else {
                    tracing::info!(pipeline = %name, missed, "ticks missed while the host was down are not run (schedule.catchup = \"none\")");
                }
                schedule.next_after(latest)
            }
        },
    };
    tracing::info!(pipeline = %name, schedule = %schedule.describe(), next_run = ?next, "pipeline scheduled");
    loop {
        slot.report(&status, next);
        let wait = next.map(|t| (t - Utc::now()).to_std().unwrap_or_default());
        tokio::select! {
            // A run that just ended is reaped before a tick looks for it.
            biased;
            done = slot.join() => slot.finished(done).await,
            _ = sleep(wait) => {
                let tick = next.expect("sleep only ends when a tick is due");
                next = schedule.next_after(tick).map(|n| n.max(Utc::now()));
                let request = RunRequest { scheduled_for: Some(tick), ..RunRequest::new(Trigger::Schedule, Work::Pending) };
                if let Some((running, _)) = &slot.running {
                    let note = format!("run {running} is still running");
                    tracing::info!(pipeline = %name, %tick, "tick skipped: {note}");
                    let row = crate::ledger::NewRun { note: Some(note), ..request.ledger_row(&name, RunState::Skipped) };
                    if let Err(e) = ledger.create(&row).await {
                        tracing::warn!(pipeline = %name, "run ledger: {e:#}");
                    }
                } else if let Err(e) = slot.submit(request).await {
                    tracing::warn!(pipeline = %name, "run ledger: {e:#}");
                }
            }
            Some(command) = commands.recv() => slot.command(command, true).await,
            _ = shutdown.changed() => break,
        }
    }
    slot.wait().await;
    Ok(())
}

async fn sleep(wait: Option<std::time::Duration>) {
    match wait {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

type Done = (Pipeline, RunState);

/// The single run a pipeline may have going, and the runs queued behind it.
struct Slot {
    /// Never runs: makes a fresh pipeline if a run task panicked.
    template: Pipeline,
    idle: Option<Pipeline>,
    running: Option<(i64, JoinHandle<Done>)>,
    queue: VecDeque<(i64, RunRequest)>,
    ledger: Arc<Ledger>,
    shutdown: watch::Receiver<bool>,
}

impl Slot {
    fn new(pipeline: Pipeline, ledger: Arc<Ledger>, shutdown: watch::Receiver<bool>) -> Slot {
        Slot {
            template: pipeline.sibling(),
            idle: Some(pipeline),
            running: None,
            queue: VecDeque::new(),
            ledger,
            shutdown,
        }
    }

    /// Records the run and starts it, or queues it behind the running one.
    async fn submit(&mut self, request: RunRequest) -> anyhow::Result<i64> {
        let name = self.pipeline_name();
        let state = if self.running.is_some() {
            RunState::Queued
        } else {
            RunState::Running
        };
        let id = self
            .ledger
            .create(&request.ledger_row(&name, state))
            .await?;
        if state == RunState::Queued {
            self.queue.push_back((id, request));
        } else {
            self.start(id, request);
        }
        Ok(id)
    }

    /// Publishes what is going for `sluice pipelines`.
    fn report(&self, status: &Mutex<Status>, next_run: Option<DateTime<Utc>>) {
        let mut status = status.lock().unwrap();
        status.next_run = next_run;
        status.running = self.running.as_ref().map(|(id, _)| *id);
        status.queued = self.queue.len();
    }

    fn pipeline_name(&self) -> String {
        self.template.config.name.clone()
    }

    fn start(&mut self, id: i64, request: RunRequest) {
        let mut pipeline = self.idle.take().expect("no run is going");
        let ledger = self.ledger.clone();
        let shutdown = self.shutdown.clone();
        let task = tokio::spawn(async move {
            let state = execute(&mut pipeline, &ledger, id, &request, shutdown).await;
            (pipeline, state)
        });
        self.running = Some((id, task));
    }

    /// Resolves when the running run ends; never if none is going.
    /// Cancel-safe: nothing is awaited after the task is taken.
    async fn join(&mut self) -> (i64, Result<Done, tokio::task::JoinError>) {
        let Some((_, task)) = &mut self.running else {
            return std::future::pending().await;
        };
        let done = task.await;
        let (id, _) = self.running.take().expect("set above");
        (id, done)
    }

    /// Takes the pipeline back and starts the next queued run.
    async fn finished(&mut self, (id, done): (i64, Result<Done, tokio::task::JoinError>)) {
        match done {
            Ok((pipeline, _)) => self.idle = Some(pipeline),
            Err(e) => {
                let error = format!("run task panicked: {e}");
                tracing::error!(run = id, "{error}");
                self.ledger.fail(id, &error).await;
                self.idle = Some(self.template.sibling());
            }
        }
        if let Some((id, request)) = self.queue.pop_front() {
            self.start(id, request);
        }
    }

    async fn command(&mut self, command: Command, can_trigger: bool) {
        let (request, reply) = match command {
            Command::Trigger { reply } if !can_trigger => {
                let _ = reply.send(Err(Refused::Conflict(format!(
                    "pipeline '{}' runs continuously; there is nothing to trigger (use `sluice backfill` to reprocess a time window)",
                    self.pipeline_name()
                ))));
                return;
            }
            Command::Trigger { reply } => (RunRequest::new(Trigger::Manual, Work::Pending), reply),
            Command::Backfill { from, to, reply } => (
                RunRequest::new(Trigger::Backfill, Work::Window { from, to }),
                reply,
            ),
            Command::Replay { ids, reply } => (
                RunRequest::new(Trigger::Replay, Work::Replay { ids }),
                reply,
            ),
        };
        let submitted = self.submit(request).await;
        let _ = reply.send(submitted.map_err(|e| Refused::Failed(format!("run ledger: {e:#}"))));
    }

    /// Lets the running run finish (it stops at shutdown) and fails the
    /// queued ones.
    async fn wait(&mut self) {
        if self.running.is_some() {
            let (id, done) = self.join().await;
            match done {
                Ok((pipeline, _)) => self.idle = Some(pipeline),
                Err(e) => {
                    self.ledger
                        .fail(id, &format!("run task panicked: {e}"))
                        .await
                }
            }
        }
        for (id, _) in self.queue.drain(..) {
            let why = "the host shut down before this queued run started";
            self.ledger.fail(id, why).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(trigger: Trigger, offsets: &[(i32, i64, i64)]) -> crate::ledger::Run {
        crate::ledger::Run {
            id: 1,
            pipeline: "p".into(),
            trigger,
            state: RunState::Running,
            scheduled_for: None,
            queued_at: Utc::now(),
            started_at: Some(Utc::now()),
            ended_at: None,
            attempt: 1,
            retry_of: None,
            records_in: 0,
            dead_letters: 0,
            outputs: Default::default(),
            deletes: Default::default(),
            offsets: offsets
                .iter()
                .map(|&(partition, from, to)| PartitionRange {
                    topic: "t".into(),
                    partition,
                    from,
                    to,
                })
                .collect(),
            plugin: None,
            plugin_version: None,
            plugin_hash: None,
            error: None,
            note: None,
            deadline_exceeded: false,
        }
    }

    #[test]
    fn an_interrupted_run_counts_what_it_committed() {
        let committed: Offsets = [
            (("t".into(), 0), 700),
            (("t".into(), 1), 40),
            (("t".into(), 2), 5),
        ]
        .into();
        // A continuous slice: from its start to the committed offset.
        let (totals, note) = committed_by(
            &run(Trigger::Continuous, &[(0, 100, 100), (1, 50, 50)]),
            &committed,
        );
        assert_eq!(totals.records_in, 600);
        assert_eq!(totals.offsets.len(), 1);
        assert_eq!((totals.offsets[0].from, totals.offsets[0].to), (100, 700));
        assert!(note.starts_with("600 records committed"), "{note}");
        // A scheduled run: no further than its planned end.
        let (totals, _) = committed_by(
            &run(Trigger::Schedule, &[(0, 100, 400), (2, 0, 9)]),
            &committed,
        );
        assert_eq!(totals.records_in, 300 + 5);
        // A backfill commits nothing: unknown, not zero by accident.
        let (totals, note) = committed_by(&run(Trigger::Backfill, &[(0, 0, 700)]), &committed);
        assert_eq!(totals.records_in, 0);
        assert!(note.contains("not known"), "{note}");
    }
}
