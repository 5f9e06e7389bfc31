//! Output declarations: what a plugin promises to emit, and the checks the
//! host (and the native test harness) apply to every emitted value.

use serde_json::{Map, Value};
use std::collections::HashSet;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutputKind {
    /// Stored as documents (MongoDB by default).
    Document,
    /// Stored as rows (MySQL by default).
    Table,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    /// UTF-8 text with an optional maximum length in characters.
    Text(Option<u32>),
    Integer,
    Float,
    Boolean,
    Decimal {
        precision: u8,
        scale: u8,
    },
    Timestamp,
    Json,
}

impl Type {
    /// Text of at most `max_chars` characters: usable in keys and indexes.
    pub const fn text(max_chars: u32) -> Type {
        Type::Text(Some(max_chars))
    }

    pub const fn decimal(precision: u8, scale: u8) -> Type {
        Type::Decimal { precision, scale }
    }

    fn indexable(&self) -> bool {
        !matches!(self, Type::Text(None) | Type::Json)
    }

    /// Why values of this type cannot identify a row: every sink must
    /// agree on whether two keys are equal, and for these they could not.
    fn why_not_a_key(&self) -> Option<&'static str> {
        match self {
            Type::Float => Some(
                "a float cannot be a key: floating-point values compare inexactly, and MySQL and MongoDB disagree on keys such as 1 and 1.0 written differently; use integer, decimal or text",
            ),
            Type::Json => Some(
                "json cannot be a key: MongoDB compares objects field by field in order, MySQL cannot index json; use text or integer fields",
            ),
            Type::Text(_)
            | Type::Integer
            | Type::Boolean
            | Type::Decimal { .. }
            | Type::Timestamp => None,
        }
    }
}

/// As the SDK spells it: `text(64)`, `decimal(12,2)`, `timestamp`.
impl std::fmt::Display for Type {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Type::Text(Some(n)) => write!(f, "text({n})"),
            Type::Text(None) => f.write_str("text"),
            Type::Integer => f.write_str("integer"),
            Type::Float => f.write_str("float"),
            Type::Boolean => f.write_str("boolean"),
            Type::Decimal { precision, scale } => write!(f, "decimal({precision},{scale})"),
            Type::Timestamp => f.write_str("timestamp"),
            Type::Json => f.write_str("json"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub ty: Type,
    pub nullable: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Index {
    pub name: String,
    pub fields: Vec<String>,
    pub unique: bool,
}

/// How a table is split into partitions: by the day or month of a
/// timestamp (old ones can then be dropped whole), or by a hash of a key
/// into a fixed number of partitions (spreads writes and locks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Partitioning {
    ByDay(String),
    ByMonth(String),
    ByHash { field: String, partitions: u16 },
}

impl Partitioning {
    /// The field that decides a row's partition.
    pub fn field(&self) -> &str {
        match self {
            Partitioning::ByDay(f) | Partitioning::ByMonth(f) => f,
            Partitioning::ByHash { field, .. } => field,
        }
    }
}

/// As the SDK spells it: `by day of ts`, `by hash of id into 8`.
impl std::fmt::Display for Partitioning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Partitioning::ByDay(field) => write!(f, "by day of {field}"),
            Partitioning::ByMonth(field) => write!(f, "by month of {field}"),
            Partitioning::ByHash { field, partitions } => {
                write!(f, "by hash of {field} into {partitions}")
            }
        }
    }
}

/// The most hash partitions a table may declare.
pub const MAX_HASH_PARTITIONS: u16 = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub name: String,
    pub kind: OutputKind,
    pub fields: Vec<Field>,
    pub primary_key: Vec<String>,
    pub indexes: Vec<Index>,
    /// Tables only: how the table is partitioned, if it is.
    pub partitioning: Option<Partitioning>,
    /// Documents only: the fields a sharded cluster spreads documents by.
    pub shard_key: Vec<String>,
    /// Fields the host encrypts before they leave the process.
    pub sensitive: Vec<String>,
}

