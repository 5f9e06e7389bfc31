//! What running a canary beside the active version found: per batch
//! (`BatchDiff`) and in total (`Report`, what the API and CLI show).

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
    /// The schema changes promotion will apply, in words (nothing is
    /// applied before).
    #[serde(default)]
    pub schema_plan: Vec<String>,
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
            schema_plan: vec![],
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
        if !self.schema_plan.is_empty() {
            s.push_str(&format!("; on promotion: {}", self.schema_plan.join("; ")));
        }
        s
    }
}
