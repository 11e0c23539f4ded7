//! The `pgveil` binary: every command, run as a user would, and its exit codes and output.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use pgveil::audit::{
    Access, AuditLog, AuditOptions, ColumnAccess, Outcome, RecordDraft, StatementKind, Subjects,
};

fn pgveil() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgveil"));
    // No stray libpq or key settings from the environment running the tests.
    for var in [
        "PGUSER",
        "PGPASSWORD",
        "PGDATABASE",
        "PGHOST",
        "PGPORT",
        "PGVEIL_MASTER_KEY",
        "RUST_LOG",
        "RUST_BACKTRACE",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

fn run(args: &[&str]) -> Output {
    pgveil().args(args).output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Exit `code`, nothing on stdout, the problems on stderr (returned, one a line).
#[track_caller]
fn assert_problems(o: &Output, code: i32) -> Vec<String> {
    assert_eq!(o.status.code(), Some(code), "{o:?}");
    assert!(o.stdout.is_empty(), "stdout is for results: {o:?}");
    let err = stderr(o);
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "{err:?}"
    );
    err.lines().map(str::to_string).collect()
}

/// Exit non-zero with exactly one line on stderr, starting `pgveil: `, nothing on stdout,
/// and no panic.
#[track_caller]
fn assert_one_line_failure(o: &Output) -> String {
    let err = stderr(o);
    assert!(!o.status.success(), "expected failure, got {o:?}");
    assert!(o.status.code().is_some(), "killed by a signal: {o:?}");
    assert!(o.stdout.is_empty(), "stdout is for results: {o:?}");
    assert_eq!(err.lines().count(), 1, "not one line: {err:?}");
    assert!(err.starts_with("pgveil: "), "{err:?}");
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "{err:?}"
    );
    err.trim_end().to_string()
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn write(path: &Path, text: &str) -> PathBuf {
    std::fs::write(path, text).unwrap();
    path.to_path_buf()
}

const PLAIN: &str = "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nhost = \"127.0.0.1\"\nport = 5432\ntls = \"disable\"\n";

// ---------------------------------------------------------------- check

#[test]
fn check_valid_config_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    pgveil::crypto::keys::init_key_dir(&dir.path().join("keys")).unwrap();
    let config = write(
        &dir.path().join("pgveil.toml"),
        &format!(
            "{PLAIN}[keys]\nmaster_key_file = \"keys/master.key\"\n[audit]\ndir = \"audit\"\nsigning_key_file = \"keys/audit.key\"\n[[table]]\nname = \"patients\"\nsubject = \"id\"\n[[column]]\ntable = \"patients\"\ncolumn = \"ssn\"\ntype = \"text\"\nencryption = \"deterministic\"\naccess = {{ clinician = \"plaintext\", billing = \"mask:last4\" }}\n"
        ),
    );
    let o = run(&["check", "--config", path_str(&config)]);
    assert!(o.status.success(), "{o:?}");
    assert!(o.stderr.is_empty(), "{o:?}");
    assert!(
        stdout(&o).contains("valid (1 protected column(s), 1 table rule(s))"),
        "{o:?}"
    );
}

#[test]
fn check_loads_the_files_the_configuration_names() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    pgveil::crypto::keys::init_key_dir(&dir.path().join("keys")).unwrap();
    let master = dir.path().join("keys/master.key");
    std::fs::set_permissions(&master, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = write(
        &dir.path().join("pgveil.toml"),
        &String::from(
            "[server]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"missing.crt\"\ntls_key = \"missing.key\"\n[upstream]\nport = 5432\n\
[keys]\nmaster_key_file = \"keys/master.key\"\n[audit]\nsigning_key_file = \"keys/nope.key\"\n\
[[column]]\ntable = \"patients\"\ncolumn = \"ssn\"\ntype = \"text\"\nencryption = \"deterministic\"\n"
        ),
    );
    let o = run(&["check", "--config", path_str(&config)]);
    let out = assert_problems(&o, 1).join("\n");
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(
        out.contains("[keys]") && out.contains("group or others"),
        "{out}"
    );
    assert!(out.contains("[audit]") && out.contains("nope.key"), "{out}");
    assert!(
        out.contains("[server]") && out.contains("missing.crt"),
        "{out}"
    );
    // Key material never appears in the output.
    let key = std::fs::read_to_string(&master).unwrap();
    assert!(!out.contains(key.trim()));
}

