//! The TOML configuration: model, loading with precise errors, secrets.
//!
//! Every struct denies unknown keys, so a typo is an error that names the
//! file, the key path and the line, never a silently ignored setting.

mod duration;
mod schedule;
mod secret;
mod sinks;

pub use schedule::{MAX_INTERVAL, Schedule};
pub use secret::Secret;
pub use sinks::{SINK_TYPES, SinkConfig, SinkType};

use serde::Deserialize;
use sluice_plugin_sdk::schema::OutputKind;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
#[derive(Debug, Clone, Deserialize)]
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
}

#[derive(Debug, Clone, Deserialize)]
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

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerConfig {
    /// A `mysql` sink whose database holds the ledger (table `sluice_runs`);
    /// default: SQLite at `STATE_DIR/ledger.db`.
    pub sink: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Serve the API at all.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Address to listen on; keep it on loopback, the API has no auth.
    #[serde(default = "default_api_listen")]
    pub listen: std::net::SocketAddr,
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
        }
    }
}

fn default_plugins_dir() -> PathBuf {
    PathBuf::from("plugins")
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port...]`.
    pub brokers: String,
    /// Extra librdkafka client properties (e.g. `"security.protocol"`), passed as is.
    #[serde(default)]
    pub options: BTreeMap<String, Secret>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Unique name; used in logs, metrics and the default consumer group.
    pub name: String,
    /// Plugin to run: `plugins_dir/PLUGIN.wasm`.
    pub plugin: String,
    /// Kafka topics to consume.
    pub topics: Vec<String>,
    /// Consumer group; default `sluice-NAME`.
    pub group_id: Option<String>,
    /// How records are grouped into batches.
    #[serde(default)]
    pub batch: BatchConfig,
    /// Where each declared output goes. Unrouted documents go to the only
    /// `mongodb` sink, unrouted tables to the only `mysql` sink, under the
    /// output's own name.
    #[serde(default)]
    pub routes: BTreeMap<String, RouteConfig>,
    /// Where rejected records and schema-violating outputs go.
    #[serde(default)]
    pub dead_letter: DeadLetterConfig,
    /// Sandbox limits for this pipeline's plugin.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// When runs start: continuously (default), on an interval or by cron.
    #[serde(default)]
    pub schedule: ScheduleConfig,
    /// How a failed scheduled run is retried.
    #[serde(default)]
    pub retry: RetryConfig,
    /// WASI capabilities the plugin gets; none by default.
    #[serde(default)]
    pub grants: GrantsConfig,
    /// How a new version of the plugin takes over: at the next batch
    /// (`immediate`, the default) or after running in shadow (`canary`).
    #[serde(default)]
    pub reload: ReloadMode,
    /// With `reload = "canary"`: promote the new version after this many
    /// clean shadow batches; 0 waits for `sluice plugins promote`.
    #[serde(default = "default_canary_batches")]
    pub canary_batches: u32,
    /// Where the consumer offsets are stored: in Kafka after the sinks
    /// acknowledged (`kafka`, the default: at-least-once, idempotent
    /// upserts absorb replays), or in the same transaction as the rows
    /// (`sink`, also spelled `mysql`: exactly-once; every output and the
    /// dead letters must go to one sink that has transactions, MySQL).
    #[serde(default)]
    pub offsets: OffsetStore,
}

/// Where a pipeline's consumer offsets are stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OffsetStore {
    /// In Kafka, committed after the sinks acknowledged: at-least-once.
    #[default]
    Kafka,
    /// In the sink, in the same transaction as the rows: exactly-once.
    /// `"mysql"` is the name this had when MySQL was the only such sink.
    #[serde(alias = "mysql")]
    Sink,
}

fn default_canary_batches() -> u32 {
    10
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReloadMode {
    #[default]
    Immediate,
    Canary,
}

impl ReloadMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadMode::Immediate => "immediate",
            ReloadMode::Canary => "canary",
        }
    }
}

/// What the sandbox lets a plugin reach. Without a grant the plugin sees no
/// environment, no files and no network; its clocks read 0 (1970-01-01)
/// and its random numbers are a fixed sequence, so a transform replayed on
/// the same records gives the same outputs.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantsConfig {
    /// Environment variables passed through from the host, by name.
    #[serde(default)]
    pub env: Vec<String>,
    /// Host folders the plugin may read: guest path = host path.
    #[serde(default)]
    pub read_dirs: BTreeMap<String, PathBuf>,
    /// Addresses the plugin may open TCP connections to.
    #[serde(default)]
    pub connect: Vec<std::net::SocketAddr>,
    /// The host's real wall and monotonic clocks.
    #[serde(default)]
    pub clock: bool,
    /// Real randomness.
    #[serde(default)]
    pub random: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Start a run this long after the previous one was due (`"30s"`, `"5m"`).
    #[serde(default, with = "duration::option")]
    pub every: Option<Duration>,
    /// Cron expression, 5 fields or 6 with seconds first (`"0 */5 * * * *"`).
    pub cron: Option<String>,
    /// Time zone of the cron expression (IANA name); default UTC.
    pub timezone: Option<String>,
    /// Ticks missed while the host was down: `"one"` run for all of them, or `"none"`.
    #[serde(default)]
    pub catchup: Catchup,
    /// A run still going after this long is flagged in the log and the ledger.
    #[serde(default, with = "duration::option")]
    pub deadline: Option<Duration>,
    /// Continuous mode: close the current ledger run after this long...
    #[serde(default = "default_roll_after", with = "duration")]
    pub roll_after: Duration,
    /// ...or after this many records, whichever comes first.
    #[serde(default = "default_roll_records")]
    pub roll_records: u64,
}

fn default_roll_after() -> Duration {
    Duration::from_secs(60)
}

fn default_roll_records() -> u64 {
    100_000
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig {
            every: None,
            cron: None,
            timezone: None,
            catchup: Catchup::default(),
            deadline: None,
            roll_after: default_roll_after(),
            roll_records: default_roll_records(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Catchup {
    #[default]
    One,
    None,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts per run, the first included.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Wait before the second attempt; doubles each time, with +-20% jitter.
    #[serde(default = "default_backoff", with = "duration")]
    pub backoff: Duration,
}

fn default_max_attempts() -> u32 {
    3
}

fn default_backoff() -> Duration {
    Duration::from_secs(10)
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: default_max_attempts(),
            backoff: default_backoff(),
        }
    }
}

impl PipelineConfig {
    pub fn group_id(&self) -> String {
        self.group_id
            .clone()
            .unwrap_or_else(|| format!("sluice-{}", self.name))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Most records per batch (one plugin call, one write per output).
    #[serde(default = "default_max_records")]
    pub max_records: usize,
    /// Longest wait to fill a batch before processing what arrived.
    #[serde(default = "default_max_wait", with = "duration")]
    pub max_wait: Duration,
}

fn default_max_records() -> usize {
    1000
}

fn default_max_wait() -> Duration {
    Duration::from_millis(500)
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_records: default_max_records(),
            max_wait: default_max_wait(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Sink name (a key of `[sinks]`).
    pub sink: String,
    /// Table or collection; default: the output's name.
    pub name: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterConfig {
    /// Sink name; default: the only `mongodb` sink, else the only `mysql` sink.
    pub sink: Option<String>,
    /// Table or collection name.
    #[serde(default = "default_dead_letter_name")]
    pub name: String,
}

fn default_dead_letter_name() -> String {
    "sluice_dead_letters".into()
}

impl Default for DeadLetterConfig {
    fn default() -> Self {
        DeadLetterConfig {
            sink: None,
            name: default_dead_letter_name(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Most linear memory the plugin may grow to, in MiB.
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u64,
    /// Longest one `transform` call may run before it is interrupted.
    #[serde(default = "default_batch_timeout", with = "duration")]
    pub batch_timeout: Duration,
    /// Most outputs one call may return (a runaway plugin's flood is cut).
    #[serde(default = "default_max_output_records")]
    pub max_output_records: usize,
    /// Most MiB of output one call may return.
    #[serde(default = "default_max_output_mib")]
    pub max_output_mib: u64,
    /// Consecutive failing batches after which the plugin version is
    /// quarantined and the pipeline pauses until a new version arrives.
    #[serde(default = "default_quarantine_after")]
    pub quarantine_after: u32,
}

fn default_max_output_records() -> usize {
    100_000
}

fn default_max_output_mib() -> u64 {
    64
}

fn default_quarantine_after() -> u32 {
    5
}

fn default_memory_mib() -> u64 {
    64
}

fn default_batch_timeout() -> Duration {
    Duration::from_secs(5)
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            memory_mib: default_memory_mib(),
            batch_timeout: default_batch_timeout(),
            max_output_records: default_max_output_records(),
            max_output_mib: default_max_output_mib(),
            quarantine_after: default_quarantine_after(),
        }
    }
}

impl Config {
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

    /// `offsets = "sink"`: the rows, the dead letters and the offsets are
    /// written in one transaction, so they must all go to one sink that
    /// has transactions. Returns the pipeline key that breaks it.
    fn check_one_transactional_sink(
        &self,
        p: &PipelineConfig,
    ) -> Result<(), (&'static str, String)> {
        let (sink, _) = self.dead_letter_sink(p).map_err(|_| {
            (
                "dead_letter.sink",
                "no sink for dead letters; set dead_letter.sink".to_string(),
            )
        })?;
        let kinds = transactional_kinds();
        let hint = "offsets = \"sink\" (or \"mysql\") writes the rows, the dead letters and the offsets in one transaction";
        if !self
            .sinks
            .get(&sink)
            .is_some_and(|s| s.sink_type().transactional)
        {
            return Err((
                "dead_letter.sink",
                format!(
                    "dead letters go to sink '{sink}', which is not a {kinds} sink; {hint}, so set dead_letter.sink to the pipeline's {kinds} sink"
                ),
            ));
        }
        if let Some((output, route)) = p.routes.iter().find(|(_, r)| r.sink != sink) {
            return Err((
                "routes",
                format!(
                    "output '{output}' goes to sink '{}' but dead letters go to '{sink}'; {hint}, so every output must go to that one sink",
                    route.sink
                ),
            ));
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), (String, String)> {
        let mut names = std::collections::HashSet::new();
        for (i, p) in self.pipelines.iter().enumerate() {
            let key = |k: &str| format!("pipelines[{i}].{k}");
            sluice_plugin_sdk::schema::check_identifier("pipeline name", &p.name)
                .map_err(|e| (key("name"), e))?;
            if !names.insert(&p.name) {
                return Err((
                    key("name"),
                    format!("pipeline '{}' is defined twice", p.name),
                ));
            }
            sluice_plugin_sdk::schema::check_identifier("plugin name", &p.plugin)
                .map_err(|e| (key("plugin"), e))?;
            if p.topics.is_empty() {
                return Err((key("topics"), "at least one topic is required".into()));
            }
            if p.batch.max_records == 0 {
                return Err((key("batch.max_records"), "must be at least 1".into()));
            }
            for (output, route) in &p.routes {
                if !self.sinks.contains_key(&route.sink) {
                    return Err((
                        key(&format!("routes.{output}.sink")),
                        self.unknown_sink(&route.sink),
                    ));
                }
                if let Some(name) = &route.name {
                    sluice_plugin_sdk::schema::check_identifier("table or collection name", name)
                        .map_err(|e| (key(&format!("routes.{output}.name")), e))?;
                }
            }
            if let Some(sink) = &p.dead_letter.sink
                && !self.sinks.contains_key(sink)
            {
                return Err((key("dead_letter.sink"), self.unknown_sink(sink)));
            }
            Schedule::from_config(&p.schedule)
                .map_err(|(k, e)| (key(&format!("schedule{k}")), e))?;
            if !(1..=100).contains(&p.retry.max_attempts) {
                return Err((key("retry.max_attempts"), "must be from 1 to 100".into()));
            }
            if p.retry.backoff > MAX_INTERVAL {
                return Err((key("retry.backoff"), "must be at most 366 days".into()));
            }
            for (guest, host) in &p.grants.read_dirs {
                if !guest.starts_with('/') {
                    return Err((
                        key(&format!("grants.read_dirs.{guest}")),
                        "the guest path must be absolute, like \"/lookup\"".into(),
                    ));
                }
                if !host.is_dir() {
                    return Err((
                        key(&format!("grants.read_dirs.{guest}")),
                        format!("{} is not a folder", host.display()),
                    ));
                }
            }
            if p.offsets == OffsetStore::Sink {
                self.check_one_transactional_sink(p)
                    .map_err(|(k, e)| (key(k), e))?;
            }
            // A plugin's versions are promoted per plugin, so its pipelines
            // must agree on how a new version takes over.
            if let Some(other) = self
                .pipelines
                .iter()
                .find(|o| o.plugin == p.plugin && o.reload != p.reload)
            {
                return Err((
                    key("reload"),
                    format!(
                        "pipeline '{}' runs plugin '{}' with reload = \"{}\"; every pipeline of one plugin needs the same reload mode",
                        other.name,
                        p.plugin,
                        other.reload.as_str()
                    ),
                ));
            }
        }
        if !(64..=MAX_STACK_KIB).contains(&self.engine.stack_kib) {
            return Err((
                "engine.stack_kib".into(),
                format!("must be from 64 to {MAX_STACK_KIB}"),
            ));
        }
        // Sluice commits offsets itself, after the sinks acknowledged.
        for owned in ["enable.auto.commit", "enable.auto.offset.store", "group.id"] {
            if self.kafka.options.contains_key(owned) {
                return Err((
                    format!("kafka.options.{owned}"),
                    "is set by sluice (offsets are committed after the sinks acknowledged; the group is `pipelines[].group_id`)".into(),
                ));
            }
        }
        if let Some(sink) = &self.ledger.sink {
            match self.sinks.get(sink) {
                None => return Err(("ledger.sink".into(), self.unknown_sink(sink))),
                Some(s) if !s.sink_type().transactional => {
                    return Err((
                        "ledger.sink".into(),
                        format!(
                            "sink '{sink}' is {}; the ledger needs a {} sink (or no `ledger.sink` for the embedded SQLite ledger)",
                            s.kind(),
                            transactional_kinds()
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    fn unknown_sink(&self, name: &str) -> String {
        let known: Vec<_> = self.sinks.keys().map(String::as_str).collect();
        format!(
            "no sink named '{name}' (defined: {})",
            if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            }
        )
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

/// The sink types that have transactions, for messages: "mysql".
fn transactional_kinds() -> String {
    let kinds: Vec<&str> = SINK_TYPES
        .iter()
        .filter(|t| t.transactional)
        .map(|t| t.name)
        .collect();
    kinds.join(" or ")
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
