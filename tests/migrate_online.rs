//! Columns being migrated, used through pgveil: while `pgveil migrate` turns a plaintext
//! column into an encrypted one, reads through pgveil return the plaintext (masked and
//! refused by the same policy, audited), writes through pgveil set the plaintext and its
//! shadow's ciphertext in one statement, write shapes pgveil cannot pair with a ciphertext
//! are refused (0A000), and after the swap the same sessions go on.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;

use common::{cluster, column_toml, login_role, psql_script, veil_config, Proxy, PASSWORD};

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

fn records(dir: &Path) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let mut segments: Vec<_> = std::fs::read_dir(dir.join("audit"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    segments.sort();
    for segment in segments {
        let text = std::fs::read_to_string(segment).unwrap();
        let content = text.split('\0').next().unwrap_or("");
        out.extend(
            content
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()),
        );
    }
    out
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
        .query(&format!("SELECT id, ssn, birth FROM {table} WHERE ssn = $1"), &[&"mo-111-22-3333"])
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
        .execute(&format!("UPDATE {table} SET ssn = $1, birth = DEFAULT WHERE id = 2"), &[&"mo-222-33-4444"])
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
    let got: Vec<(i64, Option<String>, Option<String>, Option<String>, Option<String>)> = rows
        .iter()
        .map(|r| {
            let d = |i: usize| r.get::<_, Option<chrono::NaiveDate>>(i).map(|d| d.to_string());
            (r.get(0), r.get(1), r.get(2), d(3), d(4))
        })
        .collect();
    let s = |v: &str| Some(v.to_string());
    assert_eq!(
        got,
        vec![
            (1, s("mo-111-22-3333"), None, s("1981-03-04"), s("1981-03-04")),
            (2, s("mo-222-33-4444"), s("mo-222-33-4444"), None, None),
            (3, s("mo-333-44-5555"), s("mo-333-44-5555"), s("1990-05-06"), s("1990-05-06")),
            (4, s("mo-444-55-6666"), s("mo-444-55-6666"), None, None),
            (5, s("mo-555-66-7777"), s("mo-555-66-7777"), s("2001-01-01"), s("2001-01-01")),
        ]
    );

    // The masked role sees masks, the denied role is refused.
    let masked = common::connect_as(proxy.port(), MASKED, PASSWORD).await.unwrap();
    let rows = masked
        .query(&format!("SELECT ssn FROM {table} WHERE id = 1"), &[])
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, String>(0), "**********3333");
    let denied = common::connect_as(proxy.port(), DENIED, PASSWORD).await.unwrap();
    let e = denied
        .query(&format!("SELECT ssn FROM {table}"), &[])
        .await
        .unwrap_err();
    assert_eq!(common::db_error(&e).0, "42501");

    // Shapes that cannot write the shadow are refused and change nothing.
    let before = cluster().psql(&format!("SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM {table} t"));
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
        cluster().psql(&format!("SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM {table} t")),
        before
    );

    // Reads were audited with their subjects.
    let reads: Vec<_> = records(dir.path())
        .into_iter()
        .filter(|r| r["kind"] == "select")
        .collect();
    assert!(
        reads.iter().any(|r| r["subjects"][table].as_array().is_some_and(|s| !s.is_empty())),
        "{reads:?}"
    );
}
