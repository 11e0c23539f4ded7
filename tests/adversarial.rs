//! Attacks by ordinary logins through pgveil (issue 9): each test tries one way to store
//! plaintext in a protected column, to read protected values without an audit record, or to
//! see what the policy hides, and asserts that it is refused or harmless. Every proxy here is
//! tapped: a registered plaintext that reaches PostgreSQL fails the test even when the
//! statement is refused afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "adversarial/cursors.rs"]
mod cursors;

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
    // Concurrent GRANTs on the same schema's sequences fail with "tuple concurrently
    // updated": tests of this file set up one at a time.
    static SETUP: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = SETUP.lock().unwrap_or_else(|e| e.into_inner());
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

/// `n` copies of a list, one after the other.
trait ConcatN {
    fn concat_n(&self, n: usize) -> Self;
}

impl<T: Clone> ConcatN for Vec<T> {
    fn concat_n(&self, n: usize) -> Self {
        (0..n).flat_map(|_| self.iter().cloned()).collect()
    }
}

/// What a client reads back from `patients.ssn`, in id order.
async fn ssns(client: &tokio_postgres::Client, s: &Schema) -> Vec<Option<String>> {
    let rows = client
        .simple_query(&format!("SELECT ssn FROM {} ORDER BY id", s.patients))
        .await
        .unwrap();
    values(&rows)
}

#[tokio::test(flavor = "multi_thread")]
async fn unnest_into_a_protected_column_is_encrypted_element_by_element() {
    let (_dir, s, proxy) = start("unnest");
    secrets(["111-22-3331", "111-22-3332"]);
    let clinician = as_role(&proxy, CLINICIAN).await;
    let masked = as_role(&proxy, MASKED).await;
    let names = vec!["Ann".to_string(), "Bob".to_string()];
    let ssn_values = vec!["111-22-3331".to_string(), "111-22-3332".to_string()];
    let forms = [
        format!(
            "INSERT INTO {} (name, ssn) SELECT * FROM UNNEST($1::text[], $2::text[])",
            s.patients
        ),
        format!(
            "INSERT INTO {} (name, ssn) SELECT * FROM UNNEST($1::varchar[], $2::varchar[])",
            s.patients
        ),
        format!(
            "INSERT INTO {} (name, ssn) SELECT a, b FROM UNNEST($1::text[], $2::text[]) AS u(a, b)",
            s.patients
        ),
    ];
    // Every form, by a role that reads plaintext and by one that reads a mask.
    for client in [&clinician, &masked] {
        for sql in &forms {
            let inserted = client.execute(sql, &[&names, &ssn_values]).await.unwrap();
            assert_eq!(inserted, 2, "{sql}");
        }
    }
    let expected: Vec<Option<String>> = ssn_values.iter().cloned().map(Some).collect();
    assert_eq!(ssns(&clinician, &s).await, expected.concat_n(6));
    assert_eq!(
        ssns(&masked, &s).await,
        vec![
            Some("*******3331".to_string()),
            Some("*******3332".to_string())
        ]
        .concat_n(6)
    );
    // A role denied the column can still write it, and what it wrote is ciphertext.
    let denied = as_role(&proxy, DENIED).await;
    denied
        .execute(&forms[0], &[&names, &ssn_values])
        .await
        .unwrap();
    // bytea arrays cannot be proven to be pgveil's ciphertext.
    let bytes: Vec<Vec<u8>> = ssn_values.iter().map(|s| s.as_bytes().to_vec()).collect();
    for sql in [
        format!(
            "INSERT INTO {} (name, ssn) SELECT * FROM UNNEST($1::text[], $2::bytea[])",
            s.patients
        ),
        format!(
            "INSERT INTO {} (name, ssn) SELECT * FROM UNNEST($1::text[]) AS a, UNNEST($2::bytea[]) AS b",
            s.patients
        ),
    ] {
        let answer = clinician.execute(&sql, &[&names, &bytes]).await;
        let error = answer.expect_err(&sql);
        assert_eq!(error.code().map(|c| c.code()), Some("0A000"), "{sql}: {error}");
    }
    // Other set-returning functions into a protected column: refused before anything goes up.
    for sql in [
        format!(
            "INSERT INTO {} (name, ssn) SELECT * FROM json_to_record($1::json) AS x(a text, b text)",
            s.patients
        ),
        format!(
            "INSERT INTO {} (ssn) SELECT unnest($1::text[])",
            s.patients
        ),
        format!(
            "INSERT INTO {} (ssn) SELECT * FROM pg_catalog.unnest($1::text[])",
            s.patients
        ),
    ] {
        let answer = clinician.execute(&sql, &[&ssn_values]).await;
        let error = answer.expect_err(&sql);
        assert_eq!(error.code().map(|c| c.code()), Some("0A000"), "{sql}: {error}");
    }
    assert_only_ciphertext(&s.patients, "ssn");
}

