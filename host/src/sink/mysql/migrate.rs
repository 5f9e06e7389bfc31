//! The declaration against the live table: what to create or alter, and
//! what to refuse. Safe changes (a new table, optional column or index, a
//! wider text or decimal, a column that became optional or undeclared) are
//! applied, online where the server can; anything that would rewrite or
//! lose data (a narrower or other type, another primary key, a required
//! column on a table with rows) is refused with what to do instead.

use super::ddl::{column_type, create_table, quote};
use super::partitions::{self, LivePartition};
use crate::model::migration::{Applied, Plan};
use crate::sink::SinkError;
use chrono::NaiveDate;
use sluice_plugin_sdk::schema::Output;
use sqlx::mysql::MySqlPool;
use std::collections::BTreeMap;
use std::time::Instant;

/// A table as `information_schema` describes it.
#[derive(Debug, Clone, Default)]
pub struct LiveTable {
    pub columns: Vec<LiveColumn>,
    pub primary_key: Vec<String>,
    /// Secondary indexes by name.
    pub indexes: BTreeMap<String, LiveIndex>,
    pub has_rows: bool,
    /// In order; empty if the table is not partitioned.
    pub partitions: Vec<LivePartition>,
}

#[derive(Debug, Clone, Default)]
pub struct LiveColumn {
    pub name: String,
    /// As the server spells it: `varchar(64)`, `decimal(12,2)`; `json` also
    /// for MariaDB's JSON (LONGTEXT checked by `json_valid`).
    pub column_type: String,
    pub nullable: bool,
    pub collation: Option<String>,
    /// Has a DEFAULT, or is generated or AUTO_INCREMENT: the server fills
    /// it, so it needs nothing from new rows.
    pub filled_by_server: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveIndex {
    pub columns: Vec<String>,
    pub unique: bool,
}

/// Reads the table `target`; `None` if it does not exist.
pub async fn inspect(pool: &MySqlPool, target: &str) -> Result<Option<LiveTable>, sqlx::Error> {
    type ColumnRow = (
        String,
        String,
        String,
        Option<String>,
        Option<String>,
        String,
    );
    let columns: Vec<ColumnRow> = sqlx::query_as(
        "SELECT COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, COLLATION_NAME, COLUMN_DEFAULT, EXTRA \
         FROM information_schema.COLUMNS \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
    )
    .bind(target)
    .fetch_all(pool)
    .await?;
    if columns.is_empty() {
        return Ok(None);
    }
    // MariaDB's JSON is LONGTEXT with a `json_valid` check (MySQL 8 has no
    // TABLE_NAME here: there the type itself says json).
    let checks: Vec<(String,)> = sqlx::query_as(
        "SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS \
         WHERE CONSTRAINT_SCHEMA = DATABASE() AND TABLE_NAME = ?",
    )
    .bind(target)
    .fetch_all(pool)
    .await
    .unwrap_or_default();
    let mut table = LiveTable {
        columns: columns
            .into_iter()
            .map(|(name, ty, nullable, collation, default, extra)| {
                let json = checks
                    .iter()
                    .any(|(c,)| c.contains(&format!("json_valid(`{name}`)")));
                LiveColumn {
                    column_type: if json { "json".into() } else { ty },
                    nullable: nullable == "YES",
                    collation,
                    // MariaDB reports no default as NULL, or as the text
                    // NULL for a nullable column.
                    filled_by_server: default.is_some_and(|d| d != "NULL") || !extra.is_empty(),
                    name,
                }
            })
            .collect(),
        ..LiveTable::default()
    };
    // COLUMN_NAME is NULL for a functional index part (MySQL 8).
    let index_columns: Vec<(String, i64, Option<String>)> = sqlx::query_as(
        "SELECT INDEX_NAME, NON_UNIQUE, COLUMN_NAME FROM information_schema.STATISTICS \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? ORDER BY INDEX_NAME, SEQ_IN_INDEX",
    )
    .bind(target)
    .fetch_all(pool)
    .await?;
    for (index, non_unique, column) in index_columns {
        let column = column.unwrap_or_else(|| "(an expression)".into());
        if index == "PRIMARY" {
            table.primary_key.push(column);
            continue;
        }
        table
            .indexes
            .entry(index)
            .or_insert_with(|| LiveIndex {
                columns: vec![],
                unique: non_unique == 0,
            })
            .columns
            .push(column);
    }
    table.partitions = live_partitions(pool, target).await?;
    let any_row: Option<(i32,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT 1 FROM {} LIMIT 1",
        quote(target)
    )))
    .fetch_optional(pool)
    .await?;
    table.has_rows = any_row.is_some();
    Ok(Some(table))
}

