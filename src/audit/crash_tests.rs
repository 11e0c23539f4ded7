//! Crash states of preallocated segments: a zero tail after the content, torn writes inside
//! it, bytes hidden behind it, a prepared successor left by an interrupted rotation.

use std::path::Path;

use super::tests::{build_log, draft_n, expect_failure, fixture, lines, opts, rt, seg, verify};
use super::*;

/// A shut-down log of 4 records with its segment given back a zero tail, as a crash leaves
/// the preallocated segment; returns the content length.
fn with_zero_tail(dir: &Path, tail: usize) -> usize {
    build_log(dir, 4, AuditOptions::DEFAULT_SEGMENT_MAX_BYTES, 1000);
    let path = seg(dir, 1);
    let mut content = std::fs::read(&path).unwrap();
    let len = content.len();
    content.resize(len + tail, 0);
    std::fs::write(&path, &content).unwrap();
    len
}

fn put(path: &Path, at: usize, bytes: &[u8]) {
    use std::os::unix::fs::FileExt as _;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, at as u64).unwrap();
}

#[test]
fn a_zero_tail_is_not_content() {
    let dir = tempfile::tempdir().unwrap();
    with_zero_tail(dir.path(), 100_000);
    let s = verify(dir.path()).unwrap();
    assert_eq!((s.records, s.unsigned_tail), (4, 0));
    assert_eq!(
        search(dir.path(), &SearchFilter::default()).unwrap().len(),
        4
    );
    rt().block_on(async {
        let log = AuditLog::open(opts(dir.path())).unwrap();
        assert_eq!(log.stats().last_seq, 4, "no repair needed");
        assert_eq!(log.append(draft_n(5)).await.unwrap(), 5);
        log.shutdown().await;
    });
    assert_eq!(verify(dir.path()).unwrap().records, 5);
    assert!(!std::fs::read(seg(dir.path(), 1)).unwrap().contains(&0));
}

#[test]
fn torn_writes_inside_the_zero_tail_are_reported_and_repaired() {
    let secret = "SECRET-SSN-987-65-4321";
    // (where the torn bytes start after the content, what they are)
    let cases: [(usize, Vec<u8>); 3] = [
        // The first page of the write reached the disk, the rest did not.
        (0, format!("{{\"seq\":5,\"user\":\"{secret}").into_bytes()),
        // A later page reached the disk, the first did not.
        (8192, format!("{secret}\"}}\n{{\"seq\":7").into_bytes()),
        // Both, with a hole between.
        (0, {
            let mut v = format!("{{\"seq\":5,\"user\":\"{secret}").into_bytes();
            v.resize(5000, 0);
            v.extend_from_slice(b"ss\"}\n");
            v
        }),
    ];
    for (case, (offset, torn)) in cases.into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let good_len = with_zero_tail(dir.path(), 64 * 1024);
        put(&seg(dir.path(), 1), good_len + offset, &torn);
        let f = verify(dir.path()).unwrap_err();
        assert_eq!(
            (f.segment.as_str(), f.reason.as_str()),
            (
                "segment-000001.jsonl",
                "torn final line (crash during write); the next start repairs it"
            ),
            "case {case}"
        );
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
        assert_eq!(verify(dir.path()).unwrap().records, 6, "case {case}");
        let bytes = std::fs::read(seg(dir.path(), 1)).unwrap();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(secret),
            "case {case}: the removed bytes are gone, never logged"
        );
        let repair = search(dir.path(), &SearchFilter::default()).unwrap()[4].clone();
        assert_eq!(
            repair.fingerprint,
            format!(
                "pgveil:repair removed torn final line: {} bytes at offset {good_len} of segment-000001.jsonl",
                offset + torn.len()
            ),
            "case {case}"
        );
    }
}

#[test]
fn bytes_hidden_behind_the_zero_tail_are_reported() {
    // Farther from the content than a torn write reaches: not a crash.
    let dir = tempfile::tempdir().unwrap();
    let len = with_zero_tail(dir.path(), 3 << 20);
    let at = len + (2 << 20);
    put(&seg(dir.path(), 1), at, b"{\"hidden\":1}\n");
    let f = verify(dir.path()).unwrap_err();
    assert_eq!(f.segment, "segment-000001.jsonl");
    assert!(
        f.reason.starts_with(&format!(
            "non-zero bytes at offsets {at}..={} after the end of the content at offset {len}",
            at + 12
        )),
        "{f}"
    );
    let e = AuditLog::open(opts(dir.path())).unwrap_err();
    assert!(
        matches!(&e, AuditError::Corrupt(m) if m.contains("farther than a torn write reaches")),
        "{e}"
    );

    // In a segment that is not the last, any non-zero byte after the content is reported.
    let dir = fixture();
    let path = seg(dir.path(), 1);
    let len = std::fs::metadata(&path).unwrap().len() as usize;
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.resize(len + 100, 0);
    bytes.push(b'x');
    std::fs::write(&path, &bytes).unwrap();
    expect_failure(
        dir.path(),
        1,
        None,
        &format!("non-zero bytes at offsets {}..={}", len + 100, len + 100),
    );
}

#[test]
fn a_crash_during_rotation_leaves_a_prepared_successor_that_the_restart_uses() {
    // The successor was renamed into place (zeros), the rotate checkpoint never written.
    let dir = tempfile::tempdir().unwrap();
    with_zero_tail(dir.path(), 4096);
    std::fs::write(seg(dir.path(), 2), vec![0u8; 64 * 1024]).unwrap();
    expect_failure(
        dir.path(),
        1,
        None,
        "does not end with a signed rotate checkpoint",
    );
    rt().block_on(async {
        let log = AuditLog::open(opts(dir.path())).unwrap();
        assert_eq!(log.append(draft_n(5)).await.unwrap(), 5);
        log.shutdown().await;
    });
    let s = verify(dir.path()).unwrap();
    assert_eq!((s.segments, s.records), (2, 5));
    assert!(lines(&seg(dir.path(), 2))[0].starts_with("{\"seq\":5,"));
    assert!(!std::fs::read(seg(dir.path(), 1)).unwrap().contains(&0));
}
