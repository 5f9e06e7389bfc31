//! The run ledger: every run of every pipeline, kept in SQLite in the state
//! folder by default, or in the database of a `mysql` sink: `sluice_runs`,
//! and `sluice_schema_changes` (see `schema_changes`), written through
//! sqlx's `Any` driver so both backends share the same queries.

mod schema_changes;

pub use schema_changes::SchemaChange;

use crate::config::{Config, SinkConfig};
use crate::model::{Batch, BatchDone, PartitionRange};
use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use sqlx::AnyPool;
use sqlx::Row as _;
use sqlx::any::{AnyPoolOptions, AnyRow};
use std::collections::BTreeMap;

/// Why a run started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// A tick of the pipeline's interval or cron schedule.
    Schedule,
    /// One run for the ticks missed while the host was down.
    Catchup,
    /// `sluice trigger`, or `sluice run --until-drained`.
    Manual,
    /// Another attempt of a failed run.
    Retry,
    /// `sluice backfill`: a time window reprocessed, offsets not moved.
    Backfill,
    /// A slice of a continuous pipeline's work, closed by size or time.
    Continuous,
    /// `sluice dlq replay`: dead letters sent through the plugin again.
    Replay,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Skipped,
    /// The host died (killed, crashed) while the run went on; closed when a
    /// host came back, with what the committed offsets say it processed.
    Interrupted,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::Catchup => "catchup",
            Trigger::Manual => "manual",
            Trigger::Retry => "retry",
            Trigger::Backfill => "backfill",
            Trigger::Continuous => "continuous",
            Trigger::Replay => "replay",
        }
    }
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Queued => "queued",
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::Skipped => "skipped",
            RunState::Interrupted => "interrupted",
        }
    }
}

/// One row of the ledger.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Run {
    pub id: i64,
    pub pipeline: String,
    pub trigger: Trigger,
    pub state: RunState,
    /// The schedule tick this run is for.
    pub scheduled_for: Option<DateTime<Utc>>,
    pub queued_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub attempt: u32,
    /// First attempt of the run this one retries.
    pub retry_of: Option<i64>,
    pub records_in: u64,
    pub dead_letters: u64,
    /// Rows or documents written per declared output.
    pub outputs: BTreeMap<String, u64>,
    /// Keys deleted per declared output.
    #[serde(default)]
    pub deletes: BTreeMap<String, u64>,
    /// Offsets processed, per partition: `[from, to)`.
    pub offsets: Vec<PartitionRange>,
    pub plugin: Option<String>,
    pub plugin_version: Option<String>,
    pub plugin_hash: Option<String>,
    pub error: Option<String>,
    /// Why a run was skipped or had nothing to do, missed ticks, ...
    pub note: Option<String>,
    pub deadline_exceeded: bool,
}

impl Run {
    pub fn duration(&self) -> Option<std::time::Duration> {
        let start = self.started_at?;
        let end = self.ended_at.unwrap_or_else(Utc::now);
        (end - start).to_std().ok()
    }
}

/// A run about to be recorded.
#[derive(Debug, Clone)]
pub struct NewRun<'a> {
    pub pipeline: &'a str,
    pub trigger: Trigger,
    pub state: RunState,
    pub scheduled_for: Option<DateTime<Utc>>,
    pub attempt: u32,
    pub retry_of: Option<i64>,
    pub note: Option<String>,
}

/// What a finished run did.
#[derive(Debug, Clone, Default)]
pub struct RunTotals {
    pub records_in: u64,
    pub dead_letters: u64,
    pub outputs: BTreeMap<String, u64>,
    pub deletes: BTreeMap<String, u64>,
    pub offsets: Vec<PartitionRange>,
}

impl RunTotals {
    /// Adds a written batch: its counts and its offsets.
    pub fn add(&mut self, batch: &Batch, done: BatchDone) {
        self.records_in += (batch.len() - done.already_written) as u64;
        self.dead_letters += done.dead_letters as u64;
        for (output, n) in done.outputs {
            *self.outputs.entry(output).or_default() += n as u64;
        }
        for (output, n) in done.deletes {
            *self.deletes.entry(output).or_default() += n as u64;
        }
        let first = batch.first_offsets();
        for ((topic, partition), next) in batch.next_offsets() {
            let from = first[&(topic.clone(), partition)];
            match self
                .offsets
                .iter_mut()
                .find(|r| r.topic == topic && r.partition == partition)
            {
                Some(r) => {
                    r.from = r.from.min(from);
                    r.to = r.to.max(next);
                }
                None => self.offsets.push(PartitionRange {
                    topic,
                    partition,
                    from,
                    to: next,
                }),
            }
        }
    }
}

