//! What it takes to make a table or collection match an output's
//! declaration: a migration plan, made by the sink from what exists, and
//! what applying it did.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The changes a sink would make to one table or collection, or why it
/// will not: a plan with refusals is never applied.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// The table or collection.
    pub target: String,
    /// Run in order; empty when the target already matches.
    pub steps: Vec<Step>,
    /// Changes that would lose or rewrite data, each with what to do instead.
    pub refusals: Vec<String>,
    /// What is kept as it is on purpose (nothing is dropped automatically).
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// In words: "add column `channel`".
    pub what: String,
    /// The statement (SQL DDL, or the MongoDB command as JSON).
    pub statement: String,
    /// Online-DDL clauses to try in order before the plain statement
    /// (`ALGORITHM=INSTANT`, then `ALGORITHM=INPLACE, LOCK=NONE`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub online: Vec<String>,
}

/// One step as it ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    pub target: String,
    pub what: String,
    /// The statement exactly as run, with the clause that worked.
    pub statement: String,
    pub took_ms: u64,
}

impl Plan {
    pub fn new(target: &str) -> Self {
        Plan {
            target: target.into(),
            ..Plan::default()
        }
    }

    pub fn step(&mut self, what: impl Into<String>, statement: impl Into<String>) -> &mut Step {
        self.steps.push(Step {
            what: what.into(),
            statement: statement.into(),
            online: Vec::new(),
        });
        self.steps.last_mut().unwrap()
    }

    pub fn refuse(&mut self, why: impl Into<String>) {
        self.refusals.push(why.into());
    }

    pub fn note(&mut self, what: impl Into<String>) {
        self.notes.push(what.into());
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty() && self.refusals.is_empty()
    }
}

impl Step {
    /// Clauses to try first, e.g. `["ALGORITHM=INSTANT"]`.
    pub fn online(&mut self, clauses: &[&str]) {
        self.online = clauses.iter().map(|c| c.to_string()).collect();
    }
}

impl fmt::Display for Plan {
    /// What `sluice schema plan` prints for one target.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.refusals.is_empty() && self.steps.is_empty() {
            writeln!(f, "{}: up to date", self.target)?;
        }
        for refusal in &self.refusals {
            writeln!(f, "{}: REFUSED: {refusal}", self.target)?;
        }
        if self.refusals.is_empty() {
            for step in &self.steps {
                writeln!(f, "{}: {}", self.target, step.what)?;
                writeln!(f, "    {}", step.statement)?;
            }
        }
        for note in &self.notes {
            writeln!(f, "{}: kept: {note}", self.target)?;
        }
        Ok(())
    }
}
