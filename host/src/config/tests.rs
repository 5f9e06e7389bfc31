use super::*;
use std::time::Duration;

const GOOD: &str = r#"
plugins_dir = "plugins"
[kafka]
brokers = "127.0.0.1:9092"
[sinks.mongodb]
type = "mongodb"
uri = "mongodb://127.0.0.1:27017"
database = "sluice"
[sinks.mysql]
type = "mysql"
url = "mysql://sluice:${env:SLUICE_TEST_PW}@127.0.0.1:3306/sluice"
[[pipelines]]
name = "orders"
plugin = "orders"
topics = ["orders"]
batch = { max_records = 500, max_wait = "250ms" }
routes.orders = { sink = "mysql", name = "shop_orders" }
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("test.toml"))
}

fn error(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn parses_a_full_config() {
    let c = parse(GOOD).unwrap();
    let p = &c.pipelines[0];
    assert_eq!(p.batch.max_records, 500);
    assert_eq!(p.batch.max_wait, Duration::from_millis(250));
    assert_eq!(p.group_id(), "sluice-orders");
    assert_eq!(p.routes["orders"].name.as_deref(), Some("shop_orders"));
    assert_eq!(c.default_sink_for(OutputKind::Document), Some("mongodb"));
    assert_eq!(c.default_sink_for(OutputKind::Table), Some("mysql"));
    assert_eq!(p.limits.memory_mib, 64);
}

#[test]
fn unknown_keys_name_the_key_path_and_line() {
    let e = error(&GOOD.replace("max_records = 500", "max_recrods = 500"));
    assert!(e.starts_with("test.toml: pipelines[0].batch"), "{e}");
    assert!(e.contains("unknown field `max_recrods`"), "{e}");
    assert!(e.contains("line 16"), "{e}");
}

#[test]
fn bad_values_name_the_key() {
    let e = error(&GOOD.replace("\"250ms\"", "\"soon\""));
    assert!(
        e.contains("pipelines[0].batch.max_wait") && e.contains("'soon' is not a duration"),
        "{e}"
    );
    let e = error(&GOOD.replace("max_records = 500", "max_records = \"lots\""));
    assert!(
        e.contains("pipelines[0].batch.max_records") && e.contains("invalid type"),
        "{e}"
    );
    let e = error(&GOOD.replace("type = \"mysql\"", "type = \"postgres\""));
    assert!(e.contains("sinks.mysql") && e.contains("postgres"), "{e}");
    let e = error(&GOOD.replace("[kafka]\nbrokers = \"127.0.0.1:9092\"", ""));
    assert!(e.contains("missing field `kafka`"), "{e}");
    let e = error("this is = = not toml");
    assert!(e.contains("(syntax)"), "{e}");
}

#[test]
fn semantic_errors_name_the_key() {
    let e = error(&GOOD.replace("sink = \"mysql\", name", "sink = \"mysq\", name"));
    assert!(
        e.contains(
            "pipelines[0].routes.orders.sink: no sink named 'mysq' (defined: mongodb, mysql)"
        ),
        "{e}"
    );
    let e = error(&GOOD.replace("topics = [\"orders\"]", "topics = []"));
    assert!(e.contains("pipelines[0].topics"), "{e}");
    let e = error(&GOOD.replace("name = \"shop_orders\"", "name = \"shop orders; drop\""));
    assert!(e.contains("routes.orders.name"), "{e}");
    let twice = format!(
        "{GOOD}\n[[pipelines]]\nname = \"orders\"\nplugin = \"orders\"\ntopics = [\"x\"]\n"
    );
    assert!(error(&twice).contains("defined twice"));
}

#[test]
fn secrets_resolve_and_never_print() {
    let c = parse(GOOD).unwrap();
    let SinkConfig::Mysql { url, .. } = &c.sinks["mysql"] else {
        panic!()
    };
    assert!(!format!("{c:?}").contains("sluice:"));
    // SAFETY: tests in this module do not read this variable concurrently.
    unsafe { std::env::remove_var("SLUICE_TEST_PW") };
    assert!(url.resolve().unwrap_err().contains("SLUICE_TEST_PW"));
    unsafe { std::env::set_var("SLUICE_TEST_PW", "hunter2") };
    assert_eq!(
        url.resolve().unwrap(),
        "mysql://sluice:hunter2@127.0.0.1:3306/sluice"
    );
    assert!(
        Secret::new("${vault:x}")
            .resolve()
            .unwrap_err()
            .contains("not ${env:NAME}")
    );
}

#[test]
fn schedules_retries_ledger_and_api() {
    let scheduled = format!(
        "{GOOD}schedule = {{ cron = \"0 2 * * *\", timezone = \"Europe/Paris\", catchup = \"none\", deadline = \"10m\" }}\nretry = {{ max_attempts = 5, backoff = \"1s\" }}\n"
    );
    let c = parse(&scheduled).unwrap();
    let p = &c.pipelines[0];
    assert_eq!(p.schedule.catchup, Catchup::None);
    assert_eq!(p.schedule.deadline, Some(Duration::from_secs(600)));
    assert_eq!(p.retry.max_attempts, 5);
    assert_eq!(c.api.listen.to_string(), "127.0.0.1:7878");
    assert_eq!(c.state_dir, PathBuf::from(".sluice"));

    let e = error(&scheduled.replace("0 2 * * *", "0 25 * * *"));
    assert!(
        e.contains("pipelines[0].schedule.cron: '0 25 * * *' is not a cron expression"),
        "{e}"
    );
    let e = error(&scheduled.replace("Europe/Paris", "Europe/Pariss"));
    assert!(e.contains("pipelines[0].schedule.timezone"), "{e}");
    let e = error(&scheduled.replace("\"none\"", "\"all\""));
    assert!(
        e.contains("pipelines[0].schedule.catchup") && e.contains("unknown variant `all`"),
        "{e}"
    );
    let e = error(&scheduled.replace("max_attempts = 5", "max_attempts = 0"));
    assert!(
        e.contains("pipelines[0].retry.max_attempts: must be from 1 to 100"),
        "{e}"
    );
    let e = error(&scheduled.replace("\"10m\"", "\"1000 years\""));
    assert!(
        e.contains("pipelines[0].schedule.deadline: must be at most 366 days"),
        "{e}"
    );
    let typo = GOOD.replace("/sluice\"", "/sluice?ssl_mode=REQUIRED\"");
    assert_ne!(typo, GOOD, "the URL was found");
    let e = error(&typo);
    assert!(
        e.contains("sinks.mysql.url: unknown connection parameter 'ssl_mode' (known: charset,"),
        "{e}"
    );
    assert!(parse(&GOOD.replace("/sluice\"", "/sluice?charset=utf8mb4\"")).is_ok());
    for (option, why) in [
        ("enable.auto.commit", "is set by sluice"),
        (
            "bootstrap.servers",
            "is set by `kafka.brokers`; set it there",
        ),
        ("metadata.broker.list", "is set by `kafka.brokers`"),
        (
            "security.protocol",
            "is set by `[kafka.tls] and [kafka.sasl]`",
        ),
        ("sasl.password", "is set by `kafka.sasl.password`"),
        ("ssl.key.password", "is set by `kafka.tls.key_password`"),
        (
            "enable.ssl.certificate.verification",
            "would accept any broker certificate",
        ),
        (
            "plugin.library.paths",
            "loads native libraries into the host process",
        ),
        ("ssl.engine.location", "loads native libraries"),
    ] {
        let options = format!("brokers = \"127.0.0.1:9092\"\noptions = {{ \"{option}\" = \"x\" }}");
        let e = error(&GOOD.replace("brokers = \"127.0.0.1:9092\"", &options));
        assert!(e.contains(&format!("kafka.options.{option}: {why}")), "{e}");
    }
    let e = error(&scheduled.replace(
        "cron = \"0 2 * * *\"",
        "cron = \"0 2 * * *\", every = \"1m\"",
    ));
    assert!(
        e.contains("pipelines[0].schedule: set either `every` or `cron`"),
        "{e}"
    );
    let ledger = GOOD.replace("[kafka]", "[ledger]\nsink = \"mongodb\"\n[kafka]");
    let e = error(&ledger);
    assert!(
        e.contains("ledger.sink: sink 'mongodb' is mongodb; the ledger needs a mysql sink"),
        "{e}"
    );
    let e = error(&GOOD.replace("[kafka]", "[api]\nlisten = \"localhost\"\n[kafka]"));
    assert!(e.contains("api.listen"), "{e}");
}

#[test]
fn grants_engine_and_reload_mode() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.pipelines[0].grants, GrantsConfig::default());
    assert_eq!(c.engine.stack_kib, 512);
    assert_eq!(c.pipelines[0].reload, ReloadMode::Immediate);
    let granted = format!(
        "{GOOD}grants = {{ env = [\"TZ\"], read_dirs = {{ \"/lookup\" = \"{}\" }}, connect = [\"127.0.0.1:6379\"], clock = true }}\nreload = \"canary\"\ncanary_batches = 3\n",
        std::env::temp_dir().display()
    );
    let c = parse(&granted).unwrap();
    let p = &c.pipelines[0];
    assert_eq!(p.grants.env, ["TZ"]);
    assert!(p.grants.clock && !p.grants.random);
    assert_eq!((p.reload, p.canary_batches), (ReloadMode::Canary, 3));

    let e = error(&format!(
        "{GOOD}grants = {{ read_dirs = {{ \"/lookup\" = \"/no/such/folder\" }} }}\n"
    ));
    assert!(
        e.contains("pipelines[0].grants.read_dirs./lookup: /no/such/folder is not a folder"),
        "{e}"
    );
    let e = error(&format!(
        "{GOOD}grants = {{ read_dirs = {{ \"lookup\" = \"/tmp\" }} }}\n"
    ));
    assert!(e.contains("the guest path must be absolute"), "{e}");
    let e = error(&format!("{GOOD}grants = {{ network = true }}\n"));
    assert!(
        e.contains("pipelines[0].grants") && e.contains("unknown field `network`"),
        "{e}"
    );
    let e = error(&GOOD.replace("plugins_dir = \"plugins\"", "[engine]\nstack_kib = 4096"));
    assert!(
        e.contains("engine.stack_kib: must be from 64 to 1024"),
        "{e}"
    );

    let two = format!(
        "{GOOD}reload = \"canary\"\n[[pipelines]]\nname = \"orders_again\"\nplugin = \"orders\"\ntopics = [\"orders\"]\n"
    );
    let e = error(&two);
    assert!(
        e.contains("pipelines[0].reload: pipeline 'orders_again' runs plugin 'orders' with reload = \"immediate\""),
        "{e}"
    );
}

