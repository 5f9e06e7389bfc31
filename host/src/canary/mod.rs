//! Canary reload: a new plugin version first runs in shadow on the same
//! batches as the active one. Its outputs are compared with what was
//! written, never written themselves, and summarised here; the version is
//! promoted after `canary_batches` clean batches in a row, or by hand.

use crate::router::Routed;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// How many differing rows a report keeps as examples.
pub const MAX_SAMPLES: usize = 5;

/// One batch run by both versions.
#[derive(Debug, Default)]
pub struct BatchDiff {
    pub records: usize,
    /// Rows per output: (active, canary).
    pub outputs: BTreeMap<String, (u64, u64)>,
    /// Dead letters: (active, canary).
    pub dead_letters: (u64, u64),
    pub differing_rows: u64,
    pub samples: Vec<Difference>,
    /// The canary's call failed (trap, limit, error) or its outputs cannot
    /// be routed.
    pub failure: Option<String>,
}

impl BatchDiff {
    /// The canary ran and sent no more records to dead letters than the
    /// active version. Different values are reported, not held against it:
    /// changing them is usually why a new version exists.
    pub fn clean(&self) -> bool {
        self.failure.is_none() && self.dead_letters.1 <= self.dead_letters.0
    }

    pub fn failed(records: usize, reason: String) -> Self {
        BatchDiff {
            records,
            failure: Some(reason),
            ..Default::default()
        }
    }
}

/// A row the two versions disagree on; `None`: that version has no such row.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Difference {
    pub output: String,
    pub id: Value,
    pub active: Option<Value>,
    pub canary: Option<Value>,
}

/// Compares the active version's routed batch with the canary's.
pub fn compare(records: usize, active: &Routed, canary: &Routed) -> BatchDiff {
    let mut diff = BatchDiff {
        records,
        dead_letters: (
            active.dead_letters.len() as u64,
            canary.dead_letters.len() as u64,
        ),
        ..Default::default()
    };
    let outputs: std::collections::BTreeSet<&String> =
        active.rows.keys().chain(canary.rows.keys()).collect();
    for output in outputs {
        let by_id = |routed: &Routed| -> BTreeMap<String, Value> {
            routed.rows.get(output).map_or_else(BTreeMap::new, |rows| {
                rows.iter()
                    .map(|r| (r.id.to_string(), Value::Object(r.fields.clone())))
                    .collect()
            })
        };
        let (a, c) = (by_id(active), by_id(canary));
        diff.outputs
            .insert(output.clone(), (a.len() as u64, c.len() as u64));
        let ids: std::collections::BTreeSet<&String> = a.keys().chain(c.keys()).collect();
        for id in ids {
            let (old, new) = (a.get(id), c.get(id));
            if old == new {
                continue;
            }
            diff.differing_rows += 1;
            if diff.samples.len() < MAX_SAMPLES {
                diff.samples.push(Difference {
                    output: output.clone(),
                    id: serde_json::from_str(id).unwrap_or(Value::Null),
                    active: old.cloned(),
                    canary: new.cloned(),
                });
            }
        }
    }
    diff
}

/// Everything a canary did so far.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub version: String,
    pub hash: String,
    pub since: chrono::DateTime<chrono::Utc>,
    pub batches: u64,
    pub clean_batches: u64,
    /// Clean batches in a row, up to the latest: what promotion counts.
    pub clean_streak: u64,
    pub records: u64,
    /// Rows per output: (active, canary).
    pub outputs: BTreeMap<String, (u64, u64)>,
    /// Dead letters: (active, canary).
    pub dead_letters: (u64, u64),
    pub differing_rows: u64,
    pub samples: Vec<Difference>,
    pub last_failure: Option<String>,
}

impl Report {
    pub fn new(version: &str, hash: &str) -> Self {
        Report {
            version: version.into(),
            hash: hash.into(),
            since: chrono::Utc::now(),
            batches: 0,
            clean_batches: 0,
            clean_streak: 0,
            records: 0,
            outputs: BTreeMap::new(),
            dead_letters: (0, 0),
            differing_rows: 0,
            samples: vec![],
            last_failure: None,
        }
    }

    pub fn add(&mut self, diff: BatchDiff) {
        let clean = diff.clean();
        self.batches += 1;
        self.records += diff.records as u64;
        if clean {
            self.clean_batches += 1;
            self.clean_streak += 1;
        } else {
            self.clean_streak = 0;
            self.last_failure = Some(diff.failure.clone().unwrap_or_else(|| {
                format!(
                    "{} dead letters from the canary against {} from the active version",
                    diff.dead_letters.1, diff.dead_letters.0
                )
            }));
        }
        for (output, (a, c)) in diff.outputs {
            let e = self.outputs.entry(output).or_default();
            e.0 += a;
            e.1 += c;
        }
        self.dead_letters.0 += diff.dead_letters.0;
        self.dead_letters.1 += diff.dead_letters.1;
        self.differing_rows += diff.differing_rows;
        let room = MAX_SAMPLES.saturating_sub(self.samples.len());
        self.samples.extend(diff.samples.into_iter().take(room));
    }

    /// One line: "4 batches (3 clean in a row), 200 records, 37 rows differ".
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} batches ({} clean in a row), {} records, {} rows differ, dead letters {} -> {}",
            self.batches,
            self.clean_streak,
            self.records,
            self.differing_rows,
            self.dead_letters.0,
            self.dead_letters.1
        );
        if let Some(f) = &self.last_failure {
            s.push_str(&format!("; last problem: {f}"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::Row;
    use serde_json::json;

    fn routed(rows: &[(&str, Value)], dead: usize) -> Routed {
        let mut r = Routed::default();
        for (id, fields) in rows {
            let Value::Object(fields) = fields.clone() else {
                panic!()
            };
            r.rows.entry("orders".into()).or_default().push(Row {
                id: json!(id),
                fields,
            });
        }
        r.dead_letters = (0..dead)
            .map(|i| Row {
                id: json!(i),
                fields: Default::default(),
            })
            .collect();
        r
    }

    #[test]
    fn compare_finds_changed_missing_and_extra_rows() {
        let active = routed(
            &[
                ("a", json!({"s": "paid"})),
                ("b", json!({"s": "new"})),
                ("c", json!({"s": "x"})),
            ],
            1,
        );
        let canary = routed(
            &[
                ("a", json!({"s": "PAID"})),
                ("b", json!({"s": "new"})),
                ("d", json!({"s": "y"})),
            ],
            1,
        );
        let diff = compare(4, &active, &canary);
        assert_eq!(diff.outputs["orders"], (3, 3));
        assert_eq!(diff.differing_rows, 3, "a changed, c missing, d extra");
        assert_eq!(diff.samples[0].canary, Some(json!({"s": "PAID"})));
        assert!(diff.clean());

        let mut report = Report::new("2.0.0", "abc");
        report.add(diff);
        report.add(compare(4, &active, &routed(&[], 4)));
        assert_eq!(
            (report.batches, report.clean_batches, report.clean_streak),
            (2, 1, 0)
        );
        assert!(
            report
                .summary()
                .contains("4 dead letters from the canary against 1")
        );
        report.add(BatchDiff::failed(4, "trap".into()));
        report.add(compare(4, &active, &active));
        assert_eq!((report.clean_streak, report.records), (1, 16));
        assert_eq!(report.samples.len(), MAX_SAMPLES.min(3 + 3));
    }
}
