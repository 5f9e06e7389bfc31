//! The TOML configuration: model, loading with precise errors, secrets.
//!
//! Every struct denies unknown keys, so a typo is an error that names the
//! file, the key path and the line, never a silently ignored setting.

mod duration;
mod pipeline;
pub mod reference;
mod schedule;
mod secret;
mod sinks;
mod state_dir;
mod tls;
mod validate;

pub use pipeline::{
    BatchConfig, Catchup, DeadLetterConfig, GrantsConfig, LimitsConfig, OffsetStore,
    PipelineConfig, ReloadMode, RetryConfig, RouteConfig, ScheduleConfig,
};
pub use schedule::{MAX_INTERVAL, Schedule};
pub use secret::{Secret, scrub, url_encode};
pub use sinks::{SINK_TYPES, SinkConfig, SinkType};
pub use state_dir::{
    create_private_dir, create_private_file, exposed, open_private_append, private_key_file,
    writable_by_others, write_private,
};
pub use tls::{KafkaSasl, KafkaTls, SaslMechanism, SinkTls, TlsMode};
pub use validate::{check_mongodb_uri, check_mysql_url};

use schemars::JsonSchema;
use serde::Deserialize;
use sluice_plugin_sdk::schema::OutputKind;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// The whole file.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Folder holding the plugins (`NAME.wasm`), watched for changes.
    /// Relative paths are relative to the working directory.
    #[serde(default = "default_plugins_dir")]
    pub plugins_dir: PathBuf,
    /// The Kafka cluster all pipelines read from.
    pub kafka: KafkaConfig,
    /// Named sinks that pipeline outputs are written to.
    #[serde(default)]
    pub sinks: BTreeMap<String, SinkConfig>,
    /// The pipelines this host runs.
    #[serde(default)]
    pub pipelines: Vec<PipelineConfig>,
    /// Folder for the host's own state (the embedded run ledger).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Where the run ledger lives.
    #[serde(default)]
    pub ledger: LedgerConfig,
    /// The local HTTP API used by `sluice trigger`, `backfill`, `pipelines`.
    #[serde(default)]
    pub api: ApiConfig,
    /// Settings of the WebAssembly engine shared by every plugin.
    #[serde(default)]
    pub engine: EngineConfig,
    /// Keys for the fields plugins declare sensitive (and their dead
    /// letters); required by a pipeline whose plugin declares any.
    pub encryption: Option<EncryptionConfig>,
}

/// `[encryption]`: field-level encryption keys.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EncryptionConfig {
    /// Key id → key: 64 hexadecimal characters (32 bytes, e.g. from
    /// `openssl rand -hex 32`), by reference (`${file:..}`/`${env:..}`).
    /// Ids are stored beside each value: keep old keys to decrypt old
    /// values.
    pub keys: BTreeMap<String, Secret>,
    /// The key id new values are encrypted with.
    pub current: String,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// Most KiB of stack a plugin call may use; deeper recursion traps.
    /// One engine serves every plugin, so this is host-wide.
    #[serde(default = "default_stack_kib")]
    pub stack_kib: usize,
}

/// Highest `engine.stack_kib`: plugin calls run on the host's blocking
/// threads (2 MiB stacks), which must keep room for the host's own frames.
pub const MAX_STACK_KIB: usize = 1024;

fn default_stack_kib() -> usize {
    512
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            stack_kib: default_stack_kib(),
        }
    }
}

fn default_state_dir() -> PathBuf {
    PathBuf::from(".sluice")
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LedgerConfig {
    /// A `mysql` sink whose database holds the ledger (table `sluice_runs`);
    /// default: SQLite at `STATE_DIR/ledger.db`.
    pub sink: Option<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Serve the API at all.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Address to listen on: a loopback address (the API speaks plain
    /// HTTP; put a TLS proxy in front to reach it from elsewhere).
    #[serde(default = "default_api_listen")]
    pub listen: std::net::SocketAddr,
    /// The token every request must carry (`Authorization: Bearer
    /// TOKEN`); may use `${env:..}`/`${file:..}`. Default: one made at
    /// first start into `STATE_DIR/api.token` (owner-only), which the CLI
    /// reads.
    pub token: Option<Secret>,
}

fn yes() -> bool {
    true
}

fn default_api_listen() -> std::net::SocketAddr {
    ([127, 0, 0, 1], 7878).into()
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            enabled: true,
            listen: default_api_listen(),
            token: None,
        }
    }
}

