//! Routes and batches for unit tests, over in-memory sinks: no plugin
//! file, no database.

use super::*;
use crate::sink::MemorySink;
use serde_json::json;
use sluice_plugin_sdk::abi::OutputRecord;

/// Two sinks, `docs` (mongodb) and `rows` (mysql), and pipeline `p`
/// with `pipeline_extra` appended to its table.
pub fn config(sinks_extra: &str, pipeline_extra: &str) -> Config {
    let toml = format!(
        r#"
[kafka]
brokers = "127.0.0.1:1"
[sinks.docs]
type = "mongodb"
uri = "mongodb://127.0.0.1:1"
database = "d"
[sinks.rows]
type = "mysql"
url = "mysql://u:p@127.0.0.1:1/d"
{sinks_extra}
[[pipelines]]
name = "p"
plugin = "orders"
topics = ["t"]
{pipeline_extra}
"#
    );
    Config::parse(&toml, std::path::Path::new("test.toml")).unwrap()
}

/// An in-memory sink for each configured sink, to inspect afterwards.
pub fn memory_sinks(config: &Config) -> (Sinks, BTreeMap<String, MemorySink>) {
    let memory: BTreeMap<String, MemorySink> = config
        .sinks
        .keys()
        .map(|name| (name.clone(), MemorySink::new()))
        .collect();
    let sinks = memory
        .iter()
        .map(|(name, m)| (name.clone(), Arc::new(m.clone()) as Arc<dyn Sink>))
        .collect();
    (sinks, memory)
}

/// A plugin declaring `orders` (a keyed table) and `events` (documents).
pub fn plugin() -> Plugin {
    use sluice_plugin_sdk::schema::Type;
    Plugin::new("orders", "1.0.0")
        .output(
            Output::table("orders")
                .field("id", Type::text(16))
                .primary_key(["id"])
                .field("total", Type::Integer),
        )
        .output(Output::document("events").field("id", Type::text(16)))
}

pub fn context() -> DeadLetterContext<'static> {
    DeadLetterContext {
        pipeline: "p",
        plugin: "orders",
        plugin_version: "1.0.0",
        plugin_hash: "0123456789abcdef",
    }
}

/// Record `i` of partition 0 of topic `t`, at offset `i`.
pub fn record(i: usize) -> Record<'static> {
    Record {
        topic: "t",
        partition: 0,
        offset: i as i64,
        timestamp: None,
        key: None,
        value: None,
        headers: sluice_plugin_sdk::abi::Headers::EMPTY,
    }
}

/// One `orders` row per (record index, id, total).
pub fn orders(rows: &[(u32, &str, i64)]) -> BatchResult {
    BatchResult {
        outputs: rows
            .iter()
            .map(|(source, id, total)| OutputRecord {
                source: *source,
                op: Op::Upsert,
                output: "orders".into(),
                value: json!({ "id": id, "total": total }).to_string().into_bytes(),
            })
            .collect(),
        errors: vec![],
    }
}
