//! MySQL / MariaDB: table outputs as multi-row `INSERT ... ON DUPLICATE KEY
//! UPDATE` on the declared primary key and deletes as `DELETE ... WHERE
//! (key) IN (...)`, one transaction per batch.

mod collation;
mod ddl;
mod dead_letters;
mod migrate;
mod partitions;

use super::{Sink, SinkError, SinkTransaction, Transactional};
use crate::model::{Applied, Offsets, Partition, Plan, Row};
use serde_json::Value;
use sluice_plugin_sdk::schema::{Output, Type};
use sqlx::mysql::{MySqlPool, MySqlPoolOptions};
use sqlx::{MySql, QueryBuilder};
use std::time::Duration;

/// MySQL allows 65,535 placeholders per statement.
const MAX_PARAMS: usize = 65_535;
/// Keep statements well under the default 16 MiB max_allowed_packet.
const MAX_STATEMENT_BYTES: usize = 4 << 20;

pub struct MysqlSink {
    pool: MySqlPool,
    /// Created on first use by an `offsets = "mysql"` pipeline.
    offsets_table: tokio::sync::OnceCell<()>,
    /// The server's exact (no-pad binary) collation, asked on first use.
    exact_collation: tokio::sync::OnceCell<&'static str>,
}

impl MysqlSink {
    pub fn connect(url: &str, max_connections: u32) -> Result<Self, SinkError> {
        let pool = MySqlPoolOptions::new()
            .max_connections(max_connections)
            // A database that does not answer is reported (the pipeline
            // shows degraded) and retried after this long, not later.
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy(url)
            .map_err(|e| SinkError::Unavailable(format!("invalid MySQL URL: {e}")))?;
        Ok(MysqlSink {
            pool,
            offsets_table: tokio::sync::OnceCell::new(),
            exact_collation: tokio::sync::OnceCell::new(),
        })
    }
}

#[async_trait::async_trait]
impl Sink for MysqlSink {
    async fn healthcheck(&self) -> Result<(), SinkError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn plan(&self, target: &str, decl: &Output) -> Result<Plan, SinkError> {
        let exact = self.exact_collation().await?;
        let live = migrate::inspect(&self.pool, target)
            .await
            .map_err(classify)?;
        Ok(migrate::plan(
            target,
            decl,
            live.as_ref(),
            exact,
            chrono::Utc::now().date_naive(),
        ))
    }

    async fn apply(&self, plan: &Plan) -> Result<Vec<Applied>, SinkError> {
        migrate::apply(&self.pool, plan).await
    }

    async fn describe(&self, target: &str) -> Result<Vec<String>, SinkError> {
        migrate::describe(&self.pool, target)
            .await
            .map_err(classify)
    }

    async fn prepare(&self, target: &str, decl: &Output) -> Result<Vec<Applied>, SinkError> {
        let applied = super::migrate(self, target, decl).await?;
        // A table made before (by hand, or by an older sluice) may compare
        // its keys loosely: say so, once per prepare, with the fix.
        let exact = self.exact_collation().await?;
        for report in collation::loose_key_columns(&self.pool, target, decl, exact)
            .await
            .map_err(classify)?
        {
            tracing::warn!(table = target, "{report}");
        }
        Ok(applied)
    }

    async fn expire(
        &self,
        target: &str,
        decl: &Output,
        before: chrono::NaiveDate,
    ) -> Result<Vec<Applied>, SinkError> {
        if decl.partitioning.is_none() {
            return Ok(vec![]);
        }
        let live = migrate::live_partitions(&self.pool, target)
            .await
            .map_err(classify)?;
        let Some((what, statement)) = partitions::drop_expired(target, &live, before) else {
            return Ok(vec![]);
        };
        let mut plan = Plan::new(target);
        plan.step(what, statement);
        // Best effort: another host may have dropped them first, or a lock
        // held them; the next care (within the hour) tries again. A failed
        // drop must never stop writes.
        match migrate::apply(&self.pool, &plan).await {
            Ok(applied) => {
                tracing::warn!(table = target, "retention: {}", plan.steps[0].what);
                Ok(applied)
            }
            Err(e) => {
                tracing::warn!(
                    table = target,
                    "retention: {} failed, trying again at the next care: {e}",
                    plan.steps[0].what
                );
                Ok(vec![])
            }
        }
    }