fn default_plugins_dir() -> PathBuf {
    PathBuf::from("plugins")
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port...]`.
    pub brokers: String,
    /// TLS to the brokers (the protocol becomes `SSL`, or `SASL_SSL` with
    /// `[kafka.sasl]`). Without it the connection is plaintext.
    pub tls: Option<KafkaTls>,
    /// Authentication to the brokers.
    pub sasl: Option<KafkaSasl>,
    /// Extra librdkafka client properties (e.g. `"fetch.max.bytes"`),
    /// passed as is, except those sluice sets (`group.id`,
    /// `enable.auto.commit`, `enable.auto.offset.store`), those a typed
    /// setting owns (`bootstrap.servers`, `security.protocol`, `ssl.*`
    /// files and passwords, `sasl.*` credentials: use `brokers`, `tls`,
    /// `sasl`), those that turn certificate checks off, and those that
    /// load native code (`plugin.library.paths`, `ssl.engine.location`,
    /// `ssl.providers`), which are refused.
    #[serde(default)]
    pub options: BTreeMap<String, Secret>,
}

impl Config {
    /// Every setting that may hold a secret, by its config key.
    pub fn secrets(&self) -> Vec<(String, &Secret)> {
        let mut found: Vec<(String, &Secret)> = self
            .kafka
            .options
            .iter()
            .map(|(key, value)| (format!("kafka.options.{key}"), value))
            .collect();
        if let Some(password) = self
            .kafka
            .tls
            .as_ref()
            .and_then(|t| t.key_password.as_ref())
        {
            found.push(("kafka.tls.key_password".into(), password));
        }
        if let Some(sasl) = &self.kafka.sasl {
            found.push(("kafka.sasl.password".into(), &sasl.password));
        }
        if let Some(token) = &self.api.token {
            found.push(("api.token".into(), token));
        }
        for (id, key) in self.encryption.iter().flat_map(|e| &e.keys) {
            found.push((format!("encryption.keys.{id}"), key));
        }
        for (name, sink) in &self.sinks {
            let (key, address, password) = match sink {
                SinkConfig::Mongodb { uri, password, .. } => ("uri", uri, password),
                SinkConfig::Mysql { url, password, .. } => ("url", url, password),
            };
            found.push((format!("sinks.{name}.{key}"), address));
            if let Some(password) = password {
                found.push((format!("sinks.{name}.password"), password));
            }
        }
        found
    }

    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates config text; `path` is only used in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid {
            path: path.into(),
            key,
            message,
        };
        let de = toml::de::Deserializer::parse(text)
            .map_err(|e| invalid("(syntax)".into(), located(text, &e)))?;
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            invalid(
                if key == "." {
                    "(top level)".into()
                } else {
                    key
                },
                located(text, e.inner()),
            )
        })?;
        config
            .validate()
            .map_err(|(key, message)| invalid(key, message))?;
        Ok(config)
    }

    /// Where outputs of this kind go without a route: the only sink whose
    /// type takes that kind by default.
    pub fn default_sink_for(&self, kind: OutputKind) -> Option<&str> {
        let mut it = self
            .sinks
            .iter()
            .filter(|(_, s)| s.sink_type().default_for == kind);
        match (it.next(), it.next()) {
            (Some((name, _)), None) => Some(name),
            _ => None,
        }
    }

    /// Where a pipeline's dead letters go: (sink name, table or collection).
    /// Without `dead_letter.sink`, the only document sink, else the only
    /// table sink.
    pub fn dead_letter_sink(&self, pipeline: &PipelineConfig) -> Result<(String, String), String> {
        let sink = pipeline
            .dead_letter
            .sink
            .clone()
            .or_else(|| {
                self.default_sink_for(OutputKind::Document)
                    .or_else(|| self.default_sink_for(OutputKind::Table))
                    .map(String::from)
            })
            .ok_or_else(|| {
                format!(
                    "pipelines[name={}].dead_letter: no sink for dead letters; set dead_letter.sink",
                    pipeline.name
                )
            })?;
        Ok((sink, pipeline.dead_letter.name.clone()))
    }
}

/// Appends "(line L, column C)" to a TOML error message.
fn located(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim_end().to_string();
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("{message} (line {line}, column {column})")
        }
        None => message,
    }
}

#[cfg(test)]
mod tests;