impl Output {
    pub fn table(name: &str) -> Self {
        Self::new(name, OutputKind::Table)
    }

    pub fn document(name: &str) -> Self {
        Self::new(name, OutputKind::Document)
    }

    fn new(name: &str, kind: OutputKind) -> Self {
        Output {
            name: name.into(),
            kind,
            fields: vec![],
            primary_key: vec![],
            indexes: vec![],
            partitioning: None,
            shard_key: vec![],
            sensitive: vec![],
        }
    }

    /// A required (NOT NULL) field.
    pub fn field(mut self, name: &str, ty: Type) -> Self {
        self.fields.push(Field {
            name: name.into(),
            ty,
            nullable: false,
        });
        self
    }

    /// A field that may be null or absent.
    pub fn optional(mut self, name: &str, ty: Type) -> Self {
        self.fields.push(Field {
            name: name.into(),
            ty,
            nullable: true,
        });
        self
    }

    pub fn primary_key<const N: usize>(mut self, fields: [&str; N]) -> Self {
        self.primary_key = fields.iter().map(|f| f.to_string()).collect();
        self
    }

    pub fn index<const N: usize>(self, name: &str, fields: [&str; N]) -> Self {
        self.add_index(name, &fields, false)
    }

    pub fn unique_index<const N: usize>(self, name: &str, fields: [&str; N]) -> Self {
        self.add_index(name, &fields, true)
    }

    fn add_index(mut self, name: &str, fields: &[&str], unique: bool) -> Self {
        let fields = fields.iter().map(|f| f.to_string()).collect();
        self.indexes.push(Index {
            name: name.into(),
            fields,
            unique,
        });
        self
    }

    /// A table partitioned by the day of a timestamp field: one partition
    /// per day, created ahead of time, droppable after a retention period.
    pub fn partition_by_day(mut self, field: &str) -> Self {
        self.partitioning = Some(Partitioning::ByDay(field.into()));
        self
    }

    /// A table partitioned by the month of a timestamp field.
    pub fn partition_by_month(mut self, field: &str) -> Self {
        self.partitioning = Some(Partitioning::ByMonth(field.into()));
        self
    }

    /// A table spread over `partitions` partitions by a hash of `field`.
    pub fn partition_by_hash(mut self, field: &str, partitions: u16) -> Self {
        self.partitioning = Some(Partitioning::ByHash {
            field: field.into(),
            partitions,
        });
        self
    }

    /// The shard key of a document output (used by sharded clusters).
    pub fn shard_key<const N: usize>(mut self, fields: [&str; N]) -> Self {
        self.shard_key = fields.iter().map(|f| f.to_string()).collect();
        self
    }

    /// Fields the host encrypts (authenticated encryption, keys in the
    /// host's config) before a value leaves the process: the sinks and
    /// the dead letters hold ciphertext. A sensitive field cannot be part
    /// of a key, an index, the partitioning or the shard key.
    pub fn sensitive<const N: usize>(mut self, fields: [&str; N]) -> Self {
        self.sensitive = fields.iter().map(|f| f.to_string()).collect();
        self
    }

    pub fn get_field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }
}

/// What `describe` returns: the plugin's identity and outputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plugin {
    pub name: String,
    pub version: String,
    pub outputs: Vec<Output>,
}

impl Plugin {
    pub fn new(name: &str, version: &str) -> Self {
        Plugin {
            name: name.into(),
            version: version.into(),
            outputs: vec![],
        }
    }

    pub fn output(mut self, output: Output) -> Self {
        self.outputs.push(output);
        self
    }

    pub fn get_output(&self, name: &str) -> Option<&Output> {
        self.outputs.iter().find(|o| o.name == name)
    }

    /// Checks the declaration is usable: names, keys, indexes, types.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.trim().is_empty() {
            return Err("plugin name is empty".into());
        }
        let mut outputs = HashSet::new();
        for o in &self.outputs {
            check_identifier("output name", &o.name)?;
            if !outputs.insert(o.name.as_str()) {
                return Err(format!("output '{}' is declared twice", o.name));
            }
            o.validate()
                .map_err(|e| format!("output '{}': {e}", o.name))?;
        }
        Ok(())
    }
}

