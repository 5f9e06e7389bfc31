//! MongoDB wire protocol: document outputs upserted by `_id` in bulk (and
//! deleted by `_id`), with plain `insert`, `delete` and `createIndexes`
//! commands that MongoDB and FerretDB both support.

mod dead_letters;
mod migrate;

use super::{Sink, SinkError};
use crate::config::{SinkTls, TlsMode};
use crate::model::{Applied, Plan, Row};
use mongodb::bson::{self, Bson, Document, doc};
use mongodb::options::{Tls, TlsOptions};
use sluice_plugin_sdk::schema::{Output, Type};

/// Documents per `insert` command; far below every server's limits.
const CHUNK: usize = 1000;
const CHUNK_BYTES: usize = 8 << 20;

pub struct MongoSink {
    db: mongodb::Database,
}

impl MongoSink {
    pub async fn connect(
        uri: &str,
        password: Option<String>,
        database: &str,
        tls: &SinkTls<'_>,
    ) -> Result<Self, SinkError> {
        let mut options = mongodb::options::ClientOptions::parse(uri)
            .await
            .map_err(|e| SinkError::Unavailable(format!("invalid MongoDB URI: {e}")))?;
        if let Some(password) = password {
            let credential = options.credential.get_or_insert_with(Default::default);
            if credential.username.is_none() {
                return Err(SinkError::Unavailable(
                    "`password` is set but the URI names no user (write `mongodb://USER@host`)"
                        .into(),
                ));
            }
            credential.password = Some(password);
        }
        options.tls = Some(match tls.mode {
            TlsMode::Disabled => Tls::Disabled,
            mode => Tls::Enabled(
                TlsOptions::builder()
                    .ca_file_path(tls.ca.map(Into::into))
                    .cert_key_file_path(tls.certificate.map(Into::into))
                    .allow_invalid_certificates(mode == TlsMode::Required)
                    .allow_invalid_hostnames(mode != TlsMode::VerifyIdentity)
                    .build(),
            ),
        });
        options
            .server_selection_timeout
            .get_or_insert(std::time::Duration::from_secs(10));
        options.app_name.get_or_insert_with(|| "sluice".into());
        let client = mongodb::Client::with_options(options).map_err(unavailable)?;
        Ok(MongoSink {
            db: client.database(database),
        })
    }

    /// Whether the server is a sharded cluster (it answers `hello` through
    /// mongos: "isdbgrid"), and if so the collection's shard key.
    async fn sharding(&self, namespace: &str) -> Result<migrate::Sharding, SinkError> {
        let hello = self.command(doc! { "hello": 1 }).await?;
        if hello.get_str("msg") != Ok("isdbgrid") {
            return Ok(migrate::Sharding::NotACluster);
        }
        let config = self.db.client().database("config");
        let entry = config
            .collection::<Document>("collections")
            .find_one(doc! { "_id": namespace })
            .await
            .map_err(classify)?;
        let sharded_on = entry
            .and_then(|e| e.get_document("key").ok().cloned())
            .map(|key| key.keys().cloned().collect());
        Ok(migrate::Sharding::Cluster { sharded_on })
    }

    async fn command(&self, command: Document) -> Result<Document, SinkError> {
        let reply = self.db.run_command(command).await.map_err(classify)?;
        if let Ok(errors) = reply.get_array("writeErrors")
            && let Some(Bson::Document(first)) = errors.first()
        {
            let message = first.get_str("errmsg").unwrap_or("unknown write error");
            return Err(SinkError::Refused(format!(
                "MongoDB: {message} ({} statements refused)",
                errors.len()
            )));
        }
        Ok(reply)
    }
}

#[async_trait::async_trait]
impl Sink for MongoSink {
    async fn healthcheck(&self) -> Result<(), SinkError> {
        self.command(doc! { "ping": 1 }).await.map(drop)
    }

    /// Stops the driver's pool workers before the runtime goes: a worker
    /// dropped by the runtime mid-request panics (mongo-rust-driver #847).
    async fn close(&self) {
        let shutdown = self.db.client().clone().shutdown();
        if tokio::time::timeout(std::time::Duration::from_secs(5), shutdown)
            .await
            .is_err()
        {
            tracing::warn!("MongoDB client did not shut down within 5s");
        }
    }

