//! The README's tour (its `## Using it` section) runs as written against a
//! real server, so what it shows cannot drift from what the server does.
//! Every `sh` block of the section runs, in order, in one bash with `set
//! -euo pipefail`; `curl` reports each call's status on the side.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::helpers::{exit_within, Backend};
use crate::{on_both_stores, start};

const README: &str = include_str!("../../README.md");

/// The `sh` blocks between `## Using it` and the next `## ` heading.
fn tour() -> String {
    let start = README.find("\n## Using it\n").expect("a Using it section");
    let section = &README[start + 1..];
    let end = section[3..].find("\n## ").map_or(section.len(), |i| i + 3);
    let mut blocks = Vec::new();
    let mut rest = &section[..end];
    while let Some(open) = rest.find("```sh\n") {
        let body = &rest[open + 6..];
        let close = body.find("```").expect("a closed block");
        blocks.push(&body[..close]);
        rest = &body[close + 3..];
    }
    assert!(blocks.len() >= 8, "the tour has {} sh blocks", blocks.len());
    blocks.concat()
}

async fn the_readme_tour_runs_as_written(backend: Backend) {
    let (_store, app) = start!(backend);
    let tour = tour();
    let documented = "A=http://127.0.0.1:8080\n";
    assert!(
        tour.starts_with(documented),
        "the tour begins with {documented:?}"
    );
    let script = format!(
        "set -euo pipefail\n\
         curl() {{ command curl -sS -w '%{{stderr}}STATUS %{{http_code}} %{{method}} %{{url_effective}}\\n' \"$@\"; }}\n\
         A={}\n{}",
        app.url(""),
        &tour[documented.len()..]
    );
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("bash");
    let status = tokio::task::spawn_blocking(move || {
        let status = exit_within(&mut child, Duration::from_secs(120));
        (status, child)
    })
    .await
    .unwrap()
    .0;
    let stdout = std::fs::read_to_string(&out).unwrap();
    let stderr = std::fs::read_to_string(&err).unwrap();
    assert!(
        status.success(),
        "the tour stopped ({status}); it needs bash and curl\n--- stderr\n{stderr}\n--- stdout\n{stdout}"
    );

    let calls: Vec<(u16, &str, &str)> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("STATUS "))
        .map(|l| {
            let mut parts = l.splitn(3, ' ');
            let status = parts.next().unwrap().parse().unwrap();
            (status, parts.next().unwrap(), parts.next().unwrap())
        })
        .collect();
    assert!(
        calls.len() >= 40,
        "only {} calls ran:\n{stderr}",
        calls.len()
    );
    // Exactly the refusals the README shows, in its order; everything else
    // succeeds.
    let refused: Vec<(u16, &str, &str)> = calls
        .iter()
        .filter(|(status, _, _)| !(200..300).contains(status))
        .map(|&(status, method, url)| (status, method, url.rsplit('/').next().unwrap()))
        .collect();
    assert_eq!(
        refused,
        [
            (412, "PUT", "organizations:code-review-experiments-enabled"),
            (422, "PUT", "bad"),
            (409, "POST", "decline"),
            (409, "POST", "drop"),
            (
                409,
                "DELETE",
                "organizations:code-review-experiments-enabled"
            ),
        ],
        "\n{stderr}"
    );
}

on_both_stores!(the_readme_tour_runs_as_written);
