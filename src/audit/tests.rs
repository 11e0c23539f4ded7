//! End-to-end tests of the audit module on temporary directories.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use ed25519_dalek::SigningKey;

use super::record::{parse_line, seal, tests::draft, LogLine};
use super::segment::segment_name;
use super::*;

pub(super) fn key() -> SigningKey {
    SigningKey::from_bytes(&[42u8; 32])
}

pub(super) fn opts(dir: &Path) -> AuditOptions {
    AuditOptions::new(dir, key())
}

pub(super) fn seg(dir: &Path, n: u64) -> PathBuf {
    dir.join(segment_name(n))
}

pub(super) fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut s = lines.join("\n");
    s.push('\n');
    std::fs::write(path, s).unwrap();
}

pub(super) fn verify(dir: &Path) -> Result<VerifySummary, VerifyFailure> {
    verify_dir(dir, &key().verifying_key())
}

fn copy_dir(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.path().join(e.file_name())).unwrap();
    }
    to
}

pub(super) fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

pub(super) fn draft_n(i: u64) -> RecordDraft {
    let mut d = draft(
        if i.is_multiple_of(2) { "alice" } else { "bob" },
        &format!("{}", i % 5),
    );
    d.time =
        Utc.with_ymd_and_hms(2026, 1, 5, 10, 0, 0).unwrap() + chrono::Duration::seconds(i as i64);
    d
}

/// Writes `n` records sequentially and shuts down.
pub(super) fn build_log(dir: &Path, n: u64, segment_max: u64, every: u64) {
    rt().block_on(async {
        let mut o = opts(dir);
        o.segment_max_bytes = segment_max;
        o.checkpoint_every = every;
        let log = AuditLog::open(o).unwrap();
        for i in 1..=n {
            assert_eq!(log.append(draft_n(i)).await.unwrap(), i);
        }
        log.shutdown().await;
    });
}

#[test]
fn concurrent_appends_group_commit() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = 64u64;
    let per_task = 20u64;
    let stats = rt().block_on(async {
        let log = AuditLog::open(opts(dir.path())).unwrap();
        let mut handles = Vec::new();
        for t in 0..tasks {
            let log = log.clone();
            handles.push(tokio::spawn(async move {
                let mut seqs = Vec::new();
                for i in 0..per_task {
                    seqs.push(log.append(draft_n(t * 1000 + i)).await.unwrap());
                }
                seqs
            }));
        }
        let mut all = Vec::new();
        for h in handles {
            let seqs = h.await.unwrap();
            assert!(
                seqs.windows(2).all(|w| w[0] < w[1]),
                "a task's records are in order"
            );
            all.extend(seqs);
        }
        all.sort_unstable();
        let expected: Vec<u64> = (1..=tasks * per_task).collect();
        assert_eq!(all, expected);
        let stats = log.stats();
        log.shutdown().await;
        assert!(matches!(
            log.append(draft_n(0)).await,
            Err(AuditError::Closed)
        ));
        stats
    });
    eprintln!("group commit: {stats:?}");
    assert_eq!(stats.records_written, tasks * per_task);
    assert_eq!(stats.last_seq, tasks * per_task);
    assert!(
        stats.fsyncs < stats.records_written / 2,
        "group commit: {} fsyncs for {} records",
        stats.fsyncs,
        stats.records_written
    );
    let s = verify(dir.path()).unwrap();
    assert_eq!(s.records, tasks * per_task);
    assert_eq!(s.last_seq, tasks * per_task);
    assert_eq!(s.unsigned_tail, 0, "shutdown checkpoint signs everything");
    // Seqs in the file are in order (verify checks), and lines carry the order.
    let first = lines(&seg(dir.path(), 1));
    assert!(first[0].starts_with("{\"seq\":1,"));
    assert!(first.last().unwrap().contains("\"reason\":\"shutdown\""));
}

#[test]
fn restart_continues_chain() {
    let dir = tempfile::tempdir().unwrap();
    build_log(dir.path(), 3, AuditOptions::DEFAULT_SEGMENT_MAX_BYTES, 1000);
    rt().block_on(async {
        let log = AuditLog::open(opts(dir.path())).unwrap();
        assert_eq!(log.stats().last_seq, 3);
        assert_eq!(log.append(draft_n(4)).await.unwrap(), 4);
        assert_eq!(log.append(draft_n(5)).await.unwrap(), 5);
        log.shutdown().await;
    });
    let s = verify(dir.path()).unwrap();
    assert_eq!(
        (s.segments, s.records, s.last_seq, s.checkpoints),
        (1, 5, 5, 2)
    );
    // Restart after a crash (no shutdown checkpoint): tail records are unsigned.
    let lines1 = lines(&seg(dir.path(), 1));
    write_lines(&seg(dir.path(), 1), &lines1[..lines1.len() - 1]);
    let s = verify(dir.path()).unwrap();
    assert_eq!(s.unsigned_tail, 2);
    assert!(
        s.to_string().contains(
            "2 record(s) after the last checkpoint (seq 3) are chained but not yet signed"
        ),
        "{s}"
    );
    rt().block_on(async {
        let log = AuditLog::open(opts(dir.path())).unwrap();
        assert_eq!(log.append(draft_n(6)).await.unwrap(), 6);
        log.shutdown().await;
    });
    assert_eq!(verify(dir.path()).unwrap().last_seq, 6);
}

