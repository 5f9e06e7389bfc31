//! When a pipeline's runs are due: continuously, every interval, or by cron.

use super::ScheduleConfig;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};
use std::time::Duration;

/// Longest interval, deadline or backoff accepted (keeps time arithmetic far
/// from overflow).
pub const MAX_INTERVAL: Duration = Duration::from_secs(366 * 86_400);

#[derive(Debug, Clone)]
pub enum Schedule {
    /// Back-to-back batches; the ledger records rolling runs.
    Continuous,
    Every(Duration),
    Cron {
        cron: Box<Cron>,
        timezone: Tz,
    },
}

impl Schedule {
    /// Parses `[pipelines.schedule]`. Errors give the key under `schedule`
    /// (e.g. `.cron`) and what is wrong.
    pub fn from_config(config: &ScheduleConfig) -> Result<Schedule, (String, String)> {
        let err = |key: &str, msg: String| Err((key.to_string(), msg));
        if config.deadline.is_some_and(|d| d > MAX_INTERVAL) {
            return err(".deadline", "must be at most 366 days".into());
        }
        if config.timezone.is_some() && config.cron.is_none() {
            return err(".timezone", "only applies to a `cron` schedule".into());
        }
        match (&config.every, &config.cron) {
            (Some(_), Some(_)) => err(
                "",
                "set either `every` or `cron`, not both (neither means continuous)".into(),
            ),
            (Some(every), None) if every.is_zero() || *every > MAX_INTERVAL => err(
                ".every",
                "must be longer than zero and at most 366 days".into(),
            ),
            (Some(every), None) => Ok(Schedule::Every(*every)),
            (None, Some(expr)) => {
                let cron = CronParser::builder()
                    .seconds(Seconds::Optional)
                    .build()
                    .parse(expr)
                    .map_err(|e| {
                        (
                            ".cron".to_string(),
                            format!("'{expr}' is not a cron expression (\"MIN HOUR DAY MONTH WEEKDAY\", optionally with SECONDS first): {e}"),
                        )
                    })?;
                let timezone = match &config.timezone {
                    None => Tz::UTC,
                    Some(name) => name.parse().map_err(|_| {
                        (
                            ".timezone".to_string(),
                            format!(
                                "'{name}' is not an IANA time zone like \"Europe/Paris\" or \"UTC\""
                            ),
                        )
                    })?,
                };
                Ok(Schedule::Cron {
                    cron: Box::new(cron),
                    timezone,
                })
            }
            (None, None) => Ok(Schedule::Continuous),
        }
    }

    pub fn is_continuous(&self) -> bool {
        matches!(self, Schedule::Continuous)
    }

    /// The first tick strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Continuous => None,
            Schedule::Every(every) => Some(after + chrono::Duration::from_std(*every).ok()?),
            Schedule::Cron { cron, timezone } => cron
                .find_next_occurrence(&after.with_timezone(timezone), false)
                .ok()
                .map(|t| t.with_timezone(&Utc)),
        }
    }

    /// Ticks that fell after `last` and up to `now`, and the latest of them.
    /// An interval counts from the last tick, so a host that was down for
    /// 3.5 intervals missed 3 ticks.
    pub fn missed(&self, last: DateTime<Utc>, now: DateTime<Utc>) -> (u64, Option<DateTime<Utc>>) {
        match self {
            Schedule::Continuous => (0, None),
            Schedule::Every(every) => {
                let every_ms = every.as_millis().max(1) as i64;
                let n = (now - last).num_milliseconds().max(0) / every_ms;
                let latest = (n > 0).then(|| last + chrono::Duration::milliseconds(n * every_ms));
                (n as u64, latest)
            }
            Schedule::Cron { cron, timezone } => {
                let latest = cron
                    .find_previous_occurrence(&now.with_timezone(timezone), true)
                    .ok()
                    .map(|t| t.with_timezone(&Utc))
                    .filter(|t| *t > last);
                // Counting stops at a bound; the latest tick is exact anyway.
                let mut count = 0;
                let mut t = last;
                while let Some(next) = self.next_after(t).filter(|n| *n <= now) {
                    count += 1;
                    t = next;
                    if count >= 10_000 {
                        break;
                    }
                }
                (count, latest)
            }
        }
    }

    /// Human description for `sluice pipelines`.
    pub fn describe(&self) -> String {
        match self {
            Schedule::Continuous => "continuous".into(),
            Schedule::Every(d) => format!("every {}", humantime::format_duration(*d)),
            Schedule::Cron { cron, timezone } => format!("cron '{}' ({timezone})", cron.pattern),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml: &str) -> Result<Schedule, (String, String)> {
        let config: ScheduleConfig = toml::from_str(toml).unwrap();
        Schedule::from_config(&config)
    }

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn default_is_continuous() {
        assert!(parse("").unwrap().is_continuous());
    }

    #[test]
    fn interval_ticks_and_missed_ticks() {
        let s = parse("every = \"5m\"").unwrap();
        let t = at("2026-11-30T10:00:00Z");
        assert_eq!(s.next_after(t), Some(at("2026-11-30T10:05:00Z")));
        let (n, latest) = s.missed(t, at("2026-11-30T10:17:30Z"));
        assert_eq!((n, latest), (3, Some(at("2026-11-30T10:15:00Z"))));
        // A year down with a 1-second interval: exact, not iterated.
        let every_s = parse("every = \"1s\"").unwrap();
        let (n, latest) = every_s.missed(t, at("2027-11-30T10:00:00Z"));
        assert_eq!(
            (n, latest),
            (365 * 86_400, Some(at("2027-11-30T10:00:00Z")))
        );
        let cron = parse("cron = \"0 * * * *\"").unwrap();
        let (n, latest) = cron.missed(t, at("2026-11-30T13:30:00Z"));
        assert_eq!((n, latest), (3, Some(at("2026-11-30T13:00:00Z"))));
        assert_eq!(s.missed(t, at("2026-11-30T10:04:59Z")), (0, None));
    }

    #[test]
    fn cron_in_a_time_zone() {
        // 02:30 every day in Paris is 01:30 UTC in winter.
        let s = parse("cron = \"30 2 * * *\"\ntimezone = \"Europe/Paris\"").unwrap();
        assert_eq!(
            s.next_after(at("2026-11-30T10:00:00Z")),
            Some(at("2026-12-01T01:30:00Z"))
        );
        let every_2s = parse("cron = \"*/2 * * * * *\"").unwrap();
        assert_eq!(
            every_2s.next_after(at("2026-11-30T10:00:01Z")),
            Some(at("2026-11-30T10:00:02Z"))
        );
    }

    #[test]
    fn errors_name_the_key() {
        let (key, msg) = parse("cron = \"61 * * * *\"").unwrap_err();
        assert_eq!(key, ".cron");
        assert!(
            msg.contains("'61 * * * *' is not a cron expression"),
            "{msg}"
        );
        let (key, _) = parse("cron = \"* * * * *\"\ntimezone = \"Mars/Base\"").unwrap_err();
        assert_eq!(key, ".timezone");
        let (key, msg) = parse("cron = \"* * * * *\"\nevery = \"1m\"").unwrap_err();
        assert_eq!(key, "");
        assert!(msg.contains("not both"), "{msg}");
        let (key, _) = parse("every = \"0s\"").unwrap_err();
        assert_eq!(key, ".every");
    }
}
