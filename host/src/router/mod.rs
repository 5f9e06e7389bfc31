//! Plugin outputs -> sinks. Resolves where each declared output goes,
//! validates every emitted value against its declaration, and turns
//! rejected records and invalid outputs into dead letters.

use crate::config::{Config, OffsetStore, PipelineConfig, SINK_TYPES};
use crate::encryption::{self, FieldCipher};
use crate::model::{Applied, Plan, Row, Stage, dead_letter_decl};
use crate::runtime::PluginVersion;
use crate::sink::{Sink, SinkError, Sinks};
use serde_json::{Map, Value};
use sluice_plugin_sdk::abi::{BatchResult, Op, Record};
use sluice_plugin_sdk::schema::{Output, OutputKind, Partitioning, Plugin, Type};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

mod dead_letters;
mod last_write_wins;
#[cfg(test)]
pub(crate) mod testing;

pub use dead_letters::DeadLetterContext;

/// Where one output is written.
#[derive(Clone)]
pub struct Route {
    pub sink_name: String,
    pub sink: Arc<dyn Sink>,
    /// Table or collection name.
    pub target: String,
    /// As the plugin declared it: what its values are checked against.
    pub decl: Output,
    /// As the sink holds it: `decl` with sealed fields as text.
    pub stored: Output,
    /// Fields encrypted on their way to the sink.
    pub sealing: Option<Sealing>,
    /// Partitions whose rows are all older than this are dropped.
    pub retention: Option<std::time::Duration>,
}

/// The fields of a route that are encrypted just before a write, so that
/// everything before (dedup, the canary's comparison) sees plaintext.
#[derive(Clone)]
pub struct Sealing {
    pub cipher: Arc<FieldCipher>,
    /// (field, the context its values are bound to).
    pub fields: Vec<(String, String)>,
}

impl Sealing {
    fn seal(&self, rows: &[Row]) -> Vec<Row> {
        let mut rows = rows.to_vec();
        for row in &mut rows {
            for (field, context) in &self.fields {
                if let Some(value) = row.fields.get_mut(field)
                    && !value.is_null()
                {
                    *value = Value::String(self.cipher.seal_value(context, value));
                }
            }
        }
        rows
    }
}

impl Route {
    /// Creates or migrates the table or collection, then applies the
    /// retention; a refusal names the output and the sink.
    pub async fn prepare(&self) -> Result<Vec<Applied>, SinkError> {
        let mut applied = self
            .sink
            .prepare(&self.target, &self.stored)
            .await
            .map_err(|e| self.explain(e))?;
        let before = self
            .retention
            .and_then(|r| chrono::Duration::from_std(r).ok())
            .and_then(|r| chrono::Utc::now().checked_sub_signed(r));
        if let Some(before) = before {
            let dropped = self
                .sink
                .expire(&self.target, &self.stored, before.date_naive());
            applied.extend(dropped.await.map_err(|e| self.explain(e))?);
        }
        Ok(applied)
    }

    /// Partitions that need periodic care: periods ahead, retention.
    pub fn has_dated_partitions(&self) -> bool {
        matches!(
            self.decl.partitioning,
            Some(Partitioning::ByDay(_) | Partitioning::ByMonth(_))
        )
    }

    /// What `prepare` would do, changing nothing.
    pub async fn plan(&self) -> Result<Plan, SinkError> {
        self.sink.plan(&self.target, &self.stored).await
    }

    fn explain(&self, e: SinkError) -> SinkError {
        match e {
            SinkError::Incompatible(why) => SinkError::Incompatible(format!(
                "output '{}' (sink '{}'): {why}",
                self.decl.name, self.sink_name
            )),
            other => other,
        }
    }

    pub async fn write(&self, rows: &[Row]) -> Result<(), SinkError> {
        self.sink
            .write(&self.target, &self.stored, &self.sealed(rows))
            .await
    }