    async fn plan(&self, target: &str, decl: &Output) -> Result<Plan, SinkError> {
        let live = self.live_indexes(target).await?;
        let namespace = format!("{}.{target}", self.db.name());
        let sharding = if decl.shard_key.is_empty() {
            migrate::Sharding::NotACluster
        } else {
            self.sharding(&namespace).await?
        };
        Ok(migrate::plan(target, decl, &live, &namespace, &sharding))
    }

    async fn describe(&self, target: &str) -> Result<Vec<String>, SinkError> {
        let Some(indexes) = self.live_indexes(target).await? else {
            return Ok(vec![format!("collection '{target}': does not exist yet")]);
        };
        let count = self.command(doc! { "count": target }).await?;
        let documents = count
            .get_i32("n")
            .map(i64::from)
            .or_else(|_| count.get_i64("n"));
        let mut lines = vec![format!(
            "collection '{target}': {} documents",
            documents.unwrap_or(0)
        )];
        for (name, index) in &indexes {
            let unique = if index.unique { "unique " } else { "" };
            lines.push(format!(
                "{unique}index {name} ({})",
                index.fields.join(", ")
            ));
        }
        let namespace = format!("{}.{target}", self.db.name());
        lines.push(match self.sharding(&namespace).await? {
            migrate::Sharding::NotACluster => {
                "not sharded (the server is not a sharded cluster)".into()
            }
            migrate::Sharding::Cluster { sharded_on: None } => {
                "not sharded (the server is a sharded cluster)".into()
            }
            migrate::Sharding::Cluster {
                sharded_on: Some(fields),
            } => format!("sharded on ({})", fields.join(", ")),
        });
        Ok(lines)
    }

    async fn apply(&self, plan: &Plan) -> Result<Vec<Applied>, SinkError> {
        let mut applied = Vec::new();
        for step in &plan.steps {
            let started = std::time::Instant::now();
            let command = migrate::command_of(&step.statement).ok_or_else(|| {
                SinkError::Incompatible(format!("not a MongoDB command: {}", step.statement))
            })?;
            // shardCollection is an admin command.
            let on = if command.contains_key("shardCollection") {
                self.db.client().database("admin")
            } else {
                self.db.clone()
            };
            match on.run_command(command).await {
                Ok(_) => {}
                // Another instance created it first.
                Err(e) if command_code(&e) == Some(NAMESPACE_EXISTS) => {}
                // Dropped by someone else first.
                Err(e) if command_code(&e) == Some(INDEX_NOT_FOUND) => {}
                // The server refused the change itself (a duplicate under
                // a new unique index): retrying would not help.
                Err(e) if command_code(&e).is_some_and(|c| !PASSING.contains(&c)) => {
                    return Err(SinkError::Incompatible(format!(
                        "collection '{}': {} failed: {e}",
                        plan.target, step.what
                    )));
                }
                Err(e) => return Err(classify(e)),
            }
            let took_ms = started.elapsed().as_millis() as u64;
            tracing::info!(collection = %plan.target, took_ms, "schema change applied: {}", step.statement);
            applied.push(Applied {
                target: plan.target.clone(),
                what: step.what.clone(),
                statement: step.statement.clone(),
                took_ms,
            });
        }
        Ok(applied)
    }

