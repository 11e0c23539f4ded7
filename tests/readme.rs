//! README "Try it" (issue 15): every command in its `console` blocks runs against the demo's
//! schema (`scripts/demo.sql`) and configuration (`config/pgveil.toml`) through pgveil, and
//! must print what README shows, so README cannot drift from the product. Only the ports,
//! the password and the paths of the demo are swapped for the test's.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const README: &str = include_str!("../README.md");

/// One `$ command` of README and the output lines shown under it.
#[derive(Debug)]
struct Step {
    command: String,
    expected: Vec<String>,
}

/// The `console` blocks of the "## Try it" section, in order.
fn try_it_steps() -> Vec<Step> {
    let section = README
        .split_once("\n## Try it\n")
        .map(|(_, rest)| rest)
        .expect("README has a \"## Try it\" section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let mut steps: Vec<Step> = Vec::new();
    let mut in_block = false;
    for line in section.lines() {
        if !in_block {
            in_block = line.trim() == "```console";
            continue;
        }
        if line.trim() == "```" {
            in_block = false;
        } else if let Some(command) = line.strip_prefix("$ ") {
            steps.push(Step {
                command: command.to_string(),
                expected: Vec::new(),
            });
        } else {
            let step = steps.last_mut().expect("output before the first command");
            step.expected.push(line.trim_end().to_string());
        }
    }
    assert!(!in_block, "unterminated console block in README");
    steps
}

/// Whether `actual` is `expected`, where each `...` in `expected` stands for any text.
fn matches(expected: &str, actual: &str) -> bool {
    let parts: Vec<&str> = expected.split("...").collect();
    if parts.len() == 1 {
        return expected == actual;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !actual.starts_with(first) || actual.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &actual[first.len()..];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

/// The demo's names for things, swapped for the test's.
struct Localize {
    proxy_port: u16,
    pg_port: u16,
    config: PathBuf,
}

impl Localize {
    fn apply(&self, command: &str) -> String {
        let local = command
            .replace("PGPORT=6432", &format!("PGPORT={}", self.proxy_port))
            .replace("-p 55432", &format!("-p {}", self.pg_port))
            .replace("PGPASSWORD=postgres", &format!("PGPASSWORD={PASSWORD}"))
            .replace("target/release/pgveil", env!("CARGO_BIN_EXE_pgveil"))
            .replace("run/pgveil.toml", self.config.to_str().unwrap());
        assert!(
            !local.contains("6432") || local.contains(&self.proxy_port.to_string()),
            "README names a port the test does not know: {command}"
        );
        local
    }
}

/// The demo: scripts/demo.sql on the test cluster, config/pgveil.toml pointed at it (TLS off
/// upstream so the harness's tap sees every byte; no metrics port), keys from `keys init`.
fn demo(dir: &Path) -> (PathBuf, String) {
    let cluster = cluster();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(bindir().join("psql"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
        .args([
            "-p",
            &cluster.port.to_string(),
            "-U",
            SUPERUSER,
            "-d",
            "postgres",
        ])
        .args(["-v", &format!("password={PASSWORD}"), "-f"])
        .arg(root.join("scripts/demo.sql"))
        .env("PGPASSWORD", PASSWORD)
        .env("PGSSLMODE", "disable")
        .output()
        .unwrap();
    assert!(out.status.success(), "demo.sql: {out:?}");
    let keys = Command::new(env!("CARGO_BIN_EXE_pgveil"))
        .args(["keys", "init", "--dir"])
        .arg(dir.join("keys"))
        .output()
        .unwrap();
    assert!(keys.status.success(), "{keys:?}");
    let text = std::fs::read_to_string(root.join("config/pgveil.toml")).unwrap();
    assert!(text.contains("\nport = 5432\n") && text.contains("\ntls = \"prefer\""));
    let text = text
        .replace("\nport = 5432\n", &format!("\nport = {}\n", cluster.port))
        .replace("\ntls = \"prefer\"", "\ntls = \"disable\"")
        .lines()
        .filter(|l| !l.starts_with("metrics_listen"))
        .collect::<Vec<_>>()
        .join("\n");
    let config = dir.join("pgveil.toml");
    std::fs::write(&config, &text).unwrap();
    (config, text)
}

#[test]
fn every_command_of_try_it_prints_what_readme_shows() {
    let steps = try_it_steps();
    assert!(steps.len() >= 8, "{steps:?}");
    // The section shows what the issue asks for.
    let commands: String = steps.iter().map(|s| s.command.as_str()).collect();
    for what in [
        "psql -U alice -c \"INSERT",
        "psql -U alice -c \"SELECT",
        "psql -U bob",
        "psql -U guest",
        "-p 55432",
        "audit verify",
        "audit report --config run/pgveil.toml --subject public.patients:1",
    ] {
        assert!(commands.contains(what), "Try it lacks {what:?}");
    }

    let dir = tempfile::tempdir().unwrap();
    let (config, text) = demo(dir.path());
    secrets(["123-45-6789", "1985-12-10"]);
    let proxy = Proxy::start(&text, dir.path());
    let local = Localize {
        proxy_port: proxy.port(),
        pg_port: cluster().port,
        config,
    };
    let path = format!(
        "{}:{}",
        bindir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut exports = String::new();
    let mut failures = Vec::new();
    for step in &steps {
        let command = local.apply(&step.command);
        if command.starts_with("export ") {
            exports.push_str(&command);
            exports.push('\n');
        }
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!("{exports}{command} 2>&1"))
            .env("PATH", &path)
            .env_remove("PGVEIL_MASTER_KEY")
            .env_remove("PGUSER")
            .env_remove("PGOPTIONS")
            .output()
            .unwrap();
        let actual: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim_end().to_string())
            .collect();
        let mut expected = step.expected.clone();
        while expected.last().is_some_and(String::is_empty) {
            expected.pop();
        }
        let mut actual_trimmed = actual.clone();
        while actual_trimmed.last().is_some_and(String::is_empty) {
            actual_trimmed.pop();
        }
        let ok = expected.len() == actual_trimmed.len()
            && expected
                .iter()
                .zip(&actual_trimmed)
                .all(|(e, a)| matches(e, a));
        if !ok {
            failures.push(format!(
                "$ {}\n--- README shows:\n{}\n--- it printed:\n{}",
                step.command,
                expected.join("\n"),
                actual_trimmed.join("\n")
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
    proxy.assert_no_leaks();
}

#[test]
fn wildcards_match_only_what_they_should() {
    assert!(matches("a...c", "abbbc"));
    assert!(matches("a...c", "ac"));
    assert!(!matches("a...c", "abd"));
    assert!(matches("x...y...z", "x1y2z"));
    assert!(!matches("x...y...z", "x1z"));
    assert!(matches("exact", "exact"));
    assert!(!matches("exact", "exactly"));
    assert!(!matches("ab...ba", "aba"));
}