impl Output {
    fn validate(&self) -> Result<(), String> {
        let mut names = HashSet::new();
        for f in &self.fields {
            check_identifier("field name", &f.name)?;
            if f.name == "_id" || !names.insert(f.name.as_str()) {
                return Err(format!("field '{}' is declared twice or reserved", f.name));
            }
            if let Type::Decimal { precision, scale } = f.ty
                && (precision == 0 || precision > 65 || scale > 30 || scale > precision)
            {
                return Err(format!(
                    "field '{}': decimal({precision}, {scale}) needs 1 <= precision <= 65 and scale <= min(30, precision)",
                    f.name
                ));
            }
            if let Type::Text(Some(n)) = f.ty
                && (n == 0 || n > 16_383)
            {
                return Err(format!(
                    "field '{}': text length {n} must be 1..=16383",
                    f.name
                ));
            }
        }
        if self.kind == OutputKind::Table && self.primary_key.is_empty() {
            return Err("a table needs a primary key".into());
        }
        let key_fields = self.primary_key.iter().map(|k| (k, "primary key"));
        let index_fields = self
            .indexes
            .iter()
            .flat_map(|i| i.fields.iter().map(|f| (f, "index")));
        for (name, what) in key_fields.chain(index_fields) {
            let field = self
                .get_field(name)
                .ok_or_else(|| format!("{what} names undeclared field '{name}'"))?;
            if what == "primary key"
                && let Some(why) = field.ty.why_not_a_key()
            {
                return Err(format!("primary key field '{name}': {why}"));
            }
            if self.kind == OutputKind::Table && !field.ty.indexable() {
                return Err(format!(
                    "{what} field '{name}' must be indexable: give text a maximum length, json cannot be a key"
                ));
            }
            if what == "primary key" && field.nullable {
                return Err(format!("primary key field '{name}' cannot be optional"));
            }
        }
        let mut index_names = HashSet::new();
        for i in &self.indexes {
            check_identifier("index name", &i.name)?;
            if i.fields.is_empty() || !index_names.insert(i.name.as_str()) {
                return Err(format!("index '{}' is empty or declared twice", i.name));
            }
        }
        self.validate_partitioning()?;
        self.validate_shard_key()?;
        self.validate_sensitive()
    }

    fn validate_sensitive(&self) -> Result<(), String> {
        for name in &self.sensitive {
            if self.get_field(name).is_none() {
                return Err(format!("sensitive names undeclared field '{name}'"));
            }
            let used = [
                ("the primary key", self.primary_key.contains(name)),
                (
                    "an index",
                    self.indexes.iter().any(|i| i.fields.contains(name)),
                ),
                (
                    "the partitioning",
                    self.partitioning
                        .as_ref()
                        .is_some_and(|p| p.field() == name),
                ),
                ("the shard key", self.shard_key.contains(name)),
            ];
            if let Some((what, _)) = used.iter().find(|(_, used)| *used) {
                return Err(format!(
                    "sensitive field '{name}' is part of {what}: an encrypted value cannot be looked up or compared"
                ));
            }
        }
        Ok(())
    }

