//! The demo pipeline on the secure profile of the local services, with
//! `config/secure.toml` as written: 10,000 events over SASL_SSL with
//! SCRAM-SHA-512, TLS to MariaDB (which requires it and encrypts its
//! files) and to FerretDB, certificates checked against the local CA, and
//! the orders plugin's sensitive fields encrypted by sluice. Then the
//! refusals: a wrong password, a wrong CA, a plaintext client against a
//! TLS-only server, each with the error it gives.

use mongodb::bson::{Document, doc};
use sluice_tests::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn secure_producer() -> rdkafka::producer::FutureProducer {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", secure::kafka_brokers())
        .set("security.protocol", "SASL_SSL")
        .set("sasl.mechanism", "SCRAM-SHA-512")
        .set("sasl.username", secure::KAFKA_USER)
        .set("sasl.password", secure::KAFKA_PASSWORD)
        .set(
            "ssl.ca.location",
            secure::tls_file("ca.pem").to_str().unwrap(),
        )
        .set("linger.ms", "5")
        .set("enable.idempotence", "true")
        .create()
        .unwrap()
}

async fn secure_mysql() -> sqlx::MySqlPool {
    let url = format!(
        "{}?ssl-mode=VERIFY_IDENTITY&ssl-ca={}",
        secure::mysql_url().replacen("sluice@", &format!("sluice:{}@", secure::MYSQL_PASSWORD), 1),
        secure::tls_file("ca.pem").display()
    );
    sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await
        .unwrap()
}