#[tokio::test(flavor = "multi_thread")]
async fn psycopg_arrays_are_encrypted_however_bound() {
    let (_dir, s, proxy) = start("unnestpy");
    secrets(["141-22-3331", "141-22-3332"]);
    let out = run_python("unnest.py", proxy.port(), CLINICIAN, &[&s.patients]);
    assert!(out.contains("unnest ok"), "{out}");
    assert_only_ciphertext(&s.patients, "ssn");
}

/// A one-dimensional text array in PostgreSQL's text form.
fn text_array(items: &[Option<&str>]) -> Vec<u8> {
    let inner: Vec<String> = items
        .iter()
        .map(|i| match i {
            None => "NULL".to_string(),
            Some(v) => format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")),
        })
        .collect();
    format!("{{{}}}", inner.join(",")).into_bytes()
}

#[tokio::test(flavor = "multi_thread")]
async fn array_parameters_in_text_form_with_nulls_pipelined() {
    let (_dir, s, proxy) = start("unnestraw");
    secrets(["121-22-3331", "121-22-3332", "121-22-3333"]);
    let mut raw = Raw::connect(proxy.port()).await;
    let sql = format!(
        "INSERT INTO {} (name, ssn) SELECT * FROM UNNEST($1::text[], $2::text[]) RETURNING ssn",
        s.patients
    );
    let names = text_array(&[Some("Ann"), Some("Bob"), Some("Cy")]);
    let first = text_array(&[Some("121-22-3331"), None, Some("121-22-3332")]);
    let second = text_array(&[Some("121-22-3333"), None, None]);
    // Two statements in one pipeline, one Sync: the ParameterDescription shows text[].
    let answer = raw
        .batch(&[
            Raw::parse("ins", &sql, &[]),
            Raw::describe(b'S', "ins"),
            Raw::bind("", "ins", &[Some(&names), Some(&first)], &[0, 0], 0),
            Raw::execute("", 0),
            Raw::bind("", "ins", &[Some(&names), Some(&second)], &[0, 0], 0),
            Raw::execute("", 0),
            Raw::sync(),
        ])
        .await;
    assert!(!answer.iter().any(|m| m.tag == b'E'), "{}", tags(&answer));
    let described = answer.iter().find(|m| m.tag == b't').unwrap();
    assert_eq!(described.param_types(), vec![1009, 1009]);
    let returned: Vec<Option<Vec<u8>>> = answer
        .iter()
        .filter(|m| m.tag == b'D')
        .flat_map(|m| m.values())
        .collect();
    let expected: Vec<Option<Vec<u8>>> = [
        Some("121-22-3331"),
        None,
        Some("121-22-3332"),
        Some("121-22-3333"),
        None,
        None,
    ]
    .iter()
    .map(|v| v.map(|v| v.as_bytes().to_vec()))
    .collect();
    assert_eq!(returned, expected);
    // A malformed array is a value error, and nothing of it goes up.
    let bad = b"{\"121-22-3331\",{x}}".to_vec();
    let answer = raw
        .batch(&[
            Raw::bind("", "ins", &[Some(&names), Some(&bad)], &[0, 0], 0),
            Raw::execute("", 0),
            Raw::sync(),
        ])
        .await;
    let error = answer.iter().find(|m| m.tag == b'E').expect("accepted");
    assert_eq!(error.field(b'C').as_deref(), Some("22P02"));
    assert_only_ciphertext(&s.patients, "ssn");
}

