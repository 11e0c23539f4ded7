//! Columns being migrated, used through pgveil: while `pgveil migrate` turns a plaintext
//! column into an encrypted one, reads through pgveil return the plaintext (masked and
//! refused by the same policy, audited), writes through pgveil set the plaintext and its
//! shadow's ciphertext in one statement, write shapes pgveil cannot pair with a ciphertext
//! are refused (0A000), and after the swap the same sessions go on.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;

use common::{cluster, column_toml, login_role, psql_script, veil_config, Proxy, PASSWORD};

/// id, ssn, its shadow, birth, its shadow.
type Row5 = (
    i64,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

const MASKED: &str = "mo_billing";
const DENIED: &str = "mo_outsider";

fn roles() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        login_role(MASKED, "", &[]);
        login_role(DENIED, "", &[]);
    });
}

/// The configuration: `ssn` (text, deterministic) masked for MASKED and denied to DENIED,
/// `birth` (date, randomized); the audit log on, subjects by `id`.
fn config(dir: &Path, table: &str) -> String {
    let columns = format!(
        "[[table]]\nname = \"{table}\"\nsubject = \"id\"\n{}{}",
        column_toml(
            table,
            "ssn",
            "text",
            "deterministic",
            &format!("access = {{ {MASKED} = \"mask:last4\", {DENIED} = \"deny\" }}")
        ),
        column_toml(table, "birth", "date", "randomized", ""),
    );
    format!(
        "{}\n[audit]\ndir = \"audit\"\nsigning_key_file = \"keys/audit.key\"\n",
        veil_config(dir, "plaintext", &columns)
    )
}

