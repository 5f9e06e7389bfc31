//! Declared schema that evolves. Before a plugin version serves, every
//! table and collection it would write (through every pipeline that uses
//! it) is compared with its declaration: the sinks plan the changes (see
//! `model::migration`), and a version whose plan would lose data is refused
//! here, so the version serving now goes on. `sluice schema plan` prints
//! the same plan without changing anything.

use crate::config::Config;
use crate::model::Plan;
use crate::router::Routes;
use crate::runtime::{Admission, PluginVersion, Registry};
use crate::sink::Sinks;
use sluice_plugin_sdk::schema::{OutputKind, Plugin};
use std::sync::Arc;

/// One route's plan: pipeline, output, sink and what would change.
#[derive(Debug, Clone)]
pub struct RoutePlan {
    pub pipeline: String,
    pub output: String,
    pub sink: String,
    pub plan: Plan,
}

/// What serving `info` (plugin `name`) would change in every sink its
/// pipelines write, or, for a route the sink cannot plan, why. `serving`
/// is the declaration in use now, if any: an output may not change kind
/// or, for documents (whose `_id` is made of it), primary key.
pub async fn plan_version(
    config: &Config,
    sinks: &Sinks,
    name: &str,
    info: &Plugin,
    serving: Option<&Plugin>,
) -> Result<Vec<RoutePlan>, String> {
    let mut plans = Vec::new();
    for pipeline in config.pipelines.iter().filter(|p| p.plugin == name) {
        let routes = Routes::for_declaration(config, pipeline, name, info, sinks)?;
        for route in routes.all() {
            let mut plan = route.plan().await.map_err(|e| {
                format!(
                    "pipeline '{}', output '{}': sink '{}' cannot be inspected: {e}",
                    pipeline.name, route.decl.name, route.sink_name
                )
            })?;
            if let Some(refusal) = serving.and_then(|old| changed_identity(old, &route.decl)) {
                plan.refuse(refusal);
            }
            plans.push(RoutePlan {
                pipeline: pipeline.name.clone(),
                output: route.decl.name.clone(),
                sink: route.sink_name.clone(),
                plan,
            });
        }
    }
    Ok(plans)
}

/// What a sink cannot see: an output that changed kind (its rows would
/// stay behind in the other sink), a document output whose key changed.
fn changed_identity(old: &Plugin, new: &sluice_plugin_sdk::schema::Output) -> Option<String> {
    let before = old.get_output(&new.name)?;
    let kind = |k: OutputKind| match k {
        OutputKind::Table => "a table",
        OutputKind::Document => "a document",
    };
    if before.kind != new.kind {
        return Some(format!(
            "output '{}' was {} and is now {}; what it stored would stay behind where it is. Keep the kind, or declare the new kind under a new output name",
            new.name,
            kind(before.kind),
            kind(new.kind)
        ));
    }
    if new.kind == OutputKind::Document && before.primary_key != new.primary_key {
        return Some(format!(
            "output '{}': primary key was ({}) and is now ({}); documents are identified by it, so every key would be written again beside the old ones. Keep the key, or declare a new output",
            new.name,
            before.primary_key.join(", "),
            new.primary_key.join(", ")
        ));
    }
    None
}

/// The refusals in `plans`, each naming pipeline, output and sink.
pub fn refusals(plans: &[RoutePlan]) -> Vec<String> {
    plans
        .iter()
        .flat_map(|p| {
            p.plan.refusals.iter().map(move |r| {
                format!(
                    "pipeline '{}', output '{}' (sink '{}', {}): {r}",
                    p.pipeline, p.output, p.sink, p.plan.target
                )
            })
        })
        .collect()
}

/// The hot-reload gate: a version whose schema changes are refused is not
/// published. A sink that cannot be inspected right now does not block a
/// version: its pipelines plan again before the first batch and pause the
/// version then if it is refused.
pub struct Gate {
    pub config: Arc<Config>,
    pub sinks: Sinks,
    pub registry: Arc<Registry>,
}

#[async_trait::async_trait]
impl Admission for Gate {
    async fn admit(&self, version: &PluginVersion) -> Result<Vec<String>, String> {
        let serving = self.registry.current(&version.name);
        let refuse = |refused: Vec<String>| {
            format!(
                "{} ({} {}): schema change refused: {}",
                version.path.display(),
                version.name,
                version.info.version,
                refused.join("; ")
            )
        };
        let plans = plan_version(
            &self.config,
            &self.sinks,
            &version.name,
            &version.info,
            serving.as_ref().map(|v| &v.info),
        )
        .await;
        let plans = match plans {
            Ok(plans) => plans,
            Err(e) => {
                // What no sink can tell is still judged, from the
                // declarations alone.
                let changed: Vec<String> = serving
                    .iter()
                    .flat_map(|old| {
                        let new = &version.info.outputs;
                        new.iter().filter_map(|o| changed_identity(&old.info, o))
                    })
                    .collect();
                if !changed.is_empty() {
                    return Err(refuse(changed));
                }
                tracing::warn!(plugin = %version.name, "schema changes not checked before loading: {e}");
                return Ok(vec![]);
            }
        };
        let refused = refusals(&plans);
        if !refused.is_empty() {
            return Err(refuse(refused));
        }
        Ok(plans
            .iter()
            .flat_map(|p| {
                p.plan
                    .steps
                    .iter()
                    .map(move |s| format!("{}: {}", p.plan.target, s.what))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_plugin_sdk::schema::{Output, Type};

    fn plugin(output: Output) -> Plugin {
        Plugin::new("orders", "1.0.0").output(output)
    }

    #[test]
    fn an_output_that_changes_kind_is_refused() {
        let table = Output::table("orders")
            .field("id", Type::text(8))
            .primary_key(["id"]);
        let document = Output::document("orders")
            .field("id", Type::text(8))
            .primary_key(["id"]);
        let refusal = changed_identity(&plugin(table), &document).unwrap();
        assert!(
            refusal.starts_with("output 'orders' was a table and is now a document"),
            "{refusal}"
        );
    }

    #[test]
    fn a_document_key_that_changes_is_refused() {
        let old = Output::document("events")
            .field("id", Type::text(8))
            .field("at", Type::Timestamp)
            .primary_key(["id"]);
        let new = Output {
            primary_key: vec!["id".into(), "at".into()],
            ..old.clone()
        };
        let refusal = changed_identity(&plugin(old.clone()), &new).unwrap();
        assert!(
            refusal.starts_with("output 'events': primary key was (id) and is now (id, at)"),
            "{refusal}"
        );
        assert_eq!(changed_identity(&plugin(old.clone()), &old), None);
        // A new output has nothing to compare with.
        let other = Output::document("other").field("id", Type::text(8));
        assert_eq!(changed_identity(&plugin(old), &other), None);
    }
}
