//! The `allot` binary as an operator runs it: layered configuration,
//! platform-set `ALLOT_*` variables, `allot migrate`, and SIGTERM ending the
//! process with exit code 0.

use std::process::{Command, Stdio};

use crate::helpers::{allot, exit_within, serving};

#[test]
fn environment_beats_the_config_file_which_beats_the_defaults_and_sigterm_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("allot.toml");
    let from_file = dir.path().join("file-data");
    let from_env = dir.path().join("env-data");
    std::fs::write(
        &file,
        format!(
            "listen = \"127.0.0.1:0\"\nlog_format = \"json\"\ndata_dir = {:?}\n",
            from_file.display().to_string()
        ),
    )
    .unwrap();
    let mut child = allot()
        .env("ALLOT_CONFIG", &file)
        .env("ALLOT_DATA_DIR", &from_env)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The service logs (as JSON, from the file) once it listens.
    let started = serving(&mut child);
    let addr = started.addr();
    let lines = started.lines;
    // The file's listen address (port 0) beat the default's (8080).
    assert!(!addr.ends_with(":8080"), "{addr}");
    assert!(
        from_env.join("allot.db").exists(),
        "ALLOT_DATA_DIR wins over the file"
    );
    assert!(!from_file.exists());

    // The image's health check: the binary probes its own /readyz.
    let healthy = allot()
        .arg("healthcheck")
        .env("ALLOT_CONFIG", &file)
        .env("ALLOT_LISTEN", &addr)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(healthy.success());

    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "exit status {exit:?}");
    let gone = allot()
        .arg("healthcheck")
        .env("ALLOT_CONFIG", &file)
        .env("ALLOT_LISTEN", &addr)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!gone.success(), "healthcheck passes with nothing listening");
    assert!(lines
        .map_while(Result::ok)
        .any(|line| line.contains("stopped")));
}

#[test]
fn migrate_creates_the_embedded_store_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let status = allot()
        .arg("migrate")
        .env("ALLOT_DATA_DIR", dir.path())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    assert!(dir.path().join("allot.db").exists());
}

#[test]
fn a_missing_config_file_is_a_clear_start_up_error() {
    let output = allot()
        .env("ALLOT_CONFIG", "/nonexistent/allot.toml")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/allot.toml"));
}

/// SIGTERM while a request is in flight: that request still completes, and
/// the process then exits 0. "In flight" is certain, not timed: the request
/// asks for `100 Continue`, which the server sends only once the handler
/// starts reading the body.
#[test]
fn sigterm_lets_an_in_flight_request_finish_then_exits_0() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let mut child = allot()
        .env("ALLOT_LISTEN", "127.0.0.1:0")
        .env("ALLOT_LOG_FORMAT", "json")
        .env("ALLOT_DATA_DIR", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Its stdout stays open (and read by nobody) while it runs.
    let started = serving(&mut child);
    let addr = started.addr();

    let body = br#"{"items": []}"#;
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        stream,
        "POST /v1/assign HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    )
    .unwrap();
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        assert_eq!(
            stream.read(&mut byte).unwrap(),
            1,
            "connection closed before 100 Continue"
        );
        got.push(byte[0]);
    }
    assert!(
        String::from_utf8_lossy(&got).starts_with("HTTP/1.1 100"),
        "{}",
        String::from_utf8_lossy(&got)
    );

    assert!(Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap()
        .success());
    stream.write_all(body).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains(r#"{"results":[]}"#), "{response}");
    let exit = child.wait().unwrap();
    assert!(exit.success(), "exit status {exit:?}");
}

/// What a Kubernetes Service named `allot` puts in every pod's environment.
const KUBERNETES: [(&str, &str); 7] = [
    ("ALLOT_PORT", "tcp://10.0.0.1:8080"),
    ("ALLOT_SERVICE_HOST", "10.0.0.1"),
    ("ALLOT_SERVICE_PORT", "8080"),
    ("ALLOT_PORT_8080_TCP", "tcp://10.0.0.1:8080"),
    ("ALLOT_PORT_8080_TCP_ADDR", "10.0.0.1"),
    ("ALLOT_PORT_8080_TCP_PORT", "8080"),
    ("ALLOT_PORT_8080_TCP_PROTO", "tcp"),
];

