//! Sinks: where validated outputs are written. One folder per database,
//! each behind the `Sink` trait (with its DDL, dead-letter reading and
//! tests); writes are idempotent upserts so a batch replayed after a crash
//! changes nothing. `connect` is the one place that builds a sink from its
//! config; what each type can do is in `config::SinkType`.

mod memory;
mod mongodb;
mod mysql;

use crate::config::SinkConfig;
use crate::model::{Applied, Offsets, Partition, Plan, Row};
use serde_json::{Map, Value};
use sluice_plugin_sdk::schema::Output;
use std::collections::BTreeMap;
use std::sync::Arc;

pub use self::memory::MemorySink;
pub use self::mongodb::MongoSink;
pub use self::mysql::MysqlSink;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The database cannot be reached or failed the request: retry later.
    #[error("{0}")]
    Unavailable(String),
    /// The database refused the data itself (constraint, type, size).
    #[error("write refused: {0}")]
    Refused(String),
    /// The declaration cannot be applied to what exists without losing or
    /// rewriting data: retrying would not help, a new declaration would.
    #[error("{0}")]
    Incompatible(String),
}

#[async_trait::async_trait]
pub trait Sink: DeadLetterStore + Send + Sync {
    /// Checks the database answers.
    async fn healthcheck(&self) -> Result<(), SinkError>;

    /// What `prepare` would change so that `target` matches `decl`, from
    /// what exists now (see `model::migration`). Changes nothing.
    async fn plan(&self, target: &str, decl: &Output) -> Result<Plan, SinkError>;

    /// What `target` is now, in lines for people: size, keys, indexes,
    /// partitions or sharding (`sluice schema explain`).
    async fn describe(&self, target: &str) -> Result<Vec<String>, SinkError>;

    /// Runs a plan without refusals, step by step.
    async fn apply(&self, plan: &Plan) -> Result<Vec<Applied>, SinkError>;

    /// Creates or migrates `target` (table or collection, with its
    /// indexes) to match `decl`; `Incompatible` if that would lose data.
    async fn prepare(&self, target: &str, decl: &Output) -> Result<Vec<Applied>, SinkError> {
        migrate(self, target, decl).await
    }

    /// Drops the whole partitions of `target` (a table partitioned by day
    /// or month) whose rows are all older than `before`: a retention. What
    /// it dropped; sinks without such partitions drop nothing.
    async fn expire(
        &self,
        _target: &str,
        _decl: &Output,
        _before: chrono::NaiveDate,
    ) -> Result<Vec<Applied>, SinkError> {
        Ok(vec![])
    }

    /// Upserts `rows` into `target` on the declared key: each row replaces
    /// whatever the key held. Rows carry distinct keys (the router keeps
    /// the last version of each, see `router::Routed`). Either all rows
    /// are written or an error is returned; retrying is always safe.
    async fn write(&self, target: &str, decl: &Output, rows: &[Row]) -> Result<(), SinkError>;

    /// Closes the connections; called once the host stopped using the sink.
    async fn close(&self) {}

    /// The sink's transactions over several targets and the consumer
    /// offsets, if the database has them (MySQL).
    fn transactional(&self) -> Option<&dyn Transactional> {
        None
    }
}

/// Every sink stores dead letters; this reads them back (`sluice dlq`) and
/// deletes those replayed successfully.
#[async_trait::async_trait]
pub trait DeadLetterStore: Send + Sync {
    /// Reads back rows of `target` (declared by `decl`, which has `pipeline`
    /// and `failed_at` fields: dead letters) whose `pipeline` is `pipeline`
    /// and, unless `ids` is empty, whose id is one of `ids`; newest first.
    /// Timestamps come back as RFC 3339 text.
    async fn read_dead_letters(
        &self,
        target: &str,
        decl: &Output,
        pipeline: &str,
        ids: &[String],
        limit: u32,
    ) -> Result<Vec<Map<String, Value>>, SinkError>;

    /// Deletes the rows of `target` with these ids (text primary keys).
    async fn delete(&self, target: &str, decl: &Output, ids: &[String]) -> Result<(), SinkError>;
}

/// A database that stores a consumer group's offsets beside the rows, so a
/// batch's rows and its offsets commit together: exactly-once, whatever
/// the writes are.
#[async_trait::async_trait]
pub trait Transactional: Send + Sync {
    /// The offsets stored for `group`, of these partitions; a partition
    /// never stored is absent.
    async fn stored_offsets(
        &self,
        group: &str,
        partitions: &[Partition],
    ) -> Result<Offsets, SinkError>;