    fn validate_partitioning(&self) -> Result<(), String> {
        let Some(partitioning) = &self.partitioning else {
            return Ok(());
        };
        let name = partitioning.field();
        if self.kind != OutputKind::Table {
            return Err(format!(
                "partitioning {partitioning}: only tables are partitioned; a document output may declare a shard key"
            ));
        }
        let field = self
            .get_field(name)
            .ok_or_else(|| format!("partitioning names undeclared field '{name}'"))?;
        if field.nullable {
            return Err(format!(
                "partitioning field '{name}' cannot be optional: every row needs a partition"
            ));
        }
        match partitioning {
            Partitioning::ByDay(_) | Partitioning::ByMonth(_) if field.ty != Type::Timestamp => {
                return Err(format!(
                    "partitioning {partitioning}: field '{name}' is {}, partitions by day or month need a timestamp",
                    field.ty
                ));
            }
            Partitioning::ByHash { partitions, .. }
                if !(2..=MAX_HASH_PARTITIONS).contains(partitions) =>
            {
                return Err(format!(
                    "partitioning {partitioning}: the number of partitions must be 2..={MAX_HASH_PARTITIONS}"
                ));
            }
            _ => {}
        }
        // MySQL and MariaDB enforce unique keys per partition only, so every
        // unique key must contain the column that picks the partition.
        let unique_keys = std::iter::once(("primary key", &self.primary_key)).chain(
            self.indexes
                .iter()
                .filter(|i| i.unique)
                .map(|i| (i.name.as_str(), &i.fields)),
        );
        for (key, fields) in unique_keys {
            if !fields.iter().any(|f| f == name) {
                return Err(format!(
                    "partitioning {partitioning}: {} ({}) must include '{name}', because a unique key is only checked within one partition; add '{name}' to it or partition by one of its fields",
                    if key == "primary key" {
                        "the primary key".to_string()
                    } else {
                        format!("unique index '{key}'")
                    },
                    fields.join(", ")
                ));
            }
        }
        Ok(())
    }

    fn validate_shard_key(&self) -> Result<(), String> {
        if self.shard_key.is_empty() {
            return Ok(());
        }
        if self.kind != OutputKind::Document {
            return Err("a shard key is for document outputs; partition a table instead".into());
        }
        for name in &self.shard_key {
            let field = self
                .get_field(name)
                .ok_or_else(|| format!("shard key names undeclared field '{name}'"))?;
            if let Some(why) = field.ty.why_not_a_key() {
                return Err(format!("shard key field '{name}': {why}"));
            }
            // A document's `_id` is its primary key, and a sharded cluster
            // checks uniqueness within one shard only.
            if !self.primary_key.contains(name) {
                return Err(format!(
                    "shard key field '{name}' must be part of the primary key ({}): a cluster checks that a key is unique within one shard only",
                    self.primary_key.join(", ")
                ));
            }
        }
        Ok(())
    }

    /// Checks one emitted value against this declaration and normalises it:
    /// timestamps become RFC 3339 UTC strings with microseconds, decimals
    /// become strings. Undeclared fields are refused for tables and kept for
    /// documents (documents are open; their declared fields are checked).
    pub fn check_value(&self, value: &mut Value) -> Result<(), String> {
        let Value::Object(map) = value else {
            return Err(format!("output '{}' must be a JSON object", self.name));
        };
        for f in &self.fields {
            match map.get_mut(&f.name) {
                None | Some(Value::Null) if f.nullable => {}
                None | Some(Value::Null) => return Err(format!("field '{}' is required", f.name)),
                Some(v) => check_field(f, v).map_err(|e| {
                    // The reason goes to dead letters and logs in clear:
                    // it must not quote a sensitive value.
                    if self.sensitive.contains(&f.name) {
                        format!(
                            "field '{}': not a valid {} (the value is sensitive, so not shown)",
                            f.name, f.ty
                        )
                    } else {
                        format!("field '{}': {e}", f.name)
                    }
                })?,
            }
        }
        if self.kind == OutputKind::Table
            && let Some(extra) = map.keys().find(|k| self.get_field(k).is_none())
        {
            return Err(format!(
                "field '{extra}' is not declared for table '{}'",
                self.name
            ));
        }
        Ok(())
    }

