//! Plugin outputs -> sinks. Resolves where each declared output goes,
//! validates every emitted value against its declaration, and turns
//! rejected records and invalid outputs into dead letters.

use crate::config::{Config, OffsetStore, PipelineConfig, SINK_TYPES};
use crate::model::{Row, Stage, dead_letter_decl};
use crate::runtime::PluginVersion;
use crate::sink::{Sink, SinkError, Sinks};
use serde_json::{Map, Value, json};
use sluice_plugin_sdk::abi::{BatchResult, Record};
use sluice_plugin_sdk::schema::{Output, OutputKind, Plugin};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Where one output is written.
#[derive(Clone)]
pub struct Route {
    pub sink_name: String,
    pub sink: Arc<dyn Sink>,
    /// Table or collection name.
    pub target: String,
    pub decl: Output,
}

impl Route {
    pub async fn prepare(&self) -> Result<(), SinkError> {
        self.sink.prepare(&self.target, &self.decl).await
    }

    pub async fn write(&self, rows: &[Row]) -> Result<(), SinkError> {
        self.sink.write(&self.target, &self.decl, rows).await
    }
}

/// The routes of one pipeline for one plugin version.
pub struct Routes {
    pub outputs: BTreeMap<String, Route>,
    pub dead_letter: Route,
}

impl Routes {
    /// Errors name the pipeline key to fix.
    pub fn resolve(
        config: &Config,
        pipeline: &PipelineConfig,
        plugin: &PluginVersion,
        sinks: &Sinks,
    ) -> Result<Routes, String> {
        Routes::for_declaration(config, pipeline, &plugin.name, &plugin.info, sinks)
    }

    /// `resolve` for plugin `name` declaring `info`.
    pub fn for_declaration(
        config: &Config,
        pipeline: &PipelineConfig,
        name: &str,
        info: &Plugin,
        sinks: &Sinks,
    ) -> Result<Routes, String> {
        let key = |k: &str| format!("pipelines[name={}].{k}", pipeline.name);
        if let Some(unknown) = pipeline
            .routes
            .keys()
            .find(|o| info.get_output(o).is_none())
        {
            let declared: Vec<_> = info.outputs.iter().map(|o| o.name.as_str()).collect();
            return Err(format!(
                "{}: plugin '{}' declares no output '{unknown}' (it declares: {})",
                key(&format!("routes.{unknown}")),
                name,
                declared.join(", ")
            ));
        }
        let mut outputs = BTreeMap::new();
        for decl in &info.outputs {
            let (sink_name, target) = match pipeline.routes.get(&decl.name) {
                Some(r) => (
                    r.sink.clone(),
                    r.name.clone().unwrap_or_else(|| decl.name.clone()),
                ),
                None => {
                    let kind = SINK_TYPES
                        .iter()
                        .find(|t| t.default_for == decl.kind)
                        .map_or("matching", |t| t.name);
                    let sink = config.default_sink_for(decl.kind).ok_or_else(|| {
                        format!(
                            "{}: output '{}' has no route and there is not exactly one '{kind}' sink to default to; add routes.{} = {{ sink = \"...\" }}",
                            key("routes"), decl.name, decl.name
                        )
                    })?;
                    (sink.to_string(), decl.name.clone())
                }
            };
            let sink = sinks[&sink_name].clone();
            outputs.insert(
                decl.name.clone(),
                Route {
                    sink_name,
                    sink,
                    target,
                    decl: decl.clone(),
                },
            );
        }
        let (dl_sink, dl_target) = config.dead_letter_sink(pipeline)?;
        let dead_letter = Route {
            sink: sinks[&dl_sink].clone(),
            sink_name: dl_sink,
            target: dl_target,
            decl: dead_letter_decl(),
        };
        if pipeline.offsets == OffsetStore::Sink
            && let Some((output, route)) = outputs
                .iter()
                .find(|(_, r)| r.sink_name != dead_letter.sink_name)
        {
            return Err(format!(
                "{}: output '{output}' of plugin '{}' goes to sink '{}', but offsets = \"mysql\" (offsets in the sink's transaction, also spelled \"sink\") writes every output, the dead letters and the offsets in one transaction of sink '{}'; add routes.{output} = {{ sink = \"{}\" }}",
                key(&format!("routes.{output}")),
                name,
                route.sink_name,
                dead_letter.sink_name,
                dead_letter.sink_name
            ));
        }
        Ok(Routes {
            outputs,
            dead_letter,
        })
    }

    pub async fn prepare(&self) -> Result<(), SinkError> {
        for route in self.outputs.values().chain([&self.dead_letter]) {
            route.prepare().await?;
        }
        Ok(())
    }
}

