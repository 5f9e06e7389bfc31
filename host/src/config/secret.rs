//! Values that may hold credentials: resolved from `${env:NAME}` and
//! `${file:PATH}` references, and never printed.

use serde::{Deserialize, Deserializer};
use std::fmt;

#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    raw: String,
}

impl Secret {
    pub fn new(raw: impl Into<String>) -> Self {
        Secret { raw: raw.into() }
    }

    /// The value with every reference substituted. Errors name the
    /// reference, never a value.
    pub fn resolve(&self) -> Result<String, String> {
        let mut out = String::new();
        let mut rest = self.raw.as_str();
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let end = rest[start..]
                .find('}')
                .ok_or_else(|| "unterminated '${' reference".to_string())?;
            let reference = &rest[start + 2..start + end];
            let value = match reference.split_once(':') {
                Some(("env", name)) => std::env::var(name).map_err(|_| {
                    format!("environment variable {name} (from ${{env:{name}}}) is not set")
                })?,
                Some(("file", path)) => std::fs::read_to_string(path)
                    .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
                    .map_err(|e| format!("cannot read ${{file:{path}}}: {e}"))?,
                _ => {
                    return Err(format!(
                        "'${{{reference}}}' is not ${{env:NAME}} or ${{file:PATH}}"
                    ));
                }
            };
            out.push_str(&value);
            rest = &rest[start + end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret::new)
    }
}

/// In the configuration reference a secret is text (it may hold
/// `${env:NAME}` or `${file:PATH}`).
impl schemars::JsonSchema for Secret {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Secret".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        String::json_schema(generator)
    }
}
