//! Partitioned tables. A declaration by day or month becomes
//! `PARTITION BY RANGE COLUMNS(field)`: `p_before` for older rows, one
//! partition per day (`pYYYYMMDD`) or month (`pYYYYMM`) from the day the
//! table is made to some periods ahead, and `p_future` for the rest, so
//! every row has a partition. Maintenance keeps periods ahead (splitting
//! `p_future`) and, with a retention, drops whole periods past it. A
//! declaration by hash becomes `PARTITION BY KEY(field) PARTITIONS n`.

use super::ddl::quote;
use chrono::{Datelike, Months, NaiveDate};
use sluice_plugin_sdk::schema::Partitioning;

/// Periods kept ahead of today: a week of days, a quarter of months.
pub const DAYS_AHEAD: u32 = 7;
pub const MONTHS_AHEAD: u32 = 3;

/// One partition as `information_schema.PARTITIONS` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LivePartition {
    pub name: String,
    /// `RANGE COLUMNS`, `KEY`, `HASH`…
    pub method: String,
    /// The partitioning column or expression, unquoted.
    pub expression: String,
    /// The upper bound of a range partition: `'2026-12-04'`, `MAXVALUE`.
    pub bound: Option<String>,
}

/// How the live partitions split the table, in the SDK's words
/// (`by day of at`) when Sluice made them, else as the server says.
pub fn describe_live(partitions: &[LivePartition]) -> Option<String> {
    let first = partitions.first()?;
    let field = &first.expression;
    let dated = |len: usize| {
        partitions.iter().any(|p| {
            p.name.len() == len
                && p.name
                    .strip_prefix('p')
                    .is_some_and(|d| d.bytes().all(|b| b.is_ascii_digit()))
        })
    };
    Some(match first.method.as_str() {
        "RANGE COLUMNS" if dated(9) => Partitioning::ByDay(field.clone()).to_string(),
        "RANGE COLUMNS" if dated(7) => Partitioning::ByMonth(field.clone()).to_string(),
        "KEY" => Partitioning::ByHash {
            field: field.clone(),
            partitions: partitions.len() as u16,
        }
        .to_string(),
        method => format!("{method} of {field} into {}", partitions.len()),
    })
}

/// A range period: a day or a month.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Period {
    Day,
    Month,
}

impl Period {
    fn of(partitioning: &Partitioning) -> Option<Period> {
        match partitioning {
            Partitioning::ByDay(_) => Some(Period::Day),
            Partitioning::ByMonth(_) => Some(Period::Month),
            Partitioning::ByHash { .. } => None,
        }
    }

    /// The first day of the period holding `day`.
    fn start(self, day: NaiveDate) -> NaiveDate {
        match self {
            Period::Day => day,
            Period::Month => day.with_day(1).expect("day 1 exists"),
        }
    }

    fn next(self, start: NaiveDate) -> NaiveDate {
        match self {
            Period::Day => start.succ_opt().expect("not the end of time"),
            Period::Month => start + Months::new(1),
        }
    }

    fn name(self, start: NaiveDate) -> String {
        match self {
            Period::Day => start.format("p%Y%m%d").to_string(),
            Period::Month => start.format("p%Y%m").to_string(),
        }
    }

    /// The first period past those kept ahead of `today`.
    fn horizon(self, today: NaiveDate) -> NaiveDate {
        let ahead = match self {
            Period::Day => DAYS_AHEAD,
            Period::Month => MONTHS_AHEAD,
        };
        (0..=ahead).fold(self.start(today), |start, _| self.next(start))
    }

    /// `PARTITION pX VALUES LESS THAN ('end')` for each period from
    /// `from` up to `until` (exclusive).
    fn partitions(self, from: NaiveDate, until: NaiveDate) -> Vec<String> {
        let mut parts = Vec::new();
        let mut start = from;
        while start < until {
            let end = self.next(start);
            parts.push(format!(
                "PARTITION {} VALUES LESS THAN ('{end}')",
                self.name(start)
            ));
            start = end;
        }
        parts
    }
}

