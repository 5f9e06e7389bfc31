//! `docs/configuration.md`, generated from the config structs' doc comments
//! (through their JSON schema), so the reference cannot drift from the
//! code: a test fails when the checked-in file differs. To rewrite it:
//! `SLUICE_UPDATE_DOCS=1 cargo test -p sluice --lib config_reference`.

use super::Config;
use serde_json::{Map, Value};

const HEADER: &str = "\
# Configuration reference

Every key of a Sluice config file (TOML), generated from the doc comments of
the config structs in `host/src/config/` — do not edit by hand; run
`SLUICE_UPDATE_DOCS=1 cargo test -p sluice --lib config_reference`.

- Unknown keys are errors that name the file, the key path and the line.
- Durations are text: `\"500ms\"`, `\"30s\"`, `\"5m\"`, `\"1h 30m\"`.
- Secrets (connection strings, passwords, Kafka options) may hold
  `${env:NAME}` or `${file:PATH}`; the value is read at start and never
  printed.
- `sluice validate --config FILE` checks a file without connecting anywhere.

A complete example that runs as is: [`config/demo.toml`](../config/demo.toml).
Concepts behind the keys: [concepts](concepts.md).
";

/// The whole reference, as markdown.
pub fn markdown() -> String {
    let schema = serde_json::to_value(schemars::schema_for!(Config)).unwrap();
    let defs = schema["$defs"].as_object().cloned().unwrap_or_default();
    let mut out = String::from(HEADER);
    let mut r = Renderer {
        defs: &defs,
        out: &mut out,
    };
    r.object("top level", "", &schema);
    out
}

struct Renderer<'a> {
    defs: &'a Map<String, Value>,
    out: &'a mut String,
}

