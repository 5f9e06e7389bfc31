//! Shared helpers for the end-to-end tests: the real local services
//! (started by `scripts/services.sh up`), built plugins, unique names.

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

fn port(var: &str, default: u16) -> u16 {
    std::env::var(var)
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(default)
}

pub fn kafka_brokers() -> String {
    format!("127.0.0.1:{}", port("SLUICE_KAFKA_PORT", 9092))
}

pub fn mongo_uri() -> String {
    format!("mongodb://127.0.0.1:{}", port("SLUICE_MONGO_PORT", 27017))
}

pub fn mysql_url() -> String {
    format!(
        "mysql://sluice:sluice@127.0.0.1:{}/sluice",
        port("SLUICE_MYSQL_PORT", 3306)
    )
}

/// The secure profile of `scripts/services.sh` (docs/secure-services.md):
/// Kafka's SASL_SSL listener (SCRAM), FerretDB's TLS listener and the
/// MariaDB instance that requires TLS and encrypts its files.
pub mod secure {
    use super::port;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    pub const KAFKA_USER: &str = "sluice";
    pub const KAFKA_PASSWORD: &str = "sluice-scram-secret";
    pub const MYSQL_PASSWORD: &str = "sluice-tls-secret";

    pub fn kafka_brokers() -> String {
        format!("127.0.0.1:{}", port("SLUICE_KAFKA_SASL_PORT", 9094))
    }

    /// The listener that requires a client certificate.
    pub fn kafka_mtls_brokers() -> String {
        format!("127.0.0.1:{}", port("SLUICE_KAFKA_MTLS_PORT", 9095))
    }

    pub fn mongo_uri() -> String {
        format!(
            "mongodb://127.0.0.1:{}",
            port("SLUICE_MONGO_TLS_PORT", 27018)
        )
    }

    /// Without the password (the config gives it by reference).
    pub fn mysql_url() -> String {
        format!(
            "mysql://sluice@127.0.0.1:{}/sluice",
            port("SLUICE_MYSQL_SECURE_PORT", 3307)
        )
    }

    /// `config/secure.toml` with its own topic, pipeline, folders and tables,
    /// service paths made absolute; `edit` changes it further.
    pub fn config(
        dir: &Path,
        topic: &str,
        pipeline: &str,
        edit: &dyn Fn(String) -> String,
    ) -> PathBuf {
        let ca = tls_file("ca.pem");
        let services = ca.parent().and_then(Path::parent).unwrap();
        let text = std::fs::read_to_string(super::repo_root().join("config/secure.toml")).unwrap();
        let text = text
            .replace(".services/", &format!("{}/", services.display()))
            .replace(".sluice-secure/plugins", &dir.display().to_string())
            .replace(
                "state_dir = \".sluice-secure\"",
                &format!("state_dir = \"{}/state\"", dir.display()),
            )
            .replace("listen = \"127.0.0.1:7879\"", "enabled = false")
            .replace("127.0.0.1:9094", &kafka_brokers())
            .replace("mongodb://127.0.0.1:27018", &mongo_uri())
            .replace("mysql://sluice@127.0.0.1:3307/sluice", &mysql_url())
            .replace(
                "name = \"orders_secure\"",
                &format!("name = \"{pipeline}\""),
            )
            .replace(
                "topics = [\"demo.orders\"]",
                &format!("topics = [\"{topic}\"]"),
            )
            .replace(
                "name = \"orders\" }",
                &format!("name = \"{pipeline}_orders\" }}"),
            )
            .replace(
                "name = \"secure_order_events\" }",
                &format!("name = \"{pipeline}_events\" }}"),
            );
        assert!(
            !text.contains("\".services/") && !text.contains(":.services/"),
            "{text}"
        );
        let path = dir.join(format!("{pipeline}.toml"));
        std::fs::write(&path, edit(text)).unwrap();
        path
    }

    /// `sluice ARGS --config C`, from the repository root (where the
    /// config's relative paths point): (ok, stdout, stderr).
    pub fn sluice(args: &[&str], config: &Path) -> (bool, String, String) {
        super::cli_output(
            Command::new(super::sluice_bin())
                .current_dir(super::repo_root())
                .args(args)
                .arg("--config")
                .arg(config),
        )
    }

