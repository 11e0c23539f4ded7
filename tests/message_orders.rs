//! Issue #10: every message order the drivers of tests/drivers/ use, at the protocol
//! level, with per-column result formats. Recorded from the drivers themselves:
//!
//! | order | who |
//! |---|---|
//! | Parse, Describe S, Flush · Bind, Execute, Sync | asyncpg first execution, postgres.js |
//! | Bind, Execute, Sync (statement described before) | asyncpg, pgJDBC, postgres.js cached |
//! | Parse, Describe S, Sync · Bind, Execute, Sync | tokio-postgres, pgJDBC batches |
//! | Parse, Describe S, Bind, Execute, Sync | postgres.js first query |
//! | Bind, Execute (max rows), Flush · Execute, Flush · Sync | postgres.js cursor |
//! | Parse "", Bind, Describe P, Execute, Sync | psycopg 3, node-postgres, pgJDBC |
//! | Parse "", Bind, Execute, Sync | pgJDBC |
//! | Parse S, Sync · Bind, Describe P, Execute, Sync | psycopg 3 prepared, node-postgres named |
//! | Bind, Describe P, Execute, Bind, Describe P, Execute, Sync, Flush | psycopg 3 pipeline, pgJDBC batch |
//! | Query | psql, psycopg2 |
//!
//! A Describe answered before the rows it describes (asyncpg: before the Bind that chooses
//! their formats) must not decide how another message's rows are decoded.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::OnceLock;

use common::*;

const SELECT: &str = "SELECT id, flag, born, name, n, note FROM wire WHERE id = $1";
const SELECT_FROM: &str =
    "SELECT id, flag, born, name, n, note FROM wire WHERE id >= $1 ORDER BY id";
/// The logical types pgveil shows for the columns of [`SELECT`].
const TYPE_OIDS: [u32; 6] = [23, 16, 1082, 25, 20, 25];

struct Setup {
    _dir: tempfile::TempDir,
    proxy: Proxy,
}

/// The `wire` table (two rows written through pgveil) and the proxy, shared by every test.
fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        secrets(["wire-name-secret-1", "wire-name-secret-2", "8765432109876543", "1987-06-05"]);
        secret(8765432109876543i64.to_be_bytes());
        cluster().psql(
            "DROP TABLE IF EXISTS wire; CREATE TABLE wire (id int PRIMARY KEY, flag bytea, born bytea, name bytea, n bytea, note text)",
        );
        let mut columns = String::new();
        for (column, ty, encryption) in [
            ("flag", "bool", "deterministic"),
            ("born", "date", "randomized"),
            ("name", "text", "randomized"),
            ("n", "int8", "randomized"),
        ] {
            columns.push_str(&column_toml("wire", column, ty, encryption, ""));
        }
        let dir = tempfile::tempdir().unwrap();
        let proxy = Proxy::start(&veil_config(dir.path(), "plaintext", &columns), dir.path());
        psql_script(
            proxy.port(),
            SUPERUSER,
            "INSERT INTO wire VALUES (1, true, '1987-06-05', 'wire-name-secret-1', 8765432109876543, 'plain one'),
                                     (2, false, '2024-02-29', 'wire-name-secret-2', -5, 'plain two');",
        )
        .unwrap();
        let stored = cluster().psql("SELECT count(*) FROM wire WHERE get_byte(name, 5) = 82 AND get_byte(flag, 5) = 68");
        assert_eq!(stored.trim(), "2", "the rows are stored as ciphertext");
        Setup { _dir: dir, proxy }
    })
}

fn days_since_2000(y: i32, m: u32, d: u32) -> i32 {
    let date = chrono::NaiveDate::from_ymd_opt(y, m, d).unwrap();
    (date - chrono::NaiveDate::from_ymd_opt(2000, 1, 1).unwrap()).num_days() as i32
}

