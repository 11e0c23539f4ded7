//! Attacks by ordinary logins through pgveil (issue 9): each test tries one way to store
//! plaintext in a protected column, to read protected values without an audit record, or to
//! see what the policy hides, and asserts that it is refused or harmless. Every proxy here is
//! tapped: a registered plaintext that reaches PostgreSQL fails the test even when the
//! statement is refused afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;

use common::*;
use tokio_postgres::SimpleQueryMessage;

const CLINICIAN: &str = "adv_clinician";
const MASKED: &str = "adv_masked";
const DENIED: &str = "adv_denied";

/// A fresh pair of tables for one test (tests of this file run at the same time).
struct Schema {
    patients: String,
    visits: String,
}

fn schema(tag: &str) -> Schema {
    let patients = format!("adv_{tag}_patients");
    let visits = format!("adv_{tag}_visits");
    cluster().psql(&format!(
        "DROP TABLE IF EXISTS {visits}, {patients};
         CREATE TABLE {patients} (id serial PRIMARY KEY, name text, ssn bytea, diagnosis bytea);
         CREATE TABLE {visits} (id serial PRIMARY KEY, patient_id int, ssn bytea);"
    ));
    for role in [CLINICIAN, MASKED, DENIED] {
        group_or_login(role);
        cluster().psql(&format!(
            "GRANT ALL ON {patients}, {visits} TO {role};
             GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role};"
        ));
    }
    Schema { patients, visits }
}

fn group_or_login(role: &str) {
    static ONCE: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut made = ONCE.lock().unwrap();
    if !made.iter().any(|r| r == role) {
        login_role(role, "", &[]);
        cluster().psql(&format!("GRANT CREATE ON SCHEMA public TO {role}"));
        made.push(role.to_string());
    }
}

fn columns(s: &Schema) -> String {
    let mut toml = format!("[[table]]\nname = \"{}\"\nsubject = \"id\"\n", s.patients);
    toml += &column_toml(
        &s.patients,
        "ssn",
        "text",
        "deterministic",
        &format!("domain = \"adv_ssn_{}\"\naccess = {{ {MASKED} = \"mask:last4\", {DENIED} = \"deny\" }}", s.patients),
    );
    toml += &column_toml(
        &s.patients,
        "diagnosis",
        "text",
        "randomized",
        &format!("access = {{ {MASKED} = \"deny\", {DENIED} = \"deny\" }}"),
    );
    toml += &column_toml(
        &s.visits,
        "ssn",
        "text",
        "deterministic",
        &format!(
            "domain = \"adv_ssn_{}\"\naccess = {{ {MASKED} = \"deny\", {DENIED} = \"deny\" }}",
            s.patients
        ),
    );
    toml
}

fn config_with_audit(dir: &Path, s: &Schema) -> String {
    let base = veil_config(dir, "plaintext", &columns(s));
    format!("{base}\n[audit]\ndir = \"audit\"\nsigning_key_file = \"keys/audit.key\"\n")
}

fn start(tag: &str) -> (tempfile::TempDir, Schema, Proxy) {
    let dir = tempfile::tempdir().unwrap();
    let s = schema(tag);
    let proxy = Proxy::start(&config_with_audit(dir.path(), &s), dir.path());
    (dir, s, proxy)
}

async fn as_role(proxy: &Proxy, role: &str) -> tokio_postgres::Client {
    connect_as(proxy.port(), role, PASSWORD).await.unwrap()
}

fn code(result: Result<Vec<SimpleQueryMessage>, tokio_postgres::Error>) -> Option<String> {
    match result {
        Ok(_) => None,
        Err(e) => Some(e.code().map_or("none", |c| c.code()).to_string()),
    }
}

fn values(messages: &[SimpleQueryMessage]) -> Vec<Option<String>> {
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .flat_map(|r| (0..r.len()).map(|i| r.get(i).map(str::to_string)))
        .collect()
}