    /// The local CA and the certificates it signed.
    pub fn tls_file(name: &str) -> PathBuf {
        let services = std::env::var("SLUICE_SERVICES_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| super::repo_root().join(".services"));
        services.join("tls").join(name)
    }
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A name no earlier test run used: topics, tables and groups stay apart.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}_{}_{}", std::process::id(), nanos % 1_000_000_000)
}

/// Builds the example plugins (once per test process) and returns the
/// path of `NAME.wasm`; `v2` builds the plugin with its `v2` feature.
pub fn plugin_wasm(name: &str, v2: bool) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    static BUILT_V2: OnceLock<()> = OnceLock::new();
    let plugins = repo_root().join("plugins");
    let (once, target_dir, extra): (_, _, &[&str]) = if v2 {
        (
            &BUILT_V2,
            plugins.join("target/v2"),
            &["-p", "orders", "--features", "orders/v2"],
        )
    } else {
        (&BUILT, plugins.join("target"), &[])
    };
    once.get_or_init(|| {
        let status = Command::new(env!("CARGO"))
            .current_dir(&plugins)
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-wasip2",
                "--target-dir",
            ])
            .arg(&target_dir)
            .args(extra)
            .status()
            .expect("run cargo to build plugins");
        assert!(status.success(), "building plugins failed");
    });
    target_dir
        .join("wasm32-wasip2/release")
        .join(format!("{name}.wasm"))
}

/// Builds a variant of the test-only `hostile` plugin (once per process)
/// with a describe-time `feature`, or `hostile_import` for `"import"`.
pub fn hostile_wasm(feature: Option<&str>) -> PathBuf {
    match feature {
        None => variant_wasm("hostile", None),
        Some("import") => variant_wasm("hostile_import", None),
        Some(f) => variant_wasm("hostile", Some(f)),
    }
}

/// Builds plugin `package` with `feature` (once per process). All variants
/// share one target folder, so only the plugin itself is rebuilt per
/// feature; each result is copied aside under its own folder.
pub fn variant_wasm(package: &str, feature: Option<&str>) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let plugins = repo_root().join("plugins");
    let tag = match feature {
        None => package.to_string(),
        Some(f) => format!("{package}-{f}"),
    };
    let target_dir = plugins.join("target/variants");
    let kept = target_dir.join(&tag).join(format!("{package}.wasm"));
    let mut built = BUILT.lock().unwrap();
    if !built.contains(&tag) {
        let mut cargo = Command::new(env!("CARGO"));
        cargo
            .current_dir(&plugins)
            .args([
                "build",
                "--quiet",
                "--release",
                "--target",
                "wasm32-wasip2",
                "-p",
                package,
            ])
            .arg("--target-dir")
            .arg(&target_dir);
        if let Some(f) = feature {
            cargo.args(["--features", &format!("{package}/{f}")]);
        }
        assert!(cargo.status().unwrap().success(), "building {tag} failed");
        std::fs::create_dir_all(kept.parent().unwrap()).unwrap();
        let out = target_dir
            .join("wasm32-wasip2/release")
            .join(format!("{package}.wasm"));
        std::fs::copy(out, &kept).unwrap();
        built.push(tag);
    }
    kept
}

/// A fresh plugins folder holding a copy of the given plugins.
pub fn plugins_dir(plugins: &[(&str, &Path)]) -> PathBuf {
    let dir = std::env::temp_dir().join(unique("sluice_plugins"));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, wasm) in plugins {
        std::fs::copy(wasm, dir.join(format!("{name}.wasm"))).unwrap();
    }
    dir
}

/// Replaces a file the way a deploy should: write aside, rename into place.
pub fn replace_atomically(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

pub async fn create_topic(topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .create()
        .unwrap();
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .expect("Kafka is up (scripts/services.sh up)");
    for r in results {
        r.expect("topic created");
    }
}

pub fn producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("linger.ms", "5")
        .set("enable.idempotence", "true")
        .create()
        .unwrap()
}

/// Produces (key, value) events and waits for every acknowledgement.
pub async fn produce(producer: &FutureProducer, topic: &str, events: &[(String, String)]) {
    let sends = events.iter().map(|(k, v)| {
        producer.send(
            FutureRecord::to(topic).key(k).payload(v),
            Duration::from_secs(30),
        )
    });
    for r in futures::future::join_all(sends).await {
        r.expect("event produced");
    }
}

