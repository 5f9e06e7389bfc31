//! One pipeline's settings: its plugin and topics, batches, routes, dead
//! letters, limits, grants, schedule, retries, reloads and offsets.

use super::duration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize, JsonSchema)]
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
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

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
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
#[derive(Debug, Clone, Default, PartialEq, Deserialize, JsonSchema)]
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

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Start a run this long after the previous one was due (`"30s"`, `"5m"`).
    #[serde(default, with = "duration::option")]
    #[schemars(with = "Option<duration::Text>")]
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
    #[schemars(with = "Option<duration::Text>")]
    pub deadline: Option<Duration>,
    /// Continuous mode: close the current ledger run after this long...
    #[serde(default = "default_roll_after", with = "duration")]
    #[schemars(with = "duration::Text")]
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

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Catchup {
    #[default]
    One,
    None,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts per run, the first included.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Wait before the second attempt; doubles each time, with +-20% jitter.
    #[serde(default = "default_backoff", with = "duration")]
    #[schemars(with = "duration::Text")]
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

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Most records per batch (one plugin call, one write per output).
    #[serde(default = "default_max_records")]
    pub max_records: usize,
    /// Longest wait to fill a batch before processing what arrived.
    #[serde(default = "default_max_wait", with = "duration")]
    #[schemars(with = "duration::Text")]
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

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Sink name (a key of `[sinks]`).
    pub sink: String,
    /// Table or collection; default: the output's name.
    pub name: Option<String>,
    /// For a table the plugin partitions by day or month: drop whole
    /// partitions once all their rows are older than this (e.g. "90d").
    /// Checked at start and hourly; each drop is logged and recorded in
    /// the ledger. Default: keep everything.
    #[serde(default, with = "duration::option")]
    #[schemars(with = "Option<duration::Text>")]
    pub retention: Option<Duration>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
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

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Most linear memory the plugin may grow to, in MiB.
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u64,
    /// Longest one `transform` call may run before it is interrupted.
    #[serde(default = "default_batch_timeout", with = "duration")]
    #[schemars(with = "duration::Text")]
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
