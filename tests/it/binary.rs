//! The `allot` binary as an operator runs it: layered configuration,
//! `allot migrate`, and SIGTERM ending the process with exit code 0.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_allot");

fn allot() -> Command {
    let mut command = Command::new(BIN);
    for (key, _) in std::env::vars() {
        if key.starts_with("ALLOT_") {
            command.env_remove(key);
        }
    }
    command.env_remove("RUST_LOG");
    command
}

#[test]
fn environment_beats_the_config_file_which_beats_the_defaults_and_sigterm_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let file = dir.path().join("allot.toml");
    let from_file = dir.path().join("file-data");
    let from_env = dir.path().join("env-data");
    std::fs::write(
        &file,
        format!(
            "listen = \"127.0.0.1:{port}\"\nlog_format = \"json\"\ndata_dir = {:?}\n",
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
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let serving = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|line| line.contains("allot is serving"))
        .expect("the service starts");
    let log: serde_json::Value = serde_json::from_str(&serving).expect("json logs");
    assert_eq!(log["addr"], format!("127.0.0.1:{port}"));
    assert!(
        from_env.join("allot.db").exists(),
        "ALLOT_DATA_DIR wins over the file"
    );
    assert!(!from_file.exists());

    // The image's health check: the binary probes its own /readyz.
    let healthy = allot()
        .arg("healthcheck")
        .env("ALLOT_CONFIG", &file)
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
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = allot()
        .env("ALLOT_LISTEN", format!("127.0.0.1:{port}"))
        .env("ALLOT_DATA_DIR", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.contains("allot is serving")));

    let body = br#"{"items": []}"#;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
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