    /// Starts a transaction that locks `group`'s offsets of `partitions`
    /// (another writer of them waits) and returns them as stored.
    async fn begin(
        &self,
        group: &str,
        partitions: &[Partition],
    ) -> Result<(Box<dyn SinkTransaction>, Offsets), SinkError>;
}

/// Writes that become visible together, with the offsets, at `commit`;
/// dropped without `commit`, nothing is written.
#[async_trait::async_trait]
pub trait SinkTransaction: Send {
    /// Upserts `rows` into `target`. A refused write leaves the
    /// transaction as it was before the call.
    async fn write(&mut self, target: &str, decl: &Output, rows: &[Row]) -> Result<(), SinkError>;

    /// Stores `next` as the group's offsets and commits.
    async fn commit(self: Box<Self>, next: &Offsets) -> Result<(), SinkError>;
}

/// Plans and applies; a plan with refusals is an `Incompatible` error that
/// lists them. Another host or pipeline may be making the same change: a
/// step that fails is planned again from what exists then, a few times,
/// before its error is returned.
pub async fn migrate<S: Sink + ?Sized>(
    sink: &S,
    target: &str,
    decl: &Output,
) -> Result<Vec<Applied>, SinkError> {
    const TRIES: usize = 3;
    let mut applied = Vec::new();
    for attempt in 1..=TRIES {
        let plan = sink.plan(target, decl).await?;
        if attempt == 1 {
            log_notes_once(&plan);
        }
        if !plan.refusals.is_empty() {
            return Err(SinkError::Incompatible(format!(
                "{}: {}",
                plan.target,
                plan.refusals.join("; ")
            )));
        }
        if plan.steps.is_empty() {
            break;
        }

        match sink.apply(&plan).await {
            Ok(done) => {
                applied.extend(done);
                break;
            }
            Err(e) if attempt == TRIES => return Err(e),
            Err(e) => tracing::info!(target, "schema change failed ({e}); planning it again"),
        }
    }
    Ok(applied)
}

/// Logs each note of a plan once per process: the same plan comes back at
/// every reload and partition care, and its notes do not change.
fn log_notes_once(plan: &Plan) {
    static LOGGED: std::sync::Mutex<std::collections::BTreeSet<String>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut logged = LOGGED.lock().unwrap_or_else(|e| e.into_inner());
    for note in &plan.notes {
        if logged.insert(format!("{}: {note}", plan.target)) {
            tracing::info!(target = %plan.target, "schema: {note}");
        }
    }
}

/// Every configured sink, by name.
pub type Sinks = BTreeMap<String, Arc<dyn Sink>>;

/// Creates a client for each configured sink (connections open lazily).
pub async fn connect_all(configs: &BTreeMap<String, SinkConfig>) -> anyhow::Result<Sinks> {
    let mut sinks = Sinks::new();
    for (name, config) in configs {
        sinks.insert(name.clone(), connect(name, config).await?);
    }
    Ok(sinks)
}

/// A client for the sink `name`; errors name its config keys.
pub async fn connect(name: &str, config: &SinkConfig) -> anyhow::Result<Arc<dyn Sink>> {
    let failed = |e: SinkError| anyhow::anyhow!("sinks.{name}: {e}");
    Ok(match config {
        SinkConfig::Mongodb {
            uri,
            password,
            database,
            ..
        } => {
            let uri = uri
                .resolve_url()
                .map_err(|e| anyhow::anyhow!("sinks.{name}.uri: {e}"))?;
            crate::config::check_mongodb_uri(&uri, password.is_some())
                .map_err(|e| anyhow::anyhow!("sinks.{name}.uri: {}", crate::config::scrub(&e)))?;
            let password = password
                .as_ref()
                .map(|p| p.resolve())
                .transpose()
                .map_err(|e| anyhow::anyhow!("sinks.{name}.password: {e}"))?;
            Arc::new(
                MongoSink::connect(&uri, password, database, &config.tls())
                    .await
                    .map_err(failed)?,
            )
        }
        SinkConfig::Mysql {
            max_connections, ..
        } => {
            let url = config.mysql_url(name).map_err(anyhow::Error::msg)?;
            Arc::new(MysqlSink::connect(&url, *max_connections).map_err(failed)?)
        }
    })
}