/// A table as `pgveil migrate` leaves it after its prepare step: plaintext columns with
/// their shadows beside them.
fn prepared_table(table: &str) {
    cluster().psql(&format!(
        "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id bigint PRIMARY KEY, ssn text, birth date, note text);
         INSERT INTO {table} VALUES (1, 'mo-111-22-3333', '1980-02-03', 'a'), (2, NULL, NULL, 'b');
         ALTER TABLE {table} ADD COLUMN ssn__pgveil bytea, ADD COLUMN birth__pgveil bytea;
         GRANT ALL ON {table} TO PUBLIC"
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_migrating_column_is_read_written_and_refused_through_pgveil() {
    roles();
    let dir = tempfile::tempdir().unwrap();
    let table = "public.mo_shapes";
    prepared_table(table);
    let proxy = Proxy::start(&config(dir.path(), table), dir.path());
    let client = common::connect(proxy.port()).await;

    // Reads: text and binary formats, conditions compare plaintext.
    let rows = client
        .query(
            &format!("SELECT id, ssn, birth FROM {table} WHERE ssn = $1"),
            &[&"mo-111-22-3333"],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    let birth: chrono::NaiveDate = rows[0].get(2);
    assert_eq!(birth.to_string(), "1980-02-03");
    let out = psql_script(
        proxy.port(),
        common::SUPERUSER,
        &format!("SELECT id, ssn, birth FROM {table} ORDER BY id"),
    )
    .unwrap();
    assert_eq!(out, "1|mo-111-22-3333|1980-02-03\n2|<NULL>|<NULL>\n");

    // Writes: parameters (extended) and literals (simple), plaintext and shadow together.
    let birth = chrono::NaiveDate::from_ymd_opt(1990, 5, 6).unwrap();
    client
        .execute(
            &format!("INSERT INTO {table} (id, ssn, birth) VALUES ($1, $2, $3), (4, 'mo-444-55-6666', NULL)"),
            &[&3i64, &"mo-333-44-5555", &birth],
        )
        .await
        .unwrap();
    client
        .execute(
            &format!("UPDATE {table} SET ssn = $1, birth = DEFAULT WHERE id = 2"),
            &[&"mo-222-33-4444"],
        )
        .await
        .unwrap();
    psql_script(
        proxy.port(),
        common::SUPERUSER,
        &format!(
            "INSERT INTO {table} (id, ssn, birth) VALUES (5, 'mo-555-66-7777', DATE '2001-01-01');
             UPDATE {table} SET birth = '1981-03-04' WHERE ssn = 'mo-111-22-3333';"
        ),
    )
    .unwrap();
    // Through pgveil the shadow reads as its column: every shadow decrypts to the plaintext.
    let rows = client
        .query(
            &format!("SELECT id, ssn, ssn__pgveil, birth, birth__pgveil FROM {table} ORDER BY id"),
            &[],
        )
        .await
        .unwrap();
    let got: Vec<Row5> = rows
        .iter()
        .map(|r| {
            let d = |i: usize| {
                r.get::<_, Option<chrono::NaiveDate>>(i)
                    .map(|d| d.to_string())
            };
            (r.get(0), r.get(1), r.get(2), d(3), d(4))
        })
        .collect();
    let s = |v: &str| Some(v.to_string());
    assert_eq!(
        got,
        vec![
            (
                1,
                s("mo-111-22-3333"),
                None,
                s("1981-03-04"),
                s("1981-03-04")
            ),
            (2, s("mo-222-33-4444"), s("mo-222-33-4444"), None, None),
            (
                3,
                s("mo-333-44-5555"),
                s("mo-333-44-5555"),
                s("1990-05-06"),
                s("1990-05-06")
            ),
            (4, s("mo-444-55-6666"), s("mo-444-55-6666"), None, None),
            (
                5,
                s("mo-555-66-7777"),
                s("mo-555-66-7777"),
                s("2001-01-01"),
                s("2001-01-01")
            ),
        ]
    );

    // The masked role sees masks, the denied role is refused.
    let masked = common::connect_as(proxy.port(), MASKED, PASSWORD)
        .await
        .unwrap();
    let rows = masked
        .query(&format!("SELECT ssn FROM {table} WHERE id = 1"), &[])
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, String>(0), "**********3333");
    let denied = common::connect_as(proxy.port(), DENIED, PASSWORD)
        .await
        .unwrap();
    let e = denied
        .query(&format!("SELECT ssn FROM {table}"), &[])
        .await
        .unwrap_err();
    assert_eq!(common::db_error(&e).0, "42501");

    // Shapes that cannot write the shadow are refused and change nothing.
    let before = cluster().psql(&format!(
        "SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM {table} t"
    ));
    for sql in [
        format!("INSERT INTO {table} (id, ssn) SELECT 9, ssn FROM {table} WHERE id = 1"),
        format!("INSERT INTO {table} VALUES (9, 'mo-999-99-9999')"),
        format!("INSERT INTO {table} (id, ssn) SELECT * FROM unnest(ARRAY[9], ARRAY['mo-999-99-9999'])"),
        format!("INSERT INTO {table} (id, ssn) VALUES (1, 'mo-999-99-9999') ON CONFLICT (id) DO UPDATE SET ssn = EXCLUDED.ssn"),
        format!("UPDATE {table} SET ssn = note"),
        format!("COPY {table} (id, ssn) FROM STDIN"),
        format!("COPY {table} (id, ssn) TO STDOUT"),
    ] {
        let e = client.batch_execute(&sql).await.unwrap_err();
        let (code, message) = common::db_error(&e);
        assert_eq!(code, "0A000", "{sql}: {message}");
        assert!(message.contains(&format!("{table}.ssn is being migrated")), "{sql}: {message}");
    }
    assert_eq!(
        cluster().psql(&format!(
            "SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM {table} t"
        )),
        before
    );

    // Reads were audited with their subjects.
    let reads: Vec<_> = common::audit_records(dir.path())
        .into_iter()
        .filter(|r| r["kind"] == "select")
        .collect();
    assert!(
        reads.iter().any(|r| r["subjects"][table]
            .as_array()
            .is_some_and(|s| !s.is_empty())),
        "{reads:?}"
    );
}

fn value(id: i64, version: u32) -> String {
    format!("mo-{id:06}-v{version}-7731")
}

/// Errors a statement planned before the swap gets after it (nothing was written): the
/// shadow is gone (42703), the column is bytea (42804, 42883), or a statement prepared before
/// the swap runs after it (0A000 "cached plan must not change result type").
fn swap_error(e: &tokio_postgres::Error) -> bool {
    let (code, message) = common::db_error(e);
    matches!(code.as_str(), "42703" | "42804" | "42883")
        || (code == "0A000" && message.contains("cached plan"))
}

/// A write refused because its column is configured but migrate has not prepared it yet
/// (no shadow column to hold the ciphertext): nothing was written.
fn not_yet_prepared(e: &tokio_postgres::Error) -> bool {
    let (code, message) = common::db_error(e);
    code == "0A000" && message.contains("not yet migrated")
}

/// How many statements of one session may fail around the swaps (two columns are swapped
/// one after the other): per swap, one statement planned before it, and one prepared before
/// it and executed after it.
const SWAP_ERRORS: usize = 4;

/// A value a row may hold during the run: its initial one, or one a writer wrote for it.
fn plausible(
    id: i64,
    got: &Option<String>,
    initial: &std::collections::BTreeMap<i64, Option<String>>,
) -> bool {
    if id > 1000 && id <= 20_000 {
        return got == initial.get(&id).unwrap_or(&None);
    }
    match got {
        None => initial.get(&id).is_some_and(Option::is_none),
        Some(v) => v.starts_with(&format!("mo-{id:06}-v")) && v.ends_with("-7731"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_runs_while_sessions_read_and_write_through_pgveil() {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use tokio_postgres::SimpleQueryMessage;

    roles();
    let dir = tempfile::tempdir().unwrap();
    let table = "public.mo_run";
    cluster().psql(&format!(
        "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id bigint PRIMARY KEY, ssn text, birth date, note text);
         INSERT INTO {table} SELECT g, 'mo-' || lpad(g::text, 6, '0') || '-v0-7731', NULL, 'n' FROM generate_series(1, 20000) g;
         UPDATE {table} SET ssn = NULL WHERE id % 89 = 0;
         GRANT ALL ON {table} TO PUBLIC"
    ));
    let initial: BTreeMap<i64, Option<String>> = (1..=20000)
        .map(|id| (id, (id % 89 != 0).then(|| value(id, 0))))
        .collect();
    let config_text = config(dir.path(), table);
    let config_path = dir.path().join("pgveil.toml");
    std::fs::write(&config_path, &config_text).unwrap();
    let proxy = Proxy::start(&config_text, dir.path());
    let port = proxy.port();
    let stop = Arc::new(AtomicBool::new(false));
    let initial = Arc::new(initial);

    // Writers through pgveil, extended protocol (tokio-postgres): each owns its ids (odd or
    // even, ≤ 1000) and inserts its own; what committed goes into the model in order.
    let mut writers = Vec::new();
    for w in 0..2i64 {
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let client = common::connect(port).await;
            let (mut applied, mut swap_errors) = (Vec::new(), 0);
            let mut i: i64 = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let id = 1 + ((i * 37) % 500) * 2 + w;
                let version = u32::try_from(i).unwrap();
                let outcome = if i % 2 == 0 {
                    let new_id = 30_000 + w * 100_000 + i;
                    let v = value(new_id, version);
                    client
                        .execute(
                            &format!("INSERT INTO {table} (id, ssn, note) VALUES ($1, $2, 'w')"),
                            &[&new_id, &v],
                        )
                        .await
                        .map(|_| (new_id, Some(v)))
                } else {
                    let v = value(id, version);
                    client
                        .execute(
                            &format!("UPDATE {table} SET ssn = $2 WHERE id = $1"),
                            &[&id, &v],
                        )
                        .await
                        .map(|_| (id, Some(v)))
                };
                match outcome {
                    Ok(write) => applied.push(write),
                    Err(e) if not_yet_prepared(&e) => {}
                    Err(e) if swap_error(&e) => swap_errors += 1,
                    Err(e) => panic!("write failed: {:?}", common::db_error(&e)),
                }
            }
            (client, applied, swap_errors)
        }));
    }
    // A writer by the simple protocol (literals) on rows of its own, inserted from 500_000 on.
    let simple_writer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let client = common::connect(port).await;
            let (mut applied, mut swap_errors) = (Vec::new(), 0);
            let mut i: i64 = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let id = 500_000 + i;
                let v = value(id, 1);
                let sql = format!("INSERT INTO {table} (id, ssn) VALUES ({id}, '{v}'); UPDATE {table} SET ssn = '{}' WHERE id = {id}", value(id, 2));
                match client.batch_execute(&sql).await {
                    Ok(()) => applied.push((id, Some(value(id, 2)))),
                    // Refused before anything ran: the Query's statements are one transaction.
                    Err(e) if not_yet_prepared(&e) => {}
                    Err(e) if swap_error(&e) => {
                        swap_errors += 1;
                        // The INSERT may have committed before the UPDATE failed.
                        applied.push((id, None));
                    }
                    Err(e) => panic!("simple write failed: {:?}", common::db_error(&e)),
                }
            }
            (client, applied, swap_errors)
        })
    };

    // Readers through pgveil, every row checked: simple protocol (text), extended binary
    // (tokio-postgres), extended text (raw protocol); a masked and a denied role.
    let simple_reader = {
        let (stop, initial) = (stop.clone(), initial.clone());
        tokio::spawn(async move {
            let client = common::connect(port).await;
            let (mut reads, mut swap_errors) = (0, 0);
            while !stop.load(Ordering::Relaxed) || reads == 0 {
                match client
                    .simple_query(&format!(
                        "SELECT id, ssn FROM {table} WHERE id <= 3000 ORDER BY id"
                    ))
                    .await
                {
                    Ok(messages) => {
                        let mut n = 0;
                        for m in messages {
                            if let SimpleQueryMessage::Row(row) = m {
                                let id: i64 = row.get(0).unwrap().parse().unwrap();
                                let got = row.get(1).map(str::to_string);
                                assert!(
                                    plausible(id, &got, &initial),
                                    "simple read of row {id}: {got:?}"
                                );
                                n += 1;
                            }
                        }
                        assert_eq!(n, 3000);
                        reads += 1;
                    }
                    Err(e) if swap_error(&e) => swap_errors += 1,
                    Err(e) => panic!("simple read failed: {:?}", common::db_error(&e)),
                }
            }
            (client, reads, swap_errors)
        })
    };
    let binary_reader = {
        let (stop, initial) = (stop.clone(), initial.clone());
        tokio::spawn(async move {
            let client = common::connect(port).await;
            let (mut reads, mut swap_errors) = (0, 0);
            while !stop.load(Ordering::Relaxed) || reads == 0 {
                let lookup = value(1500, 0);
                let outcome = client
                    .query(
                        &format!(
                            "SELECT id, ssn FROM {table} WHERE id <= 3000 OR ssn = $1 ORDER BY id"
                        ),
                        &[&lookup],
                    )
                    .await;
                match outcome {
                    Ok(rows) => {
                        assert_eq!(rows.len(), 3000);
                        for row in rows {
                            let (id, got): (i64, Option<String>) = (row.get(0), row.get(1));
                            assert!(
                                plausible(id, &got, &initial),
                                "binary read of row {id}: {got:?}"
                            );
                        }
                        reads += 1;
                    }
                    Err(e) if swap_error(&e) => swap_errors += 1,
                    Err(e) => panic!("binary read failed: {:?}", common::db_error(&e)),
                }
            }
            (client, reads, swap_errors)
        })
    };
    let text_reader = {
        let (stop, initial) = (stop.clone(), initial.clone());
        tokio::spawn(async move {
            use common::Raw;
            let mut raw = Raw::connect(port).await;
            let (mut reads, mut swap_errors) = (0, 0);
            let sql =
                format!("SELECT id, ssn FROM {table} WHERE id BETWEEN $1 AND 3000 ORDER BY id");
            while !stop.load(Ordering::Relaxed) || reads == 0 {
                let msgs = raw
                    .batch(&[
                        Raw::parse("", &sql, &[]),
                        Raw::bind("", "", &[Some(b"900")], &[0], 0),
                        Raw::execute("", 0),
                        Raw::sync(),
                    ])
                    .await;
                if let Some(error) = msgs.iter().find(|m| m.tag == b'E') {
                    let code = error.field(b'C').unwrap_or_default();
                    assert!(
                        matches!(code.as_str(), "42703" | "42804" | "42883"),
                        "text read failed: {code} {:?}",
                        error.field(b'M')
                    );
                    swap_errors += 1;
                    continue;
                }
                let rows: Vec<_> = msgs.iter().filter(|m| m.tag == b'D').collect();
                assert_eq!(rows.len(), 2101);
                for row in rows {
                    let values = row.values();
                    let id: i64 = String::from_utf8(values[0].clone().unwrap())
                        .unwrap()
                        .parse()
                        .unwrap();
                    let got = values[1].clone().map(|v| String::from_utf8(v).unwrap());
                    assert!(
                        plausible(id, &got, &initial),
                        "text read of row {id}: {got:?}"
                    );
                }
                reads += 1;
            }
            (raw, reads, swap_errors)
        })
    };
    let policy_reader = {
        let (stop, initial) = (stop.clone(), initial.clone());
        tokio::spawn(async move {
            let masked = common::connect_as(port, MASKED, PASSWORD).await.unwrap();
            let denied = common::connect_as(port, DENIED, PASSWORD).await.unwrap();
            let (mut reads, mut swap_errors) = (0, 0);
            while !stop.load(Ordering::Relaxed) || reads == 0 {
                match masked
                    .query(&format!("SELECT id, ssn FROM {table} WHERE id BETWEEN 2001 AND 2100 ORDER BY id"), &[])
                    .await
                {
                    Ok(rows) => {
                        assert_eq!(rows.len(), 100);
                        for row in rows {
                            let (id, got): (i64, Option<String>) = (row.get(0), row.get(1));
                            let expected = initial[&id].as_ref().map(|v| format!("{}{}", "*".repeat(v.len() - 4), &v[v.len() - 4..]));
                            assert_eq!(got, expected, "masked read of row {id}");
                        }
                        reads += 1;
                    }
                    Err(e) if swap_error(&e) => swap_errors += 1,
                    Err(e) => panic!("masked read failed: {:?}", common::db_error(&e)),
                }
                let e = denied
                    .query(&format!("SELECT id, ssn FROM {table} WHERE id = 2001"), &[])
                    .await
                    .unwrap_err();
                assert_eq!(common::db_error(&e).0, "42501");
            }
            (masked, denied, reads, swap_errors)
        })
    };

    let out = tokio::task::spawn_blocking(move || migrate(&config_path, &["--batch-size", "200"]))
        .await
        .unwrap();
    // Let the sessions run on past the swap a little.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    assert!(out.status.success(), "{out:?}");

    let mut model: BTreeMap<i64, Option<String>> = (*initial).clone();
    let mut sessions = Vec::new();
    for writer in writers {
        let (client, applied, swap_errors) = writer.await.unwrap();
        assert!(!applied.is_empty(), "no write landed");
        eprintln!(
            "writer: {} writes, {swap_errors} swap errors",
            applied.len()
        );
        assert!(
            swap_errors <= SWAP_ERRORS,
            "{swap_errors} writes failed around the swap"
        );
        for (id, v) in applied {
            model.insert(id, v);
        }
        sessions.push(client);
    }
    let (simple_client, applied, swap_errors) = simple_writer.await.unwrap();
    assert!(
        swap_errors <= SWAP_ERRORS,
        "{swap_errors} simple writes failed around the swap"
    );
    let mut unsure = Vec::new();
    for (id, v) in applied {
        match v {
            Some(v) => {
                model.insert(id, Some(v));
            }
            None => unsure.push(id),
        }
    }
    for reader in [simple_reader, binary_reader] {
        let (client, reads, swap_errors) = reader.await.unwrap();
        eprintln!("reader: {reads} reads, {swap_errors} swap errors");
        assert!(
            reads > 0 && swap_errors <= SWAP_ERRORS,
            "{reads} reads, {swap_errors} swap errors"
        );
        sessions.push(client);
    }
    let (mut raw, reads, swap_errors) = text_reader.await.unwrap();
    eprintln!("text reader: {reads} reads, {swap_errors} swap errors");
    assert!(
        reads > 0 && swap_errors <= SWAP_ERRORS,
        "{reads} text reads, {swap_errors} swap errors"
    );
    let (masked, denied, reads, swap_errors) = policy_reader.await.unwrap();
    assert!(
        reads > 0 && swap_errors <= SWAP_ERRORS,
        "{reads} masked reads, {swap_errors} swap errors"
    );

    // The column is encrypted now: bytea envelopes only, shadow and plaintext gone.
    let check = cluster().psql(&format!(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = '{table}'::regclass AND attname = 'ssn';
         SELECT count(*) FROM pg_attribute WHERE attrelid = '{table}'::regclass AND attname LIKE 'ssn\\_\\_pgveil%' AND NOT attisdropped;
         SELECT count(*) FROM {table} WHERE ssn IS NOT NULL AND substring(ssn FROM 1 FOR 1) <> '\\x01'::bytea"
    ));
    assert_eq!(
        check.split_whitespace().collect::<Vec<_>>(),
        ["bytea", "0", "0"]
    );

    // The same sessions, without reconnecting: every statement works (at most one per
    // session may still fail with a swap error if it was its first since the swap).
    let retry = |r: Result<u64, tokio_postgres::Error>| {
        r.map_err(|e| assert!(swap_error(&e), "{:?}", common::db_error(&e)))
            .is_ok()
    };
    let writer = &sessions[0];
    let v = value(777_777, 1);
    let sql = format!("INSERT INTO {table} (id, ssn) VALUES (777777, $1)");
    if !retry(writer.execute(&sql, &[&v]).await) {
        writer.execute(&sql, &[&v]).await.unwrap();
    }
    model.insert(777_777, Some(v.clone()));
    let found = writer
        .query(&format!("SELECT id FROM {table} WHERE ssn = $1"), &[&v])
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    simple_client
        .batch_execute(&format!(
            "SELECT 1; UPDATE {table} SET ssn = '{}' WHERE id = 500001",
            value(500_001, 3)
        ))
        .await
        .or_else(|e| if swap_error(&e) { Ok(()) } else { Err(e) })
        .unwrap();
    simple_client
        .batch_execute(&format!(
            "UPDATE {table} SET ssn = '{}' WHERE id = 500001",
            value(500_001, 3)
        ))
        .await
        .unwrap();
    if model.contains_key(&500_001) || unsure.contains(&500_001) {
        model.insert(500_001, Some(value(500_001, 3)));
        unsure.retain(|&id| id != 500_001);
    }
    let masked_rows = masked
        .query(&format!("SELECT ssn FROM {table} WHERE id = 2001"), &[])
        .await
        .unwrap();
    let expected = initial[&2001].clone().unwrap();
    assert_eq!(
        masked_rows[0].get::<_, String>(0),
        format!(
            "{}{}",
            "*".repeat(expected.len() - 4),
            &expected[expected.len() - 4..]
        )
    );
    let e = denied
        .query(&format!("SELECT ssn FROM {table}"), &[])
        .await
        .unwrap_err();
    assert_eq!(common::db_error(&e).0, "42501");
    let msgs = raw
        .simple(&format!("SELECT ssn FROM {table} WHERE id = 1001"))
        .await;
    let row = msgs.iter().find(|m| m.tag == b'D').expect("a row");
    assert_eq!(
        row.values()[0]
            .clone()
            .map(|v| String::from_utf8(v).unwrap()),
        initial[&1001]
    );

    // Every row decrypts to the model's value (rows a failed simple batch may have inserted
    // hold its first value).
    let rows = sessions[1]
        .simple_query(&format!("SELECT id, ssn FROM {table} ORDER BY id"))
        .await
        .unwrap();
    let mut stored: BTreeMap<i64, Option<String>> = BTreeMap::new();
    for m in rows {
        if let SimpleQueryMessage::Row(row) = m {
            stored.insert(
                row.get(0).unwrap().parse().unwrap(),
                row.get(1).map(str::to_string),
            );
        }
    }
    for id in unsure {
        if let Some(v) = stored.get(&id) {
            assert_eq!(v, &Some(value(id, 1)));
            model.insert(id, v.clone());
        }
    }
    assert_eq!(stored, model);

    // Reads during the run were recorded with their subjects.
    let reads = common::audit_records(dir.path())
        .into_iter()
        .filter(|r| {
            r["kind"] == "select"
                && r["subjects"][table]
                    .as_array()
                    .is_some_and(|s| s.len() >= 100)
        })
        .count();
    eprintln!(
        "{reads} audited reads; migrate: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(reads >= 4, "{reads} audited reads");
}

