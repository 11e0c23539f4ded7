//! The session context in the log: stored and hashed, searched, reported; logs written
//! before the context fields still verify; the observer seam.

use std::path::Path;
use std::sync::{Arc, Mutex};

use chrono::{TimeZone, Utc};
use ed25519_dalek::SigningKey;
use sha2::{Digest, Sha256};

use super::record::tests::draft;
use super::*;

fn key() -> SigningKey {
    SigningKey::from_bytes(&[42u8; 32])
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn context(end_user: Option<&str>, purpose: Option<&str>, reason: Option<&str>) -> RecordContext {
    RecordContext {
        end_user: end_user.map(str::to_string),
        purpose: purpose.map(str::to_string),
        break_glass: reason.map(str::to_string),
    }
}

/// 1: alice/treatment, 2: bob/payment, 3: no context, 4: alice under break-glass.
fn context_log(dir: &Path) {
    let entries = [
        context(Some("dr.alice"), Some("treatment"), None),
        context(Some("bob"), Some("payment"), None),
        RecordContext::default(),
        context(
            Some("dr.alice"),
            Some("treatment"),
            Some("code blue, bed 4"),
        ),
    ];
    rt().block_on(async {
        let log = AuditLog::open(AuditOptions::new(dir, key())).unwrap();
        for (i, c) in entries.into_iter().enumerate() {
            let mut d = draft("app", "17");
            d.time = Utc.with_ymd_and_hms(2026, 3, 1, 9, i as u32, 0).unwrap();
            log.append_in_context(d, c).await.unwrap();
        }
        log.shutdown().await;
    });
}

fn found(dir: &Path, args: cli::SearchArgs) -> Vec<u64> {
    search(dir, &cli::build_filter(&args).unwrap())
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect()
}

#[test]
fn context_is_recorded_searched_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    context_log(dir.path());
    assert!(verify_dir(dir.path(), &key().verifying_key()).is_ok());
    let a = cli::SearchArgs::default;
    let end_user = |u: &str| cli::SearchArgs {
        end_user: Some(u.into()),
        ..a()
    };
    assert_eq!(found(dir.path(), end_user("dr.alice")), vec![1, 4]);
    assert_eq!(found(dir.path(), end_user("DR.ALICE")), Vec::<u64>::new());
    assert_eq!(
        found(
            dir.path(),
            cli::SearchArgs {
                purpose: Some("payment".into()),
                ..a()
            }
        ),
        vec![2]
    );
    assert_eq!(
        found(
            dir.path(),
            cli::SearchArgs {
                break_glass: true,
                ..a()
            }
        ),
        vec![4]
    );
    assert_eq!(
        found(
            dir.path(),
            cli::SearchArgs {
                break_glass: true,
                purpose: Some("payment".into()),
                ..a()
            }
        ),
        Vec::<u64>::new()
    );

    let mut out = Vec::new();
    cli::search(
        dir.path(),
        &cli::build_filter(&a()).unwrap(),
        false,
        &mut out,
    )
    .unwrap();
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].contains(" user app end user dr.alice purpose treatment roles "),
        "{}",
        lines[0]
    );
    assert!(
        lines[2].contains(" user app end user - purpose - roles "),
        "{}",
        lines[2]
    );
    assert!(
        lines[3].contains("purpose treatment break-glass \"code blue, bed 4\" roles"),
        "{}",
        lines[3]
    );

    // The report names end user and purpose for each disclosure.
    let subject = cli::parse_subject("patients:17").unwrap();
    let mut out = Vec::new();
    assert_eq!(
        cli::report(dir.path(), &subject, None, None, false, &mut out).unwrap(),
        4
    );
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains("user app  end user bob  purpose payment  roles"),
        "{text}"
    );
    assert!(
        text.contains("user app  end user -  purpose -  roles"),
        "{text}"
    );
    assert!(
        text.contains(
            "end user dr.alice  purpose treatment  break-glass \"code blue, bed 4\"  roles"
        ),
        "{text}"
    );
    let mut out = Vec::new();
    cli::report(dir.path(), &subject, None, None, true, &mut out).unwrap();
    let json: Vec<serde_json::Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(json.len(), 4);
    assert_eq!(json[0]["end_user"], "dr.alice");
    assert_eq!(json[0]["break_glass"], "code blue, bed 4");
    assert_eq!(json[1]["end_user"], serde_json::Value::Null);
    assert_eq!(json[2]["purpose"], "payment");
}

