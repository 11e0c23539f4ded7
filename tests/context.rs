//! The session context as the command line sees it: `pgveil check` loads the token key,
//! `audit search` filters on end user, purpose and break-glass, `audit report` names them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine as _;
use chrono::{TimeZone, Utc};
use pgveil::audit::{
    Access, AuditLog, AuditOptions, ColumnAccess, Outcome, RecordContext, RecordDraft,
    StatementKind, Subjects,
};

const PLAIN: &str = "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nhost = \"127.0.0.1\"\nport = 5432\ntls = \"disable\"\n";

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pgveil"))
        .args(args)
        .env_remove("PGVEIL_MASTER_KEY")
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn write(path: &Path, text: &str) -> PathBuf {
    std::fs::write(path, text).unwrap();
    path.to_path_buf()
}

fn check(dir: &Path, context: &str) -> Output {
    let config = write(
        &dir.join("pgveil.toml"),
        &format!("{PLAIN}[context]\n{context}\n"),
    );
    run(&["check", "--config", config.to_str().unwrap()])
}

#[test]
fn check_loads_the_token_key() {
    let dir = tempfile::tempdir().unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&[5; 32]).verifying_key();
    let b64 = base64::engine::general_purpose::STANDARD;
    std::fs::write(
        dir.path().join("app.pub"),
        format!("{}\n", b64.encode(key.as_bytes())),
    )
    .unwrap();
    let mut der = hex::decode("302a300506032b6570032100").unwrap();
    der.extend_from_slice(key.as_bytes());
    std::fs::write(
        dir.path().join("app.pem"),
        format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            b64.encode(&der)
        ),
    )
    .unwrap();
    std::fs::write(dir.path().join("short.pub"), b64.encode([1u8; 8])).unwrap();
    for good in ["app.pub", "app.pem"] {
        let o = check(dir.path(), &format!("token_public_key_file = \"{good}\""));
        assert!(o.status.success(), "{good}: {o:?}");
    }
    for (bad, why) in [("absent.pub", "does not exist"), ("short.pub", "32 bytes")] {
        let o = check(dir.path(), &format!("token_public_key_file = \"{bad}\""));
        assert_eq!(o.status.code(), Some(1), "{o:?}");
        // Problems go to stderr; stdout is for results.
        assert!(o.stdout.is_empty(), "{o:?}");
        let out = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(
            out.contains("[context] token_public_key_file")
                && out.contains(bad)
                && out.contains(why),
            "{out}"
        );
    }
    let o = check(dir.path(), "max_token_lifetime_secs = 0");
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty(), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("pgveil.toml:8:"),
        "{o:?}"
    );
}

fn draft(minute: u32, id: &str) -> RecordDraft {
    RecordDraft {
        time: Utc.with_ymd_and_hms(2026, 3, 1, 9, minute, 0).unwrap(),
        session: "s-1".into(),
        client: "10.0.0.7:51000".into(),
        user: "ehr_app".into(),
        roles: vec!["ehr_app".into(), "clinician".into()],
        application: "ehr".into(),
        kind: StatementKind::Select,
        fingerprint: "SELECT ssn FROM patients WHERE id = $1".into(),
        tables: vec!["public.patients".into()],
        columns: vec![ColumnAccess::new("public.patients.ssn", Access::Plaintext)],
        rows: 1,
        outcome: Outcome::Ok,
        sqlstate: None,
        subjects: Subjects::Known(BTreeMap::from([(
            "public.patients".to_string(),
            vec![id].into(),
        )])),
    }
}

fn context(end_user: &str, purpose: &str, break_glass: Option<&str>) -> RecordContext {
    RecordContext {
        end_user: Some(end_user.into()),
        purpose: Some(purpose.into()),
        break_glass: break_glass.map(str::to_string),
    }
}

#[test]
fn audit_search_and_report_by_end_user_purpose_and_break_glass() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    pgveil::crypto::keys::init_key_dir(&keys).unwrap();
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
        for (d, c) in [
            (draft(1, "17"), context("dr.alice", "treatment", None)),
            (draft(2, "17"), context("billing.bob", "payment", None)),
            (draft(3, "18"), RecordContext::default()),
            (
                draft(4, "17"),
                context("dr.alice", "treatment", Some("code blue")),
            ),
        ] {
            log.append_in_context(d, c).await.unwrap();
        }
        log.shutdown().await;
    });
    let c = config.to_str().unwrap();
    let seqs = |args: &[&str]| -> Vec<u64> {
        let mut all = vec!["audit", "search", "--config", c, "--json"];
        all.extend_from_slice(args);
        let o = run(&all);
        assert!(o.status.success(), "{o:?}");
        stdout(&o)
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    };
    assert_eq!(seqs(&["--end-user", "dr.alice"]), vec![1, 4]);
    assert_eq!(seqs(&["--purpose", "payment"]), vec![2]);
    assert_eq!(seqs(&["--break-glass"]), vec![4]);
    assert_eq!(seqs(&["--end-user", "nobody"]), Vec::<u64>::new());
    assert!(run(&["audit", "verify", "--config", c]).status.success());

    let o = run(&["audit", "report", "--config", c, "--subject", "patients:17"]);
    assert!(o.status.success(), "{o:?}");
    let text = stdout(&o);
    assert!(
        text.contains("end user billing.bob  purpose payment"),
        "{text}"
    );
    assert!(
        text.contains("end user dr.alice  purpose treatment  break-glass \"code blue\""),
        "{text}"
    );
    let o = run(&[
        "audit",
        "report",
        "--config",
        c,
        "--subject",
        "patients:17",
        "--json",
    ]);
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert!(lines
        .iter()
        .all(|l| l["end_user"].is_string() && l["purpose"].is_string()));
}