    async fn write(&self, target: &str, decl: &Output, rows: &[Row]) -> Result<(), SinkError> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await.map_err(classify)?;
        write_rows(&mut tx, target, decl, rows).await?;
        tx.commit().await.map_err(classify)?;
        Ok(())
    }

    fn transactional(&self) -> Option<&dyn Transactional> {
        Some(self)
    }
}

#[async_trait::async_trait]
impl Transactional for MysqlSink {
    async fn stored_offsets(
        &self,
        group: &str,
        partitions: &[Partition],
    ) -> Result<Offsets, SinkError> {
        self.offsets_table().await?;
        let mut conn = self.pool.acquire().await.map_err(classify)?;
        read_offsets(&mut conn, group, partitions, false).await
    }

    async fn begin(
        &self,
        group: &str,
        partitions: &[Partition],
    ) -> Result<(Box<dyn SinkTransaction>, Offsets), SinkError> {
        self.offsets_table().await?;
        let mut tx = self.pool.begin().await.map_err(classify)?;
        let stored = read_offsets(&mut tx, group, partitions, true).await?;
        let tx = MysqlTransaction {
            tx,
            group: group.to_string(),
        };
        Ok((Box::new(tx), stored))
    }
}

/// `KEY IN (?, …)`: the declared (first) key column is one of `ids`.
fn push_key_in(q: &mut QueryBuilder<MySql>, decl: &Output, ids: &[String]) {
    q.push(format!("{} IN (", ddl::quote(&decl.primary_key[0])));
    let mut list = q.separated(", ");
    for id in ids {
        list.push_bind(id.clone());
    }
    q.push(")");
}

/// Where `offsets = "mysql"` pipelines keep their consumer offsets.
pub const OFFSETS_TABLE: &str = "sluice_offsets";

impl MysqlSink {
    async fn exact_collation(&self) -> Result<&'static str, SinkError> {
        self.exact_collation
            .get_or_try_init(|| collation::exact(&self.pool))
            .await
            .copied()
            .map_err(classify)
    }

    async fn offsets_table(&self) -> Result<(), SinkError> {
        let exact = self.exact_collation().await?;
        self.offsets_table
            .get_or_try_init(|| async {
                let ddl = format!(
                    "CREATE TABLE IF NOT EXISTS {OFFSETS_TABLE} (
  group_id VARCHAR(255) NOT NULL,
  topic VARCHAR(255) NOT NULL,
  kafka_partition INT NOT NULL,
  next_offset BIGINT NOT NULL,
  updated_at DATETIME(6) NOT NULL,
  PRIMARY KEY (group_id, topic, kafka_partition)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE={exact}"
                );
                sqlx::query(sqlx::AssertSqlSafe(ddl))
                    .execute(&self.pool)
                    .await
                    .map(|_| ())
                    .map_err(classify)
            })
            .await
            .copied()
    }
}

async fn read_offsets(
    conn: &mut sqlx::MySqlConnection,
    group: &str,
    partitions: &[Partition],
    lock: bool,
) -> Result<Offsets, SinkError> {
    use sqlx::Row as _;
    let mut offsets = Offsets::new();
    if partitions.is_empty() {
        return Ok(offsets);
    }
    let mut q = QueryBuilder::<MySql>::new(format!(
        "SELECT topic, kafka_partition, next_offset FROM {OFFSETS_TABLE} WHERE group_id = "
    ));
    q.push_bind(group);
    q.push(" AND (topic, kafka_partition) IN (");
    let mut list = q.separated(", ");
    for (topic, partition) in partitions {
        list.push("(");
        list.push_bind_unseparated(topic);
        list.push_unseparated(", ");
        list.push_bind_unseparated(partition);
        list.push_unseparated(")");
    }
    q.push(")");
    if lock {
        q.push(" FOR UPDATE");
    }
    for row in q.build().fetch_all(&mut *conn).await.map_err(classify)? {
        let read = || -> Result<_, sqlx::Error> {
            Ok((
                (row.try_get::<String, _>(0)?, row.try_get::<i32, _>(1)?),
                row.try_get::<i64, _>(2)?,
            ))
        };
        let (partition, next) =
            read().map_err(|e| SinkError::Unavailable(format!("MySQL: {OFFSETS_TABLE}: {e}")))?;
        offsets.insert(partition, next);
    }
    Ok(offsets)
}