/// A batch's writes, grouped by output, plus its dead letters.
#[derive(Default)]
pub struct Routed {
    pub rows: BTreeMap<String, Vec<Row>>,
    /// Per output, the index of the record each row came from.
    pub sources: BTreeMap<String, Vec<usize>>,
    pub dead_letters: Vec<Row>,
}

/// What every dead letter of a batch says about where it comes from.
pub struct DeadLetterContext<'a> {
    pub pipeline: &'a str,
    pub plugin: &'a str,
    pub plugin_version: &'a str,
    pub plugin_hash: &'a str,
}

impl<'a> DeadLetterContext<'a> {
    pub fn new(pipeline: &'a str, plugin: &'a PluginVersion) -> Self {
        DeadLetterContext {
            pipeline,
            plugin: &plugin.name,
            plugin_version: &plugin.info.version,
            plugin_hash: &plugin.hash,
        }
    }

    /// A dead letter for `record`; `suffix` distinguishes several per record.
    pub fn row(&self, record: &Record, stage: Stage, reason: &str, suffix: &str) -> Row {
        let id = format!(
            "{}/{}/{}/{}{suffix}",
            self.pipeline, record.topic, record.partition, record.offset
        );
        // Both as text, or (if either is not UTF-8) both in base64.
        let text = |b: Option<&[u8]>| b.is_none_or(|b| std::str::from_utf8(b).is_ok());
        let utf8 = text(record.key) && text(record.value);
        let (key, value) = (encode(record.key, utf8), encode(record.value, utf8));
        let timestamp = record
            .timestamp
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string());
        let fields = json!({
            "id": id,
            "pipeline": self.pipeline,
            "plugin": self.plugin,
            "plugin_version": self.plugin_version,
            "plugin_hash": self.plugin_hash,
            "stage": stage.as_str(),
            "reason": reason,
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "timestamp": timestamp,
            "key": key,
            "value": value,
            "encoding": if utf8 { "utf8" } else { "base64" },
            "failed_at": chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        });
        let Value::Object(fields) = fields else {
            unreachable!()
        };
        Row {
            id: Value::String(id),
            fields,
        }
    }
}

fn encode(bytes: Option<&[u8]>, utf8: bool) -> Option<String> {
    use base64::Engine;
    match bytes {
        None => None,
        Some(b) if utf8 => Some(String::from_utf8_lossy(b).into_owned()),
        Some(b) => Some(base64::engine::general_purpose::STANDARD.encode(b)),
    }
}

/// Validates and groups a plugin result. `records` is the batch the
/// plugin saw; indexes in `result` point into it.
pub fn route(
    records: &[Record],
    result: BatchResult,
    routes: &Routes,
    ctx: &DeadLetterContext,
) -> Routed {
    let mut routed = Routed::default();
    for e in &result.errors {
        if let Some(record) = records.get(e.source as usize) {
            routed
                .dead_letters
                .push(ctx.row(record, Stage::Plugin, &e.reason, ""));
        }
    }
    // Per (source, output) counters give position-derived ids for outputs without a key.
    let mut seen: HashMap<(u32, String), u32> = HashMap::new();
    for out in result.outputs {
        let Some(record) = records.get(out.source as usize) else {
            tracing::warn!(plugin = %ctx.plugin, source = out.source, "output points at no input record; dropped");
            continue;
        };
        let n = seen.entry((out.source, out.output.clone())).or_insert(0);
        *n += 1;
        let dead = |reason: String| {
            ctx.row(
                record,
                Stage::Schema,
                &reason,
                &format!("/{}/{}", out.output, n),
            )
        };
        let Some(route) = routes.outputs.get(&out.output) else {
            routed.dead_letters.push(dead(format!(
                "output '{}' is not declared by the plugin",
                out.output
            )));
            continue;
        };
        let mut value: Value = match serde_json::from_slice(&out.value) {
            Ok(v) => v,
            Err(e) => {
                routed.dead_letters.push(dead(format!(
                    "output '{}' is not valid JSON: {e}",
                    out.output
                )));
                continue;
            }
        };
        if let Err(e) = route.decl.check_value(&mut value) {
            routed
                .dead_letters
                .push(dead(format!("output '{}': {e}", out.output)));
            continue;
        }
        let Value::Object(mut fields) = value else {
            unreachable!("check_value accepts objects only")
        };
        let id = document_id(&route.decl, &fields, record, &out.output, *n);
        if route.decl.kind == OutputKind::Table {
            route.decl.fill_nulls(&mut fields);
        }
        routed
            .sources
            .entry(out.output.clone())
            .or_default()
            .push(out.source as usize);
        routed
            .rows
            .entry(out.output)
            .or_default()
            .push(Row { id, fields });
    }
    routed.keep_last_per_key();
    routed
}