/// Produces (key, value) events through a broker that may restart: a
/// failed send is sent again from a new producer (librdkafka's idempotent
/// producer can stall after a restart until every message times out). A
/// resent event may land twice in the topic; the sinks upsert by key.
pub async fn produce_through_restarts(
    producer: &mut FutureProducer,
    topic: &str,
    events: &[(String, String)],
) {
    for attempt in 1.. {
        let sends = events.iter().map(|(k, v)| {
            producer.send(
                FutureRecord::to(topic).key(k).payload(v),
                Duration::from_secs(30),
            )
        });
        let failed = futures::future::join_all(sends)
            .await
            .into_iter()
            .filter(Result::is_err)
            .count();
        if failed == 0 {
            return;
        }
        assert!(
            attempt < 15,
            "{failed} events still not produced after {attempt} attempts"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        *producer = restartable_producer();
    }
}

/// A producer for [`produce_through_restarts`]: it gives up on a message
/// after 20 s rather than librdkafka's 5 minutes.
pub fn restartable_producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("linger.ms", "5")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "20000")
        .create()
        .unwrap()
}

/// Produces (key, value) events in order and returns where each landed:
/// (partition, offset). The idempotent producer keeps each partition in
/// the order given.
pub async fn produce_at(
    producer: &FutureProducer,
    topic: &str,
    events: &[(String, Option<String>)],
) -> Vec<(i32, i64)> {
    let sends = events.iter().map(|(k, v)| {
        // No value: a tombstone.
        let record = FutureRecord::<String, String>::to(topic).key(k);
        let record = match v {
            Some(v) => record.payload(v),
            None => record,
        };
        producer.send(record, Duration::from_secs(30))
    });
    futures::future::join_all(sends)
        .await
        .into_iter()
        .map(|r| {
            let delivery = r.expect("event produced");
            (delivery.partition, delivery.offset)
        })
        .collect()
}

/// The offsets `group` committed in `topic`, per partition (absent: none).
pub fn committed_offsets(group: &str, topic: &str) -> std::collections::BTreeMap<i32, i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("group.id", group)
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in metadata.topics()[0].partitions() {
        tpl.add_partition(topic, p.id());
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            rdkafka::Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}

/// The number in environment variable `name`, or `default`.
pub fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The middle value (the upper one of an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A small seeded generator (SplitMix64): a test's random choices,
/// reproducible from the seed it prints.
pub struct Dice(u64);

impl Dice {
    pub fn new(seed: u64) -> Dice {
        Dice(seed)
    }

    /// A seed from the clock, or from `var` when it is set.
    pub fn seed_from_env(var: &str) -> u64 {
        std::env::var(var)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            })
    }

    pub fn roll(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.roll() % n as u64) as usize
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.roll() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    pub fn between(&mut self, low: Duration, high: Duration) -> Duration {
        low + (high - low).mul_f64(self.below(10_000) as f64 / 10_000.0)
    }
}

pub async fn mysql() -> sqlx::MySqlPool {
    sqlx::MySqlPool::connect(&mysql_url())
        .await
        .expect("MariaDB is up (scripts/services.sh up)")
}

pub async fn mongo() -> mongodb::Database {
    mongodb::Client::with_uri_str(mongo_uri())
        .await
        .unwrap()
        .database("sluice")
}

/// Config text for one pipeline on the local services.
pub fn config_toml(
    plugins_dir: &Path,
    pipeline: &str,
    plugin: &str,
    topic: &str,
    routes: &str,
) -> String {
    host_toml(plugins_dir, "") + &pipeline_toml(pipeline, plugin, topic, routes)
}

/// The host part of a config: local services, state under `plugins_dir`,
/// `extra` top-level tables (e.g. `[api]`); the API is off unless given.
pub fn host_toml(plugins_dir: &Path, extra: &str) -> String {
    let api = if extra.contains("[api]") {
        ""
    } else {
        "[api]\nenabled = false\n"
    };
    format!(
        r#"
plugins_dir = "{dir}"
state_dir = "{dir}/state"
{api}{extra}
[kafka]
brokers = "{brokers}"
[sinks.mongodb]
type = "mongodb"
uri = "{mongo}"
database = "sluice"
tls = "disabled"
[sinks.mysql]
type = "mysql"
url = "{mysql}"
tls = "disabled"
"#,
        dir = plugins_dir.display(),
        brokers = kafka_brokers(),
        mongo = mongo_uri(),
        mysql = mysql_url(),
    )
}

