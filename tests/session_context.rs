//! The session context through pgveil and a real cluster (DESIGN.md "Session context"):
//! `SET`/`RESET`/`SHOW`/`DISCARD`/`set_config` of `pgveil.*` in simple and extended protocol
//! and in a pipeline, transactions and savepoints, `require_purpose`, break-glass, signed
//! context tokens (every refusal; the token never goes upstream, into the audit log or out
//! of `SHOW`), and pooled connections switching end users (psycopg_pool, asyncpg).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use common::*;
use ed25519_dalek::{Signer as _, SigningKey};
use hmac::Mac as _;
use pgveil::audit::{AuditRecord, Outcome, SearchFilter, Subjects};
use serde_json::json;

const SSN: &str = "078-05-1120";

fn setup(table: &str) {
    cluster().psql(&format!(
        "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id int PRIMARY KEY, ssn bytea)"
    ));
}

fn config(dir: &Path, table: &str, extra: &str) -> String {
    let base = veil_config(
        dir,
        "plaintext",
        &format!(
            "require_purpose = true\nbreak_glass_roles = [\"{SUPERUSER}\"]\n\
             [audit]\ndir = \"audit\"\nsigning_key_file = \"keys/audit.key\"\n\
             [alerts]\nfile = \"alerts.jsonl\"\n\
             [[alert]]\nname = \"glass\"\nrule = \"break_glass\"\n\
             [[table]]\nname = \"{table}\"\nsubject = \"id\"\n{}{extra}",
            column_toml(
                table,
                "ssn",
                "text",
                "deterministic",
                &format!("access = {{ {SUPERUSER} = \"mask:last4\" }}")
            )
        ),
    );
    base
}

fn records(dir: &Path) -> Vec<AuditRecord> {
    pgveil::audit::search(&dir.join("audit"), &SearchFilter::default()).unwrap()
}

/// One read's context and outcome: (end_user, purpose, break_glass, outcome).
type Read = (Option<String>, Option<String>, Option<String>, Outcome);

/// The reads of the table, in order.
fn reads(dir: &Path) -> Vec<Read> {
    records(dir)
        .into_iter()
        .filter(|r| r.fingerprint.contains("SELECT ssn"))
        .map(|r| {
            (
                r.context.end_user,
                r.context.purpose,
                r.context.break_glass,
                r.outcome,
            )
        })
        .collect()
}

async fn ssn(client: &tokio_postgres::Client, table: &str) -> Result<String, (String, String)> {
    client
        .query_one(&format!("SELECT ssn FROM {table} WHERE id = $1"), &[&1i32])
        .await
        .map(|row| row.get::<_, String>(0))
        .map_err(|e| db_error(&e))
}

async fn simple(
    client: &tokio_postgres::Client,
    sql: &str,
) -> Result<Vec<String>, (String, String)> {
    let messages = client.simple_query(sql).await.map_err(|e| db_error(&e))?;
    Ok(messages
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
            _ => None,
        })
        .collect())
}

