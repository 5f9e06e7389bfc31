//! Schema changes in the ledger: every statement a plugin version's
//! declaration made a sink run, with the version and how long it took
//! (`sluice schema history`).

use super::{Ledger, PluginRef, millis};
use crate::model::Applied;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::Row as _;

pub(super) const SQLITE_DDL: &str = "CREATE TABLE IF NOT EXISTS sluice_schema_changes (
    id INTEGER PRIMARY KEY AUTOINCREMENT, applied_at BIGINT NOT NULL,
    pipeline TEXT NOT NULL, plugin TEXT NOT NULL, plugin_version TEXT NOT NULL,
    plugin_hash TEXT NOT NULL, target TEXT NOT NULL, what TEXT NOT NULL,
    statement TEXT NOT NULL, took_ms BIGINT NOT NULL)";

pub(super) const MYSQL_DDL: &str = "CREATE TABLE IF NOT EXISTS sluice_schema_changes (
    id BIGINT AUTO_INCREMENT PRIMARY KEY, applied_at BIGINT NOT NULL,
    pipeline VARCHAR(255) NOT NULL, plugin VARCHAR(255) NOT NULL, plugin_version VARCHAR(255) NOT NULL,
    plugin_hash VARCHAR(64) NOT NULL, target VARCHAR(255) NOT NULL, what LONGTEXT NOT NULL,
    statement LONGTEXT NOT NULL, took_ms BIGINT NOT NULL
) CHARACTER SET utf8mb4";

/// One statement as the ledger keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SchemaChange {
    pub id: i64,
    pub applied_at: DateTime<Utc>,
    pub pipeline: String,
    pub plugin: String,
    pub plugin_version: String,
    pub plugin_hash: String,
    #[serde(flatten)]
    pub applied: Applied,
}

impl Ledger {
    pub async fn record_schema_changes(
        &self,
        pipeline: &str,
        plugin: &PluginRef,
        applied: &[Applied],
    ) -> anyhow::Result<()> {
        let now = Utc::now().timestamp_millis();
        for a in applied {
            sqlx::query(
                "INSERT INTO sluice_schema_changes (applied_at, pipeline, plugin, plugin_version, \
                 plugin_hash, target, what, statement, took_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(now)
            .bind(pipeline.to_string())
            .bind(plugin.name.clone())
            .bind(plugin.version.clone())
            .bind(plugin.hash.clone())
            .bind(a.target.clone())
            .bind(a.what.clone())
            .bind(a.statement.clone())
            .bind(a.took_ms as i64)
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }

    /// Schema changes, newest first.
    pub async fn schema_changes(&self, limit: u32) -> anyhow::Result<Vec<SchemaChange>> {
        let rows = sqlx::query(
            "SELECT id, applied_at, pipeline, plugin, plugin_version, plugin_hash, target, what, \
             statement, took_ms FROM sluice_schema_changes ORDER BY id DESC LIMIT ?",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let text = |name: &str| row.try_get::<String, _>(name);
                Ok(SchemaChange {
                    id: row.try_get("id")?,
                    applied_at: millis(row.try_get("applied_at")?),
                    pipeline: text("pipeline")?,
                    plugin: text("plugin")?,
                    plugin_version: text("plugin_version")?,
                    plugin_hash: text("plugin_hash")?,
                    applied: Applied {
                        target: text("target")?,
                        what: text("what")?,
                        statement: text("statement")?,
                        took_ms: row.try_get::<i64, _>("took_ms")? as u64,
                    },
                })
            })
            .collect()
    }
}