impl Renderer<'_> {
    /// Follows a `$ref` to its definition.
    fn resolve<'v>(&'v self, schema: &'v Value) -> &'v Value {
        match schema.get("$ref").and_then(Value::as_str) {
            Some(r) => &self.defs[r.trim_start_matches("#/$defs/")],
            None => schema,
        }
    }

    /// A section: a table of the object's keys, then a section for each
    /// key that is itself a table (or a list or map of tables).
    fn object(&mut self, title: &str, path: &str, schema: &Value) {
        let schema = self.resolve(schema).clone();
        // A table tagged by `type` (the sinks): one section per type.
        if let Some(variants) = schema.get("oneOf").and_then(Value::as_array) {
            for variant in variants {
                if let Some(name) = variant["properties"]["type"]["const"].as_str() {
                    let title = format!("{title} with `type = \"{name}\"`");
                    self.object(&title, path, variant);
                }
            }
            return;
        }
        self.out.push_str(&format!("\n## {title}\n\n"));
        if let Some(about) = schema.get("description").and_then(Value::as_str)
            && !path.is_empty()
        {
            self.out.push_str(&format!("{}\n\n", one_paragraph(about)));
        }
        let required: Vec<&str> = schema["required"]
            .as_array()
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let empty = Map::new();
        let properties = schema["properties"].as_object().unwrap_or(&empty);
        self.out
            .push_str("| key | type | default | meaning |\n|---|---|---|---|\n");
        let mut nested = Vec::new();
        for (key, property) in properties {
            let full = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            let (kind, sub) = self.kind_of(&full, property);
            if let Some(sub) = sub {
                nested.push(sub);
            }
            let default = match property.get("default") {
                Some(Value::Null) | None if required.contains(&key.as_str()) => {
                    "required".to_string()
                }
                Some(Value::Null) | None => "—".to_string(),
                Some(v) => format!("`{}`", toml_value(v)),
            };
            let constant = property.get("const").map(|c| format!("`{c}`"));
            let about = property
                .get("description")
                .or_else(|| self.resolve(property).get("description"))
                .and_then(Value::as_str)
                .map(one_paragraph)
                .or(constant)
                .unwrap_or_default();
            let about = match self.choices(property) {
                Some(choices) => format!("{about} {choices}"),
                None => about,
            };
            self.out.push_str(&format!(
                "| `{key}` | {kind} | {default} | {} |\n",
                about.replace('|', "\\|")
            ));
        }
        for (title, path, schema) in nested {
            self.object(&title, &path, &schema);
        }
    }

    /// A key's type as the reader writes it, and the section it opens, if
    /// it is a table.
    fn kind_of(&self, path: &str, property: &Value) -> (String, Option<(String, String, Value)>) {
        // `Option<T>`: T or null.
        if let Some(options) = property.get("anyOf").and_then(Value::as_array)
            && let Some(some) = options
                .iter()
                .find(|o| o.get("type") != Some(&Value::from("null")))
        {
            return self.kind_of(path, some);
        }
        let target = self.resolve(property);
        if target.get("properties").is_some() {
            return see_below("table", format!("`[{path}]`"), path.to_string(), target);
        }
        if let Some(variants) = target.get("oneOf").and_then(Value::as_array)
            && variants.iter().all(|v| v.get("properties").is_some())
        {
            return (
                format!("table, one of: {}", self.variant_names(variants)),
                None,
            );
        }
        match target.get("type").and_then(Value::as_str) {
            Some("array") => {
                let items = &target["items"];
                if self.resolve(items).get("properties").is_some() {
                    let title = format!("`[[{path}]]`");
                    return see_below("list of tables", title, format!("{path}[]"), items);
                }
                (format!("list of {}", self.kind_of(path, items).0), None)
            }
            Some("object") => {
                let values = &target["additionalProperties"];
                let inner = self.resolve(values);
                if inner.get("properties").is_some() || inner.get("oneOf").is_some() {
                    let title = format!("`[{path}.NAME]`");
                    return see_below("tables by name", title, format!("{path}.NAME"), inner);
                }
                (format!("table of {}", self.kind_of(path, values).0), None)
            }
            _ => (scalar(target), None),
        }
    }

    fn variant_names(&self, variants: &[Value]) -> String {
        variants
            .iter()
            .filter_map(|v| v["properties"]["type"]["const"].as_str())
            .map(|t| format!("`type = \"{t}\"`"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// For a key whose values are a fixed set: each value and its meaning.
    fn choices(&self, property: &Value) -> Option<String> {
        let target = self.resolve(property);
        if let Some(values) = target.get("enum").and_then(Value::as_array) {
            let values: Vec<String> = values.iter().map(|v| format!("`{v}`")).collect();
            return Some(format!("Values: {}.", values.join(", ")));
        }
        let variants = target.get("oneOf")?.as_array()?;
        let described: Vec<String> = variants
            .iter()
            .filter_map(|v| {
                let value = v.get("const")?.as_str()?;
                let about = v.get("description").and_then(Value::as_str);
                Some(match about {
                    Some(about) => format!(
                        "`\"{value}\"`: {}",
                        one_paragraph(about).trim_end_matches('.')
                    ),
                    None => format!("`\"{value}\"`"),
                })
            })
            .collect();
        (!described.is_empty()).then(|| format!("Values: {}.", described.join("; ")))
    }
}

/// A key that opens its own section: its type, with a link to the section.
fn see_below(
    kind: &str,
    title: String,
    path: String,
    schema: &Value,
) -> (String, Option<(String, String, Value)>) {
    let link = anchor(&title);
    (
        format!("{kind}, see [below](#{link})"),
        Some((title, path, schema.clone())),
    )
}

fn scalar(schema: &Value) -> String {
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    let format = schema.get("format").and_then(Value::as_str);
    let name = match (types.iter().find(|t| **t != "null"), format) {
        (Some(&"string"), Some("duration")) => "duration",
        (Some(&"string"), _) => "text",
        (Some(&"integer"), _) => "integer",
        (Some(&"number"), _) => "number",
        (Some(&"boolean"), _) => "boolean",
        _ => "text",
    };
    name.to_string()
}

fn toml_value(v: &Value) -> String {
    match v {
        Value::String(s) => format!("\"{s}\""),
        Value::Array(items) if items.is_empty() => "[]".into(),
        Value::Object(map) if map.is_empty() => "{}".into(),
        other => other.to_string(),
    }
}

/// Doc comments wrap at ~76 columns: join their lines.
fn one_paragraph(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// GitHub's anchor for a heading.
fn anchor(title: &str) -> String {
    title
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            'a'..='z' | '0'..='9' | '-' | '_' => Some(c),
            ' ' => Some('-'),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reference_is_up_to_date() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
        let fresh = markdown();
        if std::env::var_os("SLUICE_UPDATE_DOCS").is_some() {
            std::fs::write(&path, &fresh).unwrap();
            return;
        }
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            checked_in == fresh,
            "docs/configuration.md is stale: the config structs' doc comments changed. \
             Run `SLUICE_UPDATE_DOCS=1 cargo test -p sluice --lib config_reference` and commit it."
        );
    }
}