#[test]
fn check_reports_every_problem_with_its_location() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        &dir.path().join("bad.toml"),
        "[server]\nlisten = \"nowhere\"\nbogus = 1\n[upstream]\ntls = \"maybe\"\n[keys]\nmaster_key_file = \"k\"\n[[column]]\ntable = \"p\"\ncolumn = \"c\"\ntype = \"txt\"\nencryption = \"deterministic\"\n",
    );
    let o = run(&["check", "--config", path_str(&config)]);
    let out = assert_problems(&o, 1).join("\n");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    let prefix = format!("{}:", config.display());
    for (line, (at, what)) in lines.iter().zip([
        ("2:", "listen"),
        ("3:", "unknown key \"bogus\""),
        ("5:", "maybe"),
        ("11:", "unknown type \"txt\""),
    ]) {
        let rest = line
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("{line}"));
        assert!(rest.starts_with(at), "{line}");
        // file:line:col: message
        let mut parts = rest.splitn(3, ':');
        assert!(parts.next().unwrap().parse::<u32>().is_ok(), "{line}");
        assert!(parts.next().unwrap().parse::<u32>().is_ok(), "{line}");
        assert!(parts.next().unwrap().contains(what), "{line}");
    }
}

#[test]
fn missing_config_file_is_one_line() {
    for args in [
        &["check", "--config", "/nonexistent/pgveil.toml"][..],
        &["serve", "--config", "/nonexistent/pgveil.toml"],
        &["reload", "--config", "/nonexistent/pgveil.toml"],
        &["audit", "verify", "--config", "/nonexistent/pgveil.toml"],
        &["audit", "search", "--config", "/nonexistent/pgveil.toml"],
        &[
            "audit",
            "report",
            "--config",
            "/nonexistent/pgveil.toml",
            "--subject",
            "p:1",
        ],
    ] {
        let o = run(args);
        let err = assert_one_line_failure(&o);
        assert!(err.contains("/nonexistent/pgveil.toml"), "{args:?}: {err}");
        // The command could not run: exit 2.
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    }
}

// ---------------------------------------------------------------- arguments

#[test]
fn bad_arguments_are_one_line_with_exit_1() {
    for args in [
        &["frobnicate"][..],
        &[],
        &["check", "--bogus"],
        &["serve", "--log-format", "xml"],
        &["audit"],
        &["audit", "verify", "--dir", "x"],
        &[
            "audit",
            "verify",
            "--config",
            "a",
            "--dir",
            "x",
            "--public-key",
            "y",
        ],
        &["audit", "search", "--since"],
        &["keys", "init"],
    ] {
        let o = run(args);
        let err = assert_one_line_failure(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.ends_with("--help)"), "{args:?}: {err}");
    }
    let err = assert_one_line_failure(&run(&["frobnicate"]));
    assert!(err.contains("frobnicate"), "{err}");
}

#[test]
fn help_and_version_still_work() {
    let o = run(&["--help"]);
    assert!(o.status.success());
    let out = stdout(&o);
    for cmd in ["serve", "check", "reload", "keys", "audit"] {
        assert!(out.contains(cmd), "{out}");
    }
    let o = run(&["audit", "search", "--help"]);
    assert!(o.status.success());
    assert!(stdout(&o).contains("--subject"));
    let o = run(&["--version"]);
    assert!(o.status.success());
    assert_eq!(
        stdout(&o),
        format!("pgveil {}\n", env!("CARGO_PKG_VERSION"))
    );
    assert!(o.stderr.is_empty(), "{o:?}");
}

#[test]
fn every_command_has_help_with_an_example() {
    for command in [
        &["serve"][..],
        &["check"],
        &["reload"],
        &["apply"],
        &["keys", "init"],
        &["audit", "verify"],
        &["audit", "search"],
        &["audit", "report"],
    ] {
        let mut args = command.to_vec();
        args.push("--help");
        let o = run(&args);
        assert!(o.status.success(), "{o:?}");
        assert!(o.stderr.is_empty(), "{o:?}");
        let out = stdout(&o);
        let example = out
            .split_once("Example:\n")
            .map(|(_, rest)| rest.lines().next().unwrap_or("").trim())
            .unwrap_or_else(|| panic!("{command:?}: no example in {out}"));
        let words: Vec<&str> = example
            .split_whitespace()
            .skip_while(|w| w.contains('='))
            .collect();
        assert_eq!(words[0], "pgveil", "{example}");
        assert_eq!(&words[1..=command.len()], command, "{example}");
    }
}