    /// Checks the key of a delete and normalises it like `check_value`:
    /// an object holding every primary-key field (other fields are
    /// ignored), or, for a one-field key, its bare value. Returns the key
    /// fields.
    pub fn check_key(&self, key: Value) -> Result<Map<String, Value>, String> {
        if self.primary_key.is_empty() {
            return Err(format!(
                "output '{}' declares no primary key, so nothing can be deleted from it",
                self.name
            ));
        }
        let mut given = match key {
            Value::Object(map) => map,
            bare => match self.primary_key.as_slice() {
                [single] => Map::from_iter([(single.clone(), bare)]),
                _ => {
                    return Err(format!(
                        "the key of a delete from '{}' must be an object with {}",
                        self.name,
                        self.primary_key.join(", ")
                    ));
                }
            },
        };
        let mut fields = Map::new();
        for name in &self.primary_key {
            let field = self.get_field(name).expect("validated: keys are fields");
            let mut v = match given.remove(name) {
                None | Some(Value::Null) => {
                    return Err(format!("the key of a delete has no '{name}'"));
                }
                Some(v) => v,
            };
            check_field(field, &mut v).map_err(|e| format!("key field '{name}': {e}"))?;
            fields.insert(name.clone(), v);
        }
        Ok(fields)
    }

    /// Drops no data; fills absent optional fields with null (tables need every column).
    pub fn fill_nulls(&self, map: &mut Map<String, Value>) {
        for f in &self.fields {
            map.entry(f.name.clone()).or_insert(Value::Null);
        }
    }
}

fn check_field(f: &Field, v: &mut Value) -> Result<(), String> {
    match (f.ty, &*v) {
        (Type::Text(max), Value::String(s)) => {
            if let Some(max) = max
                && s.chars().count() > max as usize
            {
                return Err(format!("text longer than {max} characters"));
            }
        }
        (Type::Integer, Value::Number(n)) if n.is_i64() => {}
        (Type::Float, Value::Number(_)) => {}
        (Type::Boolean, Value::Bool(_)) => {}
        (Type::Decimal { precision, scale }, Value::Number(_) | Value::String(_)) => {
            let text = match &*v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            *v = Value::String(canonical_decimal(&text, precision, scale)?);
        }
        (Type::Timestamp, Value::String(s)) => {
            let t = chrono::DateTime::parse_from_rfc3339(s)
                .map_err(|e| format!("'{s}' is not an RFC 3339 timestamp: {e}"))?;
            *v = Value::String(format_utc(t.with_timezone(&chrono::Utc)));
        }
        (Type::Timestamp, Value::Number(n)) => {
            let t = n
                .as_i64()
                .and_then(chrono::DateTime::from_timestamp_millis)
                .ok_or_else(|| format!("{n} is not epoch milliseconds"))?;
            *v = Value::String(format_utc(t));
        }
        (Type::Json, _) => {}
        (ty, other) => {
            return Err(format!(
                "expected {}, got {}",
                type_name(ty),
                json_kind(other)
            ));
        }
    }
    Ok(())
}