#[test]
fn torn_final_line_reported_and_repaired() {
    for variant in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        build_log(dir.path(), 4, AuditOptions::DEFAULT_SEGMENT_MAX_BYTES, 1000);
        let path = seg(dir.path(), 1);
        let mut content = std::fs::read(&path).unwrap();
        let secret = "SECRET-SSN-123-45-6789";
        let torn: Vec<u8> = match variant {
            // Unterminated partial record.
            0 => format!("{{\"seq\":5,\"time\":\"2026-01-05T10:00:00Z\",\"user\":\"{secret}")
                .into_bytes(),
            // A complete but unparseable line (zero-filled hole, then the rest).
            1 => {
                let mut v = vec![0u8; 40];
                v.extend_from_slice(format!("{secret}\"}}\n").as_bytes());
                v
            }
            // An invalid complete line followed by an unterminated fragment.
            _ => format!("\0\0\0{secret}\n{{\"seq\":6").into_bytes(),
        };
        let removed = torn.len();
        let good_len = content.len();
        content.extend_from_slice(&torn);
        std::fs::write(&path, &content).unwrap();

        let f = verify(dir.path()).unwrap_err();
        assert_eq!(f.segment, "segment-000001.jsonl");
        assert_eq!(
            f.reason, "torn final line (crash during write); the next start repairs it",
            "variant {variant}"
        );
        // Search skips a torn final line.
        assert_eq!(
            search(dir.path(), &SearchFilter::default()).unwrap().len(),
            4
        );

        rt().block_on(async {
            let log = AuditLog::open(opts(dir.path())).unwrap();
            assert_eq!(log.stats().last_seq, 5, "the repair record is seq 5");
            assert_eq!(log.append(draft_n(6)).await.unwrap(), 6);
            log.shutdown().await;
        });
        let s = verify(dir.path()).unwrap();
        assert_eq!(s.records, 6);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains(secret),
            "the removed content is never logged"
        );
        let all = search(dir.path(), &SearchFilter::default()).unwrap();
        let repair = all.iter().find(|r| r.is_maintenance()).unwrap();
        assert_eq!(repair.seq, 5);
        assert_eq!(
            repair.fingerprint,
            format!(
                "pgveil:repair removed torn final line: {removed} bytes at offset {good_len} of segment-000001.jsonl"
            )
        );
    }
}

/// A log of several segments, with periodic checkpoints, for the tampering cases.
pub(super) fn fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    build_log(dir.path(), 30, 3000, 4);
    dir
}

fn record_line_index(lines: &[String], seq: u64) -> usize {
    let prefix = format!("{{\"seq\":{seq},");
    lines.iter().position(|l| l.starts_with(&prefix)).unwrap()
}

/// (segment number, seq of first record) of a segment that has at least 3 records.
fn segment_of(dir: &Path, n: u64) -> (Vec<String>, u64) {
    let l = lines(&seg(dir, n));
    let first = l
        .iter()
        .find_map(|x| match parse_line(x.as_bytes()).unwrap() {
            LogLine::Record(r) => Some(r.seq),
            LogLine::Checkpoint(_) => None,
        })
        .unwrap();
    (l, first)
}

#[test]
fn rotation_by_size_and_fixture_is_valid() {
    let dir = fixture();
    let s = verify(dir.path()).unwrap();
    assert!(s.segments >= 4, "{s}");
    assert_eq!(s.records, 30);
    assert_eq!(s.unsigned_tail, 0);
    let n = s.segments;
    for k in 1..n {
        let l = lines(&seg(dir.path(), k));
        let last = l.last().unwrap();
        assert!(
            last.contains("\"reason\":\"rotate\""),
            "segment {k} closes with rotate"
        );
        assert!(last.contains(&format!("\"segment\":{k},")));
        let size = std::fs::metadata(seg(dir.path(), k)).unwrap().len();
        assert!(size < 3000 + 2000, "segment {k} is {size} bytes");
    }
    // Periodic checkpoints by count.
    assert!(s.checkpoints >= 30 / 4);
    // Restart continues the last segment and the chain.
    rt().block_on(async {
        let mut o = opts(dir.path());
        o.segment_max_bytes = 3000;
        let log = AuditLog::open(o).unwrap();
        assert_eq!(log.append(draft_n(31)).await.unwrap(), 31);
        log.shutdown().await;
    });
    let s2 = verify(dir.path()).unwrap();
    assert_eq!(s2.records, 31);
}

pub(super) fn expect_failure(dir: &Path, segment: u64, seq: Option<u64>, reason_part: &str) {
    let f = verify(dir).unwrap_err();
    assert_eq!(f.segment, segment_name(segment), "{f}");
    assert_eq!(f.seq, seq, "{f}");
    assert!(f.reason.contains(reason_part), "{f}");
}