/// The plugin version that served a run.
#[derive(Debug, Clone)]
pub struct PluginRef {
    pub name: String,
    pub version: String,
    pub hash: String,
}

pub struct Ledger {
    pool: AnyPool,
    /// Where it lives, for messages.
    pub location: String,
}

const SQLITE_DDL: &str = "CREATE TABLE IF NOT EXISTS sluice_runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pipeline TEXT NOT NULL, run_trigger TEXT NOT NULL, state TEXT NOT NULL,
    scheduled_for BIGINT, queued_at BIGINT NOT NULL, started_at BIGINT, ended_at BIGINT,
    attempt BIGINT NOT NULL, retry_of BIGINT,
    records_in BIGINT NOT NULL, dead_letters BIGINT NOT NULL,
    outputs TEXT NOT NULL, offsets TEXT NOT NULL,
    plugin TEXT, plugin_version TEXT, plugin_hash TEXT,
    error TEXT, note TEXT, deadline_exceeded BIGINT NOT NULL)";

const SQLITE_INDEX: &str =
    "CREATE INDEX IF NOT EXISTS sluice_runs_pipeline ON sluice_runs (pipeline, id)";

const MYSQL_DDL: &str = "CREATE TABLE IF NOT EXISTS sluice_runs (
    id BIGINT AUTO_INCREMENT PRIMARY KEY,
    pipeline VARCHAR(255) NOT NULL, run_trigger VARCHAR(32) NOT NULL, state VARCHAR(32) NOT NULL,
    scheduled_for BIGINT, queued_at BIGINT NOT NULL, started_at BIGINT, ended_at BIGINT,
    attempt BIGINT NOT NULL, retry_of BIGINT,
    records_in BIGINT NOT NULL, dead_letters BIGINT NOT NULL,
    outputs LONGTEXT NOT NULL, offsets LONGTEXT NOT NULL,
    plugin VARCHAR(255), plugin_version VARCHAR(255), plugin_hash VARCHAR(64),
    error LONGTEXT, note LONGTEXT, deadline_exceeded BIGINT NOT NULL,
    INDEX sluice_runs_pipeline (pipeline, id)
) CHARACTER SET utf8mb4";

const COLUMNS: &str = "id, pipeline, run_trigger, state, scheduled_for, queued_at, started_at, \
    ended_at, attempt, retry_of, records_in, dead_letters, outputs, deletes, offsets, plugin, \
    plugin_version, plugin_hash, error, note, deadline_exceeded";

/// Columns added after a ledger's table may have been created: added to
/// an existing table when it is opened ("duplicate column" means done).
const ADDED_COLUMNS: &[&str] = &["ALTER TABLE sluice_runs ADD COLUMN deletes TEXT"];

impl Ledger {
    /// Opens (and creates) the ledger the config points at.
    pub async fn open(config: &Config) -> anyhow::Result<Ledger> {
        Self::open_with(config, true).await
    }

    /// Opens an existing ledger (for `sluice runs`): a missing SQLite file
    /// is an error, not a new empty ledger.
    pub async fn open_existing(config: &Config) -> anyhow::Result<Ledger> {
        Self::open_with(config, false).await
    }

