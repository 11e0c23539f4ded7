//! Issue #4: per-role column policies (plaintext, masked, denied) for login users in nested
//! roles, through tokio-postgres (binary, extended protocol) and psql (text, simple protocol).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::OnceLock;

use chrono::{NaiveDate, TimeZone, Utc};
use common::*;

/// Columns: (name, type, encryption, access rules).
const COLUMNS: [(&str, &str, &str, &str); 9] = [
    (
        "ssn",
        "text",
        "deterministic",
        r#"{ clinician = "plaintext", billing = "mask:last4", researcher = "deny" }"#,
    ),
    (
        "ssn_v",
        "varchar",
        "deterministic",
        r#"{ clinician = "plaintext", billing = "mask:last4", researcher = "mask:redact" }"#,
    ),
    (
        "zip",
        "text",
        "deterministic",
        r#"{ clinician = "plaintext", billing = "mask:redact", researcher = "mask:zip3" }"#,
    ),
    (
        "zip_v",
        "varchar",
        "deterministic",
        r#"{ clinician = "plaintext", researcher = "mask:zip3" }"#,
    ),
    (
        "birth",
        "date",
        "randomized",
        r#"{ clinician = "plaintext", billing = "mask:year", researcher = "mask:year" }"#,
    ),
    (
        "ts",
        "timestamp",
        "deterministic",
        r#"{ clinician = "plaintext", researcher = "mask:year" }"#,
    ),
    (
        "tstz",
        "timestamptz",
        "deterministic",
        r#"{ clinician = "plaintext", researcher = "mask:year" }"#,
    ),
    (
        "score",
        "int4",
        "deterministic",
        r#"{ clinician = "plaintext", billing = "deny", researcher = "mask:null" }"#,
    ),
    (
        "notes",
        "text",
        "randomized",
        r#"{ clinician = "plaintext", researcher = "mask:null", billing = "mask:null" }"#,
    ),
];

/// Row 1 as written (text form).
const ROW1: [(&str, &str); 9] = [
    ("ssn", "123-45-6789"),
    ("ssn_v", "987-65-4321"),
    ("zip", "02139"),
    ("zip_v", "90210-1234"),
    ("birth", "1985-07-14"),
    ("ts", "2020-06-15 13:45:00"),
    ("tstz", "2020-06-15 13:45:00+00"),
    ("score", "42"),
    ("notes", "private note"),
];

/// What a role sees: the text form, `NULL`, or `DENY`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Sees {
    Text(&'static str),
    Null,
    Deny,
}
use Sees::*;

const PLAIN: [Sees; 9] = [
    Text("123-45-6789"),
    Text("987-65-4321"),
    Text("02139"),
    Text("90210-1234"),
    Text("1985-07-14"),
    Text("2020-06-15 13:45:00"),
    Text("2020-06-15 13:45:00+00"),
    Text("42"),
    Text("private note"),
];
const BILLING: [Sees; 9] = [
    Text("*******6789"),
    Text("*******4321"),
    Text("REDACTED"),
    Deny,
    Text("1985-01-01"),
    Deny,
    Deny,
    Deny,
    Null,
];
const RESEARCHER: [Sees; 9] = [
    Deny,
    Text("REDACTED"),
    Text("02100"),
    Text("9020000000"),
    Text("1985-01-01"),
    Text("2020-01-01 00:00:00"),
    Text("2020-01-01 00:00:00+00"),
    Null,
    Null,
];
const NOTHING: [Sees; 9] = [Deny; 9];

