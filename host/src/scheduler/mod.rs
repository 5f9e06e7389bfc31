//! The Airflow part: when each pipeline runs, and the record of every run.
//!
//! A pipeline is `continuous` (one long consumer, rolling ledger runs) or
//! scheduled by interval or cron. A scheduled run processes exactly the
//! offsets pending at its start; runs of one pipeline never overlap: a tick
//! that finds a run going is recorded as skipped, a manual trigger or a
//! backfill is queued behind it.

pub mod ledger;
mod run;
mod schedule;

pub use run::{RunRequest, Work, execute};
pub use schedule::{MAX_INTERVAL, Schedule};

use crate::config::Catchup;
use crate::pipeline::Pipeline;
use chrono::{DateTime, Utc};
use ledger::{Ledger, RunState, Trigger};
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
    match ledger.fail_interrupted(&name).await {
        Ok(0) => {}
        Ok(n) => {
            tracing::warn!(pipeline = %name, runs = n, "runs left unfinished by a previous host are marked failed")
        }
        Err(e) => tracing::warn!(pipeline = %name, "run ledger: {e:#}"),
    }
    let schedule = Schedule::from_config(&pipeline.config.schedule)
        .map_err(|(key, e)| anyhow::anyhow!("pipeline '{name}': schedule{key}: {e}"))?;
    if schedule.is_continuous() {
        drive_continuous(pipeline, ledger, shutdown, commands, status).await
    } else {
        drive_scheduled(pipeline, schedule, ledger, shutdown, commands, status).await
    }
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
                    let row = ledger::NewRun { note: Some(note), ..request.ledger_row(&name, RunState::Skipped) };
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