    async fn open_with(config: &Config, create: bool) -> anyhow::Result<Ledger> {
        sqlx::any::install_default_drivers();
        let (url, location, ddl): (String, String, &[&str]) = match &config.ledger.sink {
            Some(sink) => {
                let Some(sink_config @ SinkConfig::Mysql { .. }) = config.sinks.get(sink) else {
                    anyhow::bail!("ledger.sink: '{sink}' is not a mysql sink");
                };
                let url = sink_config.mysql_url(sink).map_err(anyhow::Error::msg)?;
                (
                    url,
                    format!("sink '{sink}', table sluice_runs"),
                    &[MYSQL_DDL, schema_changes::MYSQL_DDL],
                )
            }
            None => {
                let dir = &config.state_dir;
                let path = dir.join("ledger.db");
                if !create && !path.exists() {
                    anyhow::bail!(
                        "no run ledger at {} (state_dir = {:?}; relative to the directory sluice runs in): has `sluice run` run with this config here?",
                        path.display(),
                        dir
                    );
                }
                crate::config::create_private_dir(dir)
                    .and_then(|()| crate::config::create_private_file(&path))
                    .map_err(|e| {
                        anyhow::anyhow!("state_dir: cannot create {}: {e}", path.display())
                    })?;
                (
                    format!("sqlite://{}?mode=rwc", path.display()),
                    path.display().to_string(),
                    &[SQLITE_DDL, SQLITE_INDEX, schema_changes::SQLITE_DDL],
                )
            }
        };
        let pool = AnyPoolOptions::new()
            .max_connections(2)
            .connect(&url)
            .await
            .map_err(|e| anyhow::anyhow!("run ledger ({location}): cannot open: {e}"))?;
        if config.ledger.sink.is_none() {
            // Readers (`sluice runs`) never block the running host.
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await
                .map_err(|e| anyhow::anyhow!("run ledger ({location}): {e}"))?;
        }
        for statement in ddl {
            sqlx::query(*statement).execute(&pool).await.map_err(|e| {
                anyhow::anyhow!("run ledger ({location}): cannot create table: {e}")
            })?;
        }
        for statement in ADDED_COLUMNS {
            match sqlx::query(*statement).execute(&pool).await {
                Ok(_) => {}
                Err(e) if e.to_string().to_lowercase().contains("duplicate column") => {}
                Err(e) => anyhow::bail!("run ledger ({location}): {statement}: {e}"),
            }
        }
        Ok(Ledger { pool, location })
    }

    /// Records a new run and returns its id.
    pub async fn create(&self, run: &NewRun<'_>) -> anyhow::Result<i64> {
        let now = Utc::now().timestamp_millis();
        let started = (run.state != RunState::Queued).then_some(now);
        let ended = (run.state == RunState::Skipped).then_some(now);
        // One connection: SQLite reports the new id through it only.
        let mut conn = self.pool.acquire().await?;
        let result = sqlx::query(
            "INSERT INTO sluice_runs (pipeline, run_trigger, state, scheduled_for, queued_at, \
             started_at, ended_at, attempt, retry_of, records_in, dead_letters, outputs, offsets, \
             note, deadline_exceeded) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 0, '{}', '[]', ?, 0)",
        )
        .bind(run.pipeline.to_string())
        .bind(run.trigger.as_str())
        .bind(run.state.as_str())
        .bind(run.scheduled_for.map(|t| t.timestamp_millis()))
        .bind(now)
        .bind(started)
        .bind(ended)
        .bind(i64::from(run.attempt))
        .bind(run.retry_of)
        .bind(run.note.clone())
        .execute(&mut *conn)
        .await?;
        match result.last_insert_id() {
            Some(id) => Ok(id),
            None => Ok(sqlx::query("SELECT last_insert_rowid()")
                .fetch_one(&mut *conn)
                .await?
                .try_get::<i64, _>(0)?),
        }
    }