#[test]
fn tampering_is_detected() {
    let base = fixture();
    let (seg2, first2) = segment_of(base.path(), 2);
    let s = verify(base.path()).unwrap();
    let last = s.segments;

    // Edited field.
    let d = copy_dir(base.path());
    let mut l = seg2.clone();
    let i = record_line_index(&l, first2 + 1);
    l[i] = l[i].replacen("\"rows\":1,", "\"rows\":2,", 1);
    write_lines(&seg(d.path(), 2), &l);
    expect_failure(
        d.path(),
        2,
        Some(first2 + 1),
        "hash mismatch (record was modified)",
    );
    let f = verify(d.path()).unwrap_err();
    assert_eq!(
        f.to_string(),
        format!(
            "segment-000002.jsonl seq {}: hash mismatch (record was modified)",
            first2 + 1
        )
    );

    // Deleted record.
    let d = copy_dir(base.path());
    let mut l = seg2.clone();
    l.remove(record_line_index(&l, first2 + 1));
    write_lines(&seg(d.path(), 2), &l);
    expect_failure(d.path(), 2, Some(first2 + 2), "sequence break");

    // Inserted (duplicated) record.
    let d = copy_dir(base.path());
    let mut l = seg2.clone();
    let i = record_line_index(&l, first2);
    l.insert(i + 1, l[i].clone());
    write_lines(&seg(d.path(), 2), &l);
    expect_failure(d.path(), 2, Some(first2), "sequence break");

    // Reordered records.
    let d = copy_dir(base.path());
    let mut l = seg2.clone();
    let i = record_line_index(&l, first2);
    let j = record_line_index(&l, first2 + 1);
    l.swap(i, j);
    write_lines(&seg(d.path(), 2), &l);
    expect_failure(d.path(), 2, Some(first2 + 1), "sequence break");

    // Edited record with the whole chain recomputed: only checkpoints catch it.
    let d = copy_dir(base.path());
    let mut prev = GENESIS.to_string();
    let mut first_cp_after = None;
    for k in 1..=last {
        let mut l = lines(&seg(d.path(), k));
        for line in l.iter_mut() {
            if let LogLine::Record(r) = parse_line(line.as_bytes()).unwrap() {
                let mut dr = r.to_draft();
                if r.seq == first2 {
                    dr.user = "mallory".into();
                }
                let sealed = seal(&dr, &r.context, r.seq, &prev).unwrap();
                prev = sealed.hash.clone();
                *line = sealed.line.trim_end().to_string();
            } else if k >= 2 && first_cp_after.is_none() {
                if let LogLine::Checkpoint(c) = parse_line(line.as_bytes()).unwrap() {
                    if c.seq >= first2 {
                        first_cp_after = Some((k, c.seq));
                    }
                }
            }
        }
        write_lines(&seg(d.path(), k), &l);
    }
    let (cp_seg, cp_seq) = first_cp_after.unwrap();
    expect_failure(
        d.path(),
        cp_seg,
        Some(cp_seq),
        "checkpoint head does not match",
    );

    // Edited checkpoint.
    let d = copy_dir(base.path());
    let mut l = seg2.clone();
    let ci = l
        .iter()
        .position(|x| x.starts_with("{\"checkpoint\""))
        .unwrap();
    let cp = match parse_line(l[ci].as_bytes()).unwrap() {
        LogLine::Checkpoint(c) => c,
        LogLine::Record(_) => unreachable!(),
    };
    l[ci] = l[ci]
        .replacen("\"reason\":\"periodic\"", "\"reason\":\"shutdown\"", 1)
        .replacen("\"reason\":\"rotate\"", "\"reason\":\"shutdown\"", 1);
    write_lines(&seg(d.path(), 2), &l);
    expect_failure(d.path(), 2, Some(cp.seq), "checkpoint signature invalid");

    // Forged checkpoint (signed with another key), inserted after a record.
    let d = copy_dir(base.path());
    let mut l = seg2.clone();
    let i = record_line_index(&l, first2);
    let rec = match parse_line(l[i].as_bytes()).unwrap() {
        LogLine::Record(r) => r,
        LogLine::Checkpoint(_) => unreachable!(),
    };
    let forged = Checkpoint::sign(
        first2,
        &rec.hash,
        2,
        CheckpointReason::Periodic,
        &SigningKey::from_bytes(&[1u8; 32]),
    );
    l.insert(i + 1, forged.to_line().unwrap().trim_end().to_string());
    write_lines(&seg(d.path(), 2), &l);
    expect_failure(d.path(), 2, Some(first2), "checkpoint signature invalid");

    // Wrong public key.
    let f = verify_dir(
        base.path(),
        &SigningKey::from_bytes(&[2u8; 32]).verifying_key(),
    )
    .unwrap_err();
    assert!(f.reason.contains("signature invalid"), "{f}");

    // First segment removed.
    let d = copy_dir(base.path());
    std::fs::remove_file(seg(d.path(), 1)).unwrap();
    expect_failure(d.path(), 2, None, "segment-000001.jsonl is missing");

    // Middle segment removed.
    let d = copy_dir(base.path());
    std::fs::remove_file(seg(d.path(), 2)).unwrap();
    expect_failure(d.path(), 3, None, "segment segment-000002.jsonl is missing");

    // Last segment removed.
    let d = copy_dir(base.path());
    std::fs::remove_file(seg(d.path(), last)).unwrap();
    expect_failure(
        d.path(),
        last - 1,
        None,
        "is missing (last segment removed)",
    );

    // Middle segment removed and the later ones renamed to close the gap.
    let d = copy_dir(base.path());
    std::fs::remove_file(seg(d.path(), 2)).unwrap();
    for k in 3..=last {
        std::fs::rename(seg(d.path(), k), seg(d.path(), k - 1)).unwrap();
    }
    let f = verify(d.path()).unwrap_err();
    assert_eq!(f.segment, segment_name(2), "{f}");

    // Closing checkpoint removed.
    let d = copy_dir(base.path());
    let mut l = seg2.clone();
    l.pop();
    write_lines(&seg(d.path(), 2), &l);
    expect_failure(
        d.path(),
        2,
        None,
        "does not end with a signed rotate checkpoint",
    );

    // Trailing records of a closed segment removed (with its rotate checkpoint kept).
    let d = copy_dir(base.path());
    let mut l = seg2.clone();
    let cp = l.pop().unwrap();
    l.pop();
    l.push(cp);
    write_lines(&seg(d.path(), 2), &l);
    assert!(verify(d.path()).is_err());

    // Garbage in the middle of a segment is not called torn.
    let d = copy_dir(base.path());
    let mut l = seg2.clone();
    l.insert(1, "garbage".into());
    write_lines(&seg(d.path(), 2), &l);
    let f = verify(d.path()).unwrap_err();
    assert!(f.reason.contains("line 2: not a valid record"), "{f}");
}