    async fn write(&self, target: &str, decl: &Output, rows: &[Row]) -> Result<(), SinkError> {
        // Keys are distinct, so deletes and upserts do not meet.
        let (deletes, rows): (Vec<&Row>, Vec<&Row>) = rows.iter().partition(|r| r.delete);
        for chunk in deletes.chunks(CHUNK) {
            let ids = chunk
                .iter()
                .map(|r| bson::to_bson(&r.id).map_err(|e| SinkError::Refused(e.to_string())))
                .collect::<Result<Vec<_>, _>>()?;
            self.delete_ids(target, ids).await?;
        }
        let mut chunk = Vec::with_capacity(rows.len().min(CHUNK));
        let mut bytes = 0;
        for (i, row) in rows.iter().enumerate() {
            let id = bson::to_bson(&row.id).map_err(|e| SinkError::Refused(e.to_string()))?;
            let document = to_document(decl, row, id)?;
            bytes += document
                .iter()
                .map(|(k, v)| k.len() + approx_size(v))
                .sum::<usize>();
            chunk.push(document);
            if chunk.len() == CHUNK || bytes >= CHUNK_BYTES || i + 1 == rows.len() {
                self.upsert(target, std::mem::take(&mut chunk)).await?;
                bytes = 0;
            }
        }
        Ok(())
    }
}

impl MongoSink {
    /// The collection's indexes by name; `None` if it does not exist.
    async fn live_indexes(&self, target: &str) -> Result<migrate::LiveCollection, SinkError> {
        let existing = self.db.list_collection_names().await.map_err(classify)?;
        if !existing.iter().any(|c| c == target) {
            return Ok(None);
        }
        let reply = self.command(doc! { "listIndexes": target }).await?;
        let batch = reply
            .get_document("cursor")
            .and_then(|c| c.get_array("firstBatch"))
            .map_err(|e| SinkError::Unavailable(format!("MongoDB: listIndexes: {e}")))?;
        Ok(Some(
            batch
                .iter()
                .filter_map(Bson::as_document)
                .filter_map(migrate::live_index)
                .collect(),
        ))
    }

    /// Upserts by `_id`: insert everything, then replace the documents that
    /// already existed (a key seen in an earlier batch, or a replayed
    /// batch) by deleting and inserting those again. Insert-first keeps the
    /// common path to one round trip on every server; FerretDB in
    /// particular runs `update` statements one by one with a scan each,
    /// which is orders of magnitude slower than a bulk insert. Correct for
    /// any mix of new and existing keys because `documents` never holds an
    /// `_id` twice (the router keeps one version per key).
    async fn upsert(&self, target: &str, documents: Vec<Document>) -> Result<(), SinkError> {
        debug_assert!(
            {
                let mut ids = std::collections::HashSet::new();
                documents
                    .iter()
                    .all(|d| ids.insert(d.get("_id").map(Bson::to_string)))
            },
            "one version per _id in a write"
        );
        let existing = self.insert(target, &documents).await?;
        if existing.is_empty() {
            return Ok(());
        }
        let ids: Vec<Bson> = existing
            .iter()
            .map(|&i| documents[i].get("_id").cloned().unwrap_or(Bson::Null))
            .collect();
        let replacements: Vec<Document> = existing.iter().map(|&i| documents[i].clone()).collect();
        // Delete then insert, not atomic: if the process dies in between, the
        // batch is uncommitted and replays, and the insert happens then.
        self.delete_ids(target, ids).await?;
        let still = self.insert(target, &replacements).await?;
        if still.is_empty() {
            Ok(())
        } else {
            Err(SinkError::Unavailable(format!(
                "MongoDB: another writer re-created {} documents in '{target}' between this write's delete and insert (two hosts writing one collection?); the write is retried",
                still.len()
            )))
        }
    }

    /// Deletes the documents of `target` with these `_id`s.
    async fn delete_ids(&self, target: &str, ids: Vec<Bson>) -> Result<(), SinkError> {
        let delete = doc! { "q": { "_id": { "$in": ids } }, "limit": 0 };
        self.command(doc! { "delete": target, "deletes": [delete], "ordered": true })
            .await
            .map(drop)
    }