/// Runs `pgveil migrate` on the configuration at `config` to its end, as the superuser.
fn migrate(config: &Path, options: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_pgveil"))
        .args(["migrate", "--config", &config.display().to_string()])
        .args(options)
        .env("PGUSER", common::SUPERUSER)
        .env("PGPASSWORD", PASSWORD)
        .env("PGDATABASE", "postgres")
        .env_remove("PGVEIL_MASTER_KEY")
        .output()
        .unwrap()
}

/// Statements a client keeps by name across the migration (a driver's statement cache):
/// planned on the plaintext column, or refused because it was not migrated yet, each is
/// prepared again by pgveil at its first Bind after the session has seen the swap, so it
/// fails at most once and then returns and stores the right values, the client seeing only
/// the answers to what it sent.
#[tokio::test(flavor = "multi_thread")]
async fn statements_kept_by_name_are_prepared_again_after_the_swap() {
    use common::{tags, Raw};
    roles();
    let dir = tempfile::tempdir().unwrap();
    let table = "public.mo_renew";
    cluster().psql(&format!(
        "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id bigint PRIMARY KEY, ssn text, birth date, note text);
         INSERT INTO {table} SELECT g, 'mo-' || lpad(g::text, 6, '0') || '-v0-7731', NULL, 'n' FROM generate_series(1, 50) g;
         GRANT ALL ON {table} TO PUBLIC"
    ));
    let config_text = config(dir.path(), table);
    let config_path = dir.path().join("pgveil.toml");
    std::fs::write(&config_path, &config_text).unwrap();
    let proxy = Proxy::start(&config_text, dir.path());
    let mut raw = Raw::connect(proxy.port()).await;
    let client = common::connect(proxy.port()).await;

    // Before the migration: a read planned on the plaintext column, a write refused.
    let read = format!("SELECT id, ssn FROM {table} WHERE ssn = $1");
    let msgs = raw
        .batch(&[Raw::parse("rd", &read, &[]), Raw::sync()])
        .await;
    assert_eq!(tags(&msgs), "1Z");
    let write = format!("INSERT INTO {table} (id, ssn) VALUES ($1, $2)");
    let msgs = raw
        .batch(&[Raw::parse("wr", &write, &[]), Raw::sync()])
        .await;
    assert_eq!(tags(&msgs), "EZ", "refused before the migration");
    assert_eq!(msgs[0].field(b'C').as_deref(), Some("0A000"));
    let kept = client.prepare(&read).await.unwrap();
    let v7 = value(7, 0);
    assert_eq!(client.query(&kept, &[&v7]).await.unwrap().len(), 1);

    let out = migrate(&config_path, &[]);
    assert!(out.status.success(), "{out:?}");

    // The first statement after the swap may fail (the session reads the new catalog after
    // it); from then on the kept statements are prepared again and work.
    let lookup = value(3, 0);
    let read = [
        Raw::bind("", "rd", &[Some(lookup.as_bytes())], &[0], 0),
        Raw::execute("", 0),
        Raw::sync(),
    ];
    let first = raw.batch(&read).await;
    if tags(&first) != "2DCZ" {
        assert_eq!(tags(&first), "EZ", "{first:?}");
        let code = first[0].field(b'C').unwrap_or_default();
        assert!(
            matches!(code.as_str(), "42804" | "42883" | "0A000"),
            "{code}"
        );
    }
    for _ in 0..2 {
        let msgs = raw.batch(&read).await;
        assert_eq!(
            tags(&msgs),
            "2DCZ",
            "only the Bind's own answers reach the client"
        );
        assert_eq!(
            msgs[1].values()[1]
                .clone()
                .map(|v| String::from_utf8(v).unwrap()),
            Some(value(3, 0))
        );
    }
    let v9 = value(900, 1);
    let msgs = raw
        .batch(&[
            Raw::bind("", "wr", &[Some(b"900"), Some(v9.as_bytes())], &[0, 0], 0),
            Raw::execute("", 0),
            Raw::sync(),
        ])
        .await;
    assert_eq!(
        tags(&msgs),
        "2CZ",
        "the refused write is prepared again: {msgs:?}"
    );
    // tokio-postgres sends its next statement as soon as it has read an error, before the
    // ReadyForQuery behind which pgveil reads the catalog: that one may fail too.
    let mut failures = 0;
    loop {
        match client.query(&kept, &[&v7]).await {
            Ok(rows) => {
                assert_eq!(rows[0].get::<_, Option<String>>(1), Some(v7.clone()));
                break;
            }
            Err(e) => {
                assert!(swap_error(&e), "{:?}", common::db_error(&e));
                failures += 1;
                assert!(failures <= 2, "{failures} failures");
            }
        }
    }
    let rows = client.query(&kept, &[&v9]).await.unwrap();
    assert_eq!(rows[0].get::<_, i64>(0), 900);

    // What the renewed write stored is ciphertext.
    let stored = cluster().psql(&format!(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = '{table}'::regclass AND attname = 'ssn';
         SELECT count(*) FROM {table} WHERE id = 900 AND substring(ssn FROM 1 FOR 1) = '\\x01'::bytea"
    ));
    assert_eq!(
        stored.split_whitespace().collect::<Vec<_>>(),
        ["bytea", "1"]
    );
}