/// One batch's writes and its offsets; rolled back if dropped uncommitted.
struct MysqlTransaction {
    tx: sqlx::Transaction<'static, MySql>,
    group: String,
}

#[async_trait::async_trait]
impl SinkTransaction for MysqlTransaction {
    async fn write(&mut self, target: &str, decl: &Output, rows: &[Row]) -> Result<(), SinkError> {
        // InnoDB rolls back only the failing statement: a refused write
        // leaves the rest of the transaction as it was.
        write_rows(&mut self.tx, target, decl, rows).await
    }

    async fn commit(mut self: Box<Self>, next: &Offsets) -> Result<(), SinkError> {
        if !next.is_empty() {
            let mut q = QueryBuilder::<MySql>::new(format!(
                "INSERT INTO {OFFSETS_TABLE} (group_id, topic, kafka_partition, next_offset, updated_at) "
            ));
            q.push_values(next, |mut b, ((topic, partition), offset)| {
                b.push_bind(&self.group)
                    .push_bind(topic)
                    .push_bind(partition)
                    .push_bind(offset)
                    .push("UTC_TIMESTAMP(6)");
            });
            q.push(" ON DUPLICATE KEY UPDATE next_offset = VALUES(next_offset), updated_at = VALUES(updated_at)");
            q.build().execute(&mut *self.tx).await.map_err(classify)?;
        }
        self.tx.commit().await.map_err(classify)
    }
}

/// Upserts the rows and deletes the keys of `rows` (they carry distinct
/// keys, so the order between the two does not matter).
async fn write_rows(
    conn: &mut sqlx::MySqlConnection,
    target: &str,
    decl: &Output,
    rows: &[Row],
) -> Result<(), SinkError> {
    let (deletes, upserts): (Vec<&Row>, Vec<&Row>) = rows.iter().partition(|r| r.delete);
    upsert_all(conn, target, decl, &upserts).await?;
    for chunk in statements(&deletes, decl.primary_key.len()) {
        delete_keys(target, decl, chunk)
            .build()
            .execute(&mut *conn)
            .await
            .map_err(classify)?;
    }
    Ok(())
}

/// `DELETE FROM target WHERE (k1, k2) IN ((?, ?), ...)`.
fn delete_keys(target: &str, decl: &Output, rows: &[&Row]) -> QueryBuilder<MySql> {
    let key: Vec<String> = decl.primary_key.iter().map(|k| ddl::quote(k)).collect();
    let mut q = QueryBuilder::new(format!(
        "DELETE FROM {} WHERE ({}) IN (",
        ddl::quote(target),
        key.join(", ")
    ));
    for (i, row) in rows.iter().enumerate() {
        q.push(if i == 0 { "(" } else { ", (" });
        let mut values = q.separated(", ");
        for name in &decl.primary_key {
            let ty = decl.get_field(name).expect("keys are declared fields").ty;
            bind(
                &mut values,
                ty,
                row.fields.get(name).unwrap_or(&Value::Null),
            );
        }
        q.push(")");
    }
    q.push(")");
    q
}

/// Upserts `rows` in as few statements as the placeholder and packet
/// limits allow.
async fn upsert_all(
    conn: &mut sqlx::MySqlConnection,
    target: &str,
    decl: &Output,
    rows: &[&Row],
) -> Result<(), SinkError> {
    for chunk in statements(rows, decl.fields.len()) {
        upsert(target, decl, chunk)
            .build()
            .execute(&mut *conn)
            .await
            .map_err(classify)?;
    }
    Ok(())
}