    /// Inserts unordered; returns the indexes of documents whose `_id`
    /// already exists. Any other per-document error refuses the write.
    async fn insert(&self, target: &str, documents: &[Document]) -> Result<Vec<usize>, SinkError> {
        let reply = self
            .db
            .run_command(doc! { "insert": target, "documents": documents, "ordered": false })
            .await
            .map_err(classify)?;
        let mut duplicates = Vec::new();
        for error in reply
            .get_array("writeErrors")
            .map(|a| a.as_slice())
            .unwrap_or_default()
        {
            let Bson::Document(error) = error else {
                continue;
            };
            let code = error.get_i32("code").unwrap_or_default();
            let index = error.get_i32("index").unwrap_or_default() as usize;
            if code != DUPLICATE_KEY {
                let message = error.get_str("errmsg").unwrap_or("unknown write error");
                let id = documents
                    .get(index)
                    .and_then(|d| d.get("_id"))
                    .map(|id| id.to_string())
                    .unwrap_or_default();
                return Err(SinkError::Refused(format!(
                    "MongoDB refused document _id {id}: {message} (code {code})"
                )));
            }
            duplicates.push(index);
        }
        Ok(duplicates)
    }
}

const DUPLICATE_KEY: i32 = 11000;
/// `create` of a collection that exists (MongoDB and FerretDB).
const NAMESPACE_EXISTS: i32 = 48;
const INDEX_NOT_FOUND: i32 = 27;
/// Errors of the moment (a primary stepping down, a lock or time limit, a
/// shutdown): retried like any unavailable server.
const PASSING: [i32; 9] = [6, 24, 89, 91, 189, 262, 10107, 11600, 11602];

/// JSON fields -> BSON, with declared timestamps as BSON dates so they
/// sort and compare as dates in MongoDB.
fn to_document(decl: &Output, row: &Row, id: Bson) -> Result<Document, SinkError> {
    let mut document = Document::new();
    document.insert("_id", id);
    for (name, value) in &row.fields {
        let refused = |e: String| SinkError::Refused(format!("field '{name}': {e}"));
        let as_json = || bson::to_bson(value).map_err(|e| refused(e.to_string()));
        let bson = match (decl.get_field(name).map(|f| f.ty), value.as_str()) {
            (Some(Type::Timestamp), Some(text)) => bson::DateTime::parse_rfc3339_str(text)
                .map(Bson::DateTime)
                .map_err(|e| refused(e.to_string()))?,
            (Some(Type::Timestamp), None) | (None, _) => as_json()?,
            (
                Some(
                    Type::Text(_)
                    | Type::Integer
                    | Type::Float
                    | Type::Boolean
                    | Type::Decimal { .. }
                    | Type::Json,
                ),
                _,
            ) => as_json()?,
        };
        document.insert(name.clone(), bson);
    }
    Ok(document)
}

fn approx_size(v: &Bson) -> usize {
    match v {
        Bson::String(s) => s.len() + 8,
        Bson::Document(d) => d.iter().map(|(k, v)| k.len() + approx_size(v)).sum(),
        Bson::Array(a) => a.iter().map(approx_size).sum(),
        _ => 16,
    }
}

/// A stored value as JSON; dates as RFC 3339 text, as they were written.
fn to_json(value: Option<&Bson>) -> serde_json::Value {
    match value {
        None | Some(Bson::Null) => serde_json::Value::Null,
        Some(Bson::DateTime(t)) => t
            .try_to_rfc3339_string()
            .map_or(serde_json::Value::Null, serde_json::Value::from),
        Some(other) => other.clone().into_relaxed_extjson(),
    }
}

fn unavailable(e: mongodb::error::Error) -> SinkError {
    SinkError::Unavailable(format!("MongoDB: {e}"))
}

/// The server's error code, for a command the server refused.
fn command_code(e: &mongodb::error::Error) -> Option<i32> {
    match &*e.kind {
        mongodb::error::ErrorKind::Command(c) => Some(c.code),
        _ => None,
    }
}

/// Server-side refusals of the data (bad document, duplicate unique key)
/// are the data's fault; network and server trouble is retried.
fn classify(e: mongodb::error::Error) -> SinkError {
    use mongodb::error::ErrorKind;
    match &*e.kind {
        ErrorKind::Write(_) | ErrorKind::InsertMany(_) => {
            SinkError::Refused(format!("MongoDB: {e}"))
        }
        ErrorKind::Command(c) if c.code == 11000 || c.code == 2 => {
            SinkError::Refused(format!("MongoDB: {e}"))
        }
        _ => unavailable(e),
    }
}