impl Routed {
    /// Last write wins: of the versions of one key in a batch, only the
    /// one from the latest record (by position in the batch, which is
    /// partition offset order; the last emitted if one record emits it
    /// twice) is written. Every sink gets its rows from here, so every sink
    /// applies the same rule, and no write carries a key twice. Rows keep
    /// the order of their kept versions. Dead letters are keyed by record
    /// and reason slot: a plugin naming a record twice leaves one letter.
    fn keep_last_per_key(&mut self) {
        for (output, rows) in &mut self.rows {
            let sources = self.sources.get_mut(output).expect("a source per row");
            let keep = latest_per_key(rows.iter().map(|r| &r.id), sources.iter().copied());
            if let Some(keep) = keep {
                retain_marked(rows, &keep);
                retain_marked(sources, &keep);
            }
        }
        let letters = &mut self.dead_letters;
        if let Some(keep) = latest_per_key(letters.iter().map(|r| &r.id), 0..letters.len()) {
            retain_marked(letters, &keep);
        }
    }
}

/// For rows with these ids, from records at these batch positions: which
/// ones hold their key's latest version (the latest position; the later
/// row on a tie). `None` when every key appears once (the common case).
fn latest_per_key<'a>(
    ids: impl Iterator<Item = &'a Value>,
    positions: impl Iterator<Item = usize>,
) -> Option<Vec<bool>> {
    // A value's compact JSON text identifies it: values are normalised by
    // their declaration, and composite keys list their fields in one order.
    let keys: Vec<String> = ids.map(Value::to_string).collect();
    let mut latest: HashMap<&str, (usize, usize)> = HashMap::with_capacity(keys.len());
    for (row, (key, position)) in keys.iter().zip(positions).enumerate() {
        let e = latest.entry(key).or_insert((position, row));
        if position >= e.0 {
            *e = (position, row);
        }
    }
    if latest.len() == keys.len() {
        return None;
    }
    Some(
        keys.iter()
            .enumerate()
            .map(|(row, key)| latest[key.as_str()].1 == row)
            .collect(),
    )
}

fn retain_marked<T>(items: &mut Vec<T>, keep: &[bool]) {
    let mut marks = keep.iter();
    items.retain(|_| *marks.next().expect("a mark per item"));
}

/// The declared key, or a position-derived id that is the same every time
/// the record is processed: replays overwrite instead of duplicating.
fn document_id(
    decl: &Output,
    fields: &Map<String, Value>,
    record: &Record,
    output: &str,
    n: u32,
) -> Value {
    match decl.primary_key.as_slice() {
        [] => Value::String(format!(
            "{}/{}/{}/{output}/{n}",
            record.topic, record.partition, record.offset
        )),
        [single] => fields[single].clone(),
        many => Value::Object(
            many.iter()
                .map(|k| (k.clone(), fields[k].clone()))
                .collect(),
        ),
    }
}