async fn secure_mongo() -> mongodb::Database {
    let uri = format!(
        "{}/?tls=true&tlsCAFile={}",
        secure::mongo_uri(),
        secure::tls_file("ca.pem").display()
    );
    mongodb::Client::with_uri_str(uri)
        .await
        .unwrap()
        .database("sluice")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_through_scram_tls_and_field_encryption() {
    let dir = plugins_dir(&[("orders", &variant_wasm("orders", Some("sensitive")))]);
    let topic = unique("secure");
    create_topic(&topic, 3).await;
    let pipeline = unique("secure");
    let config = secure::config(&dir, &topic, &pipeline, &|t| t);
    produce(&secure_producer(), &topic, &orders_mix()).await;

    let started = Instant::now();
    let (ok, out, err) = secure::sluice(&["run", "--until-drained"], &config);
    assert!(ok, "{out}\n{err}");
    println!(
        "secure profile: 10,000 events drained in {:?}",
        started.elapsed()
    );
    assert_contains(&err, &["run succeeded", "records_in", "10000"]);

    let pool = secure_mysql().await;
    let table = format!("{pipeline}_orders");
    assert_eq!(count_rows(&pool, &table).await, (9_400, 9_400));
    let db = secure_mongo().await;
    let events = db.collection::<Document>(&format!("{pipeline}_events"));
    assert_eq!(events.count_documents(doc! {}).await.unwrap(), 9_500);
    let dead = db.collection::<Document>("sluice_dead_letters");
    let mine = doc! {"pipeline": &pipeline};
    assert_eq!(dead.count_documents(mine.clone()).await.unwrap(), 400);

    // Straight from the databases: ciphertext where the plugin said so.
    let (customer, total): (String, String) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT customer, CAST(total AS CHAR) FROM `{table}` WHERE order_id = 'o-61'"
    )))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(customer.starts_with("sluice:enc:v1:k1:"), "{customer}");
    assert!(!customer.contains("c-11"));
    assert_eq!(total, "61.25", "fields not declared sensitive stay plain");
    let event = events
        .find_one(doc! {"_id": "o-61"})
        .await
        .unwrap()
        .unwrap();
    let sealed_event = event.get_str("event").unwrap().to_string();
    assert!(sealed_event.starts_with("sluice:enc:v1:k1:"), "{event}");
    assert!(!event.get_bool("big_spender").unwrap());
    let letter = dead
        .find_one(doc! {"pipeline": &pipeline, "reason": {"$regex": "not valid JSON"}})
        .await
        .unwrap()
        .unwrap();
    let sealed_value = letter.get_str("value").unwrap();
    let sealed_key = letter.get_str("key").unwrap();
    assert!(sealed_value.starts_with("sluice:enc:v1:k1:"), "{letter}");
    assert!(sealed_key.starts_with("sluice:enc:v1:k1:"), "{letter}");
    println!(
        "customer of o-61 in MariaDB: {customer}\ndead letter value in FerretDB: {sealed_value}"
    );

    // Through sluice: the values.
    let (ok, out, err) = secure::sluice(&["decrypt", "orders.customer", &customer], &config);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "\"c-11\"");
    let (ok, out, err) = secure::sluice(&["decrypt", "order_events.event", &sealed_event], &config);
    assert!(ok, "{err}");
    let event: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(event["id"], "o-61");
    let (ok, _, err) = secure::sluice(&["decrypt", "orders.status", &customer], &config);
    assert!(!ok && err.contains("sealed for another field"), "{err}");
    let (ok, out, err) = secure::sluice(
        &["dlq", "list", &pipeline, "--limit", "500", "--json"],
        &config,
    );
    assert!(ok, "{err}");
    let letters: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(letters.len(), 400);
    let bad = letters.iter().find(|l| l["key"] == "bad-3").unwrap();
    assert_eq!(bad["value"], "{not json 3");
    assert!(!out.contains("sluice:enc:"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_to_kafka_with_a_client_certificate() {
    let dir = plugins_dir(&[("orders", &variant_wasm("orders", Some("sensitive")))]);
    let topic = unique("mtls");
    create_topic(&topic, 1).await;
    produce(
        &producer(),
        &topic,
        &(0..100).map(order_event).collect::<Vec<_>>(),
    )
    .await;
    let pipeline = unique("mtls");
    // The listener that requires a certificate signed by the local CA,
    // instead of SCRAM.
    let mtls = |t: String| {
        let start = t.find("[kafka]").unwrap();
        let end = t.find("[sinks.mongodb]").unwrap();
        let kafka = format!(
            "[kafka]\nbrokers = \"{}\"\n\n[kafka.tls]\nca = \"{}\"\ncertificate = \"{}\"\nkey = \"{}\"\n\n",
            secure::kafka_mtls_brokers(),
            secure::tls_file("ca.pem").display(),
            secure::tls_file("client.pem").display(),
            secure::tls_file("client.key").display(),
        );
        format!("{}{kafka}{}", &t[..start], &t[end..])
    };
    let config = secure::config(&dir, &topic, &pipeline, &mtls);
    let (ok, out, err) = secure::sluice(&["run", "--until-drained"], &config);
    assert!(ok, "{out}\n{err}");
    let rows = count_rows(&secure_mysql().await, &format!("{pipeline}_orders")).await;
    println!("mutual TLS: {rows:?} rows");
    assert_eq!(rows, (100, 100));

    // Without the client certificate the broker refuses the handshake.
    let no_certificate = |t: String| {
        let t = mtls(t);
        let start = t.find("certificate = ").unwrap();
        let end = t.find("\n\n[sinks.mongodb]").unwrap();
        format!("{}{}", &t[..start], &t[end..])
    };
    let config = secure::config(&dir, &topic, &unique("mtls"), &no_certificate);
    // TLS 1.2 and 1.3 report it differently; both as an alert.
    let refused = "SSL alert number";
    let text = host_logs(&config, &dir, refused);
    println!(
        "mutual TLS without a certificate: {}",
        text.lines().find(|l| l.contains(refused)).unwrap_or("")
    );
    assert!(text.contains(refused), "{text}");
}

/// Runs the host until its log shows `expected` (within 60 s): for
/// failures it keeps retrying rather than exits on.
fn host_logs(config: &Path, dir: &Path, expected: &str) -> String {
    let log = dir.join("refused.log");
    let _ = std::fs::remove_file(&log);
    let mut host = KillOnDrop(
        Command::new(sluice_bin())
            .current_dir(repo_root())
            .args(["run", "--config"])
            .arg(config)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains(expected) || Instant::now() > deadline {
            host.sigterm();
            return text;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A change to the config text.
type Edit = Box<dyn Fn(String) -> String>;

/// `text` with the first `from` after the `section` header made `to`.
fn in_section(text: &str, section: &str, from: &str, to: &str) -> String {
    let at = text.find(section).expect("section");
    let (head, tail) = text.split_at(at);
    assert!(tail.contains(from), "{from} in {section}");
    format!("{head}{}", tail.replacen(from, to, 1))
}

/// The sink in `section` told to connect in plaintext.
fn plaintext(text: &str, section: &str) -> String {
    let text = in_section(
        text,
        section,
        "tls = \"verify-identity\"",
        "tls = \"disabled\"",
    );
    in_section(&text, section, "tls_ca", "# tls_ca")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_wrong_cas_and_plaintext_clients_are_refused() {
    let dir = plugins_dir(&[("orders", &variant_wasm("orders", Some("sensitive")))]);
    let topic = unique("refused");
    create_topic(&topic, 1).await;

    // Databases: `run` stops at once, naming the sink.
    let sink_cases: [(&str, Edit, &str); 5] = [
        (
            "MariaDB, wrong password",
            Box::new(|t: String| {
                in_section(&t, "[sinks.mysql]", "mysql.password}", "kafka.password}")
            }),
            "Access denied for user 'sluice'",
        ),
        (
            "MariaDB, wrong CA",
            Box::new(|t: String| in_section(&t, "[sinks.mysql]", "/ca.pem", "/wrong-ca.pem")),
            "sink 'mysql' is not reachable",
        ),
        (
            "MariaDB, plaintext client",
            Box::new(|t: String| plaintext(&t, "[sinks.mysql]")),
            "sink 'mysql' is not reachable",
        ),
        (
            "FerretDB, wrong CA",
            Box::new(|t: String| in_section(&t, "[sinks.mongodb]", "/ca.pem", "/wrong-ca.pem")),
            "sink 'mongodb' is not reachable",
        ),
        (
            "FerretDB, plaintext client",
            Box::new(|t: String| plaintext(&t, "[sinks.mongodb]")),
            "sink 'mongodb' is not reachable",
        ),
    ];
    for (i, (case, edit, expected)) in sink_cases.iter().enumerate() {
        let config = secure::config(
            &dir,
            &topic,
            &format!("{}_{i}", unique("refused")),
            edit.as_ref(),
        );
        let (ok, _, err) = secure::sluice(&["run", "--until-drained"], &config);
        let said = err
            .lines()
            .rev()
            .find(|l| l.contains("error"))
            .unwrap_or(&err);
        println!("{case}: {said}");
        assert!(!ok, "{case}");
        assert!(err.contains(expected), "{case}: {err}");
    }

    // Kafka: the consumer keeps trying, and says why.
    let kafka_cases: [(&str, Edit, &str); 3] = [
        (
            "Kafka, wrong SCRAM password",
            Box::new(|t: String| {
                in_section(&t, "[kafka.sasl]", "kafka.password}", "mysql.password}")
            }),
            "SASL authentication error",
        ),
        (
            "Kafka, wrong CA",
            Box::new(|t: String| in_section(&t, "[kafka.tls]", "/ca.pem", "/wrong-ca.pem")),
            "certificate verify failed",
        ),
        (
            "Kafka, plaintext client on the SASL_SSL listener",
            Box::new(|t: String| {
                let start = t.find("[kafka.tls]").unwrap();
                let end = t.find("[sinks.mongodb]").unwrap();
                format!("{}{}", &t[..start], &t[end..])
            }),
            "in state APIVERSION_QUERY",
        ),
    ];
    for (i, (case, edit, expected)) in kafka_cases.iter().enumerate() {
        let pipeline = format!("{}_k{i}", unique("refused"));
        let config = secure::config(&dir, &topic, &pipeline, edit.as_ref());
        let text = host_logs(&config, &dir, expected);
        let said = text.lines().find(|l| l.contains(expected)).unwrap_or("");
        println!("{case}: {said}");
        assert!(text.contains(expected), "{case}: {text}");
    }
}

/// Whether any file under `dir` holds `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if std::fs::read(&path)
                .is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
            {
                found.push(path);
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_written_through_sluice_is_not_in_the_encrypted_mariadbs_files() {
    let marker = format!("atrest-{}", unique("m")).replace('_', "-");
    assert!(marker.len() <= 32, "fits the status column");
    let topic = unique("at_rest");
    create_topic(&topic, 1).await;
    let events: Vec<(String, String)> = (0..50)
        .map(|i| {
            let (key, value) = order_event(i);
            (key, value.replace("\"paid\"", &format!("\"{marker}\"")))
        })
        .collect();
    produce(&producer(), &topic, &events).await;

    // The same events through the plain profile and the secure one.
    let plain_dir = plugins_dir(&[("orders", &plugin_wasm("orders", false))]);
    let plain = write_config(
        &plain_dir,
        &(host_toml(&plain_dir, "") + &orders_pipeline_toml(&unique("plain"), &topic, "")),
    );
    let secure_dir = plugins_dir(&[("orders", &variant_wasm("orders", Some("sensitive")))]);
    let secure = secure::config(&secure_dir, &topic, &unique("encrypted"), &|t| t);
    for config in [&plain, &secure] {
        let (ok, out, err) = secure::sluice(&["run", "--until-drained"], config);
        assert!(ok, "{out}\n{err}");
    }

    let data = secure::tls_file("ca.pem")
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("data");
    // Committed means in the redo log already: no flush needed to look.
    let in_plain = files_holding(&data.join("mariadb"), marker.as_bytes());
    let in_secure = files_holding(&data.join("mariadb-secure"), marker.as_bytes());
    println!(
        "marker {marker}: in the plain MariaDB's files {in_plain:?}; in the encrypted one's {in_secure:?}"
    );
    assert!(
        !in_plain.is_empty(),
        "the probe finds the marker where nothing is encrypted"
    );
    assert!(in_secure.is_empty(), "found in {in_secure:?}");
}
