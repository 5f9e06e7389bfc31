//! Values that may hold credentials: resolved from `${env:NAME}` and
//! `${file:PATH}` references, and never printed. Every value resolved is
//! remembered, so that [`scrub`] can take it out of any text about to
//! leave the process (log lines, stored and served errors, dead letters),
//! whatever library wrote that text.

use serde::{Deserialize, Deserializer};
use std::borrow::Cow;
use std::fmt;
use std::sync::RwLock;

/// Values shorter than this are not scrubbed: replacing every "ab" in
/// every log line would garble it and hide nothing. `validate` warns.
pub const SHORTEST_SCRUBBED: usize = 6;

/// (value, the reference it came from), longest value first.
static RESOLVED: RwLock<Vec<(String, String)>> = RwLock::new(Vec::new());

fn remember(value: &str, reference: &str) {
    if value.len() < SHORTEST_SCRUBBED {
        return;
    }
    let mut known = RESOLVED.write().unwrap_or_else(|e| e.into_inner());
    // In a URL the value is percent-encoded, in JSON (API answers) and in
    // `?`-formatted log fields it is escaped: scrub every spelling.
    let json = serde_json::to_string(value).unwrap_or_default();
    let json = json.trim_matches('"').to_string();
    let spellings = [
        value.to_string(),
        url_encode(value),
        json,
        value.escape_debug().to_string(),
    ];
    for spelling in spellings {
        if !known.iter().any(|(v, _)| *v == spelling) {
            known.push((spelling, reference.to_string()));
        }
    }
    known.sort_by_key(|(v, _)| std::cmp::Reverse(v.len()));
}

/// `text` with every secret value this process resolved replaced by its
/// reference, e.g. `${env:KAFKA_PASSWORD}`.
pub fn scrub(text: &str) -> Cow<'_, str> {
    let known = RESOLVED.read().unwrap_or_else(|e| e.into_inner());
    let mut text = Cow::Borrowed(text);
    for (value, reference) in known.iter() {
        if text.contains(value.as_str()) {
            text = Cow::Owned(text.replace(value.as_str(), reference));
        }
    }
    text
}

/// Percent-encodes everything but RFC 3986's unreserved characters: a
/// value in a URL's user information, a name as one path segment (so
/// `pro%62e` or `a/b` names exactly that).
pub fn url_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

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
        self.substitute(|_, value| value.to_string())
    }

    /// `resolve` for a URL (a connection string): values substituted into
    /// its user information (`scheme://USER:PASSWORD@host`) are
    /// percent-encoded, so a password with `/`, `@` or `?` stays one
    /// password instead of breaking the URL (and showing in its parse
    /// error); a reference elsewhere (a whole URL, a host list) is taken
    /// as written.
    pub fn resolve_url(&self) -> Result<String, String> {
        let userinfo = self.raw.find("://").map(|scheme| {
            let start = scheme + 3;
            let end = self.raw[start..].rfind('@').map_or(start, |at| start + at);
            start..end
        });
        self.substitute(|at, value| {
            if userinfo.as_ref().is_some_and(|u| u.contains(&at)) {
                url_encode(value)
            } else {
                value.to_string()
            }
        })
    }

    /// Resolves it without keeping the value: what would stop a start (a
    /// variable not set, a file not readable), or warnings about values
    /// too short to be scrubbed from output.
    pub fn check(&self) -> Result<Vec<String>, String> {
        self.resolve()?;
        let mut warnings = Vec::new();
        for reference in self.references() {
            let value = Secret::new(reference).resolve()?;
            if !value.is_empty() && value.len() < SHORTEST_SCRUBBED {
                warnings.push(format!(
                    "{reference} is shorter than {SHORTEST_SCRUBBED} characters, too short to be taken out of logs and errors; use a longer secret"
                ));
            }
        }
        Ok(warnings)
    }

    /// The text as written, references unresolved.
    pub fn as_written(&self) -> &str {
        &self.raw
    }

    /// The references it holds, e.g. `${env:DB_PASSWORD}`.
    pub fn references(&self) -> Vec<&str> {
        let mut found = Vec::new();
        let mut rest = self.raw.as_str();
        while let Some(start) = rest.find("${") {
            let Some(end) = rest[start..].find('}') else {
                break;
            };
            found.push(&rest[start..start + end + 1]);
            rest = &rest[start + end + 1..];
        }
        found
    }

    /// Substitutes every reference; `encode(position in the raw text,
    /// value)` spells each value.
    fn substitute(&self, encode: impl Fn(usize, &str) -> String) -> Result<String, String> {
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
            remember(&value, &rest[start..start + end + 1]);
            let at = self.raw.len() - rest.len() + start;
            out.push_str(&encode(at, &value));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolved_values_are_scrubbed_in_both_spellings() {
        // SAFETY: no other test reads this variable.
        unsafe { std::env::set_var("SLUICE_SCRUB_TEST", "p@ss/w?rd-4711") };
        let url = Secret::new("mongodb://u:${env:SLUICE_SCRUB_TEST}@127.0.0.1/db");
        assert_eq!(
            url.resolve_url().unwrap(),
            "mongodb://u:p%40ss%2Fw%3Frd-4711@127.0.0.1/db"
        );
        assert_eq!(url.references(), ["${env:SLUICE_SCRUB_TEST}"]);
        let said = "auth failed for u:p%40ss%2Fw%3Frd-4711 (password p@ss/w?rd-4711)";
        assert_eq!(
            scrub(said),
            "auth failed for u:${env:SLUICE_SCRUB_TEST} (password ${env:SLUICE_SCRUB_TEST})"
        );
        assert!(matches!(scrub("nothing secret"), Cow::Borrowed(_)));
        // JSON and Debug escape a quote or a backslash: scrubbed too.
        unsafe { std::env::set_var("SLUICE_SCRUB_QUOTE", "a\"b\\c-4712") };
        Secret::new("${env:SLUICE_SCRUB_QUOTE}").resolve().unwrap();
        assert_eq!(
            scrub(r#"{"error": "bad a\"b\\c-4712"}"#),
            r#"{"error": "bad ${env:SLUICE_SCRUB_QUOTE}"}"#
        );
        // A whole URL, or a host, from a reference is taken as written.
        unsafe { std::env::set_var("SLUICE_SCRUB_URL", "mongodb://h1:27017,h2:27017/?x=1") };
        assert_eq!(
            Secret::new("${env:SLUICE_SCRUB_URL}")
                .resolve_url()
                .unwrap(),
            "mongodb://h1:27017,h2:27017/?x=1"
        );
        assert_eq!(
            Secret::new("mysql://u:p@${env:SLUICE_SCRUB_URL}")
                .resolve_url()
                .unwrap(),
            "mysql://u:p@mongodb://h1:27017,h2:27017/?x=1"
        );
    }
}