#[test]
fn invalid_configurations_go_to_stderr_located() {
    let dir = tempfile::tempdir().unwrap();
    let column = "[[column]]\ntable = \"patients\"\ncolumn = \"ssn\"\ntype = \"text\"\nencryption = \"randomized\"\n";
    for (name, text, line, what) in [
        (
            "unknown-key.toml",
            format!("{PLAIN}frobnicate = 1\n"),
            7,
            "unknown key",
        ),
        (
            "unknown-type.toml",
            format!("{PLAIN}{}", column.replace("\"text\"", "\"txt\"")),
            10,
            "unknown type",
        ),
        (
            "duplicate.toml",
            format!("{PLAIN}{column}{column}"),
            12,
            "listed twice",
        ),
        (
            "domain.toml",
            format!("{PLAIN}{column}domain = \"ssn\"\n"),
            12,
            "domain",
        ),
        ("syntax.toml", format!("{PLAIN}[policy\n"), 7, ""),
    ] {
        let config = write(&dir.path().join(name), &text);
        for args in [&["check"][..], &["check", "--live"]] {
            let mut all = args.to_vec();
            all.extend(["--config", path_str(&config)]);
            let o = run(&all);
            let lines = assert_problems(&o, 1);
            let origin = format!("{}:", config.display());
            assert!(
                !lines.is_empty() && lines.iter().all(|l| l.starts_with(&origin)),
                "{name}: {lines:?}"
            );
            let at = format!("{}:{line}:", config.display());
            assert!(
                lines[0].starts_with(&at),
                "{name}: {} (expected {at})",
                lines[0]
            );
            assert!(lines[0].contains(what), "{name}: {}", lines[0]);
        }
        // Other commands: the first problem, on stderr, exit 1.
        let o = run(&["audit", "verify", "--config", path_str(&config)]);
        let err = assert_one_line_failure(&o);
        assert_eq!(o.status.code(), Some(1), "{name}: {err}");
        assert!(
            err.contains(&format!("{}:{line}:", config.display())),
            "{err}"
        );
    }
}

// ---------------------------------------------------------------- serve

#[test]
fn serve_with_a_bad_config_is_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        &dir.path().join("bad.toml"),
        "[server]\nlisten = \"nowhere\"\nbogus = 2\n",
    );
    let o = run(&["serve", "--config", path_str(&config)]);
    let err = assert_one_line_failure(&o);
    assert!(err.contains("bad.toml:2:"), "{err}");
    assert!(err.contains("1 more problem"), "{err}");
}

// ---------------------------------------------------------------- keys init

#[test]
fn keys_init_creates_three_files_and_refuses_a_second_run() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let o = run(&["keys", "init", "--dir", path_str(&keys)]);
    assert!(o.status.success(), "{o:?}");
    assert!(o.stderr.is_empty(), "{o:?}");
    let out = stdout(&o);
    assert_eq!(out.lines().count(), 3, "{out}");
    for (name, mode) in [
        ("master.key", 0o600),
        ("audit.key", 0o600),
        ("audit.pub", 0o644),
    ] {
        let path = keys.join(name);
        assert!(out.contains(path_str(&path)), "{out}");
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, mode, "{name}");
    }
    let before = std::fs::read(keys.join("master.key")).unwrap();
    let o = run(&["keys", "init", "--dir", path_str(&keys)]);
    let err = assert_one_line_failure(&o);
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(std::fs::read(keys.join("master.key")).unwrap(), before);
}

// ---------------------------------------------------------------- audit