const FUTURE: &str = "PARTITION p_future VALUES LESS THAN (MAXVALUE)";

/// The `PARTITION BY` clause that ends `CREATE TABLE`, made `today`.
pub fn create_clause(partitioning: &Partitioning, today: NaiveDate) -> String {
    let column = quote(partitioning.field());
    let Some(period) = Period::of(partitioning) else {
        let Partitioning::ByHash { partitions, .. } = partitioning else {
            unreachable!("only hash has no period");
        };
        return format!("PARTITION BY KEY ({column}) PARTITIONS {partitions}");
    };
    let start = period.start(today);
    let mut parts = vec![format!("PARTITION p_before VALUES LESS THAN ('{start}')")];
    parts.extend(period.partitions(start, period.horizon(today)));
    parts.push(FUTURE.into());
    format!(
        "PARTITION BY RANGE COLUMNS ({column}) (\n  {}\n)",
        parts.join(",\n  ")
    )
}

/// The upper bound of a dated partition, `None` for `p_future`.
fn bound_day(partition: &LivePartition) -> Option<NaiveDate> {
    let bound = partition.bound.as_deref()?.trim_matches('\'');
    NaiveDate::parse_from_str(bound.get(..10)?, "%Y-%m-%d").ok()
}

/// The statement that splits `p_future` so periods up to the horizon exist,
/// if some are missing: (what, statement).
pub fn extend_ahead(
    table: &str,
    partitioning: &Partitioning,
    live: &[LivePartition],
    today: NaiveDate,
) -> Option<(String, String)> {
    let period = Period::of(partitioning)?;
    let last = live.iter().filter_map(bound_day).max()?;
    let horizon = period.horizon(today);
    if last >= horizon || !live.iter().any(|p| p.name == "p_future") {
        return None;
    }
    let mut parts = period.partitions(last, horizon);
    let added = parts.len();
    parts.push(FUTURE.into());
    Some((
        format!(
            "add {added} partition(s) ahead, up to {horizon} ({})",
            partitioning
        ),
        format!(
            "ALTER TABLE {} REORGANIZE PARTITION p_future INTO (\n  {}\n)",
            quote(table),
            parts.join(",\n  ")
        ),
    ))
}

