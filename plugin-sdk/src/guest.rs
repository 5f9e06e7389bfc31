//! Generated guest bindings, hidden from plugin authors.

pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit/sluice.wit",
        world: "transform",
        pub_export_macro: true,
        export_macro_name: "export_transform",
        default_bindings_module: "sluice_plugin_sdk::guest::bindings",
    });
}

pub use bindings::Guest;
pub use bindings::export_transform;
use bindings::sluice::plugin::types as wit;
pub use bindings::sluice::plugin::types::PluginInfo;

use crate::schema::{OutputKind, Partitioning, Plugin, Type};

pub fn plugin_info(p: Plugin) -> PluginInfo {
    PluginInfo {
        name: p.name,
        version: p.version,
        outputs: p
            .outputs
            .into_iter()
            .map(|o| wit::OutputDecl {
                name: o.name,
                kind: match o.kind {
                    OutputKind::Document => wit::OutputKind::Document,
                    OutputKind::Table => wit::OutputKind::Table,
                },
                fields: o
                    .fields
                    .into_iter()
                    .map(|f| wit::Field {
                        name: f.name,
                        type_: field_type(f.ty),
                        nullable: f.nullable,
                    })
                    .collect(),
                primary_key: o.primary_key,
                indexes: o
                    .indexes
                    .into_iter()
                    .map(|i| wit::Index {
                        name: i.name,
                        fields: i.fields,
                        unique: i.unique,
                    })
                    .collect(),
                partitioning: o.partitioning.map(partitioning),
                shard_key: o.shard_key,
                sensitive: o.sensitive,
            })
            .collect(),
    }
}

fn partitioning(p: Partitioning) -> wit::Partitioning {
    match p {
        Partitioning::ByDay(field) => wit::Partitioning::ByDay(field),
        Partitioning::ByMonth(field) => wit::Partitioning::ByMonth(field),
        Partitioning::ByHash { field, partitions } => {
            wit::Partitioning::ByHash(wit::HashPartitioning { field, partitions })
        }
    }
}

fn field_type(t: Type) -> wit::FieldType {
    match t {
        Type::Text(n) => wit::FieldType::Text(n),
        Type::Integer => wit::FieldType::Integer,
        Type::Float => wit::FieldType::Float,
        Type::Boolean => wit::FieldType::Boolean,
        Type::Decimal { precision, scale } => {
            wit::FieldType::Decimal(wit::DecimalType { precision, scale })
        }
        Type::Timestamp => wit::FieldType::Timestamp,
        Type::Json => wit::FieldType::Json,
    }
}