    /// `rows` as the sink stores them: sensitive fields encrypted.
    pub fn sealed<'r>(&self, rows: &'r [Row]) -> std::borrow::Cow<'r, [Row]> {
        match &self.sealing {
            Some(sealing) => std::borrow::Cow::Owned(sealing.seal(rows)),
            None => std::borrow::Cow::Borrowed(rows),
        }
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
        let cipher = match &config.encryption {
            Some(encryption) => Some(Arc::new(FieldCipher::from_config(encryption)?)),
            None if info.outputs.iter().any(|o| !o.sensitive.is_empty()) => {
                return Err(format!(
                    "{}: plugin '{name}' declares sensitive fields, which are encrypted before they leave the host; add [encryption] with a key (see docs/security.md)",
                    key("plugin")
                ));
            }
            None => None,
        };
        let mut outputs = BTreeMap::new();
        for decl in &info.outputs {
            let route = pipeline.routes.get(&decl.name);
            let retention = route.and_then(|r| r.retention);
            if let Some(retention) = retention {
                check_retention(decl, retention).map_err(|e| {
                    format!("{}: {e}", key(&format!("routes.{}.retention", decl.name)))
                })?;
            }
            let (sink_name, target) = match route {
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
            let sealing = cipher
                .as_ref()
                .filter(|_| !decl.sensitive.is_empty())
                .map(|c| Sealing {
                    cipher: c.clone(),
                    fields: decl
                        .sensitive
                        .iter()
                        .map(|f| (f.clone(), encryption::field_context(&decl.name, f)))
                        .collect(),
                });
            outputs.insert(
                decl.name.clone(),
                Route {
                    sink_name,
                    sink,
                    target,
                    decl: decl.clone(),
                    stored: stored(decl),
                    sealing,
                    retention,
                },
            );
        }
        let (dl_sink, dl_target) = config.dead_letter_sink(pipeline)?;
        // With [encryption], failed records are kept encrypted too (and a
        // replay reads them back whatever the version declares).
        let sealing = cipher.map(|cipher| Sealing {
            cipher,
            fields: vec![
                ("key".into(), encryption::DEAD_LETTER_KEY.into()),
                ("value".into(), encryption::DEAD_LETTER_VALUE.into()),
            ],
        });
        let dead_letter = Route {
            sink: sinks[&dl_sink].clone(),
            sink_name: dl_sink,
            target: dl_target,
            decl: dead_letter_decl(),
            stored: dead_letter_decl(),
            sealing,
            retention: None,
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

    /// Prepares every route (see `Route::prepare`); what it changed.
    pub async fn prepare(&self) -> Result<Vec<Applied>, SinkError> {
        let mut applied = Vec::new();
        for route in self.all() {
            applied.extend(route.prepare().await?);
        }
        Ok(applied)
    }

    /// The outputs' routes, then the dead letters'.
    pub fn all(&self) -> impl Iterator<Item = &Route> {
        self.outputs.values().chain([&self.dead_letter])
    }
}

/// A retention needs whole periods to drop: a table partitioned by day
/// (at least a day) or by month (at least a month).
fn check_retention(decl: &Output, retention: std::time::Duration) -> Result<(), String> {
    const DAY: u64 = 24 * 3600;
    let (least, period) = match &decl.partitioning {
        Some(Partitioning::ByDay(_)) => (DAY, "a day"),
        Some(Partitioning::ByMonth(_)) => (31 * DAY, "a month (31 days)"),
        other => {
            let how = other.as_ref().map_or("not partitioned".to_string(), |p| {
                format!("partitioned {p}")
            });
            return Err(format!(
                "output '{}' is {how}; a retention drops whole partitions, so it needs a plugin that declares `.partition_by_day(…)` or `.partition_by_month(…)`",
                decl.name
            ));
        }
    };
    const MOST: u64 = 100 * 366 * DAY;
    if retention.as_secs() > MOST {
        return Err(format!(
            "{} is more than 100 years; leave `retention` out to keep everything",
            humantime::format_duration(retention)
        ));
    }
    if retention.as_secs() < least {
        return Err(format!(
            "{} is shorter than {period}, the partitions of output '{}'",
            humantime::format_duration(retention),
            decl.name
        ));
    }
    Ok(())
}

/// A batch's writes, grouped by output, plus its dead letters.
#[derive(Default)]
pub struct Routed {
    pub rows: BTreeMap<String, Vec<Row>>,
    /// Per output, the index of the record each row came from.
    pub sources: BTreeMap<String, Vec<usize>>,
    pub dead_letters: Vec<Row>,
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
        let delete = out.op == Op::Delete;
        let checked = if delete {
            route
                .decl
                .check_key(value)
                .map_err(|e| format!("delete on '{}': {e}", out.output))
        } else {
            match route.decl.check_value(&mut value) {
                Ok(()) => match value {
                    Value::Object(fields) => Ok(fields),
                    _ => unreachable!("check_value accepts objects only"),
                },
                Err(e) => Err(format!("output '{}': {e}", out.output)),
            }
        };
        let mut fields = match checked {
            Ok(fields) => fields,
            Err(reason) => {
                routed.dead_letters.push(dead(reason));
                continue;
            }
        };
        let id = document_id(&route.decl, &fields, record, &out.output, *n);
        if route.decl.kind == OutputKind::Table && !delete {
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
            .push(Row { id, fields, delete });
    }
    routed.keep_last_per_key();
    routed
}

/// The declaration as a sink holds it: each sensitive field becomes text
/// (its values are ciphertexts; null stays null).
fn stored(decl: &Output) -> Output {
    let mut stored = decl.clone();
    for field in &mut stored.fields {
        if decl.sensitive.contains(&field.name) {
            field.ty = Type::Text(None);
        }
    }
    stored
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sluice_plugin_sdk::abi::OutputRecord;
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
            op: Op::Upsert,
            output: "orders".into(),
            value: br#"{"id": "c", "total": "many"}"#.to_vec(),
        });
        result.outputs.push(sluice_plugin_sdk::abi::OutputRecord {
            source: 2,
            op: Op::Upsert,
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

    #[test]
    fn a_delete_is_a_version_of_its_key_and_a_bad_one_is_a_dead_letter() {
        let config = config("", "");
        let routes = resolve(&config).unwrap();
        let records: Vec<_> = (0..6).map(testing::record).collect();
        let delete = |source: u32, output: &str, key: &str| OutputRecord {
            source,
            op: Op::Delete,
            output: output.into(),
            value: key.as_bytes().to_vec(),
        };
        // a: written, then deleted; b: deleted, then written again.
        let mut result = testing::orders(&[(0, "a", 1), (3, "b", 2)]);
        result.outputs.insert(1, delete(1, "orders", r#""a""#));
        result
            .outputs
            .insert(2, delete(2, "orders", r#"{"id": "b"}"#));
        result.outputs.push(delete(4, "orders", r#"{"total": 3}"#));
        result.outputs.push(delete(5, "events", r#""x""#));
        let routed = route(&records, result, &routes, &testing::context());
        let kept: Vec<(String, bool)> = routed.rows["orders"]
            .iter()
            .map(|r| (r.id.to_string(), r.delete))
            .collect();
        assert_eq!(kept, [(r#""a""#.into(), true), (r#""b""#.into(), false)]);
        assert_eq!(
            routed.rows["orders"][0].fields,
            json!({"id": "a"}).as_object().unwrap().clone(),
            "a delete carries the key fields only"
        );
        let reasons: Vec<&str> = routed
            .dead_letters
            .iter()
            .map(|d| d.fields["reason"].as_str().unwrap())
            .collect();
        assert_eq!(
            reasons,
            [
                "delete on 'orders': the key of a delete has no 'id'",
                "delete on 'events': output 'events' declares no primary key, so nothing can be deleted from it",
            ]
        );
    }
}