#[test]
fn rename_dir_away_fails_closed_and_resumes() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("audit");
    let moved = parent.path().join("audit-moved");
    rt().block_on(async {
        let log = AuditLog::open(opts(&dir)).unwrap();
        assert_eq!(log.append(draft_n(1)).await.unwrap(), 1);
        std::fs::rename(&dir, &moved).unwrap();
        let e = log.append(draft_n(2)).await.unwrap_err();
        assert!(matches!(e, AuditError::Unavailable(_)), "{e}");
        assert_eq!(e.sqlstate(), "58030");
        // A new, different directory at the same path is not written either.
        std::fs::create_dir(&dir).unwrap();
        assert!(matches!(
            log.append(draft_n(2)).await,
            Err(AuditError::Unavailable(_))
        ));
        std::fs::remove_dir(&dir).unwrap();
        std::fs::rename(&moved, &dir).unwrap();
        assert_eq!(
            log.append(draft_n(3)).await.unwrap(),
            2,
            "chain resumes after the last durable record"
        );
        assert!(log.stats().failures >= 2);
        log.shutdown().await;
    });
    let s = verify(&dir).unwrap();
    assert_eq!((s.records, s.last_seq), (2, 2));
}

#[test]
fn removed_current_segment_continues_in_a_fresh_one() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let log = AuditLog::open(opts(dir.path())).unwrap();
        log.append(draft_n(1)).await.unwrap();
        log.append(draft_n(2)).await.unwrap();
        std::fs::remove_file(seg(dir.path(), 1)).unwrap();
        assert_eq!(
            log.append(draft_n(3)).await.unwrap(),
            4,
            "seq 3 is the maintenance record"
        );
        log.shutdown().await;
    });
    let all = search(dir.path(), &SearchFilter::default()).unwrap();
    assert!(
        all[0].is_maintenance()
            && all[0]
                .fingerprint
                .contains("segment-000001.jsonl was removed")
    );
    // verify reports the lost segment.
    expect_failure(dir.path(), 2, None, "segment-000001.jsonl is missing");
}

#[test]
fn periodic_checkpoint_by_time() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let mut o = opts(dir.path());
        o.checkpoint_interval = Duration::from_millis(100);
        let log = AuditLog::open(o).unwrap();
        log.append(draft_n(1)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(log.stats().checkpoints >= 1);
        let s = verify(dir.path()).unwrap();
        assert_eq!(s.unsigned_tail, 0);
        log.shutdown().await;
    });
}

fn rec(
    user: &str,
    minute: u32,
    subjects: Subjects,
    columns: Vec<ColumnAccess>,
    outcome: Outcome,
    kind: StatementKind,
) -> RecordDraft {
    let mut d = draft(user, "0");
    d.time = Utc.with_ymd_and_hms(2026, 2, 1, 9, minute, 0).unwrap();
    d.subjects = subjects;
    d.columns = columns;
    d.outcome = outcome;
    d.kind = kind;
    d.roles = vec![
        user.to_string(),
        if user == "carol" {
            "billing".into()
        } else {
            "clinician".into()
        },
    ];
    d
}

fn subj(table: &str, ids: &[&str]) -> Subjects {
    let mut m = BTreeMap::new();
    m.insert(table.to_string(), ids.iter().collect());
    Subjects::Known(m)
}