/// One `[[pipelines]]` entry; `extra` holds its other keys and tables.
pub fn pipeline_toml(pipeline: &str, plugin: &str, topic: &str, extra: &str) -> String {
    let batch = if extra.contains("batch =") {
        ""
    } else {
        "batch = { max_records = 500, max_wait = \"100ms\" }"
    };
    format!(
        r#"
[[pipelines]]
name = "{pipeline}"
plugin = "{plugin}"
topics = ["{topic}"]
{batch}
dead_letter = {{ name = "{pipeline}_dead_letters" }}
{extra}
"#
    )
}

/// A `[[pipelines]]` entry of the orders plugin writing `PIPELINE_orders`
/// (MySQL) and `PIPELINE_events` (MongoDB); `extra` holds its other keys.
pub fn orders_pipeline_toml(pipeline: &str, topic: &str, extra: &str) -> String {
    let routes = orders_routes(&format!("{pipeline}_orders"), &format!("{pipeline}_events"));
    pipeline_toml(pipeline, "orders", topic, &format!("{routes}\n{extra}"))
}

/// `toml` with the consumers' session timeout set to `ms`: the partitions
/// of a killed or departed host move to the others that much sooner.
pub fn with_session_timeout(toml: &str, ms: u32) -> String {
    toml.replace(
        "[kafka]\n",
        &format!("[kafka]\noptions = {{ \"session.timeout.ms\" = \"{ms}\" }}\n"),
    )
}

/// Produces `event(0..count)` to `topic` in the background, `chunk` events
/// at a time with `pause` after each.
pub fn spawn_producer(
    topic: &str,
    count: usize,
    chunk: usize,
    pause: Duration,
    event: fn(usize) -> (String, String),
) -> tokio::task::JoinHandle<()> {
    let topic = topic.to_string();
    tokio::spawn(async move {
        let p = producer();
        for start in (0..count).step_by(chunk) {
            let events: Vec<_> = (start..(start + chunk).min(count)).map(event).collect();
            produce(&p, &topic, &events).await;
            tokio::time::sleep(pause).await;
        }
    })
}

/// A `[[pipelines]]` entry of the orders plugin with `offsets = "mysql"`:
/// both outputs (`PIPELINE_orders`, `PIPELINE_events`) and the dead
/// letters in MySQL, the offsets stored beside them.
pub fn exactly_once_pipeline_toml(pipeline: &str, topic: &str, extra: &str) -> String {
    let keys = format!(
        "offsets = \"mysql\"\nroutes.orders = {{ sink = \"mysql\", name = \"{pipeline}_orders\" }}\nroutes.order_events = {{ sink = \"mysql\", name = \"{pipeline}_events\" }}\n{extra}"
    );
    pipeline_toml(pipeline, "orders", topic, &keys)
        .replace("dead_letter = {", "dead_letter = { sink = \"mysql\", ")
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A valid event for the orders plugin, keyed by its id `o-{i}`.
/// 10,000 events: 9,400 valid orders, 200 of them sent again, and 4 x 100
/// bad ones (not JSON, no id, a mistyped total, a bad timestamp). The
/// orders plugin writes 9,400 rows, 9,500 documents (the bad timestamp
/// only breaks the table) and 400 dead letters.
pub fn orders_mix() -> Vec<(String, String)> {
    let mut events: Vec<_> = (0..9_400).map(order_event).collect();
    events.extend((0..200).map(|i| order_event(i * 7)));
    for i in 0..100 {
        events.push((format!("bad-{i}"), format!("{{not json {i}")));
        events.push((
            format!("noid-{i}"),
            serde_json::json!({"customer": "x", "total": 1, "created_at": "2024-05-01T10:00:00Z"})
                .to_string(),
        ));
        events.push((format!("type-{i}"), serde_json::json!({"id": format!("type-{i}"), "customer": "x", "total": "lots", "created_at": "2024-05-01T10:00:00Z"}).to_string()));
        events.push((format!("ts-{i}"), serde_json::json!({"id": format!("ts-{i}"), "customer": "x", "total": 5, "created_at": "yesterday"}).to_string()));
    }
    assert_eq!(events.len(), 10_000);
    events
}

pub fn order_event(i: usize) -> (String, String) {
    let event = serde_json::json!({
        "id": format!("o-{i}"), "customer": format!("c-{}", i % 50),
        "total": (i % 300) as f64 + 0.25, "created_at": format!("2024-05-01T10:{:02}:{:02}Z", (i / 60) % 60, i % 60),
        "status": "paid", "items": [{"sku": format!("sku-{}", i % 7), "qty": 1 + i % 3}],
    });
    (format!("o-{i}"), event.to_string())
}

/// Routes of the orders plugin's two outputs to a table and a collection.
pub fn orders_routes(table: &str, collection: &str) -> String {
    format!(
        "routes.orders = {{ sink = \"mysql\", name = \"{table}\" }}\nroutes.order_events = {{ sink = \"mongodb\", name = \"{collection}\" }}"
    )
}

/// Rows and distinct order ids in an orders table.
pub async fn count_rows(pool: &sqlx::MySqlPool, table: &str) -> (i64, i64) {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*), COUNT(DISTINCT order_id) FROM `{table}`"
    )))
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Makes MySQL refuse orders whose total is `cap` or more (the CHECK
/// constraint `total_cap`), or accept every order again (`None`).
pub async fn cap_totals(pool: &sqlx::MySqlPool, table: &str, cap: Option<u32>) {
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER TABLE `{table}` DROP CONSTRAINT IF EXISTS total_cap"
    )))
    .execute(pool)
    .await;
    if let Some(cap) = cap {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "ALTER TABLE `{table}` ADD CONSTRAINT total_cap CHECK (total < {cap})"
        )))
        .execute(pool)
        .await
        .unwrap();
    }
}

