//! The declaration against the live collection. Documents have no columns,
//! so only the collection and its indexes can differ: a missing one is
//! created; one declared with other fields is refused (MongoDB cannot swap
//! an index in one step, and between a drop and a create nothing would
//! enforce it); one no longer declared stays.

use crate::model::migration::Plan;
use mongodb::bson::{Bson, Document, doc};
use sluice_plugin_sdk::schema::Output;
use std::collections::BTreeMap;

/// An index as `listIndexes` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveIndex {
    pub fields: Vec<String>,
    pub unique: bool,
}

/// Indexes by name; `None` if the collection does not exist.
pub type LiveCollection = Option<BTreeMap<String, LiveIndex>>;

/// Reads one `listIndexes` entry.
pub fn live_index(entry: &Document) -> Option<(String, LiveIndex)> {
    let name = entry.get_str("name").ok()?.to_string();
    let fields = entry.get_document("key").ok()?.keys().cloned().collect();
    let unique = entry.get_bool("unique").unwrap_or(false);
    Some((name, LiveIndex { fields, unique }))
}

/// A step's statement is the command as relaxed extended JSON, so that
/// `sluice schema plan` can print it and `apply` run it as planned.
pub fn command_text(command: Document) -> String {
    Bson::Document(command).into_relaxed_extjson().to_string()
}

pub fn command_of(text: &str) -> Option<Document> {
    let json: serde_json::Value = serde_json::from_str(text).ok()?;
    match Bson::try_from(json).ok()? {
        Bson::Document(d) => Some(d),
        _ => None,
    }
}

/// How the server stands on sharding the collection: not a sharded
/// cluster (FerretDB, a replica set), or one where the collection is
/// sharded on these fields (none: not yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sharding {
    NotACluster,
    Cluster { sharded_on: Option<Vec<String>> },
}

/// `shardCollection` runs on the admin database, with the full name.
pub fn shard_command(namespace: &str, fields: &[String]) -> Document {
    let key: Document = fields.iter().map(|f| (f.clone(), Bson::Int32(1))).collect();
    doc! { "shardCollection": namespace, "key": key }
}

fn plan_sharding(plan: &mut Plan, decl: &Output, namespace: &str, sharding: &Sharding) {
    if decl.shard_key.is_empty() {
        return;
    }
    let wanted = decl.shard_key.join(", ");
    match sharding {
        Sharding::NotACluster => plan.note(format!(
            "shard key ({wanted}) not applied: the server is not a sharded cluster (FerretDB and a single MongoDB do not shard)"
        )),
        Sharding::Cluster { sharded_on: None } => {
            plan.step(
                format!("shard the collection on ({wanted})"),
                command_text(shard_command(namespace, &decl.shard_key)),
            );
        }
        Sharding::Cluster {
            sharded_on: Some(fields),
        } if *fields != decl.shard_key => plan.refuse(format!(
            "shard key: the collection is sharded on ({}), the new declaration says ({wanted}); resharding moves every document. Keep the shard key, or declare a new output (a new collection)",
            fields.join(", ")
        )),
        Sharding::Cluster { .. } => {}
    }
}