/// The roles, created once per test binary:
/// `nurse` ∈ `clinician_group` ∈ `clinician`; `doctor` ∈ `clinician`; `biller` ∈ `billing`;
/// `res_user` ∈ `researcher`; `bill_res` ∈ billing, researcher; `boss` ∈ clinician, billing;
/// `stranger` in nothing; `super_stranger` a superuser in nothing.
fn roles() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        for group in ["clinician", "billing", "researcher"] {
            group_role(group, &[]);
        }
        group_role("clinician_group", &["clinician"]);
        login_role("nurse", "", &["clinician_group"]);
        login_role("doctor", "", &["clinician"]);
        login_role("biller", "", &["billing"]);
        login_role("res_user", "", &["researcher"]);
        login_role("bill_res", "", &["billing", "researcher"]);
        login_role("boss", "", &["clinician", "billing"]);
        login_role("stranger", "", &[]);
        login_role("super_stranger", "SUPERUSER", &[]);
        cluster().psql("GRANT ALL ON SCHEMA public TO PUBLIC");
    });
}

fn columns_toml(table: &str) -> String {
    COLUMNS
        .iter()
        .map(|(column, ty, enc, access)| {
            column_toml(table, column, ty, enc, &format!("access = {access}"))
        })
        .collect()
}

/// A proxy with the policy above and `default_access`; row 1 written through it by `nurse`.
async fn policy_proxy(t: &str, default_access: &str) -> (tempfile::TempDir, Proxy) {
    roles();
    let mut ddl =
        format!("DROP TABLE IF EXISTS {t}; CREATE TABLE {t} (id int PRIMARY KEY, name text");
    for (column, ..) in COLUMNS {
        ddl.push_str(&format!(", {column} bytea"));
    }
    ddl.push_str(&format!("); GRANT ALL ON {t} TO PUBLIC;"));
    cluster().psql(&ddl);
    let dir = tempfile::tempdir().unwrap();
    secrets(ROW1.iter().map(|(_, v)| *v).filter(|v| v.len() >= 6));
    secrets(["222-22-2222", "444-44-4444"]);
    let proxy = Proxy::start(
        &veil_config(dir.path(), default_access, &columns_toml(t)),
        dir.path(),
    );
    let c = connect_as(proxy.port(), "nurse", PASSWORD).await.unwrap();
    let names: Vec<&str> = ROW1.iter().map(|(c, _)| *c).collect();
    let values: Vec<String> = ROW1.iter().map(|(_, v)| format!("'{v}'")).collect();
    c.simple_query(&format!(
        "DELETE FROM {t}; INSERT INTO {t} (id, name, {}) VALUES (1, 'Ann', {})",
        names.join(", "),
        values.join(", ")
    ))
    .await
    .unwrap();
    (dir, proxy)
}

/// Checks every column for `user` through tokio-postgres, in binary.
async fn check_binary(port: u16, t: &str, user: &str, expected: &[Sees; 9]) {
    let c = connect_as(port, user, PASSWORD).await.unwrap();
    c.simple_query("SET TimeZone = 'UTC'").await.unwrap();
    for (i, (column, ..)) in COLUMNS.iter().enumerate() {
        let sql = format!("SELECT {column} FROM {t} WHERE id = $1");
        let result = c.query_one(&sql, &[&1i32]).await;
        let what = format!("{user} {column} (binary)");
        match expected[i] {
            Deny => {
                let (code, message) = db_error(&result.unwrap_err());
                assert_eq!(code, "42501", "{what}: {message}");
                assert!(message.contains(column), "{what}: {message}");
            }
            Null => {
                let row = result.unwrap_or_else(|e| panic!("{what}: {e:?}"));
                assert!(row_is_null(&row), "{what}: not NULL");
            }
            Text(text) => {
                let row = result.unwrap_or_else(|e| panic!("{what}: {e:?}"));
                assert_eq!(binary_as_text(&row, COLUMNS[i].1), text, "{what}");
            }
        }
    }
}

fn row_is_null(row: &tokio_postgres::Row) -> bool {
    row.get::<_, AnyValue>(0).0.is_none()
}

/// Any column's raw bytes (`None`: NULL).
struct AnyValue(Option<Vec<u8>>);