/// The partitions of `target`, in order (none if it is not partitioned).
pub async fn live_partitions(
    pool: &MySqlPool,
    target: &str,
) -> Result<Vec<LivePartition>, sqlx::Error> {
    let rows: Vec<(String, String, String, Option<String>)> = sqlx::query_as(
        "SELECT PARTITION_NAME, PARTITION_METHOD, PARTITION_EXPRESSION, PARTITION_DESCRIPTION \
         FROM information_schema.PARTITIONS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? \
         AND PARTITION_NAME IS NOT NULL ORDER BY PARTITION_ORDINAL_POSITION",
    )
    .bind(target)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(name, method, expression, bound)| LivePartition {
            name,
            method,
            expression: expression.replace('`', ""),
            bound,
        })
        .collect())
}

/// The table for people: rows (the server's estimate), primary key,
/// indexes, partitions.
pub async fn describe(pool: &MySqlPool, target: &str) -> Result<Vec<String>, sqlx::Error> {
    let Some(live) = inspect(pool, target).await? else {
        return Ok(vec![format!("table {}: does not exist yet", quote(target))]);
    };
    let (rows,): (Option<u64>,) = sqlx::query_as(
        "SELECT TABLE_ROWS FROM information_schema.TABLES          WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?",
    )
    .bind(target)
    .fetch_one(pool)
    .await?;
    let mut lines = vec![
        format!(
            "table {}: about {} rows, {} columns",
            quote(target),
            rows.unwrap_or(0),
            live.columns.len()
        ),
        format!("primary key ({})", live.primary_key.join(", ")),
    ];
    for (name, index) in &live.indexes {
        let unique = if index.unique { "unique " } else { "" };
        lines.push(format!(
            "{unique}index {name} ({})",
            index.columns.join(", ")
        ));
    }
    let partitions: Vec<(String, String, Option<String>, Option<u64>)> = sqlx::query_as(
        "SELECT PARTITION_NAME, PARTITION_METHOD, PARTITION_DESCRIPTION, TABLE_ROWS          FROM information_schema.PARTITIONS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?          AND PARTITION_NAME IS NOT NULL ORDER BY PARTITION_ORDINAL_POSITION",
    )
    .bind(target)
    .fetch_all(pool)
    .await?;
    lines.push(match partitions::describe_live(&live.partitions) {
        Some(how) => format!("partitioned {how}"),
        None => "not partitioned".into(),
    });
    for (name, method, bound, rows) in partitions {
        let bound = bound.map_or(String::new(), |b| format!(" < {b}"));
        lines.push(format!(
            "partition {name} ({method}{bound}): about {} rows",
            rows.unwrap_or(0)
        ));
    }
    Ok(lines)
}

/// Column types as far as compatibility goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SqlType {
    Varchar(u32),
    LongText,
    Json,
    BigInt,
    Double,
    Bool,
    Decimal(u8, u8),
    Datetime,
    Other,
}

impl SqlType {
    fn of(column_type: &str) -> SqlType {
        let t = column_type.to_lowercase();
        let args = |prefix: &str| -> Option<Vec<u32>> {
            let inner = t
                .strip_prefix(prefix)?
                .strip_prefix('(')?
                .strip_suffix(')')?;
            inner.split(',').map(|n| n.trim().parse().ok()).collect()
        };
        match t.as_str() {
            "longtext" => return SqlType::LongText,
            "json" => return SqlType::Json,
            "double" => return SqlType::Double,
            "bigint" => return SqlType::BigInt,
            "tinyint(1)" | "boolean" => return SqlType::Bool,
            "datetime(6)" => return SqlType::Datetime,
            _ => {}
        }
        if let Some([n]) = args("varchar").as_deref() {
            return SqlType::Varchar(*n);
        }
        if args("bigint").is_some() {
            return SqlType::BigInt;
        }
        match args("decimal").as_deref() {
            Some([p, s]) => SqlType::Decimal(*p as u8, *s as u8),
            _ => SqlType::Other,
        }
    }