    /// A queued or new run starts, served by `plugin`.
    pub async fn start(&self, id: i64, plugin: &PluginRef) -> anyhow::Result<()> {
        sqlx::query(
            "UPDATE sluice_runs SET state = 'running', started_at = ?, plugin = ?, \
             plugin_version = ?, plugin_hash = ? WHERE id = ?",
        )
        .bind(Utc::now().timestamp_millis())
        .bind(plugin.name.clone())
        .bind(plugin.version.clone())
        .bind(plugin.hash.clone())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn finish(
        &self,
        id: i64,
        state: RunState,
        totals: &RunTotals,
        error: Option<&str>,
        note: Option<&str>,
    ) -> anyhow::Result<()> {
        sqlx::query(
            "UPDATE sluice_runs SET state = ?, ended_at = ?, records_in = ?, dead_letters = ?, \
             outputs = ?, deletes = ?, offsets = ?, error = ?, note = COALESCE(?, note) WHERE id = ?",
        )
        .bind(state.as_str())
        .bind(Utc::now().timestamp_millis())
        .bind(totals.records_in as i64)
        .bind(totals.dead_letters as i64)
        .bind(serde_json::to_string(&totals.outputs)?)
        .bind(serde_json::to_string(&totals.deletes)?)
        .bind(serde_json::to_string(&totals.offsets)?)
        // Errors quote what libraries said, which may include a secret.
        .bind(error.map(|e| crate::config::scrub(e).into_owned()))
        .bind(note.map(|n| crate::config::scrub(n).into_owned()))
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Marks a run failed before it did anything; errors are only logged.
    pub async fn fail(&self, id: i64, error: &str) {
        let nothing = RunTotals::default();
        if let Err(e) = self
            .finish(id, RunState::Failed, &nothing, Some(error), None)
            .await
        {
            tracing::warn!(run = id, "run ledger: {e:#}");
        }
    }

    pub async fn flag_deadline_exceeded(&self, id: i64) -> anyhow::Result<()> {
        sqlx::query("UPDATE sluice_runs SET deadline_exceeded = 1 WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Runs, newest first.
    pub async fn list(&self, pipeline: Option<&str>, limit: u32) -> anyhow::Result<Vec<Run>> {
        let rows =
            match pipeline {
                Some(p) => sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {COLUMNS} FROM sluice_runs WHERE pipeline = ? ORDER BY id DESC LIMIT ?"
                )))
                .bind(p.to_string())
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?,
                None => {
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "SELECT {COLUMNS} FROM sluice_runs ORDER BY id DESC LIMIT ?"
                    )))
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?
                }
            };
        rows.iter().map(from_row).collect()
    }

    pub async fn get(&self, id: i64) -> anyhow::Result<Option<Run>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM sluice_runs WHERE id = ?"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// The latest schedule tick recorded for a pipeline (run or skipped).
    pub async fn last_tick(&self, pipeline: &str) -> anyhow::Result<Option<DateTime<Utc>>> {
        let row = sqlx::query(
            "SELECT MAX(scheduled_for) FROM sluice_runs WHERE pipeline = ? \
             AND run_trigger IN ('schedule', 'catchup')",
        )
        .bind(pipeline.to_string())
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get::<Option<i64>, _>(0)?.map(millis))
    }

    /// Records where a running run starts (or, for a bounded run, the
    /// range it plans to process), so that if the host dies the run can be
    /// closed with what it committed (see `unfinished`).
    pub async fn record_offsets(&self, id: i64, offsets: &[PartitionRange]) -> anyhow::Result<()> {
        sqlx::query("UPDATE sluice_runs SET offsets = ? WHERE id = ?")
            .bind(serde_json::to_string(offsets)?)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Runs of `pipeline` a previous host left queued or running.
    pub async fn unfinished(&self, pipeline: &str) -> anyhow::Result<Vec<Run>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM sluice_runs WHERE pipeline = ? \
             AND state IN ('queued', 'running') ORDER BY id"
        )))
        .bind(pipeline.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(from_row).collect()
    }

    /// Closes a run a previous host left unfinished as interrupted, with
    /// `totals` as what it is known to have processed.
    pub async fn interrupt(&self, id: i64, totals: &RunTotals, note: &str) -> anyhow::Result<()> {
        self.finish(
            id,
            RunState::Interrupted,
            totals,
            Some("interrupted: the host stopped before this run finished"),
            Some(note),
        )
        .await
    }
}

fn millis(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

fn from_row(row: &AnyRow) -> anyhow::Result<Run> {
    let text = |name: &str| row.try_get::<String, _>(name);
    let opt_text = |name: &str| row.try_get::<Option<String>, _>(name);
    let time = |name: &str| row.try_get::<Option<i64>, _>(name).map(|t| t.map(millis));
    // The enums are stored as their serde names.
    let parse_enum = |name: &str| -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::Value::String(text(name)?))
    };
    Ok(Run {
        id: row.try_get("id")?,
        pipeline: text("pipeline")?,
        trigger: serde_json::from_value(parse_enum("run_trigger")?)?,
        state: serde_json::from_value(parse_enum("state")?)?,
        scheduled_for: time("scheduled_for")?,
        queued_at: millis(row.try_get("queued_at")?),
        started_at: time("started_at")?,
        ended_at: time("ended_at")?,
        attempt: row.try_get::<i64, _>("attempt")? as u32,
        retry_of: row.try_get("retry_of")?,
        records_in: row.try_get::<i64, _>("records_in")? as u64,
        dead_letters: row.try_get::<i64, _>("dead_letters")? as u64,
        outputs: serde_json::from_str(&text("outputs")?)?,
        // NULL in rows written before deletes were counted.
        deletes: match opt_text("deletes")? {
            Some(text) => serde_json::from_str(&text)?,
            None => BTreeMap::new(),
        },
        offsets: serde_json::from_str(&text("offsets")?)?,
        plugin: opt_text("plugin")?,
        plugin_version: opt_text("plugin_version")?,
        plugin_hash: opt_text("plugin_hash")?,
        error: opt_text("error")?,
        note: opt_text("note")?,
        deadline_exceeded: row.try_get::<i64, _>("deadline_exceeded")? != 0,
    })
}