#[tokio::test(flavor = "multi_thread")]
async fn orm_bulk_inserts_are_encrypted() {
    let (_dir, s, proxy) = start("orm");
    secrets(["131-22-3331", "131-22-3332", "131-22-3333", "131-22-3334"]);
    let clinician = as_role(&proxy, CLINICIAN).await;
    // Django 5.2 bulk_create on PostgreSQL: literal arrays (simple protocol here).
    let django = format!(
        "INSERT INTO {0} (name, ssn) SELECT * FROM UNNEST((ARRAY['Ann', 'Bob'])::varchar[], (ARRAY['131-22-3331', NULL])::text[]) RETURNING {0}.id, {0}.ssn",
        s.patients
    );
    let rows = clinician.simple_query(&django).await.unwrap();
    assert_eq!(values(&rows)[1], Some("131-22-3331".to_string()));
    assert_eq!(values(&rows)[3], None);
    // ... and the same text by the extended protocol.
    let rows = clinician.query(&django, &[]).await.unwrap();
    assert_eq!(
        rows[0].get::<_, Option<String>>(1).as_deref(),
        Some("131-22-3331")
    );
    // Arrays in text form (psycopg's client-side binding), NULL elements kept.
    secret("131-22-3335");
    let text_form = format!(
        "INSERT INTO {0} (name, ssn) SELECT * FROM UNNEST('{{Fay,Gus}}'::text[], '{{\"131-22-3335\",NULL}}'::text[]) RETURNING {0}.ssn",
        s.patients
    );
    let rows = clinician.simple_query(&text_form).await.unwrap();
    assert_eq!(values(&rows), vec![Some("131-22-3335".to_string()), None]);
    // SQLAlchemy 2 insertmanyvalues.
    let sqlalchemy = format!(
        "INSERT INTO {0} (name, ssn) SELECT p0::VARCHAR, p1::VARCHAR FROM (VALUES ($1::VARCHAR, $2::VARCHAR, 0), ($3::VARCHAR, $4::VARCHAR, 1)) AS imp_sen(p0, p1, sen_counter) ORDER BY sen_counter RETURNING {0}.id, {0}.ssn",
        s.patients
    );
    let rows = clinician
        .query(&sqlalchemy, &[&"Cy", &"131-22-3332", &"Di", &"131-22-3333"])
        .await
        .unwrap();
    let back: Vec<Option<String>> = rows.iter().map(|r| r.get(1)).collect();
    assert_eq!(
        back,
        vec![
            Some("131-22-3332".to_string()),
            Some("131-22-3333".to_string())
        ]
    );
    // Its literal form (simple protocol), read back by a masked role.
    let literal = format!(
        "INSERT INTO {0} (name, ssn) SELECT p0::VARCHAR, p1::VARCHAR FROM (VALUES ('Ed'::VARCHAR, '131-22-3334'::VARCHAR, 0)) AS imp_sen(p0, p1, sen_counter) ORDER BY sen_counter RETURNING {0}.id",
        s.patients
    );
    clinician.simple_query(&literal).await.unwrap();
    let masked = as_role(&proxy, MASKED).await;
    let shown = ssns(&masked, &s).await;
    assert_eq!(
        shown.last().cloned().flatten().as_deref(),
        Some("*******3334")
    );
    // The VALUES column also used elsewhere: refused.
    let both = format!(
        "INSERT INTO {0} (name, ssn) SELECT p1, p1 FROM (VALUES ('131-22-3334')) AS v(p1)",
        s.patients
    );
    let error = clinician.simple_query(&both).await.unwrap_err();
    assert_eq!(error.code().map(|c| c.code()), Some("0A000"));
    assert_only_ciphertext(&s.patients, "ssn");
}