fn draft(user: &str, minute: u32, subject: Option<&str>, outcome: Outcome) -> RecordDraft {
    let subjects = match subject {
        Some(id) => Subjects::Known(BTreeMap::from([(
            "public.patients".to_string(),
            vec![id].into(),
        )])),
        None => Subjects::Unknown("statement without a subject column".into()),
    };
    RecordDraft {
        time: Utc.with_ymd_and_hms(2026, 3, 1, 9, minute, 0).unwrap(),
        session: format!("s-{user}"),
        client: "10.0.0.7:51000".into(),
        user: user.into(),
        roles: vec![user.into(), "clinician".into()],
        application: "ehr".into(),
        kind: StatementKind::Select,
        fingerprint: "SELECT ssn FROM patients WHERE id = $1".into(),
        tables: vec!["public.patients".into()],
        columns: vec![ColumnAccess::new("public.patients.ssn", Access::Plaintext)],
        rows: 1,
        outcome,
        sqlstate: None,
        subjects,
    }
}

/// A directory with keys from `pgveil keys init`, a config naming them, and an audit log of
/// six records written through `AuditLog`: (tempdir, config path).
fn audit_fixture() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    assert!(run(&["keys", "init", "--dir", path_str(&keys)])
        .status
        .success());
    let config = write(
        &dir.path().join("pgveil.toml"),
        &format!("{PLAIN}[audit]\ndir = \"audit\"\nsigning_key_file = \"keys/audit.key\"\n"),
    );
    let key = pgveil::crypto::keys::load_signing_key(&keys.join("audit.key")).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let log = AuditLog::open(AuditOptions::new(dir.path().join("audit"), key)).unwrap();
        for d in [
            draft("alice", 1, Some("17"), Outcome::Ok),
            draft("bob", 2, Some("18"), Outcome::Ok),
            draft("alice", 3, Some("18"), Outcome::Ok),
            draft("carol", 4, Some("17"), Outcome::Ok),
            draft("bob", 5, None, Outcome::Refused),
            draft("dave", 6, None, Outcome::Ok),
        ] {
            log.append(d).await.unwrap();
        }
        log.shutdown().await;
    });
    (dir, config)
}

fn json_lines(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn audit_verify_intact_then_tampered() {
    let (dir, config) = audit_fixture();
    let o = run(&["audit", "verify", "--config", path_str(&config)]);
    assert!(o.status.success(), "{o:?}");
    assert!(o.stderr.is_empty(), "{o:?}");
    let out = stdout(&o);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(
        out.starts_with("audit log intact: 1 segment(s), 6 records"),
        "{out}"
    );

    // The same with --dir and --public-key.
    let o = run(&[
        "audit",
        "verify",
        "--dir",
        path_str(&dir.path().join("audit")),
        "--public-key",
        path_str(&dir.path().join("keys/audit.pub")),
    ]);
    assert!(o.status.success(), "{o:?}");

    // Change one byte of the third record: "alice" → "alicf".
    let seg = dir.path().join("audit/segment-000001.jsonl");
    let text = std::fs::read_to_string(&seg).unwrap();
    let line_start = text.find("{\"seq\":3,").unwrap();
    let at = line_start + text[line_start..].find("\"alice\"").unwrap() + 5;
    let mut bytes = text.into_bytes();
    bytes[at] = b'f';
    std::fs::write(&seg, bytes).unwrap();
    let o = run(&["audit", "verify", "--config", path_str(&config)]);
    let err = assert_one_line_failure(&o);
    assert!(err.contains("segment-000001.jsonl seq 3"), "{err}");
    assert_eq!(
        o.status.code(),
        Some(1),
        "a damaged log is an invalid input"
    );

    // A missing key file: one line naming it.
    let o = run(&[
        "audit",
        "verify",
        "--dir",
        path_str(&dir.path().join("audit")),
        "--public-key",
        path_str(&dir.path().join("keys/missing.pub")),
    ]);
    let err = assert_one_line_failure(&o);
    assert!(err.contains("missing.pub"), "{err}");
    assert_eq!(
        o.status.code(),
        Some(2),
        "an unreadable key: the command could not run"
    );
}

#[test]
fn audit_verify_with_another_key_fails() {
    let (dir, _config) = audit_fixture();
    let other = dir.path().join("other");
    assert!(run(&["keys", "init", "--dir", path_str(&other)])
        .status
        .success());
    let o = run(&[
        "audit",
        "verify",
        "--dir",
        path_str(&dir.path().join("audit")),
        "--public-key",
        path_str(&other.join("audit.pub")),
    ]);
    let err = assert_one_line_failure(&o);
    assert!(err.contains("segment-000001.jsonl"), "{err}");
}

#[test]
fn audit_verify_without_audit_section_is_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(&dir.path().join("pgveil.toml"), PLAIN);
    let err = assert_one_line_failure(&run(&["audit", "verify", "--config", path_str(&config)]));
    assert!(err.contains("no [audit] section"), "{err}");
}