    /// Whether every value of `self` fits `to` unchanged.
    fn widens_to(self, to: SqlType) -> bool {
        match (self, to) {
            (SqlType::Varchar(a), SqlType::Varchar(b)) => b >= a,
            (SqlType::Varchar(_), SqlType::LongText) => true,
            (SqlType::Decimal(p, s), SqlType::Decimal(p2, s2)) => {
                s2 >= s && p2.saturating_sub(s2) >= p.saturating_sub(s)
            }
            _ => false,
        }
    }
}

/// Online clauses, best first: metadata only, then a rebuild that lets
/// writes through. The plain statement is the last resort.
const INSTANT: &[&str] = &["ALGORITHM=INSTANT", "ALGORITHM=INPLACE, LOCK=NONE"];
const INPLACE: &[&str] = &["ALGORITHM=INPLACE, LOCK=NONE"];

/// What makes `live` (None: no table yet) match `decl`, `today`.
pub fn plan(
    target: &str,
    decl: &Output,
    live: Option<&LiveTable>,
    collation: &str,
    today: NaiveDate,
) -> Plan {
    let mut plan = Plan::new(target);
    let Some(live) = live else {
        let mut create = create_table(target, decl, collation);
        if let Some(partitioning) = &decl.partitioning {
            create.push('\n');
            create.push_str(&partitions::create_clause(partitioning, today));
        }
        plan.step("create table", create);
        return plan;
    };
    plan_partitions(&mut plan, decl, live, today);
    let alter = |change: String| format!("ALTER TABLE {} {change}", quote(target));
    let declared_as = |f: &sluice_plugin_sdk::schema::Field| {
        let null = if f.nullable { "" } else { " (required)" };
        format!("{}{null}", f.ty)
    };
    if live.primary_key != decl.primary_key {
        plan.refuse(format!(
            "primary key: the table's is ({}), the new declaration's is ({}); a changed key would merge or split rows. Keep the primary key, or declare a new output (a new table) and backfill it",
            live.primary_key.join(", "),
            decl.primary_key.join(", ")
        ));
    }
    for field in &decl.fields {
        let name = &field.name;
        let declared = SqlType::of(&column_type(field.ty));
        let Some(column) = live.columns.iter().find(|c| &c.name == name) else {
            if field.nullable || !live.has_rows {
                let null = if field.nullable { "NULL" } else { "NOT NULL" };
                plan.step(
                    format!("add column {} {}", quote(name), declared_as(field)),
                    alter(format!(
                        "ADD COLUMN {} {} {null}",
                        quote(name),
                        column_type(field.ty)
                    )),
                )
                .online(INSTANT);
            } else {
                plan.refuse(format!(
                    "field '{name}': new and required ({}), but the table has rows, which have no value for it. Declare it optional (`.optional(\"{name}\", …)`), or add the column with a default by hand first",
                    field.ty
                ));
            }
            continue;
        };
        let existing = SqlType::of(&column.column_type);
        let retyped = existing != declared;
        if retyped && !existing.widens_to(declared) {
            plan.refuse(format!(
                "field '{name}': the column is {} and the new declaration says {}; a narrower or different type could truncate or reinterpret stored values. Keep {}, widen it instead, or declare a new field and backfill it",
                column.column_type,
                field.ty,
                column.column_type
            ));
            continue;
        }
        if retyped && let Some(index) = too_wide_for(live, name, declared) {
            plan.refuse(format!(
                "field '{name}': widening the column to {} would make it too long for index {index}, which covers it (an index key holds at most 3072 bytes, 768 characters); widen it less, or drop that index by hand first",
                field.ty
            ));
            continue;
        }
        let relaxed = field.nullable && !column.nullable;
        if retyped || relaxed {
            let null = if column.nullable || field.nullable {
                "NULL"
            } else {
                "NOT NULL"
            };
            let what = if retyped {
                format!(
                    "widen column {} from {} to {}",
                    quote(name),
                    column.column_type,
                    column_type(field.ty)
                )
            } else {
                format!("make column {} optional", quote(name))
            };
            plan.step(
                what,
                alter(format!(
                    "MODIFY COLUMN {} {}{} {null}",
                    quote(name),
                    column_type(field.ty),
                    collate(column)
                )),
            )
            .online(INSTANT);
        } else if column.nullable && !field.nullable {
            plan.note(format!(
                "column {} stays nullable though '{name}' is now required (rows written before may hold NULL; new rows always have a value)",
                quote(name)
            ));
        }
    }
    for column in &live.columns {
        if decl.get_field(&column.name).is_some() || live.primary_key.contains(&column.name) {
            continue;
        }
        if column.nullable || column.filled_by_server {
            plan.note(format!(
                "column {} is no longer declared; it stays, and the server fills it in new rows (NULL or its default)",
                quote(&column.name)
            ));
        } else {
            plan.step(
                format!(
                    "make undeclared column {} optional (it stays; new rows leave it NULL)",
                    quote(&column.name)
                ),
                alter(format!(
                    "MODIFY COLUMN {} {}{} NULL",
                    quote(&column.name),
                    column.column_type,
                    collate(column)
                )),
            )
            .online(INSTANT);
        }
    }
    for index in &decl.indexes {
        let wanted = LiveIndex {
            columns: index.fields.clone(),
            unique: index.unique,
        };
        let columns: Vec<_> = index.fields.iter().map(|f| quote(f)).collect();
        let unique = if index.unique { "UNIQUE " } else { "" };
        let add = format!(
            "ADD {unique}INDEX {} ({})",
            quote(&index.name),
            columns.join(", ")
        );
        match live.indexes.get(&index.name) {
            Some(existing) if *existing == wanted => {}
            Some(_) => {
                plan.step(
                    format!(
                        "rebuild index {} on ({})",
                        quote(&index.name),
                        columns.join(", ")
                    ),
                    alter(format!("DROP INDEX {}, {add}", quote(&index.name))),
                )
                .online(INPLACE);
            }
            None => {
                plan.step(
                    format!(
                        "add {unique}index {} on ({})",
                        quote(&index.name),
                        columns.join(", ")
                    ),
                    alter(add),
                )
                .online(INPLACE);
            }
        }
    }
    for name in live.indexes.keys() {
        if decl.indexes.iter().all(|i| &i.name != name) {
            plan.note(format!(
                "index {} is no longer declared; it stays",
                quote(name)
            ));
        }
    }
    plan
}

