//! The command line: options that win over the environment and the file,
//! a `--help` that names every variable, and start-up failures that say
//! their cause once, on one line, with exit code 1.

use std::io::{Read, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::helpers::{allot, exit_within, output_within, serving, Serving};

/// How long a start-up that fails may take; it only separates "prompt" from
/// "waits for a time-out" (the tests raise every time-out well above it).
const PROMPT: Duration = Duration::from_secs(15);

/// `GET path` over a plain HTTP/1.1 connection; answers the status code.
fn status_of(addr: &str, path: &str) -> u16 {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response}"))
}

fn sigterm(child: &std::process::Child) {
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
}

#[test]
fn options_win_over_the_environment_and_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("allot.toml");
    let db = |name: &str| dir.path().join(name);
    std::fs::write(
        &file,
        format!(
            "listen = \"127.0.0.1:9\"\nlog_format = \"pretty\"\ndatabase_url = \"sqlite://{}\"\n\
             [auth]\ntokens = [{{ name = \"ops\", role = \"admin\", token = \"from-the-file\" }}]\n",
            db("file.db").display()
        ),
    )
    .unwrap();
    let mut child = allot()
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .arg("--database-url")
        .arg(format!("sqlite://{}", db("flag.db").display()))
        .arg("--config")
        .arg(&file)
        // Each loses to the option above; ALLOT_CONFIG's file does not exist.
        .env("ALLOT_CONFIG", dir.path().join("missing.toml"))
        .env("ALLOT_LISTEN", "127.0.0.1:9")
        .env("ALLOT_LOG_FORMAT", "pretty")
        .env(
            "ALLOT_DATABASE_URL",
            format!("sqlite://{}", db("env.db").display()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // JSON, on the port it was given (0), not the file's or the variable's 9.
    // Its stdout stays open (and read by nobody) while it runs.
    let started = serving(&mut child);
    let addr = started.addr();
    assert!(!addr.ends_with(":9"), "{addr}");
    assert!(db("flag.db").exists(), "--database-url wins");
    assert!(!db("env.db").exists() && !db("file.db").exists());
    // --config's file was read (its token turns auth on), ALLOT_CONFIG's not.
    assert_eq!(status_of(&addr, "/v1/experiments"), 401);

    sigterm(&child);
    let exit = exit_within(&mut child, Duration::from_secs(30));
    assert!(exit.success(), "exit status {exit:?}");
}

/// Every variable the defaults file implies, found independently of the
/// code that writes the help: `auth.metrics_public` → `ALLOT_AUTH__METRICS_PUBLIC`.
fn setting_variables() -> Vec<String> {
    use figment::providers::{Format, Toml};
    use figment::value::{Dict, Value};
    use figment::Provider;
    fn walk(prefix: &str, dict: &Dict, out: &mut Vec<String>) {
        for (key, value) in dict {
            let name = format!("{prefix}{}", key.to_ascii_uppercase());
            match value {
                Value::Dict(_, inner) => walk(&format!("{name}__"), inner, out),
                _ => out.push(name),
            }
        }
    }
    let data = figment::Figment::from(Toml::string(allot::config::DEFAULTS))
        .data()
        .unwrap();
    let mut out = Vec::new();
    for dict in data.values() {
        walk("ALLOT_", dict, &mut out);
    }
    assert!(out.len() > 10, "{out:?}");
    out
}

#[test]
fn help_names_every_environment_variable_and_the_defaults() {
    let defaults = allot::config::Settings::defaults().unwrap();
    for args in [
        &["--help"][..],
        &["-h"],
        &["serve", "--help"],
        &["help", "serve"],
    ] {
        let output = allot().args(args).output().unwrap();
        assert!(output.status.success(), "{args:?}");
        let help = String::from_utf8(output.stdout).unwrap();
        for name in setting_variables()
            .iter()
            .map(String::as_str)
            .chain(["ALLOT_CONFIG", "ALLOT_TOKENS"])
        {
            assert!(
                help.contains(name),
                "{args:?} does not name {name}:\n{help}"
            );
        }
        for option in ["--listen", "--database-url", "--config", "--log-format"] {
            assert!(help.contains(option), "{args:?}: {option}");
        }
        let listen = format!("[{}]", defaults.listen);
        let data_dir = format!("[{}]", defaults.data_dir.display());
        let database = defaults.database_url();
        for default in [&listen, &data_dir, &database] {
            assert!(
                help.contains(default.as_str()),
                "{args:?}: {default}\n{help}"
            );
        }
    }
}

#[test]
fn a_taken_port_is_one_line_naming_its_cause_once_and_exit_code_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    // The operating system's own words for it.
    let cause = std::net::TcpListener::bind(&addr).unwrap_err().to_string();
    let dir = tempfile::tempdir().unwrap();
    let output = output_within(
        allot()
            .args(["--listen", &addr])
            .env("ALLOT_DATA_DIR", dir.path()),
        PROMPT,
    );
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&addr), "{stderr}");
    assert_eq!(stderr.matches(&cause).count(), 1, "{stderr}");
    assert!(!stdout.contains(&cause), "the logs repeat it: {stdout}");
    drop(taken);
}

#[test]
fn an_unreachable_postgres_is_reported_as_refused_at_once() {
    // A port nothing listens on: one just freed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/x");
    let started = Instant::now();
    let output = output_within(
        allot()
            .args(["--database-url", &url])
            .env("ALLOT_LISTEN", "127.0.0.1:0")
            // The pool would wait this long before giving up.
            .env("ALLOT_DB_ACQUIRE_TIMEOUT_MS", "600000"),
        PROMPT,
    );
    let took = started.elapsed();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&url), "{stderr}");
    assert!(stderr.to_lowercase().contains("refused"), "{stderr}");
    assert!(!stderr.contains("timed out"), "{stderr}");
    assert!(took < PROMPT, "{took:?}");
}

#[test]
fn pretty_logs_into_a_pipe_have_no_colour() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = allot()
        .args(["--log-format", "pretty", "--listen", "127.0.0.1:0"])
        .env("ALLOT_DATA_DIR", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let Serving {
        mut before,
        line,
        lines,
        ..
    } = serving(&mut child);
    before.push(line);
    let mut seen = before;
    sigterm(&child);
    seen.extend(lines.map_while(Result::ok));
    let exit = exit_within(&mut child, Duration::from_secs(30));
    assert!(exit.success(), "exit status {exit:?}");
    assert!(
        seen.iter()
            .any(|l| l.contains("INFO") && l.contains("stopped")),
        "{seen:#?}"
    );
    for line in &seen {
        assert!(!line.contains('\u{1b}'), "an escape sequence in {line:?}");
    }
}