/// Routes and batches for unit tests, over in-memory sinks: no plugin
/// file, no database.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::sink::MemorySink;
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
                    output: "orders".into(),
                    value: json!({ "id": id, "total": total }).to_string().into_bytes(),
                })
                .collect(),
            errors: vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: Value, version: u32) -> Row {
        let Value::Object(fields) = json!({ "v": version }) else {
            unreachable!()
        };
        Row { id, fields }
    }

    /// Rows of one output as (id, version) after the reduction.
    fn kept(rows: &[(Value, u32)], sources: &[usize]) -> Vec<(Value, u32, usize)> {
        let mut routed = Routed::default();
        routed.rows.insert(
            "o".into(),
            rows.iter().map(|(id, v)| row(id.clone(), *v)).collect(),
        );
        routed.sources.insert("o".into(), sources.to_vec());
        routed.keep_last_per_key();
        routed.rows["o"]
            .iter()
            .zip(&routed.sources["o"])
            .map(|(r, s)| (r.id.clone(), r.fields["v"].as_u64().unwrap() as u32, *s))
            .collect()
    }

    #[test]
    fn ten_versions_of_one_key_leave_the_last() {
        let rows: Vec<_> = (1..=10).map(|v| (json!("o-1"), v)).collect();
        let sources: Vec<_> = (0..10).collect();
        assert_eq!(kept(&rows, &sources), vec![(json!("o-1"), 10, 9)]);
    }

    #[test]
    fn other_keys_keep_their_order_and_the_latest_record_wins_whatever_the_emission_order() {
        // A per-batch plugin may emit record 3's output before record 1's.
        let rows = [
            (json!("a"), 1),
            (json!("b"), 2),
            (json!("a"), 3),
            (json!("c"), 4),
            (json!("a"), 5),
        ];
        let sources = [0, 1, 3, 2, 1];
        assert_eq!(
            kept(&rows, &sources),
            vec![(json!("b"), 2, 1), (json!("a"), 3, 3), (json!("c"), 4, 2)]
        );
        // One record emitting a key twice: the later emission wins.
        let rows = [(json!(7), 1), (json!(7), 2)];
        assert_eq!(kept(&rows, &[4, 4]), vec![(json!(7), 2, 4)]);
    }

    #[test]
    fn keys_differ_by_exact_value_and_composite_keys_by_every_field() {
        let rows = [
            (json!("pad-id"), 1),
            (json!("pad-id "), 2),
            (json!("Pad-id"), 3),
            (json!({"a": 1, "b": "x"}), 4),
            (json!({"a": 1, "b": "y"}), 5),
            (json!({"a": 1, "b": "x"}), 6),
        ];
        let got: Vec<u32> = kept(&rows, &[0, 1, 2, 3, 4, 5])
            .into_iter()
            .map(|(_, v, _)| v)
            .collect();
        assert_eq!(got, vec![1, 2, 3, 5, 6]);
    }

    #[test]
    fn unique_keys_are_left_as_they_are() {
        let ids = [json!("a"), json!("b")];
        assert_eq!(latest_per_key(ids.iter(), 0..2), None);
    }

    use testing::{config, memory_sinks, plugin};

    fn resolve(config: &Config) -> Result<Routes, String> {
        let (sinks, _) = memory_sinks(config);
        Routes::for_declaration(config, &config.pipelines[0], "orders", &plugin(), &sinks)
    }

    #[test]
    fn unrouted_outputs_go_to_the_only_sink_that_takes_their_kind() {
        let routes = resolve(&config("", "")).unwrap();
        let at = |o: &str| {
            let r = &routes.outputs[o];
            (r.sink_name.as_str(), r.target.as_str())
        };
        assert_eq!(
            at("orders"),
            ("rows", "orders"),
            "tables default to the mysql sink"
        );
        assert_eq!(
            at("events"),
            ("docs", "events"),
            "documents to the mongodb sink"
        );
        assert_eq!(
            (
                routes.dead_letter.sink_name.as_str(),
                routes.dead_letter.target.as_str()
            ),
            ("docs", "sluice_dead_letters"),
            "dead letters to the document sink by default"
        );
        let routed = resolve(&config(
            "",
            "routes.events = { sink = \"rows\", name = \"ev\" }",
        ))
        .unwrap();
        assert_eq!(routed.outputs["events"].sink_name, "rows");
        assert_eq!(routed.outputs["events"].target, "ev");
    }

    #[test]
    fn routing_errors_name_the_key_to_fix() {
        let e = resolve(&config("", "routes.nope = { sink = \"rows\" }"))
            .err()
            .unwrap();
        assert!(
            e.starts_with("pipelines[name=p].routes.nope: plugin 'orders' declares no output 'nope' (it declares: orders, events)"),
            "{e}"
        );
        let two =
            "[sinks.docs2]\ntype = \"mongodb\"\nuri = \"mongodb://127.0.0.1:1\"\ndatabase = \"d\"";
        let e = resolve(&config(two, "dead_letter = { sink = \"rows\" }"))
            .err()
            .unwrap();
        assert!(
            e.contains("output 'events' has no route and there is not exactly one 'mongodb' sink to default to; add routes.events"),
            "{e}"
        );
        let e = resolve(&config("", "offsets = \"sink\"\ndead_letter = { sink = \"rows\" }\nroutes.orders = { sink = \"rows\" }")).err().unwrap();
        assert!(
            e.contains(
                "output 'events' of plugin 'orders' goes to sink 'docs', but offsets = \"mysql\""
            ),
            "{e}"
        );
    }

    #[test]
    fn invalid_and_undeclared_outputs_and_rejections_become_dead_letters() {
        let config = config("", "");
        let routes = resolve(&config).unwrap();
        let records: Vec<_> = (0..4).map(testing::record).collect();
        let mut result = testing::orders(&[(0, "a", 1), (1, "b", 2)]);
        result.outputs.push(sluice_plugin_sdk::abi::OutputRecord {
            source: 2,
            output: "orders".into(),
            value: br#"{"id": "c", "total": "many"}"#.to_vec(),
        });
        result.outputs.push(sluice_plugin_sdk::abi::OutputRecord {
            source: 2,
            output: "nowhere".into(),
            value: b"{}".to_vec(),
        });
        result.errors.push(sluice_plugin_sdk::abi::RecordError {
            source: 3,
            reason: "bad input".into(),
        });
        let routed = route(&records, result, &routes, &testing::context());
        assert_eq!(routed.rows["orders"].len(), 2);
        let reasons: Vec<(&str, &str)> = routed
            .dead_letters
            .iter()
            .map(|d| {
                (
                    d.fields["stage"].as_str().unwrap(),
                    d.fields["reason"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            reasons,
            [
                ("plugin", "bad input"),
                (
                    "schema",
                    "output 'orders': field 'total': expected an integer, got a string"
                ),
                ("schema", "output 'nowhere' is not declared by the plugin"),
            ]
        );
    }
}