/// What PostgreSQL holds in a column, as hex.
fn stored_hex(table: &str, column: &str) -> Vec<String> {
    cluster()
        .psql(&format!(
            "SELECT coalesce(encode({column}, 'hex'), 'NULL') FROM {table} ORDER BY id"
        ))
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

fn assert_only_ciphertext(table: &str, column: &str) {
    for value in stored_hex(table, column) {
        assert!(
            value == "NULL" || value.starts_with("01"),
            "{table}.{column} holds a value without pgveil's envelope: {value}"
        );
    }
}

async fn insert_patient(client: &tokio_postgres::Client, s: &Schema, name: &str, ssn: &str) {
    client
        .execute(
            &format!(
                "INSERT INTO {} (name, ssn, diagnosis) VALUES ($1, $2, 'adv-diagnosis-x')",
                s.patients
            ),
            &[&name, &ssn],
        )
        .await
        .unwrap();
    client
        .execute(
            &format!("INSERT INTO {} (patient_id, ssn) VALUES (1, $1)", s.visits),
            &[&ssn],
        )
        .await
        .unwrap();
}

// ---------------------------------------------------------------------------------------
// 1. Client encodings whose multibyte characters contain ASCII bytes.

const REFUSED_ENCODINGS: [&str; 6] = ["SJIS", "BIG5", "GBK", "UHC", "GB18030", "JOHAB"];

#[tokio::test(flavor = "multi_thread")]
async fn encodings_that_hide_ascii_bytes_are_refused_everywhere() {
    let (_dir, _s, proxy) = start("enc");
    let client = as_role(&proxy, CLINICIAN).await;
    for encoding in REFUSED_ENCODINGS {
        for sql in [
            format!("SET client_encoding = '{encoding}'"),
            format!("SET SESSION client_encoding TO {encoding}"),
            format!("SET LOCAL client_encoding = '{}'", encoding.to_lowercase()),
            format!("SELECT set_config('client_encoding', '{encoding}', false)"),
            format!("SELECT pg_catalog.set_config('client_encoding', '{encoding}', true)"),
        ] {
            let answer = client.simple_query(&sql).await;
            assert_eq!(code(answer).as_deref(), Some("0A000"), "{sql}");
        }
        let show = client.simple_query("SHOW client_encoding").await.unwrap();
        assert_eq!(values(&show), vec![Some("UTF8".to_string())]);
    }
    // Safe encodings still work.
    client
        .simple_query("SET client_encoding = 'LATIN1'; RESET client_encoding")
        .await
        .unwrap();
    // In the startup packet (libpq sends PGCLIENTENCODING as client_encoding).
    for encoding in REFUSED_ENCODINGS {
        let refused = psql_with_encoding(proxy.port(), CLINICIAN, Some(encoding));
        let error = refused
            .err()
            .unwrap_or_else(|| panic!("{encoding} accepted at startup"));
        assert!(error.contains("client encoding"), "{encoding}: {error}");
    }
    psql_with_encoding(proxy.port(), CLINICIAN, Some("LATIN1")).unwrap();
}

/// `SELECT 1` by psql through `port`, with `PGCLIENTENCODING` when given (psql sends none
/// of its own when not on a terminal, so the role's default applies otherwise).
fn psql_with_encoding(port: u16, user: &str, encoding: Option<&str>) -> Result<String, String> {
    let mut command = std::process::Command::new(bindir().join("psql"));
    command
        .args(["-X", "-A", "-t", "-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-U", user, "-d", "postgres", "-c", "SELECT 1"])
        .env("PGPASSWORD", PASSWORD)
        .env("PGSSLMODE", "disable")
        .env_remove("PGCLIENTENCODING");
    if let Some(encoding) = encoding {
        command.env("PGCLIENTENCODING", encoding);
    }
    let out = command.output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_role_default_encoding_that_hides_ascii_bytes_is_refused_at_login() {
    let (_dir, _s, proxy) = start("encrole");
    login_role("adv_sjis", "", &[]);
    cluster().psql("ALTER ROLE adv_sjis SET client_encoding = 'SJIS'");
    let error = psql_with_encoding(proxy.port(), "adv_sjis", None)
        .expect_err("a login whose default encoding is SJIS was accepted");
    assert!(error.contains("client encoding SJIS"), "{error}");
    // The same role asking for UTF8 works: the startup packet's setting wins.
    psql_with_encoding(proxy.port(), "adv_sjis", Some("UTF8")).unwrap();
}

/// A simple Query of raw bytes (the attack is not valid in the client's own encoding).
fn query_bytes(text: &[u8]) -> Vec<u8> {
    let mut frame = vec![b'Q'];
    frame.extend_from_slice(&((text.len() + 5) as i32).to_be_bytes());
    frame.extend_from_slice(text);
    frame.push(0);
    frame
}

#[tokio::test(flavor = "multi_thread")]
async fn an_encoding_selected_by_dynamic_sql_stops_the_analysis() {
    let (_dir, s, proxy) = start("encdyn");
    secret("232-32-3232");
    let mut raw = Raw::connect(proxy.port()).await;
    // pgveil cannot see into the block: the server's report of the new encoding is what counts.
    let changed = raw
        .simple("DO $$BEGIN PERFORM set_config('client_' || 'encoding', 'SJIS', false); END$$")
        .await;
    assert!(!changed.iter().any(|m| m.tag == b'E'), "{}", tags(&changed));
    // In SJIS, 0xC3 is one character and 0x83 0x5C another: PostgreSQL sees the literal end
    // at the quote that UTF-8 reading takes as escaped, and runs the INSERT behind it.
    let mut text = b"SELECT E'".to_vec();
    text.extend_from_slice(&[0xc3, 0x83, b'\\', b'\'']);
    text.extend_from_slice(
        format!(
            "; INSERT INTO {} (name, ssn) VALUES ($$Eve$$, $$232-32-3232$$) --'",
            s.patients
        )
        .as_bytes(),
    );
    raw.send(&query_bytes(&text)).await;
    let answer = raw.until_ready().await;
    let error = answer
        .iter()
        .find(|m| m.tag == b'E')
        .expect("the attack was not refused");
    assert_eq!(
        error.field(b'C').as_deref(),
        Some("0A000"),
        "{:?}",
        error.field(b'M')
    );
    // Statements that cannot touch protected data still work.
    let plain = raw.simple("SELECT 1").await;
    assert!(!plain.iter().any(|m| m.tag == b'E'), "{}", tags(&plain));
    assert_only_ciphertext(&s.patients, "ssn");
}

// ---------------------------------------------------------------------------------------
// 2. Sources of unknown width: set-returning functions into protected columns.

// ---------------------------------------------------------------------------------------
// 3. Name resolution: temporary objects, and another session's objects.

// ---------------------------------------------------------------------------------------
// 5. Every source of a result column is checked.

#[tokio::test(flavor = "multi_thread")]
async fn a_set_operation_is_checked_against_every_branch() {
    let (_dir, s, proxy) = start("union");
    secret("777-88-9991");
    let clinician = as_role(&proxy, CLINICIAN).await;
    insert_patient(&clinician, &s, "Ola", "777-88-9991").await;
    let masked = as_role(&proxy, MASKED).await;
    for sql in [
        format!(
            "SELECT ssn FROM {} WHERE false UNION ALL SELECT ssn FROM {}",
            s.patients, s.visits
        ),
        format!(
            "SELECT ssn FROM {} UNION SELECT ssn FROM {}",
            s.patients, s.visits
        ),
        format!(
            "SELECT ssn FROM (SELECT ssn FROM {} WHERE false UNION ALL SELECT ssn FROM {}) AS x",
            s.patients, s.visits
        ),
        format!(
            "WITH v AS (SELECT ssn FROM {}) SELECT ssn FROM {} WHERE false UNION ALL SELECT ssn FROM v",
            s.visits, s.patients
        ),
    ] {
        let answer = masked.simple_query(&sql).await;
        match answer {
            Err(e) => assert_eq!(e.code().map(|c| c.code()), Some("42501"), "{sql}: {e}"),
            Ok(messages) => {
                for value in values(&messages).into_iter().flatten() {
                    assert!(!value.contains("777-88-9991"), "{sql} released {value}");
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// 6. Whole-row values and row comparisons.

// ---------------------------------------------------------------------------------------
// 4. Every release is audited: cursors and portals fetched by name.

/// Audit records (not checkpoints) in the log under `dir`.
fn audit_records(dir: &Path) -> Vec<serde_json::Value> {
    let mut segments: Vec<_> = std::fs::read_dir(dir.join("audit"))
        .map(|entries| entries.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    segments.retain(|p: &std::path::PathBuf| p.extension().is_some_and(|x| x == "jsonl"));
    segments.sort();
    let mut out = Vec::new();
    for segment in segments {
        for line in std::fs::read_to_string(segment).unwrap_or_default().lines() {
            if let Ok(value) = serde_json::from_str::<serde_json::Value>(line) {
                if value.get("checkpoint").is_none() && value.get("seq").is_some() {
                    out.push(value);
                }
            }
        }
    }
    out
}

/// Rows recorded as read from `table` in records after `after` records.
fn audited_rows(dir: &Path, after: usize) -> u64 {
    audit_records(dir)
        .iter()
        .skip(after)
        .filter(|r| r["outcome"] == "ok")
        .filter_map(|r| r["rows"].as_u64())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_protocol_portal_fetched_by_sql_is_audited_or_refused() {
    let (dir, s, proxy) = start("portal");
    secrets(["454-55-6661"]);
    let client = as_role(&proxy, CLINICIAN).await;
    insert_patient(&client, &s, "Sol", "454-55-6661").await;
    let before = audit_records(dir.path()).len();
    let mut raw = Raw::connect(proxy.port()).await;
    raw.simple("BEGIN").await;
    raw.batch(&[
        Raw::parse("", &format!("SELECT id, ssn FROM {}", s.patients), &[]),
        Raw::bind("p1", "", &[], &[], 0),
        Raw::sync(),
    ])
    .await;
    let fetched = raw.simple("FETCH ALL FROM p1").await;
    let released: Vec<_> = fetched
        .iter()
        .filter(|m| m.tag == b'D')
        .flat_map(|m| m.values())
        .flatten()
        .filter(|v| v.starts_with(b"454-55-666"))
        .collect();
    raw.simple("COMMIT").await;
    if !released.is_empty() {
        wait_for(
            || audited_rows(dir.path(), before) as usize >= released.len(),
            "an audit record of the rows fetched from the portal",
        );
    }
    // Nothing decrypted may leave as ciphertext either.
    for m in fetched.iter().filter(|m| m.tag == b'D') {
        for value in m.values().into_iter().flatten() {
            assert!(!value.starts_with(&[1u8]) && !value.starts_with(b"\\x01"));
        }
    }
}