fn report_fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let ssn = |a| ColumnAccess::new("public.patients.ssn", a);
    let bd = |a| ColumnAccess::new("public.patients.birth_date", a);
    let diag = |a| ColumnAccess::new("clinic.visits.diagnosis", a);
    let drafts = vec![
        // 1: alice reads 17's ssn.
        rec(
            "alice",
            1,
            subj("public.patients", &["17", "18"]),
            vec![ssn(Access::Plaintext)],
            Outcome::Ok,
            StatementKind::Select,
        ),
        // 2: carol reads 17 masked.
        rec(
            "carol",
            2,
            subj("public.patients", &["17"]),
            vec![ssn(Access::Masked), bd(Access::Masked)],
            Outcome::Ok,
            StatementKind::Select,
        ),
        // 3: write without RETURNING: not a disclosure.
        rec(
            "alice",
            3,
            subj("public.patients", &["17"]),
            vec![ssn(Access::Write)],
            Outcome::Ok,
            StatementKind::Update,
        ),
        // 4: refused: not a disclosure.
        rec(
            "carol",
            4,
            subj("public.patients", &["17"]),
            vec![ssn(Access::Denied)],
            Outcome::Refused,
            StatementKind::Select,
        ),
        // 5: subjects unknown on patients.
        rec(
            "bob",
            5,
            Subjects::Unknown("aggregate without subject column".into()),
            vec![bd(Access::Plaintext)],
            Outcome::Ok,
            StatementKind::Select,
        ),
        // 6: other patient.
        rec(
            "alice",
            6,
            subj("public.patients", &["99"]),
            vec![ssn(Access::Plaintext)],
            Outcome::Ok,
            StatementKind::Select,
        ),
        // 7: other schema table.
        rec(
            "bob",
            7,
            subj("clinic.visits", &["17"]),
            vec![diag(Access::Plaintext)],
            Outcome::Ok,
            StatementKind::Select,
        ),
        // 8: earlier time, later seq: report orders by time.
        rec(
            "alice",
            0,
            subj("public.patients", &["17"]),
            vec![bd(Access::Plaintext)],
            Outcome::Ok,
            StatementKind::Select,
        ),
    ];
    rt().block_on(async {
        let log = AuditLog::open(opts(dir.path())).unwrap();
        for (i, mut d) in drafts.into_iter().enumerate() {
            if i == 6 {
                d.tables = vec!["clinic.visits".into()];
            }
            log.append(d).await.unwrap();
        }
        log.shutdown().await;
    });
    dir
}

fn seqs(v: &[AuditRecord]) -> Vec<u64> {
    v.iter().map(|r| r.seq).collect()
}

#[test]
fn search_filters() {
    let dir = report_fixture();
    let p = dir.path();
    let f = |args: cli::SearchArgs| seqs(&search(p, &cli::build_filter(&args).unwrap()).unwrap());
    let a = cli::SearchArgs::default;
    assert_eq!(f(a()).len(), 8);
    assert_eq!(
        f(cli::SearchArgs {
            user: Some("alice".into()),
            ..a()
        }),
        vec![1, 3, 6, 8]
    );
    assert_eq!(
        f(cli::SearchArgs {
            role: Some("billing".into()),
            ..a()
        }),
        vec![2, 4]
    );
    assert_eq!(
        f(cli::SearchArgs {
            table: Some("visits".into()),
            ..a()
        }),
        Vec::<u64>::new()
    );
    assert_eq!(
        f(cli::SearchArgs {
            table: Some("clinic.visits".into()),
            ..a()
        }),
        vec![7]
    );
    assert_eq!(
        f(cli::SearchArgs {
            table: Some("patients".into()),
            ..a()
        }),
        vec![1, 2, 3, 4, 5, 6, 8]
    );
    assert_eq!(
        f(cli::SearchArgs {
            column: Some("birth_date".into()),
            ..a()
        }),
        vec![2, 5, 8]
    );
    assert_eq!(
        f(cli::SearchArgs {
            column: Some("patients.BIRTH_DATE".into()),
            ..a()
        }),
        vec![2, 5, 8]
    );
    assert_eq!(
        f(cli::SearchArgs {
            column: Some("public.patients.ssn".into()),
            ..a()
        }),
        vec![1, 2, 3, 4, 6]
    );
    assert_eq!(
        f(cli::SearchArgs {
            column: Some("visits.diagnosis".into()),
            ..a()
        }),
        Vec::<u64>::new()
    );
    assert_eq!(
        f(cli::SearchArgs {
            column: Some("clinic.visits.diagnosis".into()),
            ..a()
        }),
        vec![7]
    );
    assert_eq!(
        f(cli::SearchArgs {
            subject: Some("patients:17".into()),
            ..a()
        }),
        vec![1, 2, 3, 4, 8]
    );
    assert_eq!(
        f(cli::SearchArgs {
            subject: Some("public.patients:18".into()),
            ..a()
        }),
        vec![1]
    );
    assert_eq!(
        f(cli::SearchArgs {
            outcome: Some("refused".into()),
            ..a()
        }),
        vec![4]
    );
    assert_eq!(
        f(cli::SearchArgs {
            since: Some("2026-02-01T09:02:00Z".into()),
            until: Some("2026-02-01T10:05:00+01:00".into()),
            ..a()
        }),
        vec![2, 3, 4, 5]
    );
    // Errors are one line.
    for bad in [
        cli::SearchArgs {
            since: Some("yesterday".into()),
            ..a()
        },
        cli::SearchArgs {
            subject: Some("patients".into()),
            ..a()
        },
        cli::SearchArgs {
            outcome: Some("maybe".into()),
            ..a()
        },
        cli::SearchArgs {
            column: Some("a.b.c.d".into()),
            ..a()
        },
        cli::SearchArgs {
            table: Some("a.b.c".into()),
            ..a()
        },
    ] {
        let e = cli::build_filter(&bad).unwrap_err();
        assert!(!e.contains('\n') && !e.is_empty(), "{e}");
    }
    // Text and JSON output.
    let filter = cli::build_filter(&cli::SearchArgs {
        user: Some("carol".into()),
        ..a()
    })
    .unwrap();
    let mut out = Vec::new();
    assert_eq!(cli::search(p, &filter, true, &mut out).unwrap(), 2);
    let stored = lines(&seg(p, 1));
    let out = String::from_utf8(out).unwrap();
    let got: Vec<&str> = out.lines().collect();
    assert_eq!(
        got,
        vec![
            stored[record_line_index(&stored, 2)].as_str(),
            stored[record_line_index(&stored, 4)].as_str()
        ]
    );
    let mut out = Vec::new();
    cli::search(p, &filter, false, &mut out).unwrap();
    let out = String::from_utf8(out).unwrap();
    let first = out.lines().next().unwrap();
    assert!(first.starts_with("2026-02-01T09:02:00.000000Z seq 2 user carol end user - purpose - roles carol,billing select ok tables public.patients columns public.patients.ssn(masked),public.patients.birth_date(masked) rows 1 subjects public.patients:[17]"), "{first}");
}

