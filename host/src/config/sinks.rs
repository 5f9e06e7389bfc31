//! The sink types a config can name (`[sinks.NAME] type = "..."`), their
//! settings, and what each type can do. Adding a sink type starts here: a
//! variant of `SinkConfig` and its `SinkType`; `sink::connect_all` then
//! builds it. Nothing else in the host names a sink type.

use super::Secret;
use serde::Deserialize;
use sluice_plugin_sdk::schema::OutputKind;

/// What the host needs to know about a type of sink without connecting.
#[derive(Debug)]
pub struct SinkType {
    /// The `type` key.
    pub name: &'static str,
    /// Outputs of this kind without a route go to the only sink of this
    /// type (and dead letters to the only document sink, else the only
    /// table sink).
    pub default_for: OutputKind,
    /// Stores consumer offsets in the same transaction as the rows
    /// (`offsets = "sink"`), and can hold the run ledger.
    pub transactional: bool,
}

const MONGODB: SinkType = SinkType {
    name: "mongodb",
    default_for: OutputKind::Document,
    transactional: false,
};

const MYSQL: SinkType = SinkType {
    name: "mysql",
    default_for: OutputKind::Table,
    transactional: true,
};

/// Every sink type, in the order defaults are looked for.
pub const SINK_TYPES: &[&SinkType] = &[&MONGODB, &MYSQL];

/// A database outputs are written to.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum SinkConfig {
    /// A MongoDB-protocol server; document outputs go here by default.
    Mongodb {
        /// Connection string, e.g. `mongodb://127.0.0.1:27017`; may use `${env:..}`/`${file:..}`.
        uri: Secret,
        /// Database the collections live in.
        database: String,
    },
    /// A MySQL-protocol server; table outputs go here by default.
    Mysql {
        /// Connection URL, e.g. `mysql://user:${env:PW}@127.0.0.1:3306/db`;
        /// query parameters other than the driver's (`ssl-mode`, `ssl-ca`,
        /// `ssl-cert`, `ssl-key`, `charset`, `collation`, `socket`,
        /// `timezone`, `statement-cache-capacity`) are refused.
        url: Secret,
        /// Connections in the pool.
        #[serde(default = "default_pool")]
        max_connections: u32,
    },
}

fn default_pool() -> u32 {
    4
}

impl SinkConfig {
    /// What this type of sink can do.
    pub fn sink_type(&self) -> &'static SinkType {
        match self {
            SinkConfig::Mongodb { .. } => &MONGODB,
            SinkConfig::Mysql { .. } => &MYSQL,
        }
    }

    /// The `type` key: `mongodb`, `mysql`.
    pub fn kind(&self) -> &'static str {
        self.sink_type().name
    }
}