#[test]
fn audit_search_filters() {
    let (_dir, config) = audit_fixture();
    let c = path_str(&config);

    let o = run(&["audit", "search", "--config", c, "--json"]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(json_lines(&stdout(&o)).len(), 6);

    let o = run(&[
        "audit", "search", "--config", c, "--user", "alice", "--json",
    ]);
    let recs = json_lines(&stdout(&o));
    assert_eq!(recs.len(), 2, "{o:?}");
    assert!(recs.iter().all(|r| r["user"] == "alice"));
    // The --json line is the stored record, hash and all.
    assert!(recs
        .iter()
        .all(|r| r["hash"].is_string() && r["prev"].is_string()));

    let o = run(&[
        "audit",
        "search",
        "--config",
        c,
        "--subject",
        "patients:17",
        "--json",
    ]);
    let seqs: Vec<u64> = json_lines(&stdout(&o))
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![1, 4]);

    let o = run(&[
        "audit",
        "search",
        "--config",
        c,
        "--outcome",
        "refused",
        "--json",
    ]);
    let recs = json_lines(&stdout(&o));
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0]["user"], "bob");

    let o = run(&[
        "audit",
        "search",
        "--config",
        c,
        "--since",
        "2026-03-01T09:02:00Z",
        "--until",
        "2026-03-01T09:03:00Z",
        "--json",
    ]);
    let seqs: Vec<u64> = json_lines(&stdout(&o))
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![2, 3]);

    let o = run(&[
        "audit",
        "search",
        "--config",
        c,
        "--table",
        "public.patients",
        "--column",
        "ssn",
        "--role",
        "clinician",
    ]);
    assert!(o.status.success(), "{o:?}");
    let out = stdout(&o);
    assert_eq!(out.lines().count(), 6, "{out}");
    assert!(
        out.lines()
            .all(|l| l.contains("public.patients.ssn(plaintext)")),
        "{out}"
    );

    // No match: exit 0, nothing on stdout.
    let o = run(&["audit", "search", "--config", c, "--user", "mallory"]);
    assert!(o.status.success());
    assert!(stdout(&o).is_empty());

    // Bad filter values: one line, exit 1.
    for args in [
        &["--since", "yesterday"][..],
        &["--subject", "patients"],
        &["--outcome", "maybe"],
    ] {
        let mut all = vec!["audit", "search", "--config", c];
        all.extend_from_slice(args);
        let o = run(&all);
        assert_one_line_failure(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
    }
}

#[test]
fn audit_report_newest_first() {
    let (_dir, config) = audit_fixture();
    let c = path_str(&config);
    let o = run(&["audit", "report", "--config", c, "--subject", "patients:17"]);
    assert!(o.status.success(), "{o:?}");
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].contains("public.patients id 17"), "{out}");
    assert!(lines[0].contains("2 disclosure(s)"), "{out}");
    let carol = out.find("user carol").unwrap();
    let alice = out.find("user alice").unwrap();
    assert!(carol < alice, "not newest first: {out}");

    let o = run(&[
        "audit",
        "report",
        "--config",
        c,
        "--subject",
        "public.patients:17",
        "--json",
    ]);
    assert!(o.status.success(), "{o:?}");
    let seqs: Vec<u64> = json_lines(&stdout(&o))
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    // Disclosures newest first, then the record with unknown subjects.
    assert_eq!(seqs, vec![4, 1, 6]);

    let o = run(&[
        "audit",
        "report",
        "--config",
        c,
        "--subject",
        "patients:17",
        "--since",
        "2026-03-01T09:02:00Z",
        "--json",
    ]);
    let seqs: Vec<u64> = json_lines(&stdout(&o))
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![4, 6]);

    let o = run(&[
        "audit",
        "report",
        "--config",
        c,
        "--subject",
        "patients:17",
        "--since",
        "2026-03-02T00:00:00Z",
        "--until",
        "2026-03-01T00:00:00Z",
    ]);
    assert_one_line_failure(&o);
}

// ---------------------------------------------------------------- serve + reload