#[test]
fn report_accounting_of_disclosures() {
    let dir = report_fixture();
    let r = report(dir.path(), ("patients", "17"), None, None).unwrap();
    assert_eq!(r.table, "public.patients");
    let d: Vec<u64> = r.disclosures.iter().map(|e| e.record.seq).collect();
    assert_eq!(
        d,
        vec![2, 1, 8],
        "newest first; writes and refusals excluded"
    );
    assert_eq!(r.disclosures[0].columns.len(), 2);
    let p: Vec<u64> = r.possible.iter().map(|e| e.record.seq).collect();
    assert_eq!(p, vec![5]);
    let since = cli::parse_time("2026-02-01T09:01:00Z").unwrap();
    let r2 = report(dir.path(), ("public.patients", "17"), Some(since), None).unwrap();
    assert_eq!(
        r2.disclosures
            .iter()
            .map(|e| e.record.seq)
            .collect::<Vec<_>>(),
        vec![2, 1]
    );

    let subject = cli::parse_subject("patients:17").unwrap();
    let mut out = Vec::new();
    assert_eq!(
        cli::report(dir.path(), &subject, None, None, false, &mut out).unwrap(),
        3
    );
    let text = String::from_utf8(out).unwrap();
    assert!(text.starts_with("Accounting of disclosures for public.patients id 17 (whole log): 3 disclosure(s), newest first\n"), "{text}");
    assert!(text.contains("user carol  end user -  purpose -  roles carol,billing  from 10.0.0.5:51234  application \"psql\"  select  columns public.patients.ssn (masked),public.patients.birth_date (masked)"), "{text}");
    assert!(
        text.contains(
            "1 statement(s) read protected columns of public.patients without recorded subjects"
        ),
        "{text}"
    );
    assert!(
        text.contains("subjects unknown: aggregate without subject column"),
        "{text}"
    );
    let mut out = Vec::new();
    cli::report(dir.path(), &subject, None, None, true, &mut out).unwrap();
    let json = String::from_utf8(out).unwrap();
    let got: Vec<u64> = json
        .lines()
        .map(|l| match parse_line(l.as_bytes()).unwrap() {
            LogLine::Record(r) => r.seq,
            LogLine::Checkpoint(_) => panic!(),
        })
        .collect();
    assert_eq!(got, vec![2, 1, 8, 5]);
    // visits subject in another schema.
    let r3 = report(dir.path(), ("clinic.visits", "17"), None, None).unwrap();
    assert_eq!(r3.disclosures.len(), 1);
    assert!(r3.possible.is_empty());
}

#[test]
fn records_contain_only_what_the_caller_gave() {
    let dir = tempfile::tempdir().unwrap();
    let d = draft("alice", "17");
    rt().block_on(async {
        let log = AuditLog::open(opts(dir.path())).unwrap();
        log.append(d.clone()).await.unwrap();
        log.shutdown().await;
    });
    let mut allowed: HashSet<String> = HashSet::new();
    for s in [
        &d.session,
        &d.client,
        &d.user,
        &d.application,
        &d.fingerprint,
    ] {
        allowed.insert(s.clone());
    }
    allowed.extend(d.roles.iter().cloned());
    allowed.extend(d.tables.iter().cloned());
    for c in &d.columns {
        allowed.insert(c.column.clone());
        allowed.insert(c.access.as_str().into());
    }
    if let Subjects::Known(m) = &d.subjects {
        for ids in m.values() {
            allowed.extend(ids.iter().map(str::to_string));
        }
    }
    allowed.insert("2026-01-05T10:00:00.000000Z".into());
    allowed.insert(d.kind.as_str().into());
    allowed.insert(d.outcome.as_str().into());
    allowed.insert(GENESIS.into());
    let l = lines(&seg(dir.path(), 1));
    assert_eq!(l.len(), 2, "one record and the shutdown checkpoint");
    let v: serde_json::Value = serde_json::from_str(&l[0]).unwrap();
    let hash = v["hash"].as_str().unwrap().to_string();
    allowed.insert(hash);
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::String(s) => out.push(s.clone()),
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            serde_json::Value::Object(o) => o.values().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let mut strings = Vec::new();
    walk(&v, &mut strings);
    for s in strings {
        assert!(allowed.contains(&s), "unexpected value {s:?} in record");
    }
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 20);
}