pub fn plan(
    target: &str,
    decl: &Output,
    live: &LiveCollection,
    namespace: &str,
    sharding: &Sharding,
) -> Plan {
    let mut plan = Plan::new(target);
    let empty = BTreeMap::new();
    let indexes = match live {
        Some(indexes) => indexes,
        None => {
            plan.step("create collection", command_text(doc! { "create": target }));
            &empty
        }
    };
    for index in &decl.indexes {
        let wanted = LiveIndex {
            fields: index.fields.clone(),
            unique: index.unique,
        };
        let key: Document = index
            .fields
            .iter()
            .map(|f| (f.clone(), Bson::Int32(1)))
            .collect();
        let create = doc! {
            "createIndexes": target,
            "indexes": [{ "key": key, "name": &index.name, "unique": index.unique }],
        };
        let fields = index.fields.join(", ");
        match indexes.get(&index.name) {
            Some(existing) if *existing == wanted => {}
            Some(existing) => {
                let unique = |u: bool| if u { ", unique" } else { "" };
                plan.refuse(format!(
                    "index '{}' is on ({}{}) and the new declaration puts it on ({fields}{}); give the changed index a new name (the old one stays), or drop it by hand first",
                    index.name,
                    existing.fields.join(", "),
                    unique(existing.unique),
                    unique(index.unique)
                ));
            }
            None => {
                let unique = if index.unique { "unique " } else { "" };
                plan.step(
                    format!("add {unique}index '{}' on ({fields})", index.name),
                    command_text(create),
                );
            }
        }
    }
    for name in indexes.keys() {
        if name != "_id_" && decl.indexes.iter().all(|i| &i.name != name) {
            plan.note(format!("index '{name}' is no longer declared; it stays"));
        }
    }
    plan_sharding(&mut plan, decl, namespace, sharding);
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_plugin_sdk::schema::Type;

    #[test]
    fn indexes_are_added_or_kept_and_a_changed_one_is_refused() {
        let decl = Output::document("events")
            .field("a", Type::text(8))
            .field("b", Type::text(8))
            .index("by_a", ["a"])
            .index("by_b", ["b", "a"]);
        let live: LiveCollection = Some(BTreeMap::from([
            (
                "_id_".to_string(),
                LiveIndex {
                    fields: vec!["_id".into()],
                    unique: true,
                },
            ),
            (
                "by_b".to_string(),
                LiveIndex {
                    fields: vec!["b".into()],
                    unique: false,
                },
            ),
            (
                "old".to_string(),
                LiveIndex {
                    fields: vec!["a".into()],
                    unique: false,
                },
            ),
        ]));
        let p = plan("events", &decl, &live, "db.events", &Sharding::NotACluster);
        let what: Vec<_> = p.steps.iter().map(|s| s.what.as_str()).collect();
        assert_eq!(what, ["add index 'by_a' on (a)"]);
        assert_eq!(
            p.refusals,
            [
                "index 'by_b' is on (b) and the new declaration puts it on (b, a); give the changed index a new name (the old one stays), or drop it by hand first"
            ]
        );
        assert_eq!(p.notes, ["index 'old' is no longer declared; it stays"]);
        let command = command_of(&p.steps[0].statement).unwrap();
        assert_eq!(command.get_str("createIndexes").unwrap(), "events");
    }

    #[test]
    fn a_missing_collection_is_created_first() {
        let decl = Output::document("events").field("a", Type::text(8));
        let p = plan("events", &decl, &None, "db.events", &Sharding::NotACluster);
        assert_eq!(p.steps[0].statement, r#"{"create":"events"}"#);
    }

    #[test]
    fn a_shard_key_is_applied_on_a_cluster_noted_elsewhere_and_never_changed() {
        let decl = Output::document("events")
            .field("a", Type::text(8))
            .shard_key(["a"]);
        let alone = plan("events", &decl, &None, "db.events", &Sharding::NotACluster);
        assert_eq!(alone.steps.len(), 1, "only the create: {alone}");
        assert!(
            alone.notes[0]
                .starts_with("shard key (a) not applied: the server is not a sharded cluster")
        );
        let cluster = |on: Option<&[&str]>| Sharding::Cluster {
            sharded_on: on.map(|f| f.iter().map(|s| s.to_string()).collect()),
        };
        let fresh = plan("events", &decl, &None, "db.events", &cluster(None));
        assert_eq!(fresh.steps[1].what, "shard the collection on (a)");
        assert_eq!(
            fresh.steps[1].statement,
            r#"{"shardCollection":"db.events","key":{"a":1}}"#
        );
        let live: LiveCollection = Some(BTreeMap::new());
        assert!(plan("events", &decl, &live, "db.events", &cluster(Some(&["a"]))).is_empty());
        let other = plan("events", &decl, &live, "db.events", &cluster(Some(&["b"])));
        assert!(other.refusals[0].starts_with(
            "shard key: the collection is sharded on (b), the new declaration says (a)"
        ));
    }
}
