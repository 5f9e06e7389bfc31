//! Keys compare exactly: a text key `pad-id ` is not `pad-id`, `A` is not
//! `a`, and `é` written two ways is two keys, as in MongoDB. MySQL's and
//! MariaDB's usual collations pad with spaces or fold case, so tables are
//! created with a no-pad binary collation, and existing tables whose key
//! columns compare loosely are reported with the statement that fixes them.

use super::ddl;
use sluice_plugin_sdk::schema::{Output, Type};
use sqlx::MySqlPool;

/// No-pad binary collations: MariaDB (10.2+) names it `utf8mb4_nopad_bin`,
/// MySQL (8.0+) `utf8mb4_0900_bin`.
const EXACT: [&str; 2] = ["utf8mb4_nopad_bin", "utf8mb4_0900_bin"];

/// The first no-pad binary collation the server knows.
pub async fn exact(pool: &MySqlPool) -> Result<&'static str, sqlx::Error> {
    let mut last = None;
    for collation in EXACT {
        match compares_exactly(pool, collation).await {
            Ok(true) => return Ok(collation),
            Ok(false) => {}
            Err(e @ sqlx::Error::Database(_)) => last = Some(e),
            Err(other) => return Err(other),
        }
    }
    Err(last.unwrap_or_else(|| {
        sqlx::Error::Protocol(format!(
            "the server has none of the exact (no-pad binary) collations {EXACT:?}"
        ))
    }))
}

/// Whether `collation` tells apart keys that differ by trailing spaces or
/// by case, asked of the server itself rather than guessed from the name.
async fn compares_exactly(pool: &MySqlPool, collation: &str) -> Result<bool, sqlx::Error> {
    debug_assert!(
        collation
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    );
    let (pads, folds): (bool, bool) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT _utf8mb4'a' COLLATE {collation} = _utf8mb4'a ', _utf8mb4'a' COLLATE {collation} = _utf8mb4'A'"
    )))
    .fetch_one(pool)
    .await?;
    Ok(!pads && !folds)
}

/// The text columns of `table` that identify rows (primary key, unique
/// indexes) but compare loosely, each with the statement that fixes it.
pub async fn loose_key_columns(
    pool: &MySqlPool,
    table: &str,
    decl: &Output,
    exact: &str,
) -> Result<Vec<String>, sqlx::Error> {
    let unique = decl.indexes.iter().filter(|i| i.unique);
    let keys = decl
        .primary_key
        .iter()
        .chain(unique.flat_map(|i| i.fields.iter()));
    let mut reports = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for name in keys {
        let Some(field) = decl.get_field(name) else {
            continue;
        };
        let text = match field.ty {
            Type::Text(_) => true,
            Type::Integer
            | Type::Float
            | Type::Boolean
            | Type::Decimal { .. }
            | Type::Timestamp
            | Type::Json => false,
        };
        if !text || !seen.insert(name) {
            continue;
        }
        let collation: Option<(Option<String>,)> = sqlx::query_as(
            "SELECT COLLATION_NAME FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND COLUMN_NAME = ?",
        )
        .bind(table)
        .bind(name)
        .fetch_optional(pool)
        .await?;
        let Some((Some(collation),)) = collation else {
            continue;
        };
        let plain = collation
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
        // A collation of another character set cannot even be asked.
        if plain && matches!(compares_exactly(pool, &collation).await, Ok(true)) {
            continue;
        }
        let null = if field.nullable { "NULL" } else { "NOT NULL" };
        reports.push(format!(
            "column {} of table {} has collation {collation}, which ignores trailing spaces or case, so keys such as 'a' and 'a ' are one row here but two documents in MongoDB; fix it with: ALTER TABLE {} MODIFY {} {} CHARACTER SET utf8mb4 COLLATE {exact} {null} (first check no two keys collide)",
            ddl::quote(name),
            ddl::quote(table),
            ddl::quote(table),
            ddl::quote(name),
            ddl::column_type(field.ty),
        ));
    }
    Ok(reports)
}