#[test]
fn cli_verify_and_keys() {
    let dir = fixture();
    let pk = key().verifying_key();
    let (code, line) = cli::verify(dir.path(), &pk);
    assert_eq!(code, 0, "{line}");
    assert!(line.starts_with("audit log intact: "), "{line}");
    assert!(!line.contains('\n'));
    // The key file as `pgveil keys init` writes it (base64 of the 32 bytes).
    let pub_file = dir.path().join("audit.pub");
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, pk.to_bytes());
    std::fs::write(&pub_file, format!("{b64}\n")).unwrap();
    let (code, line) = cli::verify_with_key_file(dir.path(), &pub_file);
    assert_eq!(code, 0, "{line}");
    std::fs::write(&pub_file, "nope").unwrap();
    let (code, line) = cli::verify_with_key_file(dir.path(), &pub_file);
    assert_eq!(code, 2, "{line}");
    std::fs::remove_file(&pub_file).unwrap();
    std::fs::remove_file(seg(dir.path(), 1)).unwrap();
    let (code, line) = cli::verify(dir.path(), &pk);
    assert_eq!(code, 1);
    assert!(
        line.starts_with("audit log verification failed: segment-000002.jsonl: "),
        "{line}"
    );
    let (code, _) = cli::verify(&dir.path().join("missing"), &pk);
    assert_eq!(code, 1);
    let key_file = dir.path().join("audit.pub");
    std::fs::write(&key_file, format!("{b64}\n")).unwrap();
    let (code, line) = cli::verify_with_key_file(dir.path(), &key_file);
    assert_eq!(code, 1, "{line}");
    let (code, line) = cli::verify_with_key_file(dir.path(), &dir.path().join("nope.pub"));
    assert_eq!(code, 2);
    assert!(
        line.contains("nope.pub") && line.contains("does not exist"),
        "{line}"
    );
}

#[test]
fn audit_log_is_send_sync_clone() {
    fn check<T: Send + Sync + Clone + 'static>() {}
    check::<AuditLog>();
}

#[test]
fn restart_completes_an_interrupted_rotation() {
    // Crash after the next segment was created but before the rotate checkpoint.
    let dir = tempfile::tempdir().unwrap();
    build_log(dir.path(), 3, AuditOptions::DEFAULT_SEGMENT_MAX_BYTES, 1000);
    let l = lines(&seg(dir.path(), 1));
    write_lines(&seg(dir.path(), 1), &l[..l.len() - 1]);
    std::fs::write(seg(dir.path(), 2), b"").unwrap();
    expect_failure(
        dir.path(),
        1,
        None,
        "does not end with a signed rotate checkpoint",
    );
    rt().block_on(async {
        let log = AuditLog::open(opts(dir.path())).unwrap();
        assert_eq!(log.append(draft_n(4)).await.unwrap(), 4);
        log.shutdown().await;
    });
    let s = verify(dir.path()).unwrap();
    assert_eq!((s.segments, s.records), (2, 4));
    assert!(lines(&seg(dir.path(), 2))[0].starts_with("{\"seq\":4,"));

    // A rotate checkpoint whose (empty) successor is gone: the restart creates it.
    std::fs::remove_file(seg(dir.path(), 2)).unwrap();
    let l = lines(&seg(dir.path(), 1));
    assert!(l.last().unwrap().contains("\"reason\":\"rotate\""));
    let d = tempfile::tempdir().unwrap();
    std::fs::copy(seg(dir.path(), 1), seg(d.path(), 1)).unwrap();
    expect_failure(
        d.path(),
        1,
        None,
        "segment-000002.jsonl is missing (last segment removed)",
    );
    rt().block_on(async {
        let log = AuditLog::open(opts(d.path())).unwrap();
        assert_eq!(log.append(draft_n(4)).await.unwrap(), 4);
        log.shutdown().await;
    });
    assert_eq!(verify(d.path()).unwrap().records, 4);
}

#[test]
fn truncated_current_segment_continues_in_a_fresh_one() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let log = AuditLog::open(opts(dir.path())).unwrap();
        log.append(draft_n(1)).await.unwrap();
        log.append(draft_n(2)).await.unwrap();
        let l = lines(&seg(dir.path(), 1));
        write_lines(&seg(dir.path(), 1), &l[..1]);
        assert_eq!(log.append(draft_n(3)).await.unwrap(), 4);
        log.shutdown().await;
    });
    let l2 = lines(&seg(dir.path(), 2));
    assert!(l2[0].contains("pgveil:segment-lost segment-000001.jsonl shrank from"));
    // The shrunk segment lacks its record 2 and its closing checkpoint.
    let f = verify(dir.path()).unwrap_err();
    assert_eq!(f.segment, "segment-000001.jsonl", "{f}");
}

