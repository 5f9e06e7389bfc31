//! A sink held in memory. `sluice validate` resolves routes against it
//! without connecting anywhere, and unit tests use it as the double of a
//! database: upserts by key, transactions with stored offsets, and refusals
//! or outages on demand. Never used to run a pipeline.

use super::{DeadLetterStore, Sink, SinkError, SinkTransaction, Transactional};
use crate::model::{Applied, Offsets, Partition, Plan, Row};
use serde_json::{Map, Value};
use sluice_plugin_sdk::schema::Output;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

#[derive(Default, Clone)]
pub struct MemorySink {
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    /// target -> key (compact JSON) -> row.
    targets: BTreeMap<String, BTreeMap<String, Row>>,
    /// group -> stored offsets.
    offsets: BTreeMap<String, Offsets>,
    /// Keys (compact JSON) whose rows the "database" refuses.
    refused: BTreeSet<String>,
    /// This many writes fail as if the database were down.
    outages: u32,
    /// Write calls, refused and failed ones included.
    write_calls: u32,
}

impl MemorySink {
    pub fn new() -> Self {
        Self::default()
    }

    /// Rows with this key are refused (as a constraint would).
    pub fn refuse(&self, key: &Value) {
        self.state.lock().unwrap().refused.insert(key.to_string());
    }

    /// The next `n` writes fail as if the database were unreachable.
    pub fn fail_next_writes(&self, n: u32) {
        self.state.lock().unwrap().outages = n;
    }

    /// The rows of `target`, by key.
    pub fn rows(&self, target: &str) -> Vec<Row> {
        let state = self.state.lock().unwrap();
        state
            .targets
            .get(target)
            .map_or_else(Vec::new, |rows| rows.values().cloned().collect())
    }

    pub fn write_calls(&self) -> u32 {
        self.state.lock().unwrap().write_calls
    }

    /// Stores `group`'s offsets as another writer would.
    pub fn store_offsets(&self, group: &str, offsets: Offsets) {
        self.state
            .lock()
            .unwrap()
            .offsets
            .insert(group.into(), offsets);
    }

    pub fn stored(&self, group: &str) -> Offsets {
        let state = self.state.lock().unwrap();
        state.offsets.get(group).cloned().unwrap_or_default()
    }
}

impl State {
    /// A write as a database does it: all rows or none.
    fn check(&mut self, rows: &[Row]) -> Result<(), SinkError> {
        self.write_calls += 1;
        if self.outages > 0 {
            self.outages -= 1;
            return Err(SinkError::Unavailable("memory sink: down".into()));
        }
        match rows
            .iter()
            .find(|r| self.refused.contains(&r.id.to_string()))
        {
            Some(row) => Err(SinkError::Refused(format!("key {} refused", row.id))),
            None => Ok(()),
        }
    }

    fn upsert(&mut self, target: &str, rows: &[Row]) {
        let table = self.targets.entry(target.into()).or_default();
        for row in rows {
            if row.delete {
                table.remove(&row.id.to_string());
            } else {
                table.insert(row.id.to_string(), row.clone());
            }
        }
    }
}

#[async_trait::async_trait]
impl Sink for MemorySink {
    async fn healthcheck(&self) -> Result<(), SinkError> {
        Ok(())
    }

    /// Memory has no schema: nothing to change.
    async fn plan(&self, target: &str, _decl: &Output) -> Result<Plan, SinkError> {
        Ok(Plan::new(target))
    }

    async fn describe(&self, target: &str) -> Result<Vec<String>, SinkError> {
        let rows = self.rows(target).len();
        Ok(vec![format!("{target}: {rows} rows in memory")])
    }

    async fn apply(&self, _plan: &Plan) -> Result<Vec<Applied>, SinkError> {
        Ok(vec![])
    }

    async fn write(&self, target: &str, _decl: &Output, rows: &[Row]) -> Result<(), SinkError> {
        let mut state = self.state.lock().unwrap();
        state.check(rows)?;
        state.upsert(target, rows);
        Ok(())
    }

    fn transactional(&self) -> Option<&dyn Transactional> {
        Some(self)
    }
}

#[async_trait::async_trait]
impl DeadLetterStore for MemorySink {
    async fn read_dead_letters(
        &self,
        target: &str,
        _decl: &Output,
        pipeline: &str,
        ids: &[String],
        limit: u32,
    ) -> Result<Vec<Map<String, Value>>, SinkError> {
        let mut letters: Vec<Map<String, Value>> = self
            .rows(target)
            .into_iter()
            .filter(|r| r.fields.get("pipeline") == Some(&Value::from(pipeline)))
            .filter(|r| ids.is_empty() || ids.iter().any(|id| r.id == id.as_str()))
            .map(|r| r.fields)
            .collect();
        let failed_at = |m: &Map<String, Value>| m.get("failed_at").map(Value::to_string);
        letters.sort_by_key(|m| std::cmp::Reverse(failed_at(m)));
        letters.truncate(limit as usize);
        Ok(letters)
    }

    async fn delete(&self, target: &str, _decl: &Output, ids: &[String]) -> Result<(), SinkError> {
        let mut state = self.state.lock().unwrap();
        if let Some(table) = state.targets.get_mut(target) {
            for id in ids {
                table.remove(&Value::from(id.as_str()).to_string());
            }
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Transactional for MemorySink {
    async fn stored_offsets(
        &self,
        group: &str,
        partitions: &[Partition],
    ) -> Result<Offsets, SinkError> {
        let stored = self.stored(group);
        Ok(stored
            .into_iter()
            .filter(|(p, _)| partitions.contains(p))
            .collect())
    }

    async fn begin(
        &self,
        group: &str,
        partitions: &[Partition],
    ) -> Result<(Box<dyn SinkTransaction>, Offsets), SinkError> {
        let stored = self.stored_offsets(group, partitions).await?;
        let tx = MemoryTransaction {
            sink: self.clone(),
            group: group.into(),
            writes: Vec::new(),
        };
        Ok((Box::new(tx), stored))
    }
}

struct MemoryTransaction {
    sink: MemorySink,
    group: String,
    writes: Vec<(String, Vec<Row>)>,
}

#[async_trait::async_trait]
impl SinkTransaction for MemoryTransaction {
    async fn write(&mut self, target: &str, _decl: &Output, rows: &[Row]) -> Result<(), SinkError> {
        self.sink.state.lock().unwrap().check(rows)?;
        self.writes.push((target.into(), rows.to_vec()));
        Ok(())
    }

    async fn commit(self: Box<Self>, next: &Offsets) -> Result<(), SinkError> {
        let mut state = self.sink.state.lock().unwrap();
        for (target, rows) in &self.writes {
            state.upsert(target, rows);
        }
        let stored = state.offsets.entry(self.group.clone()).or_default();
        stored.extend(next.iter().map(|(p, o)| (p.clone(), *o)));
        Ok(())
    }
}
