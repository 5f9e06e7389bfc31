//! The API is locked: every request needs the token, names the API's own
//! address as its `Host`, and a POST carries JSON; a non-loopback address
//! is refused; the CLI escapes names. Each probe, refused or not, is in
//! the audit log, as are the plugin loads.

use sluice_tests::*;
use std::io::{Read, Write};
use std::time::Duration;

/// One raw HTTP/1.1 exchange: (status, body).
fn request(port: u16, head: &str, body: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "{head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_token_holder_at_the_right_address_with_json_gets_through() {
    let dir = plugins_dir(&[("orders", &plugin_wasm("orders", false))]);
    let topic = unique("api_lock");
    create_topic(&topic, 1).await;
    let port = free_port();
    // `probe` runs by the hour, so a trigger is visible as a manual run.
    let toml = host_toml(&dir, &format!("[api]\nlisten = \"127.0.0.1:{port}\"\n"))
        + &orders_pipeline_toml("probe", &topic, "schedule = { every = \"1h\" }");
    let config = write_config(&dir, &toml);
    let mut host = start_sluice(&config, &dir.join("host"));
    let token = api_token(&config);
    let token_file = dir.join("state/api.token");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the token file is the owner's only");
    assert_eq!(token.len(), 64);

    let here = format!("Host: 127.0.0.1:{port}");
    let bearer = format!("Authorization: Bearer {token}");
    let probes: [(&str, String, &str, u16, &str); 6] = [
        (
            "no token",
            format!("GET /v1/pipelines HTTP/1.1\r\n{here}"),
            "",
            401,
            "no token",
        ),
        (
            "wrong token",
            format!(
                "GET /v1/pipelines HTTP/1.1\r\n{here}\r\nAuthorization: Bearer {}",
                "0".repeat(64)
            ),
            "",
            401,
            "wrong token",
        ),
        (
            "cross-origin form POST (a page elsewhere has no token)",
            format!(
                "POST /v1/pipelines/probe/trigger HTTP/1.1\r\n{here}\r\nOrigin: http://evil.example\r\nContent-Type: application/x-www-form-urlencoded"
            ),
            "a=1",
            401,
            "no token",
        ),
        (
            "form POST with the token",
            format!(
                "POST /v1/pipelines/probe/trigger HTTP/1.1\r\n{here}\r\n{bearer}\r\nContent-Type: application/x-www-form-urlencoded"
            ),
            "a=1",
            415,
            "needs `Content-Type: application/json`",
        ),
        (
            "foreign Host (DNS rebinding)",
            format!("GET /v1/pipelines HTTP/1.1\r\nHost: evil.example:{port}\r\n{bearer}"),
            "",
            403,
            "is not this API's address",
        ),
        (
            "token, own address, JSON",
            format!("GET /v1/pipelines HTTP/1.1\r\n{here}\r\n{bearer}"),
            "",
            200,
            "\"name\":\"probe\"",
        ),
    ];
    for (what, head, body, status, says) in &probes {
        let (got, answer) = request(port, head, body);
        println!("{what}: {got} {answer}");
        assert_eq!(got, *status, "{what}: {answer}");
        assert!(answer.contains(says), "{what}: {answer}");
    }
    // No probe started a run.
    let (ok, runs, _) = sluice_cli(&["runs", "--pipeline", "probe"], &config);
    assert!(ok && !runs.contains("manual"), "{runs}");

    // The CLI reads the token itself, and escapes the name it is given.
    let (ok, _, err) = sluice_cli(&["trigger", "pro%62e"], &config);
    assert!(!ok, "pro%62e must not trigger probe");
    assert!(err.contains("pro%62e"), "{err}");
    let (ok, out, err) = sluice_cli(&["trigger", "probe"], &config);
    assert!(ok, "{err}");
    assert!(out.contains("of 'probe' started"), "{out}");

    host.sigterm();
    let audit = std::fs::read_to_string(dir.join("state/audit.log")).unwrap();
    let entries: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let api = |status: u64, path: &str| {
        entries.iter().any(|e| {
            e["event"] == "api"
                && e["status"] == status
                && e["path"] == path
                && e["remote"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("127.0.0.1:"))
        })
    };
    for (status, path) in [
        (401, "/v1/pipelines"),
        (401, "/v1/pipelines/probe/trigger"),
        (415, "/v1/pipelines/probe/trigger"),
        (403, "/v1/pipelines"),
        (200, "/v1/pipelines"),
        (404, "/v1/pipelines/pro%2562e/trigger"),
        (200, "/v1/pipelines/probe/trigger"),
    ] {
        assert!(
            api(status, path),
            "no audit entry {status} {path}:\n{audit}"
        );
    }
    assert!(
        entries
            .iter()
            .any(|e| e["event"] == "plugin loaded" && e["plugin"] == "orders"),
        "{audit}"
    );
    assert!(!audit.contains(&token), "the token is never written down");
    let mode = std::fs::metadata(dir.join("state/audit.log"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    println!(
        "audit log: {} entries, e.g. {}",
        entries.len(),
        audit.lines().next().unwrap()
    );
}

#[test]
fn a_non_loopback_address_is_refused() {
    let dir = plugins_dir(&[("orders", &plugin_wasm("orders", false))]);
    let toml =
        host_toml(&dir, "[api]\nlisten = \"0.0.0.0:7979\"\n") + &orders_pipeline_toml("p", "t", "");
    let config = write_config(&dir, &toml);
    for command in [&["validate"][..], &["run"][..]] {
        let (ok, _, err) = sluice_cli(command, &config);
        assert!(!ok, "{command:?}");
        assert!(
            err.contains("api.listen: 0.0.0.0:7979 is not a loopback address"),
            "{command:?}: {err}"
        );
    }
}