impl<'a> tokio_postgres::types::FromSql<'a> for AnyValue {
    fn from_sql(
        _: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(AnyValue(Some(raw.to_vec())))
    }
    fn from_sql_null(
        _: &tokio_postgres::types::Type,
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(AnyValue(None))
    }
    fn accepts(_: &tokio_postgres::types::Type) -> bool {
        true
    }
}

/// A binary value, printed the way PostgreSQL's text output would (UTC).
fn binary_as_text(row: &tokio_postgres::Row, ty: &str) -> String {
    assert_eq!(row.columns()[0].type_().name(), ty);
    match ty {
        "text" | "varchar" => row.get::<_, String>(0),
        "date" => row.get::<_, NaiveDate>(0).to_string(),
        "timestamp" => row
            .get::<_, chrono::NaiveDateTime>(0)
            .format("%Y-%m-%d %H:%M:%S")
            .to_string(),
        "timestamptz" => row
            .get::<_, chrono::DateTime<Utc>>(0)
            .format("%Y-%m-%d %H:%M:%S+00")
            .to_string(),
        "int4" => row.get::<_, i32>(0).to_string(),
        other => panic!("type {other}"),
    }
}

/// Checks every column for `user` through psql, in text.
fn check_psql(port: u16, t: &str, user: &str, expected: &[Sees; 9]) {
    for (i, (column, ..)) in COLUMNS.iter().enumerate() {
        let result = psql_script(
            port,
            user,
            &format!("\\set VERBOSITY verbose\nSELECT {column} FROM {t} WHERE id = 1;\n"),
        );
        let what = format!("{user} {column} (psql)");
        match expected[i] {
            Deny => {
                let err = result.unwrap_err();
                assert!(
                    err.contains("42501") && err.contains(column),
                    "{what}: {err}"
                );
            }
            Null => assert_eq!(result.unwrap(), "<NULL>\n", "{what}"),
            Text(text) => assert_eq!(result.unwrap(), format!("{text}\n"), "{what}"),
        }
    }
}