/// Polls `condition` until it holds; fails the test after `limit`.
pub async fn wait_for<F, Fut>(limit: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + limit;
    while !condition().await {
        assert!(
            std::time::Instant::now() < deadline,
            "condition not met within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// The `sluice` binary of this workspace, built on first use.
pub fn sluice_bin() -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let status = Command::new(env!("CARGO"))
            .current_dir(repo_root())
            // `--workspace`: the same features as the test build, so the
            // libraries are shared and only the binary links.
            .args(["build", "--quiet", "--workspace", "--bins"])
            .status()
            .expect("run cargo to build sluice");
        assert!(status.success(), "building sluice failed");
    });
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| repo_root().join("target"), PathBuf::from);
    target.join("debug/sluice")
}

/// The hostile plugin's three outputs routed to fresh tables/collections.
pub fn hostile_pipeline(pipeline: &str, topic: &str, extra: &str) -> String {
    let routes = format!(
        "routes.events = {{ sink = \"mongodb\", name = \"{pipeline}_events\" }}\n\
         routes.probes = {{ sink = \"mongodb\", name = \"{pipeline}_probes\" }}\n\
         routes.rows = {{ sink = \"mysql\", name = \"{pipeline}_rows\" }}"
    );
    pipeline_toml(pipeline, "hostile", topic, &format!("{routes}\n{extra}"))
}

/// `wasm` with a custom section carrying `n` appended: the same code under
/// a new content hash, so the host sees (and compiles) a new version.
pub fn with_section(wasm: &[u8], n: u64) -> Vec<u8> {
    let name = b"sluice-test-version";
    let payload = n.to_le_bytes();
    let mut bytes = wasm.to_vec();
    bytes.push(0); // custom section id
    bytes.push((1 + name.len() + payload.len()) as u8); // size < 128: one LEB byte
    bytes.push(name.len() as u8);
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(&payload);
    bytes
}

/// The same component under a new content hash.
pub fn new_version(wasm: &[u8]) -> Vec<u8> {
    with_section(wasm, 0)
}