#[test]
fn offsets_in_mysql_need_the_dead_letters_and_every_route_in_one_mysql_sink() {
    let eo = |extra: &str| format!("{GOOD}offsets = \"mysql\"\n{extra}");
    let c = parse(&eo("dead_letter = { sink = \"mysql\" }")).unwrap();
    assert_eq!(c.pipelines[0].offsets, OffsetStore::Sink);
    let alias = parse(
        &eo("dead_letter = { sink = \"mysql\" }").replace("\"mysql\"\ndead", "\"sink\"\ndead"),
    )
    .unwrap();
    assert_eq!(
        alias.pipelines[0].offsets,
        OffsetStore::Sink,
        "offsets = \"sink\" is the new name of \"mysql\""
    );
    assert_eq!(
        parse(GOOD).unwrap().pipelines[0].offsets,
        OffsetStore::Kafka
    );

    // Dead letters default to the only mongodb sink.
    let e = error(&eo(""));
    assert!(
        e.contains("pipelines[0].dead_letter.sink: dead letters go to sink 'mongodb', which is not a mysql sink"),
        "{e}"
    );
    let e = error(&eo(
        "dead_letter = { sink = \"mysql\" }\nroutes.events = { sink = \"mongodb\" }",
    ));
    assert!(
        e.contains("pipelines[0].routes: output 'events' goes to sink 'mongodb' but dead letters go to 'mysql'"),
        "{e}"
    );
    let e = error(
        &eo("dead_letter = { sink = \"mysql\" }").replace("\"mysql\"\ndead", "\"kafka2\"\ndead"),
    );
    assert!(
        e.contains("pipelines[0].offsets: unknown variant `kafka2`"),
        "{e}"
    );
}