#[test]
fn editing_the_context_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    context_log(dir.path());
    let path = dir.path().join("segment-000001.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replacen("\"purpose\":\"payment\"", "\"purpose\":\"treatment\"", 1),
    )
    .unwrap();
    let failure = verify_dir(dir.path(), &key().verifying_key()).unwrap_err();
    assert_eq!(failure.seq, Some(2), "{failure}");
}

/// Rewrites a record line as it was stored before the context fields existed.
fn without_context_fields(line: &str) -> String {
    let body = line.replace(
        ",\"end_user\":null,\"purpose\":null,\"break_glass\":null",
        "",
    );
    let body = &body[..body.len() - 75];
    let hash = hex::encode(Sha256::digest(format!("{body}}}").as_bytes()));
    format!("{body},\"hash\":\"{hash}\"}}")
}

#[test]
fn a_log_from_before_the_context_fields_still_verifies_and_continues() {
    let dir = tempfile::tempdir().unwrap();
    let signing = key();
    // Two old records and a signed checkpoint over them, as the old writer left them.
    let mut lines = Vec::new();
    let mut prev = GENESIS.to_string();
    for seq in 1..=2 {
        let sealed =
            record::seal(&draft("app", "17"), &RecordContext::default(), seq, &prev).unwrap();
        let old = without_context_fields(sealed.line.trim_end());
        let (computed, _) = record::split_hash(old.as_bytes()).unwrap();
        prev = hex::encode(computed);
        lines.push(old);
    }
    let cp = Checkpoint::sign(2, &prev, 1, CheckpointReason::Shutdown, &signing);
    lines.push(cp.to_line().unwrap().trim_end().to_string());
    std::fs::write(
        dir.path().join("segment-000001.jsonl"),
        format!("{}\n", lines.join("\n")),
    )
    .unwrap();
    assert!(!lines[0].contains("end_user"));
    let summary = verify_dir(dir.path(), &signing.verifying_key()).unwrap();
    assert_eq!(summary.records, 2, "{summary}");
    // The writer continues the chain with the new fields.
    rt().block_on(async {
        let log = AuditLog::open(AuditOptions::new(dir.path(), key())).unwrap();
        let seq = log
            .append_in_context(
                draft("app", "17"),
                context(Some("u"), Some("treatment"), None),
            )
            .await
            .unwrap();
        assert_eq!(seq, 3);
        log.shutdown().await;
    });
    assert!(verify_dir(dir.path(), &signing.verifying_key()).is_ok());
    let records = search(dir.path(), &SearchFilter::default()).unwrap();
    assert!(records[0].context.is_empty());
    assert_eq!(records[2].context.end_user.as_deref(), Some("u"));
}

/// Records what it is told.
struct Recorder(Arc<Mutex<Vec<(u64, String, RecordContext)>>>);

impl RecordObserver for Recorder {
    fn durable(&self, seq: u64, draft: &RecordDraft, context: &RecordContext) {
        self.0
            .lock()
            .unwrap()
            .push((seq, draft.user.clone(), context.clone()));
    }
}

#[test]
fn the_observer_hears_each_durable_record_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let heard = Arc::new(Mutex::new(Vec::new()));
    rt().block_on(async {
        let mut options = AuditOptions::new(dir.path(), key());
        options.observer = Some(Box::new(Recorder(heard.clone())));
        let log = AuditLog::open(options).unwrap();
        for i in 0..20u64 {
            let c = context(Some(&format!("user{i}")), None, None);
            assert_eq!(
                log.append_in_context(draft("app", "1"), c).await.unwrap(),
                i + 1
            );
        }
        log.shutdown().await;
    });
    let heard = heard.lock().unwrap();
    assert_eq!(heard.len(), 20);
    for (i, (seq, user, c)) in heard.iter().enumerate() {
        assert_eq!(*seq, i as u64 + 1);
        assert_eq!(user, "app");
        assert_eq!(c.end_user.as_deref(), Some(format!("user{i}").as_str()));
    }
}