/// Partitioning is fixed when a table is made: a change is refused (it
/// would rewrite every row, and a narrower range could drop some); the
/// same range partitioning gets its periods ahead.
fn plan_partitions(plan: &mut Plan, decl: &Output, live: &LiveTable, today: NaiveDate) {
    let declared = decl.partitioning.as_ref().map(|p| p.to_string());
    let existing = partitions::describe_live(&live.partitions);
    if declared != existing {
        let say = |how: Option<String>| {
            how.map_or("not partitioned".into(), |h| format!("partitioned {h}"))
        };
        plan.refuse(format!(
            "partitioning: the table is {}, the new declaration says {}; repartitioning rewrites every row under a lock. Keep the partitioning, or declare a new output (a new table) and backfill it",
            say(existing),
            say(declared)
        ));
        return;
    }
    if let Some(partitioning) = &decl.partitioning
        && let Some((what, statement)) =
            partitions::extend_ahead(&plan.target, partitioning, &live.partitions, today)
    {
        plan.step(what, statement);
    }
}

/// The live index on `column` that a column of type `to` would not fit:
/// InnoDB index keys hold at most 3072 bytes (utf8mb4: 4 bytes a
/// character), and LONGTEXT cannot be indexed without a prefix.
fn too_wide_for(live: &LiveTable, column: &str, to: SqlType) -> Option<String> {
    let fits = match to {
        SqlType::Varchar(n) => n as usize * 4 <= 3072,
        SqlType::LongText | SqlType::Json => false,
        _ => true,
    };
    if fits {
        return None;
    }
    let primary = live.primary_key.iter().any(|c| c == column);
    let covering = live
        .indexes
        .iter()
        .find(|(_, i)| i.columns.iter().any(|c| c == column))
        .map(|(name, _)| quote(name));
    covering.or(primary.then(|| "PRIMARY".to_string()))
}

