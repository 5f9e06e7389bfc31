//! Reading back and deleting dead letters stored in MySQL.

use super::{MysqlSink, classify, ddl, push_key_in};
use crate::sink::{DeadLetterStore, SinkError};
use serde_json::Value;
use sluice_plugin_sdk::schema::{Output, Type};
use sqlx::{MySql, QueryBuilder};

#[async_trait::async_trait]
impl DeadLetterStore for MysqlSink {
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
                Type::Text(_)
                | Type::Integer
                | Type::Float
                | Type::Boolean
                | Type::Decimal { .. }
                | Type::Json => ddl::quote(&f.name),
            })
            .collect();
        let mut q = QueryBuilder::<MySql>::new(format!(
            "SELECT {} FROM {} WHERE pipeline = ",
            columns.join(", "),
            ddl::quote(target)
        ));
        q.push_bind(pipeline);
        if !ids.is_empty() {
            q.push(" AND ");
            push_key_in(&mut q, decl, ids);
        }
        q.push(" ORDER BY failed_at DESC LIMIT ");
        q.push_bind(limit);
        let rows = q.build().fetch_all(&self.pool).await.map_err(classify)?;
        let read = |row: &sqlx::mysql::MySqlRow| -> Result<_, sqlx::Error> {
            let mut map = serde_json::Map::new();
            for (i, f) in decl.fields.iter().enumerate() {
                let value = match f.ty {
                    Type::Integer => row.try_get::<Option<i64>, _>(i)?.map(Value::from),
                    Type::Float => row.try_get::<Option<f64>, _>(i)?.map(Value::from),
                    Type::Boolean => row.try_get::<Option<bool>, _>(i)?.map(Value::from),
                    Type::Text(_) | Type::Decimal { .. } | Type::Timestamp | Type::Json => {
                        row.try_get::<Option<String>, _>(i)?.map(Value::from)
                    }
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
        let mut q =
            QueryBuilder::<MySql>::new(format!("DELETE FROM {} WHERE ", ddl::quote(target)));
        push_key_in(&mut q, decl, ids);
        q.build().execute(&self.pool).await.map_err(classify)?;
        Ok(())
    }
}
