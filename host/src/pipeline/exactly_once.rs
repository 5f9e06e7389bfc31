//! Offsets in the sink's transaction (`offsets = "sink"`): what the sink's
//! stored offsets say is written is skipped, and the rest commits in one
//! transaction with the new offsets, provided nobody moved them since they
//! were read.

use super::writer::{OnSinkError, Refused, Writes, retry_sink, write_all};
use super::{Pipeline, Stats};
use crate::model::{Batch, BatchDone, Offsets, Partition, SourceRecord};
use crate::router::{DeadLetterContext, Routed, Routes};
use crate::runtime::PluginVersion;
use crate::sink::{SinkError, Transactional};
use sluice_plugin_sdk::abi::Record;
use std::sync::Arc;
use tokio::sync::watch;

impl Pipeline {
    /// Writes `batch` exactly once; `None` if the host shut down while a
    /// sink error was being retried.
    pub(super) async fn write_exactly_once(
        &mut self,
        batch: &Batch,
        version: &Arc<PluginVersion>,
        routes: &Routes,
        shutdown: &mut watch::Receiver<bool>,
        on_error: OnSinkError,
    ) -> anyhow::Result<Option<BatchDone>> {
        let dead_letters = &routes.dead_letter;
        let store = dead_letters.sink.transactional().ok_or_else(|| {
            anyhow::anyhow!(
                "pipeline '{}': offsets in the sink, but sink '{}' has no transactions",
                self.config.name,
                dead_letters.sink_name
            )
        })?;
        let group = self.config.group_id();
        let batch_next = batch.next_offsets();
        let partitions: Vec<Partition> = batch_next.keys().cloned().collect();
        loop {
            let what = format!("pipeline '{}': reading offsets", self.config.name);
            let read = || store.stored_offsets(&group, &partitions);
            let Some(stored) = retry_sink(&self.stats, shutdown, on_error, &what, read).await?
            else {
                return Ok(None);
            };
            let todo = unwritten(batch, &stored);
            let skipped = batch.len() - todo.len();
            if skipped > 0 {
                tracing::info!(pipeline = %self.config.name, skipped,
                    "skipping records already written (offsets stored in sink '{}')", dead_letters.sink_name);
            }
            let mut done = if todo.is_empty() {
                BatchDone::default()
            } else {
                let lock = OffsetLock {
                    store,
                    group: &group,
                    partitions: &partitions,
                    stored: &stored,
                    next: never_back(&batch_next, &stored),
                };
                match self
                    .write_locked(&todo, version, routes, shutdown, on_error, lock)
                    .await?
                {
                    Locked::ShutDown => return Ok(None),
                    Locked::Written(done) => done,
                    Locked::Moved => {
                        tracing::warn!(pipeline = %self.config.name, ?partitions,
                            "another consumer of the group wrote these partitions meanwhile; reading their offsets again");
                        continue;
                    }
                }
            };
            Stats::add(&self.stats.already_written, skipped);
            done.already_written = skipped;
            return Ok(Some(done));
        }
    }

    /// Transforms `records` and writes the outputs in one transaction that
    /// also stores the offsets, if they are still as read.
    async fn write_locked(
        &mut self,
        records: &[&SourceRecord],
        version: &Arc<PluginVersion>,
        routes: &Routes,
        shutdown: &mut watch::Receiver<bool>,
        on_error: OnSinkError,
        lock: OffsetLock<'_>,
    ) -> anyhow::Result<Locked> {
        let t = self.transform(records, version, routes).await?;
        let what = format!("pipeline '{}': writing batch", self.config.name);
        let ctx = self.dead_letter_context(version);
        let write = || write_in_transaction(&lock, routes, &t.routed, &t.records, &ctx);
        Ok(
            match retry_sink(&self.stats, shutdown, on_error, &what, write).await? {
                None => Locked::ShutDown,
                Some(None) => Locked::Moved,
                Some(Some(refused)) => Locked::Written(self.finish(t, refused, version).await),
            },
        )
    }
}

/// Writes a routed batch in one transaction that also stores the offsets,
/// if they are still as read; `None` (nothing written) if another writer
/// moved them. Returns what the database refused.
async fn write_in_transaction(
    lock: &OffsetLock<'_>,
    routes: &Routes,
    routed: &Routed,
    records: &[Record<'_>],
    ctx: &DeadLetterContext<'_>,
) -> Result<Option<Vec<Refused>>, SinkError> {
    let (mut tx, locked) = lock.store.begin(lock.group, lock.partitions).await?;
    if locked != *lock.stored {
        return Ok(None);
    }
    let writes = &mut Writes::Transaction(&mut *tx);
    let refused = write_all(routes, routed, records, ctx, writes).await?;
    tx.commit(&lock.next).await?;
    Ok(Some(refused))
}

/// The batch commits with its offsets if they are still `stored` when the
/// transaction locks them.
struct OffsetLock<'a> {
    store: &'a dyn Transactional,
    group: &'a str,
    partitions: &'a [Partition],
    stored: &'a Offsets,
    next: Offsets,
}