/// Row `id`'s values, each in the format `results` asks for (as in Bind: none, one for
/// all, or one per column).
fn want(id: i32, results: &[i16]) -> Vec<Option<Vec<u8>>> {
    let (flag, born, name, n, note) = match id {
        1 => (
            true,
            (1987, 6, 5),
            "wire-name-secret-1",
            8765432109876543i64,
            "plain one",
        ),
        _ => (false, (2024, 2, 29), "wire-name-secret-2", -5, "plain two"),
    };
    let text: [Vec<u8>; 6] = [
        id.to_string().into(),
        if flag { "t" } else { "f" }.into(),
        format!("{:04}-{:02}-{:02}", born.0, born.1, born.2).into(),
        name.into(),
        n.to_string().into(),
        note.into(),
    ];
    let binary: [Vec<u8>; 6] = [
        id.to_be_bytes().to_vec(),
        vec![u8::from(flag)],
        days_since_2000(born.0, born.1, born.2)
            .to_be_bytes()
            .to_vec(),
        name.into(),
        n.to_be_bytes().to_vec(),
        note.into(),
    ];
    (0..6)
        .map(|i| {
            let format = match results.len() {
                0 => 0,
                1 => results[0],
                _ => results[i],
            };
            Some(if format == 1 {
                binary[i].clone()
            } else {
                text[i].clone()
            })
        })
        .collect()
}

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn flush() -> Vec<u8> {
    frame(b'H', &[])
}

/// Bind of `statement` to `portal` with `$1 = id` (binary when `binary_param`) and the
/// given result format codes.
fn bind(portal: &str, statement: &str, id: i32, binary_param: bool, results: &[i16]) -> Vec<u8> {
    let mut b = Vec::new();
    for name in [portal, statement] {
        b.extend_from_slice(name.as_bytes());
        b.push(0);
    }
    let param: Vec<u8> = if binary_param {
        id.to_be_bytes().to_vec()
    } else {
        id.to_string().into_bytes()
    };
    b.extend_from_slice(&1i16.to_be_bytes());
    b.extend_from_slice(&i16::from(binary_param).to_be_bytes());
    b.extend_from_slice(&1i16.to_be_bytes());
    b.extend_from_slice(&(param.len() as i32).to_be_bytes());
    b.extend_from_slice(&param);
    b.extend_from_slice(&(results.len() as i16).to_be_bytes());
    for f in results {
        b.extend_from_slice(&f.to_be_bytes());
    }
    frame(b'B', &b)
}

/// The DataRows of `msgs`, in order, are rows `ids` in the formats given for each.
fn assert_rows(msgs: &[Msg], rows: &[(i32, &[i16])]) {
    let data: Vec<&Msg> = msgs.iter().filter(|m| m.tag == b'D').collect();
    assert_eq!(data.len(), rows.len(), "DataRows in {}", tags(msgs));
    for (i, (msg, (id, results))) in data.iter().zip(rows).enumerate() {
        assert_eq!(
            msg.values(),
            want(*id, results),
            "row {i} (id {id}, formats {results:?}) of {}",
            tags(msgs)
        );
    }
}

/// A RowDescription shows the logical types, in the formats given.
fn assert_description(msg: &Msg, results: &[i16]) {
    assert_eq!(msg.tag, b'T');
    let fields = msg.fields();
    let types: Vec<u32> = fields.iter().map(|f| f.3).collect();
    assert_eq!(types, TYPE_OIDS);
    let formats: Vec<i16> = fields.iter().map(|f| f.4).collect();
    let wanted: Vec<i16> = (0..6)
        .map(|i| match results.len() {
            0 => 0,
            1 => results[0],
            _ => results[i],
        })
        .collect();
    assert_eq!(formats, wanted, "RowDescription formats");
}

async fn recv_n(raw: &mut Raw, n: usize) -> Vec<Msg> {
    let mut out = Vec::new();
    while out.len() < n {
        let m = raw.recv().await;
        if !matches!(m.tag, b'S' | b'N') {
            out.push(m);
        }
    }
    out
}