// ---------------------------------------------------------------------------------------
// 3. Name resolution: temporary objects, and another session's objects.

#[tokio::test(flavor = "multi_thread")]
async fn a_temporary_table_dropped_earlier_in_the_same_query_does_not_hide_the_real_one() {
    let (_dir, s, proxy) = start("temp");
    secrets(["333-44-5551", "333-44-5552"]);
    let client = as_role(&proxy, CLINICIAN).await;
    // A search path change and DDL that depends on it, in one Query: refused as well.
    let together = format!(
        "SET search_path = pg_temp, public; CREATE TEMP TABLE {} (id int, name text, ssn text, diagnosis text)",
        s.patients
    );
    let error = client.simple_query(&together).await.unwrap_err();
    assert_eq!(error.code().map(|c| c.code()), Some("0A000"), "{error}");
    client
        .simple_query("SET search_path = pg_temp, public")
        .await
        .unwrap();
    client
        .simple_query(&format!(
            "CREATE TEMP TABLE {} (id int, name text, ssn text, diagnosis text)",
            s.patients
        ))
        .await
        .unwrap();
    for attack in [
        format!(
            "DROP TABLE pg_temp.{0}; INSERT INTO {0} (name, ssn) VALUES ('Eve', '333-44-5551')",
            s.patients
        ),
        format!(
            "BEGIN; ALTER TABLE pg_temp.{0} RENAME TO gone; INSERT INTO {0} (name, ssn) VALUES ('Eve', '333-44-5551'); COMMIT",
            s.patients
        ),
    ] {
        let error = client.simple_query(&attack).await.unwrap_err();
        assert_eq!(error.code().map(|c| c.code()), Some("0A000"), "{attack}: {error}");
        assert!(db_error(&error).1.contains("separately"), "{error:?}");
        client.simple_query("ROLLBACK").await.unwrap();
    }
    // Sent separately, each statement resolves as the database does.
    client
        .simple_query(&format!("DROP TABLE pg_temp.{}", s.patients))
        .await
        .unwrap();
    client
        .simple_query(&format!(
            "INSERT INTO {} (name, ssn) VALUES ('Eve', '333-44-5552')",
            s.patients
        ))
        .await
        .unwrap();
    let back = client
        .simple_query(&format!(
            "SELECT ssn FROM {} WHERE name = 'Eve'",
            s.patients
        ))
        .await
        .unwrap();
    assert_eq!(values(&back), vec![Some("333-44-5552".to_string())]);
    assert_only_ciphertext(&s.patients, "ssn");
}