async fn check_user(port: u16, t: &str, user: &str, expected: &[Sees; 9]) {
    check_binary(port, t, user, expected).await;
    check_psql(port, t, user, expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn each_access_kind_through_binary_and_text_clients() {
    let t = "pol_t1";
    let (_dir, proxy) = policy_proxy(t, "deny").await;
    let port = proxy.port();
    // nested membership: nurse ∈ clinician_group ∈ clinician
    check_user(port, t, "nurse", &PLAIN).await;
    check_user(port, t, "doctor", &PLAIN).await;
    check_user(port, t, "biller", &BILLING).await;
    check_user(port, t, "res_user", &RESEARCHER).await;
    // named by no rule, default deny; a superuser too
    check_user(port, t, "stranger", &NOTHING).await;
    check_user(port, t, "super_stranger", &NOTHING).await;
    check_user(port, t, SUPERUSER, &NOTHING).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_most_permissive_of_several_roles_wins() {
    let t = "pol_t2";
    let (_dir, proxy) = policy_proxy(t, "deny").await;
    let port = proxy.port();
    // clinician + billing: plaintext everywhere
    check_user(port, t, "boss", &PLAIN).await;
    // billing + researcher: mask beats deny, either mask beats deny
    let c = connect_as(port, "bill_res", PASSWORD).await.unwrap();
    let row = c
        .query_one(&format!("SELECT ssn, birth, ts, score FROM {t}"), &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "*******6789");
    assert_eq!(
        row.get::<_, NaiveDate>(1),
        NaiveDate::from_ymd_opt(1985, 1, 1).unwrap()
    );
    assert_eq!(
        row.get::<_, chrono::NaiveDateTime>(2),
        NaiveDate::from_ymd_opt(2020, 1, 1)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap()
    );
    assert_eq!(row.get::<_, Option<i32>>(3), None);
    // zip_v: researcher's mask, billing not named (default deny)
    let row = c
        .query_one(&format!("SELECT zip_v FROM {t}"), &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "9020000000");
}

#[tokio::test(flavor = "multi_thread")]
async fn deny_refuses_reads_and_conditions_but_not_writes() {
    let t = "pol_t3";
    let (dir, proxy) = policy_proxy(t, "deny").await;
    let prefix = envelope_prefix(dir.path());
    let port = proxy.port();
    let c = connect_as(port, "res_user", PASSWORD).await.unwrap();
    for sql in [
        format!("SELECT * FROM {t}"),
        format!("SELECT id, ssn FROM {t}"),
        format!("SELECT id FROM {t} WHERE ssn = '123-45-6789'"),
        format!("SELECT id FROM {t} WHERE ssn IS NULL"),
        format!("SELECT count(*) FROM {t} WHERE ssn IN ('1', '2')"),
        format!("SELECT p.id FROM {t} p JOIN {t} q ON p.ssn = q.ssn"),
        format!("UPDATE {t} SET name = 'x' WHERE ssn = '123-45-6789'"),
        format!("DELETE FROM {t} WHERE ssn = '123-45-6789'"),
        format!("SELECT count(DISTINCT ssn) FROM {t}"),
        format!("INSERT INTO {t} (id, ssn) VALUES (7, '1') RETURNING ssn"),
    ] {
        for extended in [false, true] {
            let err = if extended {
                c.query(sql.as_str(), &[]).await.unwrap_err()
            } else {
                c.simple_query(&sql).await.unwrap_err()
            };
            let (code, message) = db_error(&err);
            assert_eq!(code, "42501", "{sql}: {message}");
            assert!(message.contains("ssn"), "{sql}: {message}");
        }
    }
    // with a parameter
    let err = c
        .query(
            &format!("SELECT id FROM {t} WHERE ssn = $1"),
            &[&"123-45-6789"],
        )
        .await
        .unwrap_err();
    assert_eq!(db_error(&err).0, "42501");
    // only allowed columns: fine
    let rows = c
        .query(
            &format!("SELECT id, name, zip, birth FROM {t} WHERE id = 1"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, String>(2), "02100");
    // writing a denied column works, in both protocols
    c.simple_query(&format!(
        "INSERT INTO {t} (id, name, ssn) VALUES (2, 'Bob', '222-22-2222')"
    ))
    .await
    .unwrap();
    c.execute(
        &format!("INSERT INTO {t} (id, name, ssn) VALUES ($1, 'Cy', $2)"),
        &[&3i32, &"333-33-3333"],
    )
    .await
    .unwrap();
    c.execute(
        &format!("UPDATE {t} SET ssn = $1 WHERE id = 2"),
        &[&"222-00-2222"],
    )
    .await
    .unwrap();
    // ... and psql
    psql_script(
        port,
        "res_user",
        &format!("INSERT INTO {t} (id, ssn) VALUES (4, '444-44-4444');\n"),
    )
    .unwrap();
    let err = psql_script(
        port,
        "res_user",
        &format!("\\set VERBOSITY verbose\nSELECT * FROM {t};\n"),
    )
    .unwrap_err();
    assert!(err.contains("42501"), "{err}");
    // the written values are encrypted and readable by a clinician
    let nurse = connect_as(port, "nurse", PASSWORD).await.unwrap();
    let rows = nurse
        .query(
            &format!("SELECT id, ssn FROM {t} WHERE id > 1 ORDER BY id"),
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(i32, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        got,
        [
            (2, "222-00-2222".to_string()),
            (3, "333-33-3333".to_string()),
            (4, "444-44-4444".to_string())
        ]
    );
    let stored = cluster().psql(&format!("SELECT encode(ssn, 'hex') FROM {t} WHERE id > 1"));
    assert!(stored.lines().all(|l| l.starts_with(&prefix)), "{stored}");
    // stranger (default deny) cannot even search; the session goes on
    let s = connect_as(port, "stranger", PASSWORD).await.unwrap();
    let err = s
        .simple_query(&format!("SELECT id FROM {t} WHERE zip = '02139'"))
        .await
        .unwrap_err();
    assert_eq!(db_error(&err).0, "42501");
    let rows = s
        .query(&format!("SELECT id, name FROM {t} WHERE id = 1"), &[])
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, String>(1), "Ann");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_masked_column_is_usable_in_an_equality_condition() {
    let t = "pol_t4";
    let (_dir, proxy) = policy_proxy(t, "deny").await;
    let port = proxy.port();
    let c = connect_as(port, "biller", PASSWORD).await.unwrap();
    let rows = c
        .query(
            &format!("SELECT id, ssn FROM {t} WHERE ssn = $1"),
            &[&"123-45-6789"],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, String>(1), "*******6789");
    let msgs = c
        .simple_query(&format!(
            "SELECT zip FROM {t} WHERE zip = '02139' AND ssn IN ('123-45-6789')"
        ))
        .await
        .unwrap();
    let row = msgs
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .unwrap();
    assert_eq!(row.get(0), Some("REDACTED"));
    let out = psql_script(
        port,
        "res_user",
        &format!(
            "SELECT zip, zip_v FROM {t} WHERE zip = '02139' AND ts = '2020-06-15 13:45:00';\n"
        ),
    )
    .unwrap();
    assert_eq!(out, "02100|9020000000\n");
    // masked, not searched by the mask: the mask value matches nothing
    let rows = c
        .query(
            &format!("SELECT id FROM {t} WHERE ssn = $1"),
            &[&"*******6789"],
        )
        .await
        .unwrap();
    assert!(rows.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn default_access_applies_to_roles_no_rule_names() {
    // default plaintext: a login named by no rule sees plaintext ...
    let t = "pol_t5";
    let (_dir, proxy) = policy_proxy(t, "plaintext").await;
    let port = proxy.port();
    check_user(port, t, "stranger", &PLAIN).await;
    // ... but a role a rule names keeps its rule: the login's own (unnamed) role does not
    // widen billing's mask or researcher's deny to the default
    let c = connect_as(port, "biller", PASSWORD).await.unwrap();
    let row = c
        .query_one(&format!("SELECT ssn, zip_v FROM {t}"), &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "*******6789");
    // zip_v names no billing rule: the default
    assert_eq!(row.get::<_, String>(1), "90210-1234");
    let r = connect_as(port, "res_user", PASSWORD).await.unwrap();
    let err = r
        .query_one(&format!("SELECT ssn FROM {t}"), &[])
        .await
        .unwrap_err();
    assert_eq!(db_error(&err).0, "42501");
    drop(proxy);
    // default mask:null: unnamed roles get NULL for every column, in every type
    let t = "pol_t6";
    let (_dir2, proxy) = policy_proxy(t, "mask:null").await;
    check_user(proxy.port(), t, "stranger", &[Null; 9]).await;
    check_user(proxy.port(), t, "super_stranger", &[Null; 9]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn set_role_never_widens_access() {
    let t = "pol_t7";
    let (_dir, proxy) = policy_proxy(t, "deny").await;
    let port = proxy.port();
    // to a role the login is not a member of: PostgreSQL refuses
    let c = connect_as(port, "biller", PASSWORD).await.unwrap();
    let err = c.simple_query("SET ROLE clinician").await.unwrap_err();
    assert_eq!(db_error(&err).0, "42501");
    let err = psql_script(
        port,
        "res_user",
        "\\set VERBOSITY verbose\nSET ROLE clinician;\n",
    )
    .unwrap_err();
    assert!(err.contains("42501"), "{err}");
    // to one it is a member of: no wider than the login's memberships
    c.simple_query("SET ROLE billing").await.unwrap();
    let row = c
        .query_one(&format!("SELECT ssn FROM {t}"), &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "*******6789");
    let err = c
        .query_one(&format!("SELECT score FROM {t}"), &[])
        .await
        .unwrap_err();
    assert_eq!(db_error(&err).0, "42501");
    // a superuser named by no rule may SET ROLE to anything in PostgreSQL, and even change
    // its session authorization; pgveil's access stays that of the login
    let s = connect_as(port, "super_stranger", PASSWORD).await.unwrap();
    for switch in [
        "SET ROLE clinician",
        "SET SESSION AUTHORIZATION nurse",
        "RESET ROLE",
    ] {
        s.simple_query(switch).await.unwrap();
        let err = s
            .query_one(&format!("SELECT ssn FROM {t}"), &[])
            .await
            .unwrap_err();
        assert_eq!(db_error(&err).0, "42501", "after {switch}");
        let err = s
            .simple_query(&format!("SELECT zip FROM {t}"))
            .await
            .unwrap_err();
        assert_eq!(db_error(&err).0, "42501", "after {switch}");
    }
    // psql: SET ROLE in the same session, then a read
    let err = psql_script(
        port,
        "super_stranger",
        &format!("\\set VERBOSITY verbose\nSET ROLE clinician;\nSELECT ssn FROM {t};\n"),
    )
    .unwrap_err();
    assert!(err.contains("42501"), "{err}");
    // a login in the same group through SET ROLE of a member role: nurse → clinician_group
    let n = connect_as(port, "nurse", PASSWORD).await.unwrap();
    n.simple_query("SET ROLE clinician_group").await.unwrap();
    let row = n
        .query_one(&format!("SELECT ssn FROM {t}"), &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "123-45-6789");
}

/// Memberships granted or revoked take effect for new sessions.
#[tokio::test(flavor = "multi_thread")]
async fn memberships_are_read_at_login() {
    let t = "pol_t8";
    let (_dir, proxy) = policy_proxy(t, "deny").await;
    let port = proxy.port();
    login_role("temp_clin", "", &[]);
    let c = connect_as(port, "temp_clin", PASSWORD).await.unwrap();
    assert_eq!(
        db_error(
            &c.query_one(&format!("SELECT ssn FROM {t}"), &[])
                .await
                .unwrap_err()
        )
        .0,
        "42501"
    );
    cluster().psql("GRANT clinician_group TO temp_clin");
    let c = connect_as(port, "temp_clin", PASSWORD).await.unwrap();
    let row = c
        .query_one(&format!("SELECT tstz FROM {t}"), &[])
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, chrono::DateTime<Utc>>(0),
        Utc.with_ymd_and_hms(2020, 6, 15, 13, 45, 0).unwrap()
    );
}

/// A denied column cannot be read or searched through any query shape.
#[tokio::test(flavor = "multi_thread")]
async fn deny_holds_through_every_query_shape() {
    let t = "pol_shapes";
    let (_dir, proxy) = policy_proxy(t, "deny").await;
    let c = connect_as(proxy.port(), "res_user", PASSWORD)
        .await
        .unwrap();
    let shapes = [
        format!("SELECT s FROM (SELECT ssn AS s FROM {t}) sub"),
        format!("WITH x AS (SELECT ssn FROM {t}) SELECT * FROM x"),
        format!("SELECT (SELECT ssn FROM {t} LIMIT 1)"),
        format!("SELECT ssn FROM {t} UNION ALL SELECT ssn FROM {t}"),
        format!(
            "SELECT id FROM {t} WHERE EXISTS (SELECT 1 FROM {t} q WHERE q.ssn = '123-45-6789')"
        ),
        format!("SELECT id FROM {t} WHERE id IN (SELECT id FROM {t} WHERE ssn = '123-45-6789')"),
        format!("SELECT count(*) FROM {t} GROUP BY ssn"),
        format!("SELECT DISTINCT ssn FROM {t}"),
        format!("SELECT count(ssn) FROM {t}"),
        format!("SELECT id FROM {t} WHERE ssn IS NOT NULL"),
        format!("UPDATE {t} SET name = name WHERE id = 1 RETURNING ssn"),
        format!("DELETE FROM {t} WHERE id = 99 RETURNING *"),
        format!("SELECT p.* FROM {t} p"),
        format!("SELECT id FROM {t} p WHERE p.ssn = ANY(ARRAY['123-45-6789'])"),
        format!("SELECT id, CASE WHEN ssn IS NULL THEN 1 END FROM {t}"),
    ];
    for sql in &shapes {
        for extended in [false, true] {
            let result = if extended {
                c.query(sql.as_str(), &[]).await.map(|_| ())
            } else {
                c.simple_query(sql).await.map(|_| ())
            };
            let err = result.expect_err(sql);
            let (code, message) = db_error(&err);
            assert!(
                code == "42501" || code == "0A000",
                "{sql} (extended {extended}): {code} {message}"
            );
            if code == "42501" {
                assert!(message.contains("ssn"), "{sql}: {message}");
            }
        }
    }
    // the row count of a table is not protected
    let row = c
        .query_one(&format!("SELECT count(*) FROM {t}"), &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 1);
}

/// Masks through the extended protocol's Describe and named statements, and in text results
/// of tokio-postgres' simple queries.
#[tokio::test(flavor = "multi_thread")]
async fn masks_through_prepared_statements() {
    let t = "pol_prep";
    let (_dir, proxy) = policy_proxy(t, "deny").await;
    let c = connect_as(proxy.port(), "res_user", PASSWORD)
        .await
        .unwrap();
    let stmt = c
        .prepare(&format!(
            "SELECT zip, birth, score, notes, ts FROM {t} WHERE zip = $1"
        ))
        .await
        .unwrap();
    let types: Vec<&str> = stmt.columns().iter().map(|c| c.type_().name()).collect();
    assert_eq!(types, ["text", "date", "int4", "text", "timestamp"]);
    assert_eq!(stmt.params()[0].name(), "text");
    for _ in 0..3 {
        let row = c.query_one(&stmt, &[&"02139"]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), "02100");
        assert_eq!(
            row.get::<_, NaiveDate>(1),
            NaiveDate::from_ymd_opt(1985, 1, 1).unwrap()
        );
        assert_eq!(row.get::<_, Option<i32>>(2), None);
        assert_eq!(row.get::<_, Option<String>>(3), None);
    }
    // a masked value never matches its own mask
    assert!(c.query(&stmt, &[&"02100"]).await.unwrap().is_empty());
    // deny detected at Parse: the statement cannot even be prepared
    let err = c
        .prepare(&format!("SELECT ssn FROM {t} WHERE id = $1"))
        .await
        .unwrap_err();
    assert_eq!(db_error(&err).0, "42501");
    let err = c
        .prepare(&format!("SELECT id FROM {t} WHERE ssn = $1"))
        .await
        .unwrap_err();
    assert_eq!(db_error(&err).0, "42501");
}

/// Two masks for one column (billing: last4, researcher: redact on ssn_v; billing: redact,
/// researcher: zip3 on zip): the one that shows more wins, the same in every session,
/// whatever order the database lists the roles in.
#[tokio::test(flavor = "multi_thread")]
async fn between_two_masks_the_more_revealing_wins_every_time() {
    let t = "pol_masks";
    let (_dir, proxy) = policy_proxy(t, "deny").await;
    // a second login with the same two groups, granted in the other order
    login_role("res_bill", "", &["researcher", "billing"]);
    for user in ["bill_res", "res_bill"] {
        for _ in 0..3 {
            let c = connect_as(proxy.port(), user, PASSWORD).await.unwrap();
            let row = c
                .query_one(&format!("SELECT ssn_v, zip, notes FROM {t}"), &[])
                .await
                .unwrap();
            assert_eq!(row.get::<_, String>(0), "*******4321", "{user}");
            assert_eq!(row.get::<_, String>(1), "02100", "{user}");
            assert_eq!(row.get::<_, Option<String>>(2), None, "{user}");
        }
    }
}
