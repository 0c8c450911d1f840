//! Golden bucket vectors computed outside Rust (Python's hashlib), and the
//! README's Python snippet checked against them.

use allot::domain::hash::bucket;
use serde_json::Value;

fn vectors() -> Vec<(Vec<String>, u16)> {
    let text = include_str!("../fixtures/hash_vectors.json");
    let doc: Value = serde_json::from_str(text).expect("hash_vectors.json parses");
    doc["vectors"]
        .as_array()
        .expect("vectors")
        .iter()
        .map(|v| {
            let parts = v["parts"]
                .as_array()
                .expect("parts")
                .iter()
                .map(|p| p.as_str().expect("str").to_owned())
                .collect();
            (parts, v["bucket"].as_u64().expect("bucket") as u16)
        })
        .collect()
}

#[test]
fn buckets_match_the_golden_vectors() {
    let vectors = vectors();
    assert!(vectors.len() >= 30);
    for (parts, want) in vectors {
        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
        assert_eq!(bucket(&refs), want, "parts {parts:?}");
    }
}

/// The README shows analysts a Python function; it must compute the same
/// buckets. Runs when python3 is on the PATH (it is in CI).
#[test]
fn the_readme_python_snippet_reproduces_the_golden_vectors() {
    let readme = include_str!("../../README.md");
    // Every python snippet that defines `bucket` (the hash section's, and
    // the analysis section's listing of moved units).
    let snippets: Vec<&str> = readme
        .split("```python\n")
        .skip(1)
        .filter_map(|block| block.split("```").next())
        .filter(|block| block.contains("def bucket("))
        .collect();
    assert!(
        snippets.len() >= 2,
        "{} snippets define bucket",
        snippets.len()
    );
    for snippet in snippets {
        run_snippet(snippet);
    }
}

fn run_snippet(snippet: &str) {
    // Only the definitions: a snippet's own example lines need no input.
    let snippet: String = snippet
        .lines()
        .filter(|l| l.starts_with("def ") || l.starts_with(' ') || l.starts_with("import"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut program = snippet;
    program.push_str("\nimport json, sys\nfor parts, want in json.load(sys.stdin):\n    got = bucket(*parts)\n    assert got == want, (parts, got, want)\nprint('ok')\n");
    let input: Vec<(Vec<String>, u16)> = vectors();
    let Ok(mut child) = std::process::Command::new("python3")
        .arg("-c")
        .arg(&program)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        eprintln!("skipped: python3 is not installed");
        return;
    };
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(serde_json::to_string(&input).expect("json").as_bytes())
            .expect("write");
    }
    let out = child.wait_with_output().expect("python3 ran");
    assert!(
        out.status.success(),
        "README snippet failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}
