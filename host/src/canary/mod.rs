//! Canary reload: a new plugin version first runs in shadow on the same
//! batches as the active one. Its outputs are compared with what was
//! written, never written themselves, and summarised in a
//! `model::canary::Report`; the version is promoted after `canary_batches`
//! clean batches in a row, or by hand.

mod shadow;

pub use shadow::{Shadow, ShadowCall};

use crate::model::canary::{BatchDiff, Difference, MAX_SAMPLES};
use crate::router::Routed;
use serde_json::Value;
use std::collections::BTreeMap;

/// Compares the active version's routed batch with the canary's.
pub fn compare(records: usize, active: &Routed, canary: &Routed) -> BatchDiff {
    let mut diff = BatchDiff {
        records,
        dead_letters: (
            active.dead_letters.len() as u64,
            canary.dead_letters.len() as u64,
        ),
        ..Default::default()
    };
    let outputs: std::collections::BTreeSet<&String> =
        active.rows.keys().chain(canary.rows.keys()).collect();
    for output in outputs {
        let by_id = |routed: &Routed| -> BTreeMap<String, Value> {
            routed.rows.get(output).map_or_else(BTreeMap::new, |rows| {
                rows.iter()
                    .map(|r| (r.id.to_string(), Value::Object(r.fields.clone())))
                    .collect()
            })
        };
        let (a, c) = (by_id(active), by_id(canary));
        diff.outputs
            .insert(output.clone(), (a.len() as u64, c.len() as u64));
        let ids: std::collections::BTreeSet<&String> = a.keys().chain(c.keys()).collect();
        for id in ids {
            let (old, new) = (a.get(id), c.get(id));
            if old == new {
                continue;
            }
            diff.differing_rows += 1;
            if diff.samples.len() < MAX_SAMPLES {
                diff.samples.push(Difference {
                    output: output.clone(),
                    id: serde_json::from_str(id).unwrap_or(Value::Null),
                    active: old.cloned(),
                    canary: new.cloned(),
                });
            }
        }
    }
    diff
}

/// Takes the values of sensitive fields out of the samples, which the API
/// and `sluice plugins` show.
pub fn mask_sensitive(diff: &mut BatchDiff, routes: &crate::router::Routes) {
    for sample in &mut diff.samples {
        let Some(route) = routes.outputs.get(&sample.output) else {
            continue;
        };
        let rows = [sample.active.as_mut(), sample.canary.as_mut()];
        for row in rows.into_iter().flatten() {
            for field in &route.decl.sensitive {
                if let Some(value) = row.get_mut(field) {
                    *value = Value::String("(sensitive)".into());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Row;
    use crate::model::canary::Report;
    use serde_json::json;

    fn routed(rows: &[(&str, Value)], dead: usize) -> Routed {
        let mut r = Routed::default();
        for (id, fields) in rows {
            let Value::Object(fields) = fields.clone() else {
                panic!()
            };
            r.rows
                .entry("orders".into())
                .or_default()
                .push(Row::upsert(json!(id), fields));
        }
        r.dead_letters = (0..dead)
            .map(|i| Row::upsert(json!(i), Default::default()))
            .collect();
        r
    }

    #[test]
    fn sensitive_values_never_reach_the_samples() {
        use crate::router::{Route, Routes};
        use sluice_plugin_sdk::schema::{Output, Type};
        let route = |decl: Output| Route {
            sink_name: "s".into(),
            sink: std::sync::Arc::new(crate::sink::MemorySink::new()),
            target: decl.name.clone(),
            stored: decl.clone(),
            decl,
            sealing: None,
            retention: None,
        };
        let orders = Output::table("orders")
            .field("s", Type::text(8))
            .field("card", Type::text(32))
            .sensitive(["card"]);
        let routes = Routes {
            outputs: [("orders".to_string(), route(orders))].into(),
            dead_letter: route(crate::model::dead_letter_decl()),
        };
        let active = routed(&[("a", json!({"s": "paid", "card": "4111-old"}))], 0);
        let canary = routed(&[("a", json!({"s": "PAID", "card": "4111-new"}))], 0);
        let mut diff = compare(1, &active, &canary);
        mask_sensitive(&mut diff, &routes);
        let shown = serde_json::to_string(&diff.samples).unwrap();
        assert!(!shown.contains("4111"), "{shown}");
        assert!(
            shown.contains("(sensitive)") && shown.contains("PAID"),
            "{shown}"
        );
    }

    #[test]
    fn compare_finds_changed_missing_and_extra_rows() {
        let active = routed(
            &[
                ("a", json!({"s": "paid"})),
                ("b", json!({"s": "new"})),
                ("c", json!({"s": "x"})),
            ],
            1,
        );
        let canary = routed(
            &[
                ("a", json!({"s": "PAID"})),
                ("b", json!({"s": "new"})),
                ("d", json!({"s": "y"})),
            ],
            1,
        );
        let diff = compare(4, &active, &canary);
        assert_eq!(diff.outputs["orders"], (3, 3));
        assert_eq!(diff.differing_rows, 3, "a changed, c missing, d extra");
        assert_eq!(diff.samples[0].canary, Some(json!({"s": "PAID"})));
        assert!(diff.clean());

        let mut report = Report::new("2.0.0", "abc");
        report.add(diff);
        report.add(compare(4, &active, &routed(&[], 4)));
        assert_eq!(
            (report.batches, report.clean_batches, report.clean_streak),
            (2, 1, 0)
        );
        assert!(
            report
                .summary()
                .contains("4 dead letters from the canary against 1")
        );
        report.add(BatchDiff::failed(4, "trap".into()));
        report.add(compare(4, &active, &active));
        assert_eq!((report.clean_streak, report.records), (1, 16));
        assert_eq!(report.samples.len(), MAX_SAMPLES.min(3 + 3));
    }
}