#[tokio::test(flavor = "multi_thread")]
async fn another_sessions_temporary_view_changes_nothing_here() {
    let (_dir, s, proxy) = start("tview");
    secret("555-66-7771");
    let first = as_role(&proxy, CLINICIAN).await;
    first
        .simple_query(&format!(
            "CREATE TEMP VIEW e AS SELECT * FROM {}",
            s.patients
        ))
        .await
        .unwrap();
    // In its own session the view is refused (pgveil cannot see through it) ...
    let error = first.simple_query("SELECT * FROM e").await.unwrap_err();
    assert_eq!(error.code().map(|c| c.code()), Some("0A000"), "{error}");
    let error = first.query("SELECT ssn FROM e", &[]).await.unwrap_err();
    assert_eq!(error.code().map(|c| c.code()), Some("0A000"), "{error}");
    // ... and nowhere else, whatever the letters of the statement.
    for role in [CLINICIAN, MASKED, DENIED] {
        let second = as_role(&proxy, role).await;
        if role == CLINICIAN {
            insert_patient(&second, &s, "Nell", "555-66-7771").await;
        }
        let rows = second
            .simple_query(&format!(
                "SELECT name FROM {} e WHERE e.name = 'Nell'",
                s.patients
            ))
            .await
            .unwrap();
        assert_eq!(values(&rows), vec![Some("Nell".to_string())], "{role}");
        let rows = second
            .query(
                &format!("SELECT name AS e FROM {} WHERE name = $1", s.patients),
                &[&"Nell"],
            )
            .await
            .unwrap();
        assert_eq!(rows.len(), 1, "{role}");
        second
            .simple_query("SELECT 'select everything here' AS e")
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn names_that_merely_contain_a_protected_name_are_not_refused() {
    let (_dir, s, proxy) = start("words");
    let plain = format!("{}_plain", s.patients);
    cluster().psql(&format!(
        "DROP TABLE IF EXISTS {plain}; CREATE TABLE {plain} (id int, ssn text); GRANT ALL ON {plain} TO {CLINICIAN}"
    ));
    let client = as_role(&proxy, CLINICIAN).await;
    for sql in [
        format!("BEGIN; LOCK TABLE {plain}; COMMIT"),
        format!(
            "DROP SEQUENCE IF EXISTS {0}_id_seq2; CREATE SEQUENCE {0}_id_seq2",
            s.patients
        ),
        format!("SELECT 'SELECT * FROM {}' AS q", s.patients),
        format!("NOTIFY adv_words, 'INSERT INTO {}'", s.patients),
        format!("INSERT INTO {plain} (id, ssn) VALUES (1, 'not-protected')"),
    ] {
        client
            .simple_query(&sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let rows = client
        .query(&format!("SELECT ssn FROM {plain} WHERE id = $1"), &[&1i32])
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, String>(0), "not-protected");
}

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

#[tokio::test(flavor = "multi_thread")]
async fn whole_rows_never_carry_a_denied_column() {
    let (_dir, s, proxy) = start("rows");
    secret("121-21-2121");
    let clinician = as_role(&proxy, CLINICIAN).await;
    insert_patient(&clinician, &s, "Pia", "121-21-2121").await;
    let attacks = [
        format!("SELECT ARRAY[p.*] FROM {} p", s.patients),
        format!("SELECT p FROM {} p", s.patients),
        format!("SELECT row_to_json(p) FROM {} p", s.patients),
        format!("SELECT to_jsonb(p.*) FROM {} p", s.patients),
        format!(
            "SELECT 1 FROM (SELECT ssn FROM {0}) a, (SELECT ssn FROM {0}) b WHERE a.* = b.*",
            s.patients
        ),
        format!(
            "SELECT 1 FROM (SELECT ssn FROM {0}) a, (SELECT ssn FROM {0}) b WHERE (a.*) IS NOT DISTINCT FROM (b.*)",
            s.patients
        ),
        format!("SELECT ROW(p.*)::text FROM {} p", s.patients),
        format!("SELECT x FROM (SELECT id, ssn FROM {}) x", s.patients),
        format!("SELECT p FROM {} p, generate_series(1, 2) g", s.patients),
    ];
    // Every role, simple and extended protocol: refused, whatever the role may read.
    for role in [CLINICIAN, MASKED, DENIED] {
        let client = as_role(&proxy, role).await;
        for sql in &attacks {
            let simple = client.simple_query(sql).await.expect_err(sql);
            assert_eq!(db_error(&simple).0, "0A000", "{role}: {sql}: {simple:?}");
            let extended = client.query(sql.as_str(), &[]).await.expect_err(sql);
            assert_eq!(
                db_error(&extended).0,
                "0A000",
                "{role}: {sql}: {extended:?}"
            );
        }
    }
    // Pipelined: the refused statement errors in order and the batch is discarded to Sync.
    let mut raw = Raw::connect(proxy.port()).await;
    let answer = raw
        .batch(&[
            Raw::parse("", "SELECT 1", &[]),
            Raw::bind("", "", &[], &[], 0),
            Raw::execute("", 0),
            Raw::parse("", &attacks[0], &[]),
            Raw::bind("", "", &[], &[], 0),
            Raw::execute("", 0),
            Raw::sync(),
        ])
        .await;
    let error = answer.iter().find(|m| m.tag == b'E').expect("not refused");
    assert_eq!(error.field(b'C').as_deref(), Some("0A000"));
    assert!(!answer.iter().filter(|m| m.tag == b'D').any(|m| {
        m.values()
            .into_iter()
            .flatten()
            .any(|v| v.windows(2).any(|w| w == b"\\x") || v.starts_with(&[1]))
    }));
    // Rows without a protected column are still whole rows.
    let rows = clinician
        .simple_query(&format!(
            "SELECT row_to_json(x) FROM (SELECT id, name FROM {}) x",
            s.patients
        ))
        .await
        .unwrap();
    assert!(values(&rows)[0].as_deref().unwrap().contains("Pia"));
}

// ---------------------------------------------------------------------------------------
// 4. Every release is audited: cursors and portals fetched by name.

/// Rows recorded as read from `table` in records after `after` records.
fn audited_rows(dir: &Path, after: usize) -> u64 {
    common::audit_records(dir)
        .iter()
        .skip(after)
        .filter(|r| r["outcome"] == "ok")
        .filter_map(|r| r["rows"].as_u64())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_fetched_from_a_cursor_are_audited() {
    let (dir, s, proxy) = start("cursor");
    secrets(["444-55-6661", "444-55-6662"]);
    let client = as_role(&proxy, CLINICIAN).await;
    insert_patient(&client, &s, "Quin", "444-55-6661").await;
    insert_patient(&client, &s, "Rae", "444-55-6662").await;
    let before = common::audit_records(dir.path()).len();
    let messages = client
        .simple_query(&format!(
            "BEGIN; DECLARE c CURSOR FOR SELECT id, ssn FROM {} ORDER BY id; FETCH ALL FROM c",
            s.patients
        ))
        .await
        .unwrap();
    assert_eq!(
        values(&messages),
        ["1", "444-55-6661", "2", "444-55-6662"].map(|v| Some(v.to_string()))
    );
    client.simple_query("COMMIT").await.unwrap();
    wait_for(
        || audited_rows(dir.path(), before) >= 2,
        "an audit record of the fetched rows",
    );
    let fetch = fetch_records(dir.path(), before);
    assert_eq!(fetch.len(), 1, "{fetch:#?}");
    assert_eq!(fetch[0]["rows"], 2);
    assert_eq!(
        fetch[0]["subjects"][format!("public.{}", s.patients)],
        serde_json::json!(["1", "2"])
    );
}

/// Records of FETCH statements that returned rows, after `after` records.
fn fetch_records(dir: &Path, after: usize) -> Vec<serde_json::Value> {
    common::audit_records(dir)
        .into_iter()
        .skip(after)
        .filter(|r| r["outcome"] == "ok")
        .filter(|r| {
            r["fingerprint"]
                .as_str()
                .is_some_and(|f| f.trim_start().to_ascii_lowercase().starts_with("fetch"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_protocol_portal_fetched_by_sql_is_audited_or_refused() {
    let (dir, s, proxy) = start("portal");
    secrets(["454-55-6661"]);
    let client = as_role(&proxy, CLINICIAN).await;
    insert_patient(&client, &s, "Sol", "454-55-6661").await;
    let before = common::audit_records(dir.path()).len();
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
    assert_eq!(released.len(), 1, "{}", tags(&fetched));
    wait_for(
        || fetch_records(dir.path(), before).len() == 1,
        "an audit record of the rows fetched from the portal",
    );
    let record = &fetch_records(dir.path(), before)[0];
    assert_eq!(record["rows"], 1);
    assert_eq!(
        record["subjects"][format!("public.{}", s.patients)],
        serde_json::json!(["1"])
    );
    // Nothing decrypted may leave as ciphertext either.
    for m in fetched.iter().filter(|m| m.tag == b'D') {
        for value in m.values().into_iter().flatten() {
            assert!(!value.starts_with(&[1u8]) && !value.starts_with(b"\\x01"));
        }
    }
}
