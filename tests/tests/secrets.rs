//! Secrets never leave the process. Every secret-bearing setting holds a
//! unique marker (with `/`, `?` and `@`, which break a URL unless encoded),
//! each connection fails in its own way, and the marker, as given and
//! percent-encoded, is searched in everything a user or a reader of the
//! databases can see: `validate`, `run` and its log at debug level, `runs`,
//! `runs show`, the API's answers and the dead letters. It is found nowhere;
//! where the text quoted it, the reference (`${env:…}`) stands instead.

use sluice_tests::*;
use std::path::Path;
use std::time::Duration;

/// What a user or an operator can read, by where it was read.
#[derive(Default)]
struct Seen(Vec<(String, String)>);

impl Seen {
    fn add(&mut self, place: &str, text: impl Into<String>) {
        self.0.push((place.to_string(), text.into()));
    }

    /// Fails naming every place that holds a marker, in either spelling,
    /// and unless `reference` stands somewhere in a marker's place (so
    /// some output did quote a secret, and it was replaced).
    fn assert_clean(&self, markers: &[&str], reference: &str) {
        assert!(
            self.0.iter().any(|(_, text)| text.contains(reference)),
            "no output quoted {reference}: the probe shows nothing"
        );
        let mut found = Vec::new();
        for marker in markers {
            for spelling in [marker.to_string(), url_encoded(marker)] {
                for (place, text) in &self.0 {
                    if text.contains(&spelling) {
                        found.push(format!("{place}: {spelling}"));
                    }
                }
            }
        }
        for (place, text) in &self.0 {
            println!("searched {place} ({} bytes)", text.len());
        }
        assert!(found.is_empty(), "secrets leaked: {found:#?}");
    }
}