/// `rows` cut into runs that fit one statement each: at most `MAX_PARAMS`
/// placeholders (`per_row` a row) and about `MAX_STATEMENT_BYTES`.
fn statements<'a>(rows: &'a [&'a Row], per_row: usize) -> impl Iterator<Item = &'a [&'a Row]> {
    let per_row = per_row.max(1);
    let mut start = 0;
    std::iter::from_fn(move || {
        if start >= rows.len() {
            return None;
        }
        let mut end = start;
        let mut bytes = 0;
        while end < rows.len()
            && (end - start + 1) * per_row <= MAX_PARAMS
            && bytes < MAX_STATEMENT_BYTES
        {
            bytes += rows[end].fields.values().map(approx_size).sum::<usize>();
            end += 1;
        }
        let chunk = &rows[start..end];
        start = end;
        Some(chunk)
    })
}

fn upsert(target: &str, decl: &Output, rows: &[&Row]) -> QueryBuilder<MySql> {
    let columns: Vec<String> = decl.fields.iter().map(|f| ddl::quote(&f.name)).collect();
    let mut q = QueryBuilder::new(format!(
        "INSERT INTO {} ({}) ",
        ddl::quote(target),
        columns.join(", ")
    ));
    q.push_values(rows, |mut b, row| {
        for f in &decl.fields {
            bind(
                &mut b,
                f.ty,
                row.fields.get(&f.name).unwrap_or(&Value::Null),
            );
        }
    });
    let updates: Vec<String> = decl
        .fields
        .iter()
        .filter(|f| !decl.primary_key.contains(&f.name))
        .map(|f| format!("{0} = VALUES({0})", ddl::quote(&f.name)))
        .collect();
    let updates = if updates.is_empty() {
        let k = ddl::quote(&decl.primary_key[0]);
        format!("{k} = {k}")
    } else {
        updates.join(", ")
    };
    q.push(format!(" ON DUPLICATE KEY UPDATE {updates}"));
    q
}

/// Binds a value normalised by its declaration (`Output::check_value`).
fn bind(b: &mut sqlx::query_builder::Separated<'_, MySql, &'static str>, ty: Type, v: &Value) {
    if v.is_null() {
        b.push_bind(None::<String>);
        return;
    }
    let text = || match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    match ty {
        Type::Integer => match v.as_i64() {
            Some(n) => b.push_bind(n),
            None => b.push_bind(text()),
        },
        Type::Float => match v.as_f64() {
            Some(x) => b.push_bind(x),
            None => b.push_bind(text()),
        },
        Type::Boolean => match v.as_bool() {
            Some(x) => b.push_bind(x),
            None => b.push_bind(text()),
        },
        // Normalised "2024-05-01T10:00:00.000000Z" -> DATETIME(6) text in UTC.
        Type::Timestamp => b.push_bind(text().trim_end_matches('Z').replacen('T', " ", 1)),
        // Decimals travel as canonical text; JSON as its text.
        Type::Text(_) | Type::Decimal { .. } | Type::Json => b.push_bind(text()),
    };
}

fn approx_size(v: &Value) -> usize {
    match v {
        Value::String(s) => s.len() + 8,
        Value::Array(_) | Value::Object(_) => v.to_string().len(),
        _ => 16,
    }
}

/// Record-level refusals (data too long, constraint, bad value) are the
/// data's fault; everything else is the database's and is retried.
fn classify(e: sqlx::Error) -> SinkError {
    match &e {
        sqlx::Error::Database(db) if db.is_check_violation() || db.is_foreign_key_violation() => {
            SinkError::Refused(db.message().to_string())
        }
        sqlx::Error::Database(db) if db.code().is_some_and(|c| c.starts_with("22")) => {
            SinkError::Refused(db.message().to_string())
        }
        _ => SinkError::Unavailable(format!("MySQL: {e}")),
    }
}