fn s(v: &str) -> Option<String> {
    Some(v.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn settings_follow_transactions_in_both_protocols() {
    let table = "ctx_patients";
    setup(table);
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(&config(dir.path(), table, ""), dir.path());
    let client = connect(proxy.port()).await;
    client
        .execute(&format!("INSERT INTO {table} VALUES (1, $1)"), &[&SSN])
        .await
        .unwrap();

    // require_purpose: no purpose, no read (and the connection stays usable).
    let (code, message) = ssn(&client, table).await.unwrap_err();
    assert_eq!(code, "42501");
    assert!(message.contains("declare a purpose of use"), "{message}");
    // Simple protocol, two settings in one Query; SHOW answers.
    simple(
        &client,
        "SET pgveil.purpose = 'treatment'; SET SESSION pgveil.end_user TO 'dr.a'",
    )
    .await
    .unwrap();
    assert_eq!(
        simple(&client, "SHOW pgveil.end_user").await.unwrap(),
        ["dr.a"]
    );
    let masked = ssn(&client, table).await.unwrap();
    assert_ne!(masked, SSN);
    assert!(masked.ends_with("1120"), "{masked}");
    // SET LOCAL lasts until the transaction ends; a rolled-back SET is undone.
    simple(&client, "BEGIN; SET LOCAL pgveil.end_user = 'dr.b'")
        .await
        .unwrap();
    ssn(&client, table).await.unwrap();
    simple(&client, "COMMIT").await.unwrap();
    ssn(&client, table).await.unwrap();
    simple(&client, "BEGIN; SET pgveil.end_user = 'dr.c'; ROLLBACK")
        .await
        .unwrap();
    ssn(&client, table).await.unwrap();
    // A failing implicit transaction undoes its SET.
    let err = simple(&client, "SET pgveil.end_user = 'dr.d'; SELECT 1/0")
        .await
        .unwrap_err();
    assert_eq!(err.0, "22012");
    assert_eq!(
        simple(&client, "SHOW pgveil.end_user").await.unwrap(),
        ["dr.a"]
    );
    ssn(&client, table).await.unwrap();
    // Extended protocol: tokio-postgres' execute is Parse/Bind/Execute/Sync.
    client
        .execute("SET pgveil.end_user = 'dr.e'", &[])
        .await
        .unwrap();
    ssn(&client, table).await.unwrap();
    // An explicit transaction in the extended protocol, rolled back.
    client.execute("BEGIN", &[]).await.unwrap();
    client
        .execute("SET pgveil.end_user = 'dr.f'", &[])
        .await
        .unwrap();
    ssn(&client, table).await.unwrap();
    client.execute("ROLLBACK", &[]).await.unwrap();
    ssn(&client, table).await.unwrap();
    // A pipeline: several Parse/Bind/Execute/Sync sent before any answer.
    // Statements prepared first, so each request is sent as soon as it is polled, in order.
    let set_g = client
        .prepare("SET pgveil.end_user = 'dr.g'")
        .await
        .unwrap();
    let set_h = client
        .prepare("SET pgveil.end_user = 'dr.h'")
        .await
        .unwrap();
    let select = client
        .prepare(&format!("SELECT ssn FROM {table} WHERE id = $1"))
        .await
        .unwrap();
    let (a, b, c, d) = tokio::join!(
        client.execute(&set_g, &[]),
        client.query_one(&select, &[&1i32]),
        client.execute(&set_h, &[]),
        client.query_one(&select, &[&1i32]),
    );
    a.unwrap();
    b.unwrap();
    c.unwrap();
    d.unwrap();
    // set_config as a statement of its own; other forms are refused.
    simple(
        &client,
        "SELECT set_config('pgveil.end_user', 'dr.i', false)",
    )
    .await
    .unwrap();
    ssn(&client, table).await.unwrap();
    let err = simple(
        &client,
        "SELECT set_config(name, 'x', false) FROM pg_settings LIMIT 1",
    )
    .await
    .unwrap_err();
    assert_eq!(err.0, "0A000", "{err:?}");
    // Unknown pgveil names are refused as PostgreSQL refuses unknown parameters.
    let err = simple(&client, "SET pgveil.enduser = 'x'")
        .await
        .unwrap_err();
    assert_eq!(err.0, "42704");
    let err = simple(&client, "SHOW pgveil.nope").await.unwrap_err();
    assert_eq!(err.0, "42704");
    // Savepoints: settings before the first SAVEPOINT survive ROLLBACK TO; after it, refused.
    simple(
        &client,
        "BEGIN; SET LOCAL pgveil.end_user = 'dr.j'; SAVEPOINT s1",
    )
    .await
    .unwrap();
    simple(&client, "ROLLBACK TO SAVEPOINT s1").await.unwrap();
    ssn(&client, table).await.unwrap();
    let err = simple(&client, "SET LOCAL pgveil.end_user = 'dr.k'")
        .await
        .unwrap_err();
    assert_eq!(err.0, "0A000");
    simple(&client, "ROLLBACK").await.unwrap();
    // Break-glass: plaintext until reset; then masked again.
    simple(&client, "SET pgveil.break_glass = 'code blue'")
        .await
        .unwrap();
    assert_eq!(ssn(&client, table).await.unwrap(), SSN);
    simple(&client, "RESET pgveil.break_glass").await.unwrap();
    assert_ne!(ssn(&client, table).await.unwrap(), SSN);
    // RESET ALL / DISCARD ALL clear everything: no purpose, no read.
    simple(&client, "RESET ALL").await.unwrap();
    assert_eq!(ssn(&client, table).await.unwrap_err().0, "42501");
    simple(&client, "SET pgveil.purpose = 'treatment'")
        .await
        .unwrap();
    ssn(&client, table).await.unwrap();
    simple(&client, "DISCARD ALL").await.unwrap();
    assert_eq!(ssn(&client, table).await.unwrap_err().0, "42501");

    // A login without a break_glass_roles role is refused break-glass.
    login_role("ctx_plain", "", &[]);
    cluster().psql(&format!("GRANT SELECT ON {table} TO ctx_plain"));
    let plain = connect_as(proxy.port(), "ctx_plain", PASSWORD)
        .await
        .unwrap();
    let err = simple(&plain, "SET pgveil.break_glass = 'why not'")
        .await
        .unwrap_err();
    assert_eq!(err.0, "42501");
    simple(&plain, "SELECT 1").await.unwrap();
    drop(plain);
    drop(client);
    proxy.shutdown();

    let none = None;
    let t = s("treatment");
    assert_eq!(
        reads(dir.path()),
        vec![
            (none.clone(), none.clone(), none.clone(), Outcome::Refused),
            (s("dr.a"), t.clone(), none.clone(), Outcome::Ok),
            (s("dr.b"), t.clone(), none.clone(), Outcome::Ok),
            (s("dr.a"), t.clone(), none.clone(), Outcome::Ok),
            (s("dr.a"), t.clone(), none.clone(), Outcome::Ok),
            (s("dr.a"), t.clone(), none.clone(), Outcome::Ok),
            (s("dr.e"), t.clone(), none.clone(), Outcome::Ok),
            (s("dr.f"), t.clone(), none.clone(), Outcome::Ok),
            (s("dr.e"), t.clone(), none.clone(), Outcome::Ok),
            (s("dr.g"), t.clone(), none.clone(), Outcome::Ok),
            (s("dr.h"), t.clone(), none.clone(), Outcome::Ok),
            (s("dr.i"), t.clone(), none.clone(), Outcome::Ok),
            (s("dr.j"), t.clone(), none.clone(), Outcome::Ok),
            (s("dr.i"), t.clone(), s("code blue"), Outcome::Ok),
            (s("dr.i"), t.clone(), none.clone(), Outcome::Ok),
            (none.clone(), none.clone(), none.clone(), Outcome::Refused),
            (none.clone(), t.clone(), none.clone(), Outcome::Ok),
            (none.clone(), none.clone(), none.clone(), Outcome::Refused),
        ]
    );
    let alerts = std::fs::read_to_string(dir.path().join("alerts.jsonl")).unwrap();
    assert!(alerts.contains("\"rule\":\"break_glass\""), "{alerts}");
    assert!(!alerts.contains(SSN));
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn sign(header: &serde_json::Value, claims: &serde_json::Value, key: &SigningKey) -> String {
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    format!("{input}.{}", b64(&key.sign(input.as_bytes()).to_bytes()))
}

#[tokio::test(flavor = "multi_thread")]
async fn only_signed_tokens_set_the_context_and_never_leave_pgveil() {
    let table = "ctx_tokens";
    setup(table);
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::from_bytes(&[9u8; 32]);
    let public = key.verifying_key();
    std::fs::create_dir_all(dir.path().join("keys")).unwrap();
    let key_text = format!("{}\n", STANDARD.encode(public.as_bytes()));
    std::fs::write(dir.path().join("keys/context.pub"), &key_text).unwrap();
    let extra =
        "[context]\ntoken_public_key_file = \"keys/context.pub\"\nmax_token_lifetime_secs = 600\n";
    let proxy = Proxy::start(&config(dir.path(), table, extra), dir.path());
    let client = connect(proxy.port()).await;
    client
        .execute(&format!("INSERT INTO {table} VALUES (1, $1)"), &[&SSN])
        .await
        .unwrap();
    let header = json!({"alg": "EdDSA", "typ": "JWT"});
    let good = sign(
        &header,
        &json!({"sub": "dr.token", "purpose": "treatment", "exp": now() + 300}),
        &key,
    );
    secret(&good);
    // A good token, in the simple protocol inside a transaction (SET LOCAL).
    simple(
        &client,
        &format!("BEGIN; SET LOCAL pgveil.context = '{good}'"),
    )
    .await
    .unwrap();
    let shown = simple(&client, "SHOW pgveil.context").await.unwrap();
    assert!(!shown.iter().any(|v| v.contains(&good)), "{shown:?}");
    ssn(&client, table).await.unwrap();
    simple(&client, "COMMIT").await.unwrap();
    // ... and in the extended protocol (session-wide).
    client
        .execute(&format!("SET pgveil.context = '{good}'"), &[])
        .await
        .unwrap();
    ssn(&client, table).await.unwrap();
    assert_eq!(
        simple(&client, "SELECT current_setting('pgveil.context')")
            .await
            .unwrap(),
        ["(signed context token)"]
    );

    // Every refusal: 28000, and the connection stays usable.
    let other = SigningKey::from_bytes(&[8u8; 32]);
    let claims = json!({"sub": "mallory", "purpose": "treatment", "exp": now() + 300});
    let payload = b64(claims.to_string().as_bytes());
    let hs256 = {
        let head = b64(json!({"alg": "HS256", "typ": "JWT"}).to_string().as_bytes());
        let input = format!("{head}.{payload}");
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(public.as_bytes()).unwrap();
        mac.update(input.as_bytes());
        format!("{input}.{}", b64(&mac.finalize().into_bytes()))
    };
    let none = format!(
        "{}.{payload}.",
        b64(json!({"alg": "none", "typ": "JWT"}).to_string().as_bytes())
    );
    let bad = [
        ("bad signature", sign(&header, &claims, &other)),
        (
            "expired",
            sign(&header, &json!({"sub": "m", "exp": now() - 10}), &key),
        ),
        (
            "over-long lifetime",
            sign(&header, &json!({"sub": "m", "exp": now() + 3600}), &key),
        ),
        ("alg none", none),
        ("HS256 with the public key", hs256),
        (
            "wrong typ",
            sign(&json!({"alg": "EdDSA", "typ": "JWE"}), &claims, &key),
        ),
        (
            "malformed base64",
            format!("{}.!!!.{}", b64(b"{}"), b64(b"x")),
        ),
        (
            "malformed JSON",
            format!("{}.{}.{}", b64(b"{not json"), payload, b64(b"sig")),
        ),
    ];
    for (what, token) in &bad {
        secret(token);
        let err = simple(&client, &format!("SET pgveil.context = '{token}'"))
            .await
            .unwrap_err();
        assert_eq!(err.0, "28000", "{what}: {err:?}");
        assert!(!err.1.contains(token.as_str()), "{what}");
        let err = client
            .execute(&format!("SET LOCAL pgveil.context = '{token}'"), &[])
            .await
            .unwrap_err();
        assert_eq!(db_error(&err).0, "28000", "{what} (extended)");
        assert_eq!(
            simple(&client, "SELECT 'still usable'").await.unwrap(),
            ["still usable"]
        );
    }
    // Inside a transaction the refusal aborts it, as PostgreSQL's errors do.
    simple(&client, "BEGIN").await.unwrap();
    let err = simple(
        &client,
        &format!("SET LOCAL pgveil.context = '{}'", bad[0].1),
    )
    .await
    .unwrap_err();
    assert_eq!(err.0, "28000");
    assert_eq!(simple(&client, "SELECT 1").await.unwrap_err().0, "25P02");
    simple(&client, "ROLLBACK").await.unwrap();
    // Plain settings are refused while tokens are required.
    let err = simple(&client, "SET pgveil.end_user = 'mallory'")
        .await
        .unwrap_err();
    assert_eq!(err.0, "28000");
    let err = simple(&client, "SET pgveil.purpose = 'research'")
        .await
        .unwrap_err();
    assert_eq!(err.0, "28000");
    // The context is still the good token's.
    ssn(&client, table).await.unwrap();
    drop(client);
    proxy.shutdown();

    let read = reads(dir.path());
    assert_eq!(read.len(), 3, "{read:?}");
    for (end_user, purpose, _, outcome) in read {
        assert_eq!(
            (end_user, purpose, outcome),
            (s("dr.token"), s("treatment"), Outcome::Ok)
        );
    }
    // The token is in no audit segment.
    for entry in std::fs::read_dir(dir.path().join("audit")).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains(&good));
        for (_, token) in &bad {
            assert!(!text.contains(token.as_str()));
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pooled_connections_switch_end_users_between_transactions() {
    let table = "ctx_pooled";
    setup(table);
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(&config(dir.path(), table, ""), dir.path());
    let client = connect(proxy.port()).await;
    let ids: Vec<i32> = (1..=8).collect();
    for id in &ids {
        client
            .execute(
                &format!("INSERT INTO {table} VALUES ($1, $2)"),
                &[id, &format!("000-00-{id:04}")],
            )
            .await
            .unwrap();
    }
    drop(client);
    let args: Vec<String> = std::iter::once(table.to_string())
        .chain(ids.iter().map(i32::to_string))
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run_python("context_pools.py", proxy.port(), SUPERUSER, &args);
    assert_eq!(out.lines().count(), 2 * ids.len(), "{out}");
    proxy.shutdown();

    let mut checked = 0;
    for record in records(dir.path()) {
        if !record.fingerprint.contains("SELECT ssn") {
            continue;
        }
        let Subjects::Known(subjects) = &record.subjects else {
            panic!("unknown subjects: {record:?}");
        };
        let ids: Vec<&str> = subjects.values().flat_map(|ids| ids.iter()).collect();
        assert_eq!(ids.len(), 1, "{record:?}");
        assert_eq!(
            record.context.end_user.as_deref(),
            Some(format!("user-{}", ids[0]).as_str()),
            "{record:?}"
        );
        assert_eq!(record.context.purpose.as_deref(), Some("treatment"));
        checked += 1;
    }
    assert_eq!(checked, 2 * ids.len());
}

/// README's Django middleware and SQLAlchemy event, run as written: each request's records
/// carry the end user of its own token, on reused connections.
#[tokio::test(flavor = "multi_thread")]
async fn readme_web_examples_declare_the_context_per_request() {
    let table = "ctx_web";
    setup(table);
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::from_bytes(&[5u8; 32]);
    std::fs::create_dir_all(dir.path().join("keys")).unwrap();
    let key_text = format!("{}\n", STANDARD.encode(key.verifying_key().as_bytes()));
    std::fs::write(dir.path().join("keys/context.pub"), &key_text).unwrap();
    let extra = "[context]\ntoken_public_key_file = \"keys/context.pub\"\n";
    let proxy = Proxy::start(&config(dir.path(), table, extra), dir.path());
    let client = connect(proxy.port()).await;
    client
        .execute(&format!("INSERT INTO {table} VALUES (1, $1)"), &[&SSN])
        .await
        .unwrap();
    drop(client);
    let header = json!({"alg": "EdDSA", "typ": "JWT"});
    let tokens: Vec<String> = ["dr.web0", "dr.web1"]
        .iter()
        .map(|user| {
            let claims = json!({"sub": user, "purpose": "treatment", "exp": now() + 300});
            sign(&header, &claims, &key)
        })
        .collect();
    for token in &tokens {
        secret(token);
    }
    let out = run_python(
        "context_web.py",
        proxy.port(),
        SUPERUSER,
        &[table, &tokens[0], &tokens[1]],
    );
    assert_eq!(out.lines().count(), 8, "{out}");
    proxy.shutdown();
    let users: Vec<Option<String>> = reads(dir.path()).into_iter().map(|r| r.0).collect();
    let expected: Vec<Option<String>> = (0..8).map(|n| s(&format!("dr.web{}", n % 2))).collect();
    assert_eq!(users, expected);
}

/// A SHOW answered as PostgreSQL answers it: one text column named after the parameter, one
/// row, tag `SHOW`. Returns the value shown.
fn shown(msgs: &[Msg], name: &str) -> String {
    let row_description = msgs.iter().find(|m| m.tag == b'T').expect("RowDescription");
    assert_eq!(
        row_description.fields(),
        vec![(name.to_string(), 0, 0, 25, 0)]
    );
    let rows: Vec<&Msg> = msgs.iter().filter(|m| m.tag == b'D').collect();
    assert_eq!(rows.len(), 1, "{}", tags(msgs));
    let complete = msgs
        .iter()
        .find(|m| m.tag == b'C')
        .expect("CommandComplete");
    assert_eq!(complete.body, b"SHOW\0");
    String::from_utf8(rows[0].values()[0].clone().unwrap()).unwrap()
}

/// Each message's answer in a raw response: splits at CommandComplete and ErrorResponse.
fn statements(msgs: &[Msg]) -> Vec<Vec<Msg>> {
    let mut out = vec![Vec::new()];
    for m in msgs {
        out.last_mut().unwrap().push(m.clone());
        if matches!(m.tag, b'C' | b'E') {
            out.push(Vec::new());
        }
    }
    out.pop();
    out
}

async fn show_extended(client: &tokio_postgres::Client, name: &str) -> String {
    let row = client
        .query_one(&format!("SHOW {name}"), &[])
        .await
        .unwrap();
    assert_eq!(row.columns()[0].name(), name);
    row.get(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn show_answers_pgveils_own_context_in_both_protocols() {
    let table = "ctx_show";
    setup(table);
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(&config(dir.path(), table, ""), dir.path());
    let mut raw = Raw::connect(proxy.port()).await;

    // Never set: an empty string (the database has no such setting yet).
    let msgs = raw.simple("SHOW pgveil.end_user").await;
    assert_eq!(tags(&msgs), "TDCZ");
    assert_eq!(shown(&msgs, "pgveil.end_user"), "");
    // A plain SET, then SHOW in the same Query: in order, the value as of that statement.
    let msgs = raw
        .simple(
            "SHOW pgveil.end_user; SET pgveil.end_user = 'dr.show'; SHOW PGVEIL.End_User; \
             SHOW pgveil.context",
        )
        .await;
    assert_eq!(tags(&msgs), "TDCCTDCTDCZ");
    let parts = statements(&msgs);
    assert_eq!(shown(&parts[0], "pgveil.end_user"), "");
    assert_eq!(parts[1][0].body, b"SET\0");
    assert_eq!(shown(&parts[2], "pgveil.end_user"), "dr.show");
    assert_eq!(shown(&parts[3], "pgveil.context"), "");

    // Extended protocol: a prepared SHOW, described and executed; it shows the value as of
    // each Execute, not as of its Parse.
    let msgs = raw
        .batch(&[
            Raw::parse("show_user", "SHOW pgveil.end_user", &[]),
            Raw::describe(b'S', "show_user"),
            Raw::bind("", "show_user", &[], &[], 0),
            Raw::describe(b'P', ""),
            Raw::execute("", 0),
            Raw::sync(),
        ])
        .await;
    assert_eq!(tags(&msgs), "1tT2TDCZ");
    assert_eq!(
        msgs[2].fields(),
        vec![("pgveil.end_user".to_string(), 0, 0, 25, 0)]
    );
    assert_eq!(shown(&msgs[4..], "pgveil.end_user"), "dr.show");
    // A pipeline: SET and SHOW, twice, before one Sync.
    let mut pipeline = Vec::new();
    for user in ["dr.p1", "dr.p2"] {
        pipeline.extend([
            Raw::parse("", &format!("SET pgveil.end_user = '{user}'"), &[]),
            Raw::bind("", "", &[], &[], 0),
            Raw::execute("", 0),
            Raw::bind("", "show_user", &[], &[], 0),
            Raw::execute("", 0),
        ]);
    }
    pipeline.push(Raw::sync());
    let msgs = raw.batch(&pipeline).await;
    assert_eq!(tags(&msgs), "12C2DC12C2DCZ");
    let parts = statements(&msgs);
    let value = |part: &[Msg]| String::from_utf8(part[1].values()[0].clone().unwrap()).unwrap();
    assert_eq!(value(&parts[1]), "dr.p1");
    assert_eq!(parts[1][2].body, b"SHOW\0");
    assert_eq!(value(&parts[3]), "dr.p2");

    // RESET: empty again (simple and extended).
    let msgs = raw
        .simple("RESET pgveil.end_user; SHOW pgveil.end_user")
        .await;
    assert_eq!(shown(&statements(&msgs)[1], "pgveil.end_user"), "");
    let msgs = raw
        .batch(&[
            Raw::bind("", "show_user", &[], &[], 1),
            Raw::execute("", 0),
            Raw::sync(),
        ])
        .await;
    assert_eq!(tags(&msgs), "2DCZ");
    assert_eq!(msgs[1].values(), vec![Some(Vec::new())]);

    // A SET LOCAL shows until its transaction is rolled back.
    let msgs = raw
        .simple("BEGIN; SET LOCAL pgveil.purpose = 'research'; SHOW pgveil.purpose")
        .await;
    assert_eq!(shown(&statements(&msgs)[2], "pgveil.purpose"), "research");
    let msgs = raw.simple("ROLLBACK; SHOW pgveil.purpose").await;
    assert_eq!(shown(&statements(&msgs)[1], "pgveil.purpose"), "");
    // In a failed transaction SHOW fails, as PostgreSQL's does.
    let code = |msgs: &[Msg]| {
        msgs.iter()
            .filter(|m| m.tag == b'E')
            .find_map(|m| m.field(b'C'))
    };
    let msgs = raw.simple("BEGIN; SELECT 1/0").await;
    assert_eq!(code(&msgs).as_deref(), Some("22012"));
    let msgs = raw.simple("SHOW pgveil.purpose").await;
    assert_eq!(code(&msgs).as_deref(), Some("25P02"));
    raw.simple("ROLLBACK").await;
    let err = simple(&connect(proxy.port()).await, "SHOW pgveil.nope")
        .await
        .unwrap_err();
    assert_eq!(err.0, "42704");

    // Through a client library: break-glass and a rolled-back SET LOCAL, both protocols.
    let client = connect(proxy.port()).await;
    simple(&client, "SET pgveil.break_glass = 'code blue'")
        .await
        .unwrap();
    assert_eq!(
        show_extended(&client, "pgveil.break_glass").await,
        "code blue"
    );
    client.execute("BEGIN", &[]).await.unwrap();
    client
        .execute("SET LOCAL pgveil.break_glass = 'code red'", &[])
        .await
        .unwrap();
    assert_eq!(
        show_extended(&client, "pgveil.break_glass").await,
        "code red"
    );
    client.execute("ROLLBACK", &[]).await.unwrap();
    assert_eq!(
        simple(&client, "SHOW pgveil.break_glass").await.unwrap(),
        ["code blue"]
    );
    simple(&client, "RESET ALL").await.unwrap();
    assert_eq!(show_extended(&client, "pgveil.break_glass").await, "");
    drop(client);
    proxy.shutdown();
}

#[tokio::test(flavor = "multi_thread")]
async fn show_answers_what_a_token_set_and_never_the_token() {
    let table = "ctx_show_token";
    setup(table);
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::from_bytes(&[7u8; 32]);
    std::fs::create_dir_all(dir.path().join("keys")).unwrap();
    let key_text = format!("{}\n", STANDARD.encode(key.verifying_key().as_bytes()));
    std::fs::write(dir.path().join("keys/context.pub"), &key_text).unwrap();
    let extra = "[context]\ntoken_public_key_file = \"keys/context.pub\"\n";
    let proxy = Proxy::start(&config(dir.path(), table, extra), dir.path());
    let client = connect(proxy.port()).await;
    let header = json!({"alg": "EdDSA", "typ": "JWT"});
    let claims = |user: &str, glass: Option<&str>| {
        let mut c = json!({"sub": user, "purpose": "treatment", "exp": now() + 300});
        if let Some(reason) = glass {
            c["break_glass"] = json!(reason);
        }
        sign(&header, &c, &key)
    };
    let session = claims("dr.session", Some("code blue"));
    let local = claims("dr.local", None);
    secret(&session);
    secret(&local);
    let all = "SHOW pgveil.end_user; SHOW pgveil.purpose; SHOW pgveil.break_glass; \
               SHOW pgveil.context";
    // Never set (no plain SET is allowed here, so the database has no copy): empty.
    assert_eq!(simple(&client, all).await.unwrap(), ["", "", "", ""]);
    assert_eq!(show_extended(&client, "pgveil.end_user").await, "");
    // A session token: the three settings from its claims; pgveil.context shows nothing.
    simple(&client, &format!("SET pgveil.context = '{session}'"))
        .await
        .unwrap();
    assert_eq!(
        simple(&client, all).await.unwrap(),
        ["dr.session", "treatment", "code blue", ""]
    );
    assert_eq!(
        show_extended(&client, "pgveil.end_user").await,
        "dr.session"
    );
    assert_eq!(show_extended(&client, "pgveil.purpose").await, "treatment");
    assert_eq!(
        show_extended(&client, "pgveil.break_glass").await,
        "code blue"
    );
    assert_eq!(show_extended(&client, "pgveil.context").await, "");
    // A SET LOCAL token (extended protocol), rolled back: the session token's again.
    client.execute("BEGIN", &[]).await.unwrap();
    client
        .execute(&format!("SET LOCAL pgveil.context = '{local}'"), &[])
        .await
        .unwrap();
    assert_eq!(
        simple(&client, all).await.unwrap(),
        ["dr.local", "treatment", "", ""]
    );
    client.execute("ROLLBACK", &[]).await.unwrap();
    assert_eq!(
        show_extended(&client, "pgveil.end_user").await,
        "dr.session"
    );
    // RESET of the token clears all three.
    simple(&client, "RESET pgveil.context").await.unwrap();
    assert_eq!(simple(&client, all).await.unwrap(), ["", "", "", ""]);
    drop(client);
    proxy.shutdown();
}