fn url_encoded(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Debug everywhere but the compiler's own chatter.
const DEBUG_LOG: &str = "debug,cranelift=info,wasmtime=info";

/// `sluice ARGS --config C` with the log at debug level: both streams.
fn cli(seen: &mut Seen, what: &str, args: &[&str], config: &Path) -> (bool, String) {
    let started = std::time::Instant::now();
    let out = std::process::Command::new(sluice_bin())
        .args(args)
        .arg("--config")
        .arg(config)
        .env("SLUICE_LOG", DEBUG_LOG)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    println!("{what}: {:?}", started.elapsed());
    seen.add(&format!("{what}: stdout"), stdout.clone());
    seen.add(&format!("{what}: stderr (log at debug)"), stderr.clone());
    (out.status.success(), stdout + &stderr)
}

/// The host config with the sinks' URLs and the Kafka settings replaced
/// (`kafka` may name other brokers).
fn config(
    dir: &Path,
    port: u16,
    pipeline: &str,
    topic: &str,
    kafka: &str,
    mysql: &str,
    mongo: &str,
) -> String {
    let api = format!("[api]\nlisten = \"127.0.0.1:{port}\"\n");
    let mut toml = host_toml(dir, &api) + &orders_pipeline_toml(pipeline, topic, "");
    if kafka.contains("brokers =") {
        toml = toml.replace(&format!("brokers = \"{}\"\n", kafka_brokers()), "");
    }
    toml.replace(
        &format!("uri = \"{}\"", mongo_uri()),
        &format!("uri = \"{mongo}\""),
    )
    .replace(
        &format!("url = \"{}\"", mysql_url()),
        &format!("url = \"{mysql}\""),
    )
    .replace("[kafka]\n", &format!("[kafka]\n{kafka}\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_values_appear_in_no_output() {
    let tag = unique("mark");
    let marker = |what: &str| format!("{tag}-{what}/s3cr?t@x");
    let (kafka, mysql, mongo) = (marker("kafka"), marker("mysql"), marker("mongo"));
    // SAFETY: set before any child starts; no test here reads them.
    unsafe {
        std::env::set_var("PROBE_KAFKA", &kafka);
        std::env::set_var("PROBE_MYSQL", &mysql);
        std::env::set_var("PROBE_MONGO", &mongo);
    }
    let dir = plugins_dir(&[("orders", &plugin_wasm("orders", false))]);
    let topic = unique("secrets");
    create_topic(&topic, 1).await;
    produce(
        &producer(),
        &topic,
        &[order_event(1), ("bad".into(), "{not json".into())],
    )
    .await;
    let mut seen = Seen::default();
    let good_mongo = mongo_uri();
    let good_mysql = mysql_url();
    let bad_mysql = good_mysql.replacen("sluice:sluice@", "sluice:${env:PROBE_MYSQL}@", 1);
    let bad_mongo = good_mongo.replacen("mongodb://", "mongodb://probe:${env:PROBE_MONGO}@", 1);
    // The SCRAM listener of the secure profile, with a wrong password.
    let kafka_scram = format!(
        "brokers = \"{}\"\ntls = {{ ca = \"{}\" }}\nsasl = {{ mechanism = \"SCRAM-SHA-512\", username = \"sluice\", password = \"${{env:PROBE_KAFKA}}\" }}",
        secure::kafka_brokers(),
        secure::tls_file("ca.pem").display()
    );
    // A key password for a key that is not encrypted, and an option
    // librdkafka quotes when it refuses the value: the positive control.
    let kafka_quoted = format!(
        "tls = {{ ca = \"{}\", certificate = \"{}\", key = \"{}\", key_password = \"${{env:PROBE_KAFKA}}\" }}\noptions = {{ \"sasl.oauthbearer.method\" = \"${{env:PROBE_KAFKA}}\" }}",
        secure::tls_file("ca.pem").display(),
        secure::tls_file("client.pem").display(),
        secure::tls_file("client.key").display(),
    );

    // (case, kafka settings, MySQL URL, MongoDB URI, whether the host stays
    // up: then it runs in the background and the API is read; otherwise
    // `run --until-drained` fails at once).
    let cases = [
        (
            "kafka option quoting the value, key password",
            kafka_quoted.as_str(),
            good_mysql.as_str(),
            good_mongo.as_str(),
            false,
        ),
        (
            "kafka SCRAM password refused",
            kafka_scram.as_str(),
            good_mysql.as_str(),
            good_mongo.as_str(),
            true,
        ),
        (
            "mysql password refused",
            "",
            bad_mysql.as_str(),
            good_mongo.as_str(),
            false,
        ),
        (
            "mongodb password with / ? @",
            "",
            good_mysql.as_str(),
            bad_mongo.as_str(),
            false,
        ),
    ];
    for (i, (case, kafka_options, mysql_url, mongo_uri, stays_up)) in cases.into_iter().enumerate()
    {
        let pipeline = format!("{}_{i}", unique("probe"));
        let case_dir = dir.join(format!("case{i}"));
        std::fs::create_dir_all(&case_dir).unwrap();
        std::fs::copy(dir.join("orders.wasm"), case_dir.join("orders.wasm")).unwrap();
        let port = free_port();
        let toml = config(
            &case_dir,
            port,
            &pipeline,
            &topic,
            kafka_options,
            mysql_url,
            mongo_uri,
        );
        let path = write_config(&case_dir, &toml);
        cli(
            &mut seen,
            &format!("{case}: validate"),
            &["validate"],
            &path,
        );
        if stays_up {
            let mut host = start_sluice_logging(&path, &case_dir.join("host"), Some(DEBUG_LOG));
            // Let it fail and report for a while, then read the API.
            tokio::time::sleep(Duration::from_secs(8)).await;
            let token = api_token(&path);
            for endpoint in ["/v1/health", "/v1/pipelines", "/v1/runs", "/v1/plugins"] {
                let body = http_get(port, &token, endpoint).unwrap();
                seen.add(&format!("{case}: API {endpoint}"), body);
            }
            host.sigterm();
            let log = std::fs::read_to_string(case_dir.join("host.log")).unwrap();
            println!(
                "{case}: {}",
                log.lines().find(|l| l.contains("SASL")).unwrap_or("")
            );
            seen.add(&format!("{case}: run (log at debug)"), log);
        } else {
            let (ok, said) = cli(
                &mut seen,
                &format!("{case}: run --until-drained"),
                &["run", "--until-drained"],
                &path,
            );
            assert!(!ok, "{case}: the run should fail");
            println!(
                "{case}: {}",
                said.lines()
                    .rev()
                    .find(|l| l.contains("rror"))
                    .unwrap_or("")
            );
        }
        let (_, runs) = cli(&mut seen, &format!("{case}: runs"), &["runs"], &path);
        if let Some(id) = runs
            .lines()
            .nth(1)
            .and_then(|l| l.split_whitespace().next())
        {
            cli(
                &mut seen,
                &format!("{case}: runs show"),
                &["runs", "show", id],
                &path,
            );
        }
        cli(
            &mut seen,
            &format!("{case}: dlq list"),
            &["dlq", "list", &pipeline],
            &path,
        );
    }
    // librdkafka quotes the sasl.oauthbearer.method it refuses.
    seen.assert_clean(&[&kafka, &mysql, &mongo], "${env:PROBE_KAFKA}");
}

/// A GET on the local API: the body.
fn http_get(port: u16, token: &str, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

#[test]
fn validate_resolves_every_secret_and_names_what_is_missing() {
    let dir = plugins_dir(&[("orders", &plugin_wasm("orders", false))]);
    let toml = config(
        &dir,
        free_port(),
        "p",
        "t",
        "sasl = { mechanism = \"SCRAM-SHA-512\", username = \"u\", password = \"${env:PROBE_SHORT}\" }",
        &mysql_url().replacen("sluice:sluice@", "sluice:${env:PROBE_UNSET}@", 1),
        &mongo_uri(),
    );
    let path = write_config(&dir, &toml);
    // SAFETY: set before the child starts; no other test reads them.
    unsafe {
        std::env::set_var("PROBE_SHORT", "abc");
        std::env::remove_var("PROBE_UNSET");
    }
    let (ok, out, err) = sluice_cli(&["validate"], &path);
    assert!(!ok, "{out}");
    assert!(
        err.contains(
            "sinks.mysql.url: environment variable PROBE_UNSET (from ${env:PROBE_UNSET}) is not set"
        ),
        "{err}"
    );
    unsafe { std::env::set_var("PROBE_UNSET", "sluice") };
    let (ok, out, err) = sluice_cli(&["validate"], &path);
    assert!(ok, "{err}");
    assert!(
        out.contains(
            "warning: kafka.sasl.password: ${env:PROBE_SHORT} is shorter than 6 characters"
        ),
        "{out}"
    );
}