#[test]
fn tls_and_sasl_are_typed_and_plaintext_is_explicit() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.sinks["mysql"].tls().mode, TlsMode::VerifyIdentity);
    assert!(c.kafka.tls.is_none() && c.kafka.sasl.is_none());
    let ca = std::env::temp_dir().join("sluice-config-test-ca.pem");
    std::fs::write(&ca, "not checked here").unwrap();
    let secure = GOOD
        .replace(
            "brokers = \"127.0.0.1:9092\"",
            &format!(
                "brokers = \"127.0.0.1:9094\"\ntls = {{ ca = \"{}\" }}\nsasl = {{ mechanism = \"SCRAM-SHA-512\", username = \"u\", password = \"${{env:KAFKA_PW}}\" }}",
                ca.display()
            ),
        )
        .replace(
            "url = \"mysql://sluice:${env:SLUICE_TEST_PW}@127.0.0.1:3306/sluice\"",
            &format!(
                "url = \"mysql://sluice@db:3306/sluice\"\npassword = \"${{env:PW}}\"\ntls = \"verify-ca\"\ntls_ca = \"{}\"",
                ca.display()
            ),
        );
    let c = parse(&secure).unwrap();
    assert_eq!(
        c.kafka.sasl.as_ref().map(|s| s.mechanism),
        Some(SaslMechanism::ScramSha512)
    );
    let keys: Vec<String> = c.secrets().into_iter().map(|(k, _)| k).collect();
    assert!(
        keys.contains(&"kafka.sasl.password".to_string()),
        "{keys:?}"
    );
    assert!(
        keys.contains(&"sinks.mysql.password".to_string()),
        "{keys:?}"
    );
    // SAFETY: only this test reads PW.
    unsafe { std::env::set_var("PW", "p@ss/w:rd") };
    let url = c.sinks["mysql"].mysql_url("mysql").unwrap();
    assert_eq!(
        url,
        format!(
            "mysql://sluice:p%40ss%2Fw%3Ard@db:3306/sluice?ssl-mode=VERIFY_CA&ssl-ca={}",
            ca.display().to_string().replace('/', "%2F")
        )
    );
    // No user before the host: the password has nowhere to go (an `@`
    // further on is not the user's).
    let userless = secure.replace(
        "mysql://sluice@db:3306/sluice",
        "mysql://db:3306/sluice?timezone=a@b",
    );
    let e = parse(&userless).unwrap().sinks["mysql"]
        .mysql_url("mysql")
        .unwrap_err();
    assert!(
        e.contains("sinks.mysql.password: the url must name a user"),
        "{e}"
    );
    let plain = parse(&GOOD.replace("/sluice\"", "/sluice\"\ntls = \"disabled\"")).unwrap();
    assert!(
        plain.sinks["mysql"]
            .mysql_url("mysql")
            .unwrap()
            .ends_with("?ssl-mode=DISABLED")
    );

    for (from, to, expected) in [
        (
            "/sluice\"",
            "/sluice?ssl-mode=DISABLED\"",
            "sinks.mysql.url: the parameter 'ssl-mode' is refused: TLS is set by the sink's `tls`",
        ),
        (
            "uri = \"mongodb://127.0.0.1:27017\"",
            "uri = \"mongodb://127.0.0.1:27017/?tlsInsecure=true\"",
            "sinks.mongodb.uri: the option 'tlsInsecure' is refused",
        ),
        (
            "uri = \"mongodb://127.0.0.1:27017\"",
            "uri = \"mongodb://u:pw@127.0.0.1:27017\"\npassword = \"${env:PW}\"",
            "sinks.mongodb.uri: holds a password and `password` is set too",
        ),
        (
            "/sluice\"",
            "/sluice\"\ntls = \"verify-identiy\"",
            "unknown variant `verify-identiy`, expected one of `disabled`, `required`, `verify-ca`, `verify-identity`",
        ),
        (
            "/sluice\"",
            "/sluice\"\ntls = \"disabled\"\ntls_ca = \"/etc/hostname\"",
            "sinks.mysql.tls_ca: is set but tls = \"disabled\"",
        ),
        (
            "/sluice\"",
            "/sluice\"\ntls_ca = \"/no/such/ca.pem\"",
            "sinks.mysql.tls_ca: cannot read /no/such/ca.pem",
        ),
        (
            "database = \"sluice\"",
            "database = \"sluice\"\ntls_key = \"/etc/hostname\"",
            "unknown field `tls_key`",
        ),
        (
            "brokers = \"127.0.0.1:9092\"",
            "brokers = \"127.0.0.1:9092\"\nsasl = { mechanism = \"PLAIN\", username = \"u\", password = \"p\" }",
            "kafka.sasl.mechanism: PLAIN sends the password as is, and without [kafka.tls]",
        ),
        (
            "brokers = \"127.0.0.1:9092\"",
            "brokers = \"127.0.0.1:9092\"\nsasl = { mechanism = \"SCRAM-SHA-1\", username = \"u\", password = \"p\" }",
            "unknown variant `SCRAM-SHA-1`, expected one of `SCRAM-SHA-512`, `SCRAM-SHA-256`, `PLAIN`",
        ),
        (
            "brokers = \"127.0.0.1:9092\"",
            "brokers = \"127.0.0.1:9092\"\ntls = { certificate = \"/etc/hostname\" }",
            "kafka.tls.key: is missing: `certificate` needs its private key",
        ),
        (
            "brokers = \"127.0.0.1:9092\"",
            "brokers = \"127.0.0.1:9092\"\ntls = { key_password = \"secret-pw\" }",
            "kafka.tls.key_password: is set without `key`",
        ),
        (
            "/sluice\"",
            "/sluice\"\ntls_certificate = \"/etc/hostname\"",
            "sinks.mysql.tls_key: is missing: tls_certificate needs its private key",
        ),
        (
            "/sluice\"",
            "/sluice#x\"",
            "sinks.mysql.url: '#' is not allowed in a MySQL URL",
        ),
        (
            "[kafka]",
            "[api]\ntoken = \"short\"\n[kafka]",
            "api.token: must be at least 32 characters",
        ),
    ] {
        let text = GOOD.replacen(from, to, 1);
        assert_ne!(text, GOOD, "{from}");
        let e = error(&text);
        assert!(e.contains(expected), "{e}");
    }
}
