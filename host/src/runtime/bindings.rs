//! Host bindings for every plugin contract version the host loads: the
//! current `wit/sluice.wit` and the frozen `wit/v0.1.0/sluice.wit`. A
//! component is linked against the newest version whose exports it has;
//! everything after `describe` (the packed batch and result encodings,
//! versioned in their own headers) is shared.

use super::engine::State;
use sluice_plugin_sdk::schema::{Field, Index, Output, OutputKind, Partitioning, Plugin, Type};
use wasmtime::Store;
use wasmtime::component::InstancePre;

mod current {
    wasmtime::component::bindgen!({ path: "../wit/sluice.wit", world: "transform" });
}

mod v0_1 {
    wasmtime::component::bindgen!({ path: "../wit/v0.1.0/sluice.wit", world: "transform" });
}

/// The contract version of the current WIT package.
pub const CONTRACT: &str = "0.2.0";

/// A component's exports resolved against one contract version.
pub(super) enum Pre {
    Current(current::TransformPre<State>),
    V0_1(v0_1::TransformPre<State>),
}

/// One instance's exports.
pub(super) enum Exports {
    Current(current::Transform),
    V0_1(v0_1::Transform),
}

impl Pre {
    /// The newest contract the component implements; the error is the
    /// current contract's (what a plugin author should build against).
    pub fn new(pre: InstancePre<State>) -> wasmtime::Result<Self> {
        match current::TransformPre::new(pre.clone()) {
            Ok(p) => Ok(Pre::Current(p)),
            Err(current) => v0_1::TransformPre::new(pre)
                .map(Pre::V0_1)
                .map_err(|_| current),
        }
    }

    /// `sluice:plugin@X`'s X.
    pub fn contract(&self) -> &'static str {
        match self {
            Pre::Current(_) => CONTRACT,
            Pre::V0_1(_) => "0.1.0",
        }
    }

    pub fn instantiate(&self, store: &mut Store<State>) -> wasmtime::Result<Exports> {
        Ok(match self {
            Pre::Current(p) => Exports::Current(p.instantiate(store)?),
            Pre::V0_1(p) => Exports::V0_1(p.instantiate(store)?),
        })
    }
}

impl Exports {
    /// `describe()`, as the SDK's model; `Err` inside if the declaration
    /// cannot be represented.
    pub fn call_describe(&self, store: &mut Store<State>) -> wasmtime::Result<Plugin> {
        Ok(match self {
            Exports::Current(e) => plugin_from!(current, e.call_describe(store)?, |o| (
                o.partitioning.map(partitioning),
                o.shard_key,
                o.sensitive
            )),
            Exports::V0_1(e) => {
                plugin_from!(v0_1, e.call_describe(store)?, |_o| (None, vec![], vec![]))
            }
        })
    }

    pub fn call_transform(
        &self,
        store: &mut Store<State>,
        batch: &[u8],
    ) -> wasmtime::Result<Result<Vec<u8>, String>> {
        match self {
            Exports::Current(e) => e.call_transform(store, batch),
            Exports::V0_1(e) => e.call_transform(store, batch),
        }
    }
}

/// The generated types of each version have the same shape in different
/// modules; `$extra` maps what a version adds to `output-decl` into
/// (partitioning, shard key).
macro_rules! plugin_from {
    ($version:ident, $info:expr, |$o:ident| $extra:expr) => {{
        use $version::sluice::plugin::types as wit;
        let info: wit::PluginInfo = $info;
        let outputs = info
            .outputs
            .into_iter()
            .map(|$o| {
                let kind = match $o.kind {
                    wit::OutputKind::Document => OutputKind::Document,
                    wit::OutputKind::Table => OutputKind::Table,
                };
                let fields = $o
                    .fields
                    .into_iter()
                    .map(|f| Field {
                        name: f.name,
                        ty: match f.type_ {
                            wit::FieldType::Text(n) => Type::Text(n),
                            wit::FieldType::Integer => Type::Integer,
                            wit::FieldType::Float => Type::Float,
                            wit::FieldType::Boolean => Type::Boolean,
                            wit::FieldType::Decimal(d) => Type::Decimal {
                                precision: d.precision,
                                scale: d.scale,
                            },
                            wit::FieldType::Timestamp => Type::Timestamp,
                            wit::FieldType::Json => Type::Json,
                        },
                        nullable: f.nullable,
                    })
                    .collect();
                let indexes = $o
                    .indexes
                    .into_iter()
                    .map(|i| Index {
                        name: i.name,
                        fields: i.fields,
                        unique: i.unique,
                    })
                    .collect();
                let name = $o.name;
                let primary_key = $o.primary_key;
                let (partitioning, shard_key, sensitive) = $extra;
                Output {
                    name,
                    kind,
                    fields,
                    primary_key,
                    indexes,
                    partitioning,
                    shard_key,
                    sensitive,
                }
            })
            .collect();
        Plugin {
            name: info.name,
            version: info.version,
            outputs,
        }
    }};
}
use plugin_from;

fn partitioning(p: current::sluice::plugin::types::Partitioning) -> Partitioning {
    use current::sluice::plugin::types::Partitioning as Wit;
    match p {
        Wit::ByDay(field) => Partitioning::ByDay(field),
        Wit::ByMonth(field) => Partitioning::ByMonth(field),
        Wit::ByHash(h) => Partitioning::ByHash {
            field: h.field,
            partitions: h.partitions,
        },
    }
}