/// What a locked write did.
enum Locked {
    Written(BatchDone),
    /// Another consumer moved the offsets since they were read; nothing
    /// was written.
    Moved,
    /// The host shut down while a sink error was being retried.
    ShutDown,
}

/// The records of `batch` at or past the stored offsets.
fn unwritten<'b>(batch: &'b Batch, stored: &Offsets) -> Vec<&'b SourceRecord> {
    batch
        .records
        .iter()
        .filter(|r| {
            stored
                .get(&r.partition())
                .is_none_or(|next| r.offset >= *next)
        })
        .collect()
}

/// A batch behind the stored offsets must not move them back.
fn never_back(batch_next: &Offsets, stored: &Offsets) -> Offsets {
    let mut next = batch_next.clone();
    for (partition, offset) in &mut next {
        *offset = (*offset).max(stored.get(partition).copied().unwrap_or(0));
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(offsets: &[(i32, i64)]) -> Batch {
        Batch {
            records: offsets
                .iter()
                .map(|&(partition, offset)| SourceRecord {
                    topic: "t".into(),
                    partition,
                    offset,
                    ..Default::default()
                })
                .collect(),
        }
    }

    fn offsets(of: &[(i32, i64)]) -> Offsets {
        of.iter().map(|&(p, o)| (("t".to_string(), p), o)).collect()
    }

    #[test]
    fn records_below_the_stored_offsets_are_skipped() {
        let b = batch(&[(0, 5), (0, 6), (0, 7), (1, 0), (1, 1)]);
        let todo = unwritten(&b, &offsets(&[(0, 7)]));
        let at: Vec<(i32, i64)> = todo.iter().map(|r| (r.partition, r.offset)).collect();
        assert_eq!(at, [(0, 7), (1, 0), (1, 1)], "partition 1 was never stored");
        assert!(unwritten(&b, &offsets(&[(0, 8), (1, 2)])).is_empty());
    }

    #[test]
    fn a_batch_behind_the_stored_offsets_never_moves_them_back() {
        let b = batch(&[(0, 5), (1, 9)]);
        let next = never_back(&b.next_offsets(), &offsets(&[(0, 20), (1, 3)]));
        assert_eq!(next, offsets(&[(0, 20), (1, 10)]));
    }
}

#[cfg(test)]
mod transaction_tests {
    use super::*;
    use crate::router::testing::{config, context, memory_sinks, orders, plugin, record};

    #[tokio::test]
    async fn a_batch_commits_with_its_offsets_unless_another_writer_moved_them() {
        let config = config(
            "",
            "offsets = \"sink\"\ndead_letter = { sink = \"rows\" }\nroutes.events = { sink = \"rows\" }",
        );
        let (sinks, memory) = memory_sinks(&config);
        let routes =
            Routes::for_declaration(&config, &config.pipelines[0], "orders", &plugin(), &sinks)
                .unwrap();
        let records: Vec<_> = (0..3).map(record).collect();
        let routed = crate::router::route(
            &records,
            orders(&[(0, "a", 1), (1, "b", 2), (2, "c", 3)]),
            &routes,
            &context(),
        );
        let store = &memory["rows"];
        let partitions = vec![("t".to_string(), 0)];
        let read = Offsets::new();
        let lock = OffsetLock {
            store,
            group: "g",
            partitions: &partitions,
            stored: &read,
            next: Offsets::from([(("t".to_string(), 0), 3)]),
        };

        // Another consumer of the group committed meanwhile: nothing is written.
        store.store_offsets("g", Offsets::from([(("t".to_string(), 0), 2)]));
        let moved = write_in_transaction(&lock, &routes, &routed, &records, &context()).await;
        assert_eq!(moved.unwrap(), None);
        assert!(store.rows("orders").is_empty());

        // As read: rows and offsets commit together.
        let as_read = store.stored("g");
        let lock = OffsetLock {
            stored: &as_read,
            ..lock
        };
        let done = write_in_transaction(&lock, &routes, &routed, &records, &context()).await;
        assert_eq!(done.unwrap(), Some(vec![]));
        assert_eq!(store.rows("orders").len(), 3);
        assert_eq!(
            store.stored("g"),
            Offsets::from([(("t".to_string(), 0), 3)])
        );
    }
}