const BINARY: &[i16] = &[1];
const TEXT: &[i16] = &[0];
const MIXED: &[i16] = &[1, 0, 1, 0, 1, 0];
const MIXED_2: &[i16] = &[0, 1, 0, 1, 0, 1];

#[tokio::test(flavor = "multi_thread")]
async fn parse_describe_flush_then_bind_execute_sync_asyncpg() {
    let setup = setup();
    let mut raw = Raw::connect(setup.proxy.port()).await;
    // First execution of a new statement: described, flushed, then bound with binary
    // results, before any ReadyForQuery.
    raw.send(
        &[
            Raw::parse("s1", SELECT, &[]),
            Raw::describe(b'S', "s1"),
            flush(),
        ]
        .concat(),
    )
    .await;
    let described = recv_n(&mut raw, 3).await;
    assert_eq!(tags(&described), "1tT");
    assert_eq!(described[1].param_types(), vec![23]);
    assert_description(&described[2], &[]);
    for results in [BINARY, MIXED, TEXT, BINARY] {
        let msgs = raw
            .batch(&[
                bind("", "s1", 1, true, results),
                Raw::execute("", 0),
                Raw::sync(),
            ])
            .await;
        assert_eq!(tags(&msgs), "2DCZ");
        assert_rows(&msgs, &[(1, results)]);
    }
    // A second statement described the same way, while the first is cached; executemany's
    // Bind, Execute, Bind, Execute, Sync.
    raw.send(
        &[
            Raw::parse("s2", SELECT, &[]),
            Raw::describe(b'S', "s2"),
            flush(),
        ]
        .concat(),
    )
    .await;
    assert_eq!(tags(&recv_n(&mut raw, 3).await), "1tT");
    let msgs = raw
        .batch(&[
            bind("", "s2", 2, true, MIXED_2),
            Raw::execute("", 0),
            bind("", "s1", 1, true, MIXED),
            Raw::execute("", 0),
            Raw::sync(),
        ])
        .await;
    assert_eq!(tags(&msgs), "2DC2DCZ");
    assert_rows(&msgs, &[(2, MIXED_2), (1, MIXED)]);
    setup.proxy.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread")]
async fn parse_describe_sync_then_bind_execute_sync_tokio_postgres() {
    let setup = setup();
    let mut raw = Raw::connect(setup.proxy.port()).await;
    let msgs = raw
        .batch(&[
            Raw::parse("s1", SELECT, &[]),
            Raw::describe(b'S', "s1"),
            Raw::sync(),
        ])
        .await;
    assert_eq!(tags(&msgs), "1tTZ");
    for results in [BINARY, MIXED, TEXT] {
        let msgs = raw
            .batch(&[
                bind("", "s1", 2, true, results),
                Raw::execute("", 0),
                Raw::sync(),
            ])
            .await;
        assert_eq!(tags(&msgs), "2DCZ");
        assert_rows(&msgs, &[(2, results)]);
    }
    setup.proxy.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread")]
async fn describe_statement_before_bind_in_one_batch_and_a_cursor_postgres_js() {
    let setup = setup();
    let mut raw = Raw::connect(setup.proxy.port()).await;
    let msgs = raw
        .batch(&[
            Raw::parse("s1", SELECT, &[]),
            Raw::describe(b'S', "s1"),
            bind("", "s1", 1, false, MIXED),
            Raw::execute("", 0),
            Raw::sync(),
        ])
        .await;
    assert_eq!(tags(&msgs), "1tT2DCZ");
    assert_description(&msgs[2], &[]);
    assert_rows(&msgs, &[(1, MIXED)]);
    // A cursor: the statement described and flushed, then a portal read one row at a
    // time, each Execute flushed.
    raw.send(
        &[
            Raw::parse("s2", SELECT_FROM, &[]),
            Raw::describe(b'S', "s2"),
            flush(),
        ]
        .concat(),
    )
    .await;
    assert_eq!(tags(&recv_n(&mut raw, 3).await), "1tT");
    raw.send(
        &[
            bind("c", "s2", 1, false, BINARY),
            Raw::execute("c", 1),
            flush(),
        ]
        .concat(),
    )
    .await;
    let first = recv_n(&mut raw, 3).await;
    assert_eq!(tags(&first), "2Ds");
    assert_rows(&first, &[(1, BINARY)]);
    raw.send(&[Raw::execute("c", 1), flush()].concat()).await;
    let second = recv_n(&mut raw, 2).await;
    assert_eq!(tags(&second), "Ds");
    assert_rows(&second, &[(2, BINARY)]);
    let last = raw.batch(&[Raw::execute("c", 1), Raw::sync()]).await;
    assert_eq!(tags(&last), "CZ");
    setup.proxy.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread")]
async fn unnamed_parse_bind_describe_portal_execute_psycopg_node_jdbc() {
    let setup = setup();
    let mut raw = Raw::connect(setup.proxy.port()).await;
    for results in [TEXT, BINARY, MIXED, &[][..]] {
        let msgs = raw
            .batch(&[
                Raw::parse("", SELECT, &[]),
                bind("", "", 1, false, results),
                Raw::describe(b'P', ""),
                Raw::execute("", 0),
                Raw::sync(),
            ])
            .await;
        assert_eq!(tags(&msgs), "12TDCZ");
        assert_description(&msgs[2], results);
        assert_rows(&msgs, &[(1, results)]);
        // pgJDBC: no Describe at all.
        let msgs = raw
            .batch(&[
                Raw::parse("", SELECT, &[23]),
                bind("", "", 2, true, results),
                Raw::execute("", 0),
                Raw::sync(),
            ])
            .await;
        assert_eq!(tags(&msgs), "12DCZ");
        assert_rows(&msgs, &[(2, results)]);
    }
    setup.proxy.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread")]
async fn named_prepare_then_bind_describe_portal_execute_psycopg_node_jdbc() {
    let setup = setup();
    let mut raw = Raw::connect(setup.proxy.port()).await;
    let msgs = raw
        .batch(&[Raw::parse("s1", SELECT, &[]), Raw::sync()])
        .await;
    assert_eq!(tags(&msgs), "1Z");
    for results in [BINARY, TEXT, MIXED] {
        let msgs = raw
            .batch(&[
                bind("", "s1", 1, false, results),
                Raw::describe(b'P', ""),
                Raw::execute("", 0),
                Raw::sync(),
            ])
            .await;
        assert_eq!(tags(&msgs), "2TDCZ");
        assert_description(&msgs[1], results);
        assert_rows(&msgs, &[(1, results)]);
        // Cached by pgJDBC: Bind, Execute, Sync.
        let msgs = raw
            .batch(&[
                bind("", "s1", 2, true, results),
                Raw::execute("", 0),
                Raw::sync(),
            ])
            .await;
        assert_eq!(tags(&msgs), "2DCZ");
        assert_rows(&msgs, &[(2, results)]);
    }
    setup.proxy.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread")]
async fn pipelined_portals_keep_their_own_formats_psycopg_pipeline_jdbc_batch() {
    let setup = setup();
    let mut raw = Raw::connect(setup.proxy.port()).await;
    raw.send(
        &[
            Raw::parse("s1", SELECT, &[]),
            Raw::describe(b'S', "s1"),
            Raw::parse("s2", SELECT, &[]),
            Raw::describe(b'S', "s2"),
            flush(),
        ]
        .concat(),
    )
    .await;
    assert_eq!(tags(&recv_n(&mut raw, 6).await), "1tT1tT");
    // Two portals with different formats; the first described, the second executed first.
    let msgs = raw
        .batch(&[
            bind("a", "s1", 1, false, TEXT),
            bind("b", "s2", 2, true, BINARY),
            Raw::describe(b'P', "a"),
            Raw::execute("b", 0),
            Raw::execute("a", 0),
            Raw::sync(),
        ])
        .await;
    assert_eq!(tags(&msgs), "22TDCDCZ");
    assert_description(&msgs[2], TEXT);
    assert_rows(&msgs, &[(2, BINARY), (1, TEXT)]);
    // psycopg's pipeline: Bind, Describe P, Execute per row, then Sync and Flush.
    let mut batch = vec![Raw::parse("s3", SELECT, &[])];
    for (id, results) in [(1, MIXED), (2, MIXED_2), (1, BINARY)] {
        batch.push(bind("", "s3", id, true, results));
        batch.push(Raw::describe(b'P', ""));
        batch.push(Raw::execute("", 0));
    }
    batch.push(Raw::sync());
    batch.push(flush());
    let msgs = raw.batch(&batch).await;
    assert_eq!(tags(&msgs), "12TDC2TDC2TDCZ");
    assert_rows(&msgs, &[(1, MIXED), (2, MIXED_2), (1, BINARY)]);
    setup.proxy.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_describe_left_unanswered_by_rows_does_not_decode_a_simple_query_psql() {
    let setup = setup();
    let mut raw = Raw::connect(setup.proxy.port()).await;
    // A statement described and never executed, then simple queries in text.
    let msgs = raw
        .batch(&[
            Raw::parse("s1", SELECT, &[]),
            Raw::describe(b'S', "s1"),
            Raw::sync(),
        ])
        .await;
    assert_eq!(tags(&msgs), "1tTZ");
    let msgs = raw
        .simple("SELECT id, flag, born, name, n, note FROM wire ORDER BY id")
        .await;
    assert_eq!(tags(&msgs), "TDDCZ");
    assert_description(&msgs[0], &[]);
    assert_rows(&msgs, &[(1, TEXT), (2, TEXT)]);
    let msgs = raw
        .batch(&[
            bind("", "s1", 2, true, BINARY),
            Raw::execute("", 0),
            Raw::sync(),
        ])
        .await;
    assert_rows(&msgs, &[(2, BINARY)]);
    setup.proxy.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_describe_the_database_skipped_after_an_error_is_asked_again_at_the_next_execute() {
    let setup = setup();
    let mut raw = Raw::connect(setup.proxy.port()).await;
    let msgs = raw
        .batch(&[Raw::parse("s3", SELECT, &[]), Raw::sync()])
        .await;
    assert_eq!(tags(&msgs), "1Z");
    // The Bind fails (not an integer), so the database skips the Describe of its portal:
    // nothing told pgveil the statement's result columns.
    let mut bad = Vec::new();
    bad.extend_from_slice(b"\0s3\0");
    bad.extend_from_slice(&0i16.to_be_bytes());
    bad.extend_from_slice(&1i16.to_be_bytes());
    bad.extend_from_slice(&(1i32).to_be_bytes());
    bad.push(b'x');
    bad.extend_from_slice(&0i16.to_be_bytes());
    let msgs = raw
        .batch(&[
            frame(b'B', &bad),
            Raw::describe(b'P', ""),
            Raw::execute("", 0),
            Raw::sync(),
        ])
        .await;
    assert_eq!(tags(&msgs), "EZ");
    // Executed without a Describe (pgJDBC's cached order): its rows are still decrypted.
    for results in [TEXT, MIXED] {
        let msgs = raw
            .batch(&[
                bind("", "s3", 1, false, results),
                Raw::execute("", 0),
                Raw::sync(),
            ])
            .await;
        assert_eq!(tags(&msgs), "2DCZ");
        assert_rows(&msgs, &[(1, results)]);
    }
    setup.proxy.assert_no_leaks();
}