fn wait_for_file(path: &Path, present: bool) {
    for _ in 0..400 {
        if path.exists() == present {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!(
        "timed out waiting for {} (present: {present})",
        path.display()
    );
}

#[test]
fn serve_writes_and_removes_its_pid_file_and_reload_signals_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(&dir.path().join("pgveil.toml"), PLAIN);
    let pid_file = dir.path().join("pgveil.pid");

    // No serve running: one line.
    let err = assert_one_line_failure(&run(&["reload", "--config", path_str(&config)]));
    assert!(err.contains("pgveil.pid"), "{err}");

    // A stale pid file naming a process that is not pgveil is left alone.
    std::fs::write(&pid_file, format!("{}\n", std::process::id())).unwrap();
    let err = assert_one_line_failure(&run(&["reload", "--config", path_str(&config)]));
    assert!(err.contains("not pgveil"), "{err}");
    std::fs::write(&pid_file, "garbage\n").unwrap();
    assert_one_line_failure(&run(&["reload", "--config", path_str(&config)]));
    std::fs::remove_file(&pid_file).unwrap();

    // serve writes the pid file (default: beside the config) and removes it on SIGTERM.
    let mut child = pgveil()
        .args(["serve", "--config", path_str(&config)])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_file(&pid_file, true);
    let written = std::fs::read_to_string(&pid_file).unwrap();
    assert_eq!(written.trim(), child.id().to_string());
    // SAFETY: signalling the child we spawned.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!pid_file.exists());

    // A configured pid_file; reload sends SIGHUP to the pid in it.
    let custom = dir.path().join("run/veil.pid");
    std::fs::create_dir_all(custom.parent().unwrap()).unwrap();
    let config = write(
        &dir.path().join("custom.toml"),
        &PLAIN.replacen("[server]\n", "[server]\npid_file = \"run/veil.pid\"\n", 1),
    );
    let mut child = pgveil()
        .args(["serve", "--config", path_str(&config)])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_file(&custom, true);
    let o = run(&["reload", "--config", path_str(&config)]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(
        stdout(&o).trim(),
        format!("sent SIGHUP to pgveil (pid {})", child.id())
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn serve_warns_but_runs_when_the_pid_file_cannot_be_written() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        &dir.path().join("pgveil.toml"),
        &PLAIN.replacen(
            "[server]\n",
            "[server]\npid_file = \"no/such/dir/p.pid\"\nshutdown_timeout_secs = 1\n",
            1,
        ),
    );
    let mut child = pgveil()
        .args(["serve", "--config", path_str(&config)])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(child.try_wait().unwrap().is_none(), "serve exited");
    // SAFETY: signalling the child we spawned.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        stderr(&out).contains("cannot write the pid file"),
        "{out:?}"
    );
}

// ---------------------------------------------------------------- check --live

fn live(config: &Path) -> Output {
    pgveil()
        .args(["check", "--live", "--config", path_str(config)])
        .env("PGUSER", common::SUPERUSER)
        .env("PGPASSWORD", common::PASSWORD)
        .env("PGDATABASE", "postgres")
        .output()
        .unwrap()
}

fn live_schema() -> &'static common::Cluster {
    static ONCE: std::sync::Once = std::sync::Once::new();
    let cluster = common::cluster();
    ONCE.call_once(|| {
        cluster.psql(
            "CREATE TABLE cli_patients (id int PRIMARY KEY, ssn bytea, birth_date date, notes text);
             CREATE SCHEMA cli_s;
             CREATE TABLE cli_s.visits (patient_id int, diagnosis bytea);
             CREATE ROLE cli_clinician;
             CREATE ROLE \"Cli Billing\";",
        );
    });
    cluster
}

/// A real master key for the live checks (the static check loads it too).
fn master_key() -> &'static Path {
    static KEYS: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        pgveil::crypto::keys::init_key_dir(&dir.join("keys")).unwrap();
        dir.join("keys/master.key")
    })
}

fn upstream(port: u16, tls: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"{tls}\"\n[keys]\nmaster_key_file = \"{}\"\n",
        master_key().display()
    )
}