/// The statement that drops the range partitions whose rows are all older
/// than `before` (their bound is at or before it), if any: (what, statement).
pub fn drop_expired(
    table: &str,
    live: &[LivePartition],
    before: NaiveDate,
) -> Option<(String, String)> {
    let mut expired: Vec<&str> = live
        .iter()
        .filter(|p| bound_day(p).is_some_and(|end| end <= before))
        .map(|p| p.name.as_str())
        .collect();
    // A range table keeps at least one partition below p_future.
    let dated = live.iter().filter(|p| bound_day(p).is_some()).count();
    expired.truncate(dated.saturating_sub(1));
    if expired.is_empty() {
        return None;
    }
    Some((
        format!(
            "drop {} partition(s) with rows older than {before} (retention): {}",
            expired.len(),
            expired.join(", ")
        ),
        format!(
            "ALTER TABLE {} DROP PARTITION {}",
            quote(table),
            expired.join(", ")
        ),
    ))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn day(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    /// The partitions a `create_clause` makes, as the server lists them.
    pub fn live_of(clause: &str, field: &str) -> Vec<LivePartition> {
        clause
            .lines()
            .filter_map(|l| {
                let l = l.trim().trim_end_matches(',');
                let rest = l.strip_prefix("PARTITION ")?;
                let (name, bound) = rest.split_once(" VALUES LESS THAN (")?;
                Some(LivePartition {
                    name: name.into(),
                    method: "RANGE COLUMNS".into(),
                    expression: field.into(),
                    bound: Some(bound.trim_end_matches(')').into()),
                })
            })
            .collect()
    }

    #[test]
    fn daily_partitions_cover_before_a_week_ahead_and_after() {
        let clause = create_clause(&Partitioning::ByDay("at".into()), day("2026-12-30"));
        assert!(clause.starts_with("PARTITION BY RANGE COLUMNS (`at`) (\n"));
        let live = live_of(&clause, "at");
        let names: Vec<_> = live.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "p_before",
                "p20261230",
                "p20261231",
                "p20270101",
                "p20270102",
                "p20270103",
                "p20270104",
                "p20270105",
                "p20270106",
                "p_future"
            ]
        );
        assert_eq!(live[0].bound.as_deref(), Some("'2026-12-30'"));
        assert_eq!(live[2].bound.as_deref(), Some("'2027-01-01'"));
        assert_eq!(describe_live(&live).unwrap(), "by day of at");
        // Up to date the same day; two days later, two more days.
        assert_eq!(
            extend_ahead(
                "t",
                &Partitioning::ByDay("at".into()),
                &live,
                day("2026-12-30")
            ),
            None
        );
        let (what, sql) = extend_ahead(
            "t",
            &Partitioning::ByDay("at".into()),
            &live,
            day("2027-01-01"),
        )
        .unwrap();
        assert_eq!(
            what,
            "add 2 partition(s) ahead, up to 2027-01-09 (by day of at)"
        );
        assert!(sql.starts_with("ALTER TABLE `t` REORGANIZE PARTITION p_future INTO ("));
        assert!(sql.contains("PARTITION p20270107 VALUES LESS THAN ('2027-01-08')"));
        assert!(sql.contains("PARTITION p20270108 VALUES LESS THAN ('2027-01-09')"));
        assert!(sql.ends_with("PARTITION p_future VALUES LESS THAN (MAXVALUE)\n)"));
    }

    #[test]
    fn monthly_partitions_and_hash() {
        let clause = create_clause(&Partitioning::ByMonth("at".into()), day("2026-11-15"));
        let live = live_of(&clause, "at");
        let names: Vec<_> = live.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "p_before", "p202611", "p202612", "p202701", "p202702", "p_future"
            ]
        );
        assert_eq!(live[0].bound.as_deref(), Some("'2026-11-01'"));
        assert_eq!(describe_live(&live).unwrap(), "by month of at");
        let hash = Partitioning::ByHash {
            field: "id".into(),
            partitions: 8,
        };
        assert_eq!(
            create_clause(&hash, day("2026-11-15")),
            "PARTITION BY KEY (`id`) PARTITIONS 8"
        );
        assert_eq!(extend_ahead("t", &hash, &[], day("2026-11-15")), None);
    }

    #[test]
    fn retention_drops_whole_periods_before_the_cutoff_and_keeps_one() {
        let clause = create_clause(&Partitioning::ByDay("at".into()), day("2026-12-01"));
        let live = live_of(&clause, "at");
        assert_eq!(drop_expired("t", &live, day("2026-11-30")), None);
        let (what, sql) = drop_expired("t", &live, day("2026-12-03")).unwrap();
        assert_eq!(
            what,
            "drop 3 partition(s) with rows older than 2026-12-03 (retention): p_before, p20261201, p20261202"
        );
        assert_eq!(
            sql,
            "ALTER TABLE `t` DROP PARTITION p_before, p20261201, p20261202"
        );
        // Never every dated partition: the newest one stays.
        let (_, sql) = drop_expired("t", &live, day("2030-01-01")).unwrap();
        assert!(sql.ends_with("p20261207"), "{sql}");
        assert!(!sql.contains("p20261208"), "the newest stays: {sql}");
        // By month: a month goes once all of it is past the cutoff.
        let monthly = live_of(
            &create_clause(&Partitioning::ByMonth("at".into()), day("2026-11-15")),
            "at",
        );
        let (_, sql) = drop_expired("t", &monthly, day("2026-12-01")).unwrap();
        assert_eq!(sql, "ALTER TABLE `t` DROP PARTITION p_before, p202611");
        assert_eq!(
            drop_expired("t", &monthly, day("2026-11-30")).map(|d| d.1),
            Some("ALTER TABLE `t` DROP PARTITION p_before".into())
        );
    }
}
