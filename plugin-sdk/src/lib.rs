//! Write Sluice transform plugins in Rust.
//!
//! ```ignore
//! use sluice_plugin_sdk::prelude::*;
//!
//! struct Shout;
//!
//! impl Transform for Shout {
//!     fn describe() -> Plugin {
//!         Plugin::new("shout", "1.0.0")
//!             .output(Output::document("messages").field("text", Type::Text(None)))
//!     }
//!
//!     fn process(record: &Record, out: &mut Emitter) -> Result<(), Error> {
//!         let text = record.value_str()?.to_uppercase();
//!         out.emit("messages", json!({ "text": text }))
//!     }
//! }
//!
//! export!(Shout);
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2` and drop the
//! `.wasm` into the host's `plugins/` folder. Test natively with
//! [`testing::run`].

pub mod abi;
pub mod schema;
pub mod testing;

pub use serde_json;

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod guest;

pub use abi::Record;
pub use schema::{Output, OutputKind, Plugin, Type};

use abi::{BatchResult, Op, OutputRecord, RecordError};
use std::fmt;

pub mod prelude {
    pub use crate::{Emitter, Error, Output, Plugin, Record, RecordExt, Transform, Type, export};
    pub use serde_json::{Number, Value, json};
}

/// A transform plugin: declare outputs once, then process records.
pub trait Transform {
    /// The plugin's name, version and declared outputs.
    fn describe() -> Plugin;

    /// Turns one input record into zero or more outputs. An `Err` rejects
    /// the record: it goes to the dead-letter sink with the message, and any
    /// outputs already emitted for it are discarded.
    fn process(record: &Record, out: &mut Emitter) -> Result<(), Error>;
}

/// Why a record was rejected. Any error type converts into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(pub String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<E: std::error::Error> From<E> for Error {
    fn from(e: E) -> Self {
        Error(e.to_string())
    }
}

/// Builds an [`Error`] from a format string: `return Err(reject!("bad id {id}"))`.
#[macro_export]
macro_rules! reject {
    ($($arg:tt)*) => { $crate::Error(format!($($arg)*)) };
}

/// Collects a record's outputs.
pub struct Emitter<'a> {
    source: u32,
    outputs: &'a mut Vec<OutputRecord>,
}

impl Emitter<'_> {
    /// Emits `value` (anything serde can serialise to a JSON object) on the
    /// declared output `output`.
    pub fn emit(&mut self, output: &str, value: impl serde::Serialize) -> Result<(), Error> {
        self.push(Op::Upsert, output, serde_json::to_vec(&value)?);
        Ok(())
    }

    /// Deletes what the key holds on the declared output `output` (a row,
    /// or a document): `key` is the value of a one-field primary key, or
    /// an object of the key fields. Deleting a key that holds nothing is
    /// not an error; in one batch, the last upsert or delete of a key wins.
    pub fn delete(&mut self, output: &str, key: impl serde::Serialize) -> Result<(), Error> {
        self.push(Op::Delete, output, serde_json::to_vec(&key)?);
        Ok(())
    }

    fn push(&mut self, op: Op, output: &str, value: Vec<u8>) {
        self.outputs.push(OutputRecord {
            source: self.source,
            op,
            output: output.into(),
            value,
        });
    }
}

/// Conveniences for reading a record's key and value.
pub trait RecordExt {
    /// The value as UTF-8 text; an error if absent or not UTF-8.
    fn value_str(&self) -> Result<&str, Error>;
    /// The value parsed as JSON into any deserialisable type.
    fn json<'de, T: serde::Deserialize<'de>>(&'de self) -> Result<T, Error>;
    /// The key as UTF-8 text, if present.
    fn key_str(&self) -> Option<&str>;
}

impl RecordExt for Record<'_> {
    fn value_str(&self) -> Result<&str, Error> {
        let v = self
            .value
            .ok_or_else(|| Error("record has no value".into()))?;
        std::str::from_utf8(v).map_err(|e| reject!("value is not UTF-8: {e}"))
    }

    fn json<'de, T: serde::Deserialize<'de>>(&'de self) -> Result<T, Error> {
        let v = self
            .value
            .ok_or_else(|| Error("record has no value".into()))?;
        serde_json::from_slice(v).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => {
                reject!("value does not have the expected shape: {e}")
            }
            _ => reject!("value is not valid JSON: {e}"),
        })
    }

    fn key_str(&self) -> Option<&str> {
        self.key.and_then(|k| std::str::from_utf8(k).ok())
    }
}

/// Runs `T` over one packed batch. The wasm export and the native test
/// harness both go through here, so tests exercise the real code path.
pub fn transform_packed<T: Transform>(batch: &[u8]) -> Result<Vec<u8>, String> {
    let records = abi::decode_batch(batch).map_err(|e| e.to_string())?;
    let mut result = BatchResult::default();
    for (i, record) in records.iter().enumerate() {
        let before = result.outputs.len();
        let mut out = Emitter {
            source: i as u32,
            outputs: &mut result.outputs,
        };
        if let Err(e) = T::process(record, &mut out) {
            result.outputs.truncate(before);
            result.errors.push(RecordError {
                source: i as u32,
                reason: e.0,
            });
        }
    }
    Ok(abi::encode_result(&result))
}

/// Exports a [`Transform`] as the plugin's WebAssembly entry points.
#[macro_export]
macro_rules! export {
    ($t:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct SluiceGuest;
            impl $crate::guest::Guest for SluiceGuest {
                fn describe() -> $crate::guest::PluginInfo {
                    $crate::guest::plugin_info(<$t as $crate::Transform>::describe())
                }
                fn transform(batch: Vec<u8>) -> Result<Vec<u8>, String> {
                    $crate::transform_packed::<$t>(&batch)
                }
            }
    $crate::guest::export_transform!(SluiceGuest with_types_in $crate::guest::bindings);
        };
    };
}