#[test]
fn concurrent_appends_with_rotation_and_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let mut o = opts(dir.path());
        o.segment_max_bytes = 4000;
        o.checkpoint_every = 7;
        let log = AuditLog::open(o).unwrap();
        let mut handles = Vec::new();
        for t in 0..16u64 {
            let log = log.clone();
            handles.push(tokio::spawn(async move {
                for i in 0..20u64 {
                    log.append(draft_n(t * 100 + i)).await.unwrap();
                }
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
        log.shutdown().await;
    });
    let s = verify(dir.path()).unwrap();
    assert_eq!(s.records, 320);
    assert!(s.segments > 10, "{s}");
    assert_eq!(s.unsigned_tail, 0);
}

#[test]
fn leftover_of_a_failed_write_is_cut_before_the_next_batch() {
    use std::io::Write as _;
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let log = AuditLog::open(opts(dir.path())).unwrap();
        log.append(draft_n(1)).await.unwrap();
        // What a write that failed half-way (and could not be truncated) leaves behind.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(seg(dir.path(), 1))
            .unwrap();
        f.write_all(b"{\"seq\":2,\"time\":\"2026").unwrap();
        drop(f);
        assert_eq!(log.append(draft_n(2)).await.unwrap(), 2);
        log.shutdown().await;
    });
    let s = verify(dir.path()).unwrap();
    assert_eq!(s.records, 2);
    assert!(!std::fs::read_to_string(seg(dir.path(), 1))
        .unwrap()
        .contains("\"time\":\"2026{"));
}

#[test]
fn one_writer_per_directory() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let log = AuditLog::open(opts(dir.path())).unwrap();
        let e = AuditLog::open(opts(dir.path())).unwrap_err();
        assert!(
            e.to_string().contains("in use by another audit writer"),
            "{e}"
        );
        log.shutdown().await;
        let again = AuditLog::open(opts(dir.path())).unwrap();
        again.shutdown().await;
    });
}

/// Appends on a current-thread runtime (how sessions run) commit on the caller's thread while
/// the writer is idle; a commit slower than the limit sends later appends through the writer
/// thread. Either way the chain is whole.
#[test]
fn idle_writer_commits_on_the_callers_thread_until_a_commit_is_slow() {
    let current = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let stats = current().block_on(async {
        let log = AuditLog::open(opts(dir.path())).unwrap();
        for i in 1..=5 {
            assert_eq!(log.append(draft_n(i)).await.unwrap(), i);
        }
        let stats = log.stats();
        log.shutdown().await;
        stats
    });
    assert_eq!(stats.direct_commits, 5, "{stats:?}");
    assert_eq!(verify(dir.path()).unwrap().records, 5);

    let dir = tempfile::tempdir().unwrap();
    let stats = current().block_on(async {
        let mut o = opts(dir.path());
        o.direct_commit_limit = std::time::Duration::ZERO;
        let log = AuditLog::open(o).unwrap();
        for i in 1..=5 {
            assert_eq!(log.append(draft_n(i)).await.unwrap(), i);
        }
        let stats = log.stats();
        log.shutdown().await;
        stats
    });
    assert_eq!(stats.direct_commits, 1, "paused after the first: {stats:?}");
    assert_eq!(stats.records_written, 5);
    assert_eq!(verify(dir.path()).unwrap().records, 5);
}

/// Sessions on several current-thread runtimes append at once: some commit on their own
/// thread, the others queue for the writer thread; every seq is given once, in order per
/// session, and the log verifies.
#[test]
fn direct_and_queued_commits_interleave_into_one_chain() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(opts(dir.path())).unwrap();
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let tasks: Vec<_> = (0..4u64)
                        .map(|k| {
                            let log = log.clone();
                            tokio::spawn(async move {
                                let mut seqs = Vec::new();
                                for i in 0..25 {
                                    seqs.push(
                                        log.append(draft_n(t * 10_000 + k * 100 + i))
                                            .await
                                            .unwrap(),
                                    );
                                }
                                seqs
                            })
                        })
                        .collect();
                    let mut all = Vec::new();
                    for task in tasks {
                        let seqs = task.await.unwrap();
                        assert!(seqs.windows(2).all(|w| w[0] < w[1]));
                        all.extend(seqs);
                    }
                    all
                })
            })
        })
        .collect();
    let mut all: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    all.sort_unstable();
    assert_eq!(all, (1..=400).collect::<Vec<u64>>());
    let stats = log.stats();
    assert_eq!(stats.records_written, 400);
    assert!(stats.direct_commits >= 1, "{stats:?}");
    rt().block_on(log.shutdown());
    let summary = verify(dir.path()).unwrap();
    assert_eq!(summary.records, 400);
    assert_eq!(summary.unsigned_tail, 0);
}