fn format_utc(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// Checks a decimal fits `decimal(precision, scale)` and writes it one way
/// only (`007.5` and `7.50` are both `7.50` at scale 2): MySQL compares
/// decimals by value, MongoDB compares their text, and keys must be equal
/// in both or in neither.
fn canonical_decimal(text: &str, precision: u8, scale: u8) -> Result<String, String> {
    check_decimal(text, precision, scale)?;
    let (negative, digits) = match text.strip_prefix('-') {
        Some(digits) => (true, digits),
        None => (false, text),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let int = int.trim_start_matches('0');
    let int = if int.is_empty() { "0" } else { int };
    let mut canonical = String::with_capacity(text.len() + scale as usize + 2);
    let zero = int == "0" && frac.bytes().all(|b| b == b'0');
    if negative && !zero {
        canonical.push('-');
    }
    canonical.push_str(int);
    if scale > 0 {
        canonical.push('.');
        canonical.push_str(frac);
        canonical.extend(std::iter::repeat_n('0', scale as usize - frac.len()));
    }
    Ok(canonical)
}

fn check_decimal(text: &str, precision: u8, scale: u8) -> Result<(), String> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || !all_digits(int) || !all_digits(frac) {
        return Err(format!("'{text}' is not a decimal number"));
    }
    let int_digits = int.trim_start_matches('0').len();
    if frac.len() > scale as usize || int_digits > (precision - scale) as usize {
        return Err(format!(
            "'{text}' does not fit decimal({precision}, {scale})"
        ));
    }
    Ok(())
}

fn type_name(ty: Type) -> &'static str {
    match ty {
        Type::Text(_) => "text",
        Type::Integer => "an integer",
        Type::Float => "a number",
        Type::Boolean => "a boolean",
        Type::Decimal { .. } => "a decimal",
        Type::Timestamp => "a timestamp",
        Type::Json => "json",
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Names become SQL identifiers and MongoDB field names: keep them plain.
pub fn check_identifier(what: &str, name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 64;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} '{name}' must match [A-Za-z_][A-Za-z0-9_]* (at most 64 characters)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn orders() -> Output {
        Output::table("orders")
            .field("id", Type::text(8))
            .field("total", Type::decimal(6, 2))
            .field("at", Type::Timestamp)
            .optional("note", Type::Text(None))
            .primary_key(["id"])
    }

    #[test]
    fn valid_values_are_normalised() {
        let mut v = json!({"id": "a1", "total": 12.5, "at": "2024-05-01T12:00:00+02:00"});
        orders().check_value(&mut v).unwrap();
        assert_eq!(v["total"], "12.50");
        assert_eq!(v["at"], "2024-05-01T10:00:00.000000Z");
        let mut v = json!({"id": "a1", "total": "-1234.00", "at": 0, "note": null});
        orders().check_value(&mut v).unwrap();
        assert_eq!(v["at"], "1970-01-01T00:00:00.000000Z");
    }

    #[test]
    fn decimals_are_written_one_way_so_keys_compare_alike_everywhere() {
        for (given, want) in [
            (json!("7.5"), "7.50"),
            (json!("007.50"), "7.50"),
            (json!(7), "7.00"),
            (json!("-0.00"), "0.00"),
            (json!("-0"), "0.00"),
            (json!("-12.3"), "-12.30"),
            (json!("0.05"), "0.05"),
        ] {
            let mut v = json!({"id": "a", "total": given, "at": 0});
            orders().check_value(&mut v).unwrap();
            assert_eq!(v["total"], want, "{given}");
        }
        let whole = Output::table("t")
            .field("n", Type::decimal(5, 0))
            .primary_key(["n"]);
        let mut v = json!({"n": "00120"});
        whole.check_value(&mut v).unwrap();
        assert_eq!(v["n"], "120");
    }

    #[test]
    fn keys_the_sinks_could_compare_differently_are_refused() {
        for (ty, why) in [
            (Type::Float, "a float cannot be a key"),
            (Type::Json, "json cannot be a key"),
        ] {
            let err = Plugin::new("p", "1")
                .output(Output::document("d").field("k", ty).primary_key(["k"]))
                .validate()
                .unwrap_err();
            assert!(err.contains(why), "{err}");
            assert!(err.contains("output 'd': primary key field 'k'"), "{err}");
        }
    }

    #[test]
    fn invalid_values_name_the_field() {
        let cases = [
            (json!({"total": 1, "at": 0}), "field 'id' is required"),
            (
                json!({"id": 5, "total": 1, "at": 0}),
                "field 'id': expected text, got a number",
            ),
            (
                json!({"id": "123456789", "total": 1, "at": 0}),
                "longer than 8",
            ),
            (
                json!({"id": "a", "total": 10000, "at": 0}),
                "does not fit decimal(6, 2)",
            ),
            (
                json!({"id": "a", "total": "1.234", "at": 0}),
                "does not fit",
            ),
            (json!({"id": "a", "total": "x", "at": 0}), "not a decimal"),
            (
                json!({"id": "a", "total": 1, "at": "yesterday"}),
                "not an RFC 3339",
            ),
            (
                json!({"id": "a", "total": 1, "at": 0, "extra": 1}),
                "'extra' is not declared",
            ),
            (json!([1]), "must be a JSON object"),
        ];
        for (mut v, want) in cases {
            let err = orders().check_value(&mut v).unwrap_err();
            assert!(err.contains(want), "{err} should contain {want}");
        }
    }

    #[test]
    fn invalid_declarations_are_refused() {
        let no_key = Plugin::new("p", "1").output(Output::table("t").field("a", Type::Integer));
        assert!(
            no_key
                .validate()
                .unwrap_err()
                .contains("needs a primary key")
        );
        let dup = Plugin::new("p", "1").output(
            Output::document("d")
                .field("a", Type::Integer)
                .field("a", Type::Float),
        );
        assert!(dup.validate().unwrap_err().contains("declared twice"));
        let text_key = Plugin::new("p", "1").output(
            Output::table("t")
                .field("a", Type::Text(None))
                .primary_key(["a"]),
        );
        assert!(text_key.validate().unwrap_err().contains("maximum length"));
        let ghost = Plugin::new("p", "1").output(
            Output::table("t")
                .field("a", Type::Integer)
                .primary_key(["b"]),
        );
        assert!(
            ghost
                .validate()
                .unwrap_err()
                .contains("undeclared field 'b'")
        );
        let bad_name = Plugin::new("p", "1").output(Output::document("drop table;"));
        assert!(bad_name.validate().unwrap_err().contains("must match"));
        assert!(Plugin::new("p", "1").output(orders()).validate().is_ok());
    }

    fn events() -> Output {
        Output::table("events")
            .field("id", Type::Integer)
            .field("at", Type::Timestamp)
            .optional("seen", Type::Timestamp)
            .field("name", Type::text(16))
            .primary_key(["id", "at"])
    }

    #[test]
    fn partitioning_is_checked_against_keys_and_types() {
        let check = |o: Output| Plugin::new("p", "1").output(o).validate();
        assert_eq!(check(events().partition_by_day("at")), Ok(()));
        assert_eq!(check(events().partition_by_month("at")), Ok(()));
        assert_eq!(check(events().partition_by_hash("id", 8)), Ok(()));
        let refused = [
            (
                events().partition_by_day("id"),
                "field 'id' is integer, partitions by day or month need a timestamp",
            ),
            (
                events().partition_by_day("seen"),
                "field 'seen' cannot be optional",
            ),
            (
                events().partition_by_hash("name", 4),
                "the primary key (id, at) must include 'name'",
            ),
            (
                events()
                    .unique_index("by_name", ["name"])
                    .partition_by_hash("id", 4),
                "unique index 'by_name' (name) must include 'id'",
            ),
            (
                events().partition_by_hash("id", 1),
                "the number of partitions must be 2..=1024",
            ),
            (
                events().partition_by_month("nope"),
                "undeclared field 'nope'",
            ),
            (
                Output::document("d")
                    .field("at", Type::Timestamp)
                    .partition_by_day("at"),
                "only tables are partitioned",
            ),
            (
                events().shard_key(["id"]),
                "a shard key is for document outputs",
            ),
            (
                Output::document("d")
                    .field("f", Type::Float)
                    .shard_key(["f"]),
                "shard key field 'f': a float cannot be a key",
            ),
            (
                Output::document("d")
                    .field("id", Type::text(8))
                    .field("k", Type::text(8))
                    .primary_key(["id"])
                    .shard_key(["k"]),
                "shard key field 'k' must be part of the primary key (id)",
            ),
            (
                events().sensitive(["nope"]),
                "sensitive names undeclared field 'nope'",
            ),
            (
                events().sensitive(["id"]),
                "sensitive field 'id' is part of the primary key",
            ),
            (
                events().index("by_name", ["name"]).sensitive(["name"]),
                "sensitive field 'name' is part of an index",
            ),
        ];
        assert!(check(events().sensitive(["name"])).is_ok());
        let mut bad = serde_json::json!({"id": 1, "at": "2024-01-01T00:00:00Z", "name": 12345});
        let e = events()
            .sensitive(["name"])
            .check_value(&mut bad)
            .unwrap_err();
        assert!(
            !e.contains("12345") && e.contains("the value is sensitive"),
            "{e}"
        );
        for (output, want) in refused {
            let err = check(output).unwrap_err();
            assert!(err.contains(want), "{err} should contain {want}");
        }
    }
}