/// Keeps a text column's collation (exact keys) across MODIFY.
fn collate(column: &LiveColumn) -> String {
    match &column.collation {
        Some(c) if c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') => {
            format!(" COLLATE {c}")
        }
        _ => String::new(),
    }
}

/// Runs the steps in order, each with the first online clause the server
/// accepts. A statement the server refuses for its data (a duplicate under
/// a new unique index) is `Incompatible`: retrying would not help.
pub async fn apply(pool: &MySqlPool, plan: &Plan) -> Result<Vec<Applied>, SinkError> {
    let mut applied = Vec::new();
    for step in &plan.steps {
        let started = Instant::now();
        let mut attempts: Vec<String> = step
            .online
            .iter()
            .map(|clause| format!("{}, {clause}", step.statement))
            .collect();
        attempts.push(step.statement.clone());
        let mut ran = None;
        for (i, statement) in attempts.iter().enumerate() {
            match sqlx::query(sqlx::AssertSqlSafe(statement.clone()))
                .execute(pool)
                .await
            {
                Ok(_) => {
                    ran = Some(statement.clone());
                    break;
                }
                Err(sqlx::Error::Database(db))
                    if i + 1 < attempts.len() && not_supported_online(error_number(&*db)) =>
                {
                    tracing::debug!(table = %plan.target, "{statement}: {}; trying the next way", db.message());
                }
                Err(sqlx::Error::Database(db)) if !passing(error_number(&*db)) => {
                    return Err(SinkError::Incompatible(format!(
                        "table {}: {} failed: {}",
                        quote(&plan.target),
                        step.what,
                        db.message()
                    )));
                }
                Err(e) => return Err(super::classify(e)),
            }
        }
        let statement = ran.expect("the plain statement is always tried");
        let took_ms = started.elapsed().as_millis() as u64;
        tracing::info!(table = %plan.target, took_ms, "schema change applied: {statement}");
        applied.push(Applied {
            target: plan.target.clone(),
            what: step.what.clone(),
            statement,
            took_ms,
        });
    }
    Ok(applied)
}

fn error_number(db: &dyn sqlx::error::DatabaseError) -> u16 {
    db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
        .map_or(0, |e| e.number())
}

/// ER_ALTER_OPERATION_NOT_SUPPORTED(_REASON), or ER_UNKNOWN_ALTER_ALGORITHM
/// (a server without INSTANT): that way cannot do this change here; a
/// slower one can.
fn not_supported_online(number: u16) -> bool {
    matches!(number, 1845 | 1846 | 1800)
}