const CLEAN_RULES: &str = "[[table]]\nname = \"cli_patients\"\nsubject = \"id\"\n[[table]]\nname = \"cli_s.visits\"\nsubject = \"patient_id\"\n[[column]]\ntable = \"cli_patients\"\ncolumn = \"ssn\"\ntype = \"text\"\nencryption = \"deterministic\"\naccess = { cli_clinician = \"plaintext\", \"Cli Billing\" = \"mask:last4\" }\n[[column]]\ntable = \"cli_s.visits\"\ncolumn = \"diagnosis\"\ntype = \"jsonb\"\nencryption = \"randomized\"\naccess = { cli_clinician = \"plaintext\" }\n";

#[test]
fn check_live_clean_config_over_each_tls_mode() {
    let cluster = live_schema();
    let dir = tempfile::tempdir().unwrap();
    let ca = write(&dir.path().join("ca.crt"), &cluster.ca_pem);
    for tls in ["disable", "prefer", "require", "verify-full"] {
        let mut text = upstream(cluster.port, tls);
        if tls == "verify-full" {
            text = text.replacen(
                "tls = \"verify-full\"\n",
                &format!("tls = \"verify-full\"\nca_file = \"{}\"\n", ca.display()),
                1,
            );
        }
        let config = write(
            &dir.path().join("clean.toml"),
            &format!("{text}{CLEAN_RULES}"),
        );
        let o = live(&config);
        assert!(o.status.success(), "{tls}: {o:?}");
        let out = stdout(&o);
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(out.contains("every table, column and role exists"), "{out}");
    }
}

#[test]
fn check_live_reports_each_problem() {
    let cluster = live_schema();
    let dir = tempfile::tempdir().unwrap();
    let rules = "[[table]]\nname = \"cli_patients\"\nsubject = \"patient_no\"\n\
[[column]]\ntable = \"cli_patients\"\ncolumn = \"ssn\"\ntype = \"text\"\nencryption = \"deterministic\"\naccess = { cli_clinician = \"plaintext\", cli_nobody = \"mask:last4\" }\n\
[[column]]\ntable = \"cli_patients\"\ncolumn = \"birth_date\"\ntype = \"date\"\nencryption = \"randomized\"\n\
[[column]]\ntable = \"cli_patients\"\ncolumn = \"phone\"\ntype = \"text\"\nencryption = \"randomized\"\n\
[[column]]\ntable = \"public.cli_gone\"\ncolumn = \"x\"\ntype = \"text\"\nencryption = \"randomized\"\n";
    let config = write(
        &dir.path().join("live.toml"),
        &format!("{}{rules}", upstream(cluster.port, "disable")),
    );
    let o = live(&config);
    let out = assert_problems(&o, 1).join("\n");
    // Problems, then the warnings of defense in depth (ssn has no envelope constraint).
    let lines: Vec<&str> = out.lines().filter(|l| !l.contains(": warning: ")).collect();
    assert_eq!(lines.len(), 5, "{out}");
    assert!(
        out.contains(
            "warning: column public.cli_patients.ssn has no constraint pgveil_envelope_ssn"
        ),
        "{out}"
    );
    let expect = [
        ("table public.cli_gone does not exist", 29),
        ("column public.cli_patients.birth_date is date", 20),
        ("column public.cli_patients.phone does not exist", 25),
        (
            "subject column public.cli_patients.patient_no does not exist",
            11,
        ),
        (
            "role \"cli_nobody\" named in an access rule does not exist",
            17,
        ),
    ];
    for (what, line_no) in expect {
        let line = lines
            .iter()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no {what:?} in {out}"));
        let at = format!("{}:{line_no}:", config.display());
        assert!(line.starts_with(&at), "{line} (expected {at})");
    }
}

#[test]
fn check_live_connection_failure_is_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let config = write(&dir.path().join("c.toml"), &upstream(port, "disable"));
    let o = live(&config);
    let err = assert_one_line_failure(&o);
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert_eq!(o.status.code(), Some(2), "{o:?}");

    // Wrong password against the real cluster: still one line.
    let cluster = live_schema();
    let config = write(
        &dir.path().join("c.toml"),
        &upstream(cluster.port, "disable"),
    );
    let o = pgveil()
        .args(["check", "--live", "--config", path_str(&config)])
        .env("PGUSER", common::SUPERUSER)
        .env("PGPASSWORD", "wrong")
        .output()
        .unwrap();
    let err = assert_one_line_failure(&o);
    assert!(err.contains("password authentication failed"), "{err}");
    assert_eq!(o.status.code(), Some(2), "{o:?}");
}