/// Writes a config file into `dir` for the `sluice` binary.
pub fn write_config(dir: &Path, toml: &str) -> PathBuf {
    let path = dir.join("sluice.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

/// Runs the `sluice` binary: (succeeded, stdout, stderr).
pub fn sluice_cli(args: &[&str], config: &Path) -> (bool, String, String) {
    cli_output(
        Command::new(sluice_bin())
            .args(args)
            .arg("--config")
            .arg(config),
    )
}

/// Runs `command` to its end: (succeeded, stdout, stderr).
fn cli_output(command: &mut Command) -> (bool, String, String) {
    let out = command.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A host running in this process until `stop`.
pub struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Runs `host` by its schedules in the background.
pub fn run_host(host: sluice::Host) -> Running {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(host.run(
        async {
            let _ = stopped.await;
        },
        sluice::RunMode::Scheduled,
    ));
    Running { stop, task }
}

impl Running {
    /// Asks the host to stop and waits for a clean exit.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

/// Every document of a collection.
pub async fn documents(collection: &str) -> Vec<mongodb::bson::Document> {
    use futures::TryStreamExt;
    mongo()
        .await
        .collection::<mongodb::bson::Document>(collection)
        .find(mongodb::bson::doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap()
}

/// A child process killed when dropped, so a failing test leaves none behind.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl KillOnDrop {
    /// Sends SIGTERM and checks the process exits cleanly.
    pub fn sigterm(&mut self) {
        Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .unwrap();
        assert!(self.0.wait().unwrap().success(), "clean exit after SIGTERM");
    }
}

/// Starts `sluice run --config CONFIG`: its stdout (the exit summary) goes to
/// `NAME.out`, its log is appended to `NAME.log`.
pub fn start_sluice(config: &Path, name: &Path) -> KillOnDrop {
    start_sluice_logging(config, name, None)
}

/// `start_sluice` with `SLUICE_LOG` set to `log_filter`, if given.
pub fn start_sluice_logging(config: &Path, name: &Path, log_filter: Option<&str>) -> KillOnDrop {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(name.with_extension("log"))
        .unwrap();
    let mut command = Command::new(sluice_bin());
    if let Some(filter) = log_filter {
        command.env("SLUICE_LOG", filter);
    }
    KillOnDrop(
        command
            .args(["run", "--config"])
            .arg(config)
            .stdout(std::fs::File::create(name.with_extension("out")).unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

/// The API token of the host started with `config`: waits up to 60 s
/// for the host to make it.
pub fn api_token(config: &Path) -> String {
    let config = sluice::config::Config::load(config).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match sluice::api::token(&config, false) {
            Ok(token) => return token,
            Err(e) if std::time::Instant::now() > deadline => panic!("{e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// A client of the API of the host started with `config`.
pub fn api_client(config: &Path) -> sluice::api::client::Client {
    let token = api_token(config);
    let listen = sluice::config::Config::load(config).unwrap().api.listen;
    sluice::api::client::Client::new(listen, &token)
}

/// Rows in `table`, or `None` if MariaDB does not answer within 2 s or the
/// table does not exist yet.
pub async fn table_rows(pool: &sqlx::MySqlPool, table: &str) -> Option<i64> {
    let query = sqlx::query_as::<_, (i64,)>(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM `{table}`"
    )))
    .fetch_one(pool);
    match tokio::time::timeout(Duration::from_secs(2), query).await {
        Ok(Ok((n,))) => Some(n),
        _ => None,
    }
}

/// Status per order id in the orders table and the events collection.
pub async fn statuses(
    pool: &sqlx::MySqlPool,
    table: &str,
    collection: &str,
) -> (
    std::collections::BTreeMap<String, String>,
    std::collections::BTreeMap<String, String>,
) {
    let rows: Vec<(String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT order_id, status FROM `{table}`"
    )))
    .fetch_all(pool)
    .await
    .unwrap();
    let docs = documents(collection)
        .await
        .iter()
        .map(|d| {
            let event = d.get_document("event").unwrap();
            (
                d.get_str("_id").unwrap().to_string(),
                event.get_str("status").unwrap().to_string(),
            )
        })
        .collect();
    (rows.into_iter().collect(), docs)
}

/// Asserts `text` contains every one of `parts`, showing the text if not.
pub fn assert_contains(text: &str, parts: &[&str]) {
    for part in parts {
        assert!(text.contains(part), "expected '{part}' in:\n{text}");
    }
}

/// `sluice run --until-drained`, as a user would: must exit 0; its log.
pub fn run_until_drained(config: &Path) -> String {
    let (ok, stdout, stderr) = sluice_cli(&["run", "--until-drained"], config);
    assert!(ok, "sluice run --until-drained failed:\n{stdout}\n{stderr}");
    stderr
}
