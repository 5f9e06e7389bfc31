//! MySQL / MariaDB: table outputs as multi-row `INSERT ... ON DUPLICATE KEY
//! UPDATE` on the declared primary key, one transaction per batch.

mod ddl;

use super::{Row, Sink, SinkError};
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
}

impl MysqlSink {
    pub fn connect(url: &str, max_connections: u32) -> Result<Self, SinkError> {
        let pool = MySqlPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy(url)
            .map_err(|e| SinkError::Unavailable(format!("invalid MySQL URL: {e}")))?;
        Ok(MysqlSink { pool })
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

    async fn prepare(&self, target: &str, decl: &Output) -> Result<(), SinkError> {
        sqlx::query(sqlx::AssertSqlSafe(ddl::create_table(target, decl)))
            .execute(&self.pool)
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn read_dead_letters(
        &self,
        target: &str,
        decl: &Output,
        pipeline: &str,
        ids: &[String],
        limit: u32,
    ) -> Result<Vec<serde_json::Map<String, Value>>, SinkError> {
        use sqlx::Row as _;
        let columns: Vec<String> = decl
            .fields
            .iter()
            .map(|f| match f.ty {
                Type::Timestamp => format!(
                    "DATE_FORMAT({}, '%Y-%m-%dT%H:%i:%s.%fZ')",
                    ddl::quote(&f.name)
                ),
                _ => ddl::quote(&f.name),
            })
            .collect();
        let mut q = QueryBuilder::<MySql>::new(format!(
            "SELECT {} FROM {} WHERE pipeline = ",
            columns.join(", "),
            ddl::quote(target)
        ));
        q.push_bind(pipeline);
        if !ids.is_empty() {
            q.push(format!(" AND {} IN (", ddl::quote(&decl.primary_key[0])));
            let mut list = q.separated(", ");
            for id in ids {
                list.push_bind(id);
            }
            q.push(")");
        }
        q.push(" ORDER BY failed_at DESC LIMIT ");
        q.push_bind(limit);
        let rows = q.build().fetch_all(&self.pool).await.map_err(classify)?;
        let read = |row: &sqlx::mysql::MySqlRow| -> Result<_, sqlx::Error> {
            let mut map = serde_json::Map::new();
            for (i, f) in decl.fields.iter().enumerate() {
                let value = match f.ty {
                    Type::Integer => row.try_get::<Option<i64>, _>(i)?.map(Value::from),
                    _ => row.try_get::<Option<String>, _>(i)?.map(Value::from),
                };
                map.insert(f.name.clone(), value.unwrap_or(Value::Null));
            }
            Ok(map)
        };
        rows.iter()
            .map(|r| read(r).map_err(|e| SinkError::Unavailable(format!("MySQL: {e}"))))
            .collect()
    }

    async fn delete(&self, target: &str, decl: &Output, ids: &[String]) -> Result<(), SinkError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut q = QueryBuilder::<MySql>::new(format!(
            "DELETE FROM {} WHERE {} IN (",
            ddl::quote(target),
            ddl::quote(&decl.primary_key[0])
        ));
        let mut list = q.separated(", ");
        for id in ids {
            list.push_bind(id);
        }
        q.push(")");
        q.build().execute(&self.pool).await.map_err(classify)?;
        Ok(())
    }

    async fn write(&self, target: &str, decl: &Output, rows: &[Row]) -> Result<(), SinkError> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await.map_err(classify)?;
        let per_row = decl.fields.len().max(1);
        let mut start = 0;
        while start < rows.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < rows.len()
                && (end - start + 1) * per_row <= MAX_PARAMS
                && bytes < MAX_STATEMENT_BYTES
            {
                bytes += rows[end].fields.values().map(approx_size).sum::<usize>();
                end += 1;
            }
            let mut statement = upsert(target, decl, &rows[start..end]);
            statement
                .build()
                .execute(&mut *tx)
                .await
                .map_err(classify)?;
            start = end;
        }
        tx.commit().await.map_err(classify)?;
        Ok(())
    }
}

fn upsert(target: &str, decl: &Output, rows: &[Row]) -> QueryBuilder<MySql> {
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

fn bind(b: &mut sqlx::query_builder::Separated<'_, MySql, &'static str>, ty: Type, v: &Value) {
    match (ty, v) {
        (_, Value::Null) => b.push_bind(None::<String>),
        (Type::Integer, Value::Number(n)) => b.push_bind(n.as_i64()),
        (Type::Float, Value::Number(n)) => b.push_bind(n.as_f64()),
        (Type::Boolean, Value::Bool(x)) => b.push_bind(*x),
        // Normalised "2024-05-01T10:00:00.000000Z" -> DATETIME(6) text in UTC.
        (Type::Timestamp, Value::String(s)) => {
            b.push_bind(s.trim_end_matches('Z').replacen('T', " ", 1))
        }
        (_, Value::String(s)) => b.push_bind(s.clone()),
        (_, other) => b.push_bind(other.to_string()),
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
