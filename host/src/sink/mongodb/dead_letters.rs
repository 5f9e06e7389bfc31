//! Reading back and deleting dead letters stored in MongoDB.

use super::{MongoSink, classify, to_json};
use crate::sink::{DeadLetterStore, SinkError};
use mongodb::bson::{Bson, Document, doc};
use sluice_plugin_sdk::schema::Output;

#[async_trait::async_trait]
impl DeadLetterStore for MongoSink {
    async fn read_dead_letters(
        &self,
        target: &str,
        decl: &Output,
        pipeline: &str,
        ids: &[String],
        limit: u32,
    ) -> Result<Vec<serde_json::Map<String, serde_json::Value>>, SinkError> {
        use futures::TryStreamExt;
        let mut filter = doc! { "pipeline": pipeline };
        if !ids.is_empty() {
            filter.insert("_id", doc! { "$in": ids });
        }
        let documents: Vec<Document> = self
            .db
            .collection::<Document>(target)
            .find(filter)
            .sort(doc! { "failed_at": -1 })
            .limit(i64::from(limit))
            .await
            .map_err(classify)?
            .try_collect()
            .await
            .map_err(classify)?;
        Ok(documents
            .iter()
            .map(|d| {
                decl.fields
                    .iter()
                    .map(|f| (f.name.clone(), to_json(d.get(&f.name))))
                    .collect()
            })
            .collect())
    }

    async fn delete(&self, target: &str, _decl: &Output, ids: &[String]) -> Result<(), SinkError> {
        if ids.is_empty() {
            return Ok(());
        }
        let ids = ids.iter().map(|id| Bson::String(id.clone())).collect();
        self.delete_ids(target, ids).await
    }
}