/// Errors of the moment, not of the change (lock wait, deadlock, read-only
/// during a failover, too many connections, a killed query, shutdown):
/// retried like any unavailable database.
fn passing(number: u16) -> bool {
    matches!(
        number,
        1205 | 1213 | 1290 | 1836 | 1792 | 1040 | 1317 | 1053 | 1927 | 4031
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_plugin_sdk::schema::Type;

    fn orders() -> Output {
        Output::table("orders")
            .field("order_id", Type::text(64))
            .primary_key(["order_id"])
            .field("customer", Type::text(128))
            .field("total", Type::decimal(12, 2))
            .optional("status", Type::text(32))
            .index("by_customer", ["customer"])
    }

    /// The table `create_table` makes for `decl`, as the server reports it.
    fn live(decl: &Output, has_rows: bool) -> LiveTable {
        LiveTable {
            columns: decl
                .fields
                .iter()
                .map(|f| LiveColumn {
                    name: f.name.clone(),
                    column_type: column_type(f.ty).to_lowercase(),
                    nullable: f.nullable,
                    ..LiveColumn::default()
                })
                .collect(),
            primary_key: decl.primary_key.clone(),
            indexes: decl
                .indexes
                .iter()
                .map(|i| {
                    let index = LiveIndex {
                        columns: i.fields.clone(),
                        unique: i.unique,
                    };
                    (i.name.clone(), index)
                })
                .collect(),
            has_rows,
            partitions: vec![],
        }
    }

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 12, 3).unwrap()
    }

    fn plan_for(new: Output, has_rows: bool) -> Plan {
        plan(
            "orders",
            &new,
            Some(&live(&orders(), has_rows)),
            "utf8mb4_bin",
            today(),
        )
    }

    #[test]
    fn the_same_declaration_changes_nothing() {
        assert!(plan_for(orders(), true).is_empty());
    }

    #[test]
    fn a_missing_table_is_created() {
        let p = plan("orders", &orders(), None, "utf8mb4_bin", today());
        assert!(p.steps[0].statement.starts_with("CREATE TABLE"));
    }

    #[test]
    fn safe_changes_are_planned() {
        let new = Output::table("orders")
            .field("order_id", Type::text(64))
            .primary_key(["order_id"])
            .optional("customer", Type::text(256))
            .field("total", Type::decimal(14, 2))
            .optional("channel", Type::text(16))
            .index("by_customer", ["customer"])
            .index("by_channel", ["channel"]);
        let p = plan_for(new, true);
        assert!(p.refusals.is_empty(), "{p}");
        let statements: Vec<_> = p.steps.iter().map(|s| s.statement.as_str()).collect();
        assert_eq!(
            statements,
            [
                "ALTER TABLE `orders` MODIFY COLUMN `customer` VARCHAR(256) NULL",
                "ALTER TABLE `orders` MODIFY COLUMN `total` DECIMAL(14,2) NOT NULL",
                "ALTER TABLE `orders` ADD COLUMN `channel` VARCHAR(16) NULL",
                "ALTER TABLE `orders` ADD INDEX `by_channel` (`channel`)",
            ]
        );
        assert_eq!(p.notes.len(), 1, "`status` is kept: {p}");
    }

    #[test]
    fn changes_that_lose_data_are_refused() {
        let cases = [
            (
                Output::table("orders")
                    .field("order_id", Type::text(64))
                    .primary_key(["order_id"])
                    .field("customer", Type::text(16)),
                "field 'customer': the column is varchar(128) and the new declaration says text(16)",
            ),
            (
                Output::table("orders")
                    .field("order_id", Type::text(64))
                    .primary_key(["order_id"])
                    .field("total", Type::Integer),
                "field 'total': the column is decimal(12,2) and the new declaration says integer",
            ),
            (
                Output::table("orders")
                    .field("order_id", Type::text(64))
                    .field("customer", Type::text(128))
                    .primary_key(["order_id", "customer"]),
                "primary key: the table's is (order_id), the new declaration's is (order_id, customer)",
            ),
            (
                Output::table("orders")
                    .field("order_id", Type::text(64))
                    .primary_key(["order_id"])
                    .field("channel", Type::text(16)),
                "field 'channel': new and required (text(16)), but the table has rows",
            ),
        ];
        for (new, refusal) in cases {
            let p = plan_for(new, true);
            assert!(
                p.refusals.iter().any(|r| r.starts_with(refusal)),
                "expected '{refusal}' in:\n{p}"
            );
        }
    }

    #[test]
    fn a_required_column_may_be_added_to_an_empty_table() {
        let new = orders().field("channel", Type::text(16));
        let p = plan_for(new, false);
        assert!(p.refusals.is_empty(), "{p}");
        assert!(p.steps[0].statement.ends_with("VARCHAR(16) NOT NULL"));
    }

    #[test]
    fn a_wider_column_an_index_cannot_hold_and_text_to_json_are_refused() {
        let cases = [
            (
                replace(orders(), "customer", Type::text(1000)),
                "field 'customer': widening the column to text(1000) would make it too long for index `by_customer`",
            ),
            (
                replace(orders(), "customer", Type::Text(None)),
                "field 'customer': widening the column to text would make it too long",
            ),
            (orders().optional("notes", Type::Text(None)), ""),
        ];
        for (new, refusal) in cases {
            let p = plan_for(new, true);
            match refusal {
                "" => assert!(p.refusals.is_empty(), "{p}"),
                r => assert!(p.refusals.iter().any(|x| x.starts_with(r)), "{r}:\n{p}"),
            }
        }
        let mut live = live(&orders().optional("notes", Type::Json), true);
        live.columns.last_mut().unwrap().column_type = "longtext".into();
        let p = plan(
            "orders",
            &orders().optional("notes", Type::Json),
            Some(&live),
            "x",
            today(),
        );
        assert!(
            p.refusals[0].starts_with(
                "field 'notes': the column is longtext and the new declaration says json"
            ),
            "{p}"
        );
    }

    #[test]
    fn an_undeclared_column_the_server_fills_is_left_alone() {
        let mut live = live(&orders().field("source", Type::text(8)), true);
        live.columns.last_mut().unwrap().filled_by_server = true;
        let p = plan("orders", &orders(), Some(&live), "x", today());
        assert!(p.steps.is_empty(), "{p}");
        assert!(
            p.notes
                .iter()
                .any(|n| n.contains("`source` is no longer declared"))
        );
    }

    #[test]
    fn partitioning_is_kept_extended_or_refused() {
        let daily = || {
            Output::table("events")
                .field("id", Type::Integer)
                .field("at", Type::Timestamp)
                .primary_key(["id", "at"])
                .partition_by_day("at")
        };
        let created = plan("events", &daily(), None, "x", today());
        assert!(
            created.steps[0]
                .statement
                .contains("PARTITION BY RANGE COLUMNS (`at`)"),
            "{created}"
        );
        let mut table = live(&daily(), true);
        let clause =
            super::partitions::create_clause(daily().partitioning.as_ref().unwrap(), today());
        table.partitions = super::partitions::tests::live_of(&clause, "at");
        assert!(plan("events", &daily(), Some(&table), "x", today()).is_empty());
        let later = today() + chrono::Days::new(3);
        let extended = plan("events", &daily(), Some(&table), "x", later);
        assert_eq!(
            extended.steps[0].what,
            "add 3 partition(s) ahead, up to 2026-12-14 (by day of at)"
        );
        let changes = [
            (
                daily().partition_by_month("at"),
                "partitioning: the table is partitioned by day of at, the new declaration says partitioned by month of at",
            ),
            (
                daily().partition_by_hash("id", 4),
                "partitioning: the table is partitioned by day of at, the new declaration says partitioned by hash of id into 4",
            ),
            (
                Output {
                    partitioning: None,
                    ..daily()
                },
                "partitioning: the table is partitioned by day of at, the new declaration says not partitioned",
            ),
        ];
        for (new, refusal) in changes {
            let p = plan("events", &new, Some(&table), "x", today());
            assert!(p.refusals[0].starts_with(refusal), "{refusal}\n{p}");
        }
        let plain = live(&orders(), true);
        let p = plan(
            "orders",
            &orders().partition_by_hash("order_id", 8),
            Some(&plain),
            "x",
            today(),
        );
        assert!(
            p.refusals[0].starts_with(
                "partitioning: the table is not partitioned, the new declaration says partitioned by hash of order_id into 8"
            ),
            "{p}"
        );
    }

    fn replace(mut decl: Output, name: &str, ty: Type) -> Output {
        decl.fields.iter_mut().find(|f| f.name == name).unwrap().ty = ty;
        decl
    }

    #[test]
    fn live_types_are_read_as_the_server_spells_them() {
        assert_eq!(SqlType::of("bigint(20)"), SqlType::BigInt);
        assert_eq!(SqlType::of("varchar(64)"), SqlType::Varchar(64));
        assert_eq!(SqlType::of("decimal(12,2)"), SqlType::Decimal(12, 2));
        assert_ne!(SqlType::of("json"), SqlType::of("longtext"));
        assert!(SqlType::Decimal(12, 2).widens_to(SqlType::Decimal(14, 3)));
        assert!(!SqlType::Decimal(12, 2).widens_to(SqlType::Decimal(12, 3)));
    }
}