#[test]
fn kubernetes_service_variables_are_ignored_with_one_warning_naming_them_all() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = allot()
        .envs(KUBERNETES)
        .env("ALLOT_LISTEN", "127.0.0.1:0")
        .env("ALLOT_DATA_DIR", dir.path())
        .env("ALLOT_LOG_FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = serving(&mut child);
    let listen = started.addr();
    let before = &started.before;
    let warnings: Vec<&String> = before
        .iter()
        .filter(|line| line.contains("name no setting"))
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    let warning: serde_json::Value = serde_json::from_str(warnings[0]).unwrap();
    assert_eq!(warning["level"], "WARN");
    let message = warning["message"].as_str().unwrap();
    let (_, list) = message.split_once(": ").unwrap();
    let mut named: Vec<&str> = list.split(", ").collect();
    let mut expected: Vec<&str> = KUBERNETES.iter().map(|(name, _)| *name).collect();
    named.sort_unstable();
    expected.sort_unstable();
    assert_eq!(named, expected, "{message}");

    // The pod's probe runs in the same environment.
    let probe = allot()
        .arg("healthcheck")
        .envs(KUBERNETES)
        .env("ALLOT_LISTEN", &listen)
        .output()
        .unwrap();
    assert!(
        probe.status.success(),
        "healthcheck failed: {}",
        String::from_utf8_lossy(&probe.stderr)
    );

    assert!(Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap()
        .success());
    let exit = exit_within(&mut child, std::time::Duration::from_secs(30));
    assert!(exit.success(), "exit status {exit:?}");
}

#[test]
fn a_mistyped_variable_is_ignored_with_a_hint_naming_the_real_one() {
    let dir = tempfile::tempdir().unwrap();
    let output = allot()
        .arg("migrate")
        .env("ALLOT_DATA_DIR", dir.path())
        .env("ALLOT_LOG_LEVL", "debug")
        .env("ALLOT_AUTH_METRICS_PUBLIC", "true")
        .output()
        .unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("ALLOT_AUTH_METRICS_PUBLIC (did you mean ALLOT_AUTH__METRICS_PUBLIC?)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("ALLOT_LOG_LEVL (did you mean ALLOT_LOG_LEVEL?)"),
        "{stdout}"
    );
}

#[test]
fn an_unknown_key_in_the_config_file_still_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("allot.toml");
    std::fs::write(&file, "listen = \"127.0.0.1:0\"\nport = 8080\n").unwrap();
    let mut child = allot()
        .env("ALLOT_CONFIG", &file)
        .env("ALLOT_DATA_DIR", dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let exit = exit_within(&mut child, std::time::Duration::from_secs(10));
    assert!(!exit.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("port"), "{stderr}");
}

/// SIGTERM writes the exposures still buffered (§8): with a flush interval
/// of an hour, the ledger is empty until the process exits, and then holds
/// every unit answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_writes_the_buffered_exposures() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = allot()
        .env("ALLOT_LISTEN", "127.0.0.1:0")
        .env("ALLOT_LOG_FORMAT", "json")
        .env("ALLOT_DATA_DIR", dir.path())
        .env("ALLOT_EXPOSURE_FLUSH_MS", "3600000")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = serving(&mut child);
    let base = format!("http://{}", started.addr());
    let client = reqwest::Client::new();
    let created = client
        .put(format!("{base}/v1/experiments/exit"))
        .json(&serde_json::json!({"treatments": [{"name": "a", "weight": 1}, {"name": "b", "weight": 1}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let items: Vec<serde_json::Value> = (0..120)
        .map(|i| serde_json::json!({"experiment": "exit", "org_id": 7, "unit_id": format!("pr-{i}")}))
        .collect();
    let assigned = client
        .post(format!("{base}/v1/assign"))
        .json(&serde_json::json!({ "items": items }))
        .send()
        .await
        .unwrap();
    assert_eq!(assigned.status(), 200);
    let url = format!("sqlite://{}", dir.path().join("allot.db").display());
    let scalar = async |sql: &str| -> i64 {
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        let (n,): (i64,) = sqlx::query_as(sql).fetch_one(&pool).await.unwrap();
        pool.close().await;
        n
    };
    let rows = async || scalar("SELECT COUNT(*) FROM exposures").await;
    let held = async || scalar("SELECT COALESCE(SUM(held), 0) FROM exposure_holdings").await;
    // What it holds is checkpointed, not written (it would count as dropped
    // if the process died now).
    crate::helpers::until("the buffer is checkpointed", async || held().await == 120).await;
    assert_eq!(rows().await, 0, "nothing is written before the flush");
    assert!(Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap()
        .success());
    let exit = tokio::task::spawn_blocking(move || {
        exit_within(&mut child, std::time::Duration::from_secs(30))
    })
    .await
    .unwrap();
    assert!(exit.success(), "exit status {exit:?}");
    assert_eq!(rows().await, 120);
    assert_eq!(held().await, 0, "nothing is held after a clean exit");
    assert!(started
        .lines
        .map_while(Result::ok)
        .any(|line| line.contains("exposures written at shutdown")));
}
