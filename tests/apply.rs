//! Defense in depth (DESIGN.md; issue 9): `pgveil apply [--execute]` makes PostgreSQL itself
//! refuse plaintext in protected columns (23514) and reads of denied columns (42501), for
//! direct connections and dynamic SQL that pgveil cannot see; `check --live` warns until it
//! is done; everything that worked through pgveil still works afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use chrono::NaiveDate;
use common::*;

fn pgveil(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgveil"));
    for var in ["PGHOST", "PGPORT", "PGVEIL_MASTER_KEY", "RUST_LOG"] {
        cmd.env_remove(var);
    }
    cmd.args(args)
        .env("PGUSER", SUPERUSER)
        .env("PGPASSWORD", PASSWORD)
        .env("PGDATABASE", "postgres")
        .output()
        .unwrap()
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn succeeds(o: &Output) -> (String, String) {
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    (out(o), err(o))
}

/// Access rules: clinicians read plaintext, billing masks, everyone else (default) denied.
const SSN_ACCESS: &str = r#"access = { ap_clinician = "plaintext", ap_billing = "mask:last4" }"#;
const BIRTH_ACCESS: &str = r#"access = { ap_clinician = "plaintext", ap_billing = "mask:year" }"#;

/// Roles, the table (granted table-wide, as applications usually are) and a configuration
/// file for it in `dir`.
fn setup(dir: &Path) -> PathBuf {
    let cluster = cluster();
    group_role("ap_clinician", &[]);
    group_role("ap_billing", &[]);
    login_role("ap_alice", "", &["ap_clinician"]);
    login_role("ap_bob", "", &["ap_billing"]);
    login_role("ap_guest", "", &[]);
    cluster.psql(
        "CREATE TABLE patients (id serial PRIMARY KEY, name text, ssn bytea UNIQUE, birth_date bytea);
         GRANT SELECT, INSERT, UPDATE, DELETE ON patients TO ap_clinician, ap_billing, ap_guest;
         GRANT USAGE ON SEQUENCE patients_id_seq TO ap_clinician, ap_billing, ap_guest;",
    );
    let columns = format!(
        "[[table]]\nname = \"patients\"\nsubject = \"id\"\n{}{}",
        column_toml("patients", "ssn", "text", "deterministic", SSN_ACCESS),
        column_toml("patients", "birth_date", "date", "randomized", BIRTH_ACCESS),
    );
    let text = veil_config(dir, "deny", &columns);
    let path = dir.join("pgveil.toml");
    std::fs::write(&path, &text).unwrap();
    path
}

/// The envelope check `apply` writes for a column, under every key id of the configuration's
/// key ring (ids are derived from the master keys).
fn envelope_check(config: &Path, table: &str, column: &str, mode: &str) -> String {
    let loaded = pgveil::config::Config::load(config).unwrap();
    let ring = pgveil::server::load_key_ring(&loaded).unwrap().unwrap();
    let mode = match mode {
        "deterministic" => pgveil::schema::EncryptionMode::Deterministic,
        _ => pgveil::schema::EncryptionMode::Randomized,
    };
    let table = pgveil::schema::TableName::parse(table).unwrap();
    pgveil::crypto::constraint::EnvelopeConstraint::new(
        &table,
        column,
        column,
        mode,
        &ring.key_ids(),
    )
    .expression()
}

/// The SQLSTATE of a failed statement.
async fn sqlstate(client: &tokio_postgres::Client, sql: &str) -> String {
    match client.batch_execute(sql).await {
        Ok(()) => panic!("expected an error from {sql}"),
        Err(e) => db_error(&e).0,
    }
}

/// A direct connection to PostgreSQL (around pgveil).
async fn direct(user: &str) -> tokio_postgres::Client {
    connect_as(cluster().port, user, PASSWORD).await.unwrap()
}

/// Dynamic SQL that pgveil cannot see: the table name is built at run time.
const DO_INSERT_PLAINTEXT: &str = "DO $$ BEGIN EXECUTE 'INSERT INTO ' || 'pat' || 'ients' || ' (name, ssn) VALUES (''Eve'', convert_to(''000-00-0000-dyn'', ''UTF8''))'; END $$";
const DO_READ_SSN: &str = "DO $$ DECLARE v bytea; BEGIN EXECUTE 'SELECT ssn FROM ' || 'pat' || 'ients' || ' LIMIT 1' INTO v; END $$";

#[tokio::test(flavor = "multi_thread")]
async fn apply_makes_the_database_enforce_what_it_can() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path());
    let c = config.to_str().unwrap();
    secrets(["123-45-6789", "987-65-4321", "555-12-3456"]);

    // Before: through pgveil, a clinician writes; a direct connection could store plaintext.
    let proxy = Proxy::start(&std::fs::read_to_string(&config).unwrap(), dir.path());
    let alice = connect_as(proxy.port(), "ap_alice", PASSWORD)
        .await
        .unwrap();
    let birth = NaiveDate::from_ymd_opt(1985, 12, 10).unwrap();
    alice
        .execute(
            "INSERT INTO patients (name, ssn, birth_date) VALUES ($1, $2, $3)",
            &[&"Ada", &"123-45-6789", &birth],
        )
        .await
        .unwrap();

    // check --live warns (stderr, exit 0): no constraints, a denied role that can read.
    let (stdout, stderr) = succeeds(&pgveil(&["check", "--live", "--config", c]));
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    for what in [
        "warning: column public.patients.ssn has no constraint pgveil_envelope_ssn",
        "warning: column public.patients.birth_date has no constraint pgveil_envelope_birth_date",
        "warning: role \"ap_guest\" can read public.patients.ssn in the database though the policy denies it",
        "warning: role \"ap_guest\" can read public.patients.birth_date",
    ] {
        let line = stderr
            .lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no {what:?} in {stderr}"));
        assert!(line.starts_with(&format!("{c}:")), "not located: {line}");
    }
    // Roles the policy lets read are not reported.
    for allowed in ["ap_alice", "ap_clinician", "ap_bob", "ap_billing"] {
        assert!(!stderr.contains(&format!("\"{allowed}\"")), "{stderr}");
    }

    // apply prints the SQL and changes nothing.
    let (script, _) = succeeds(&pgveil(&["apply", "--config", c]));
    let lines: Vec<&str> = script.lines().collect();
    assert_eq!(lines[0], "BEGIN;", "{script}");
    assert_eq!(lines[1], "SET LOCAL lock_timeout = '10s';", "{script}");
    for expected in [
        &*format!(
            "ALTER TABLE public.patients ADD CONSTRAINT pgveil_envelope_ssn CHECK ({}) NOT VALID;",
            envelope_check(&config, "patients", "ssn", "deterministic")
        ),
        &*format!(
            "ALTER TABLE public.patients ADD CONSTRAINT pgveil_envelope_birth_date CHECK ({}) NOT VALID;",
            envelope_check(&config, "patients", "birth_date", "randomized")
        ),
        "REVOKE SELECT ON public.patients FROM ap_guest;",
        "GRANT SELECT (id, name) ON public.patients TO ap_guest;",
        "COMMIT;",
        "ALTER TABLE public.patients VALIDATE CONSTRAINT pgveil_envelope_ssn;",
        "ALTER TABLE public.patients VALIDATE CONSTRAINT pgveil_envelope_birth_date;",
    ] {
        assert!(lines.contains(&expected), "no {expected:?} in\n{script}");
    }
    let commit = lines.iter().position(|l| *l == "COMMIT;").unwrap();
    assert!(lines[commit + 1..].iter().all(|l| l.contains("VALIDATE")));
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("REVOKE")).count(),
        1,
        "only the denied role loses privileges: {script}"
    );
    assert_eq!(
        cluster().psql("SELECT count(*) FROM pg_constraint WHERE conrelid = 'patients'::regclass AND contype = 'c'"),
        "0\n"
    );

    // --execute runs exactly that and prints it.
    let (done, _) = succeeds(&pgveil(&["apply", "--config", c, "--execute"]));
    assert_eq!(done, script);
    assert_eq!(
        cluster().psql(
            "SELECT string_agg(conname || ':' || convalidated, ',' ORDER BY conname) FROM pg_constraint WHERE conrelid = 'patients'::regclass AND contype = 'c'"
        ),
        "pgveil_envelope_birth_date:true,pgveil_envelope_ssn:true\n"
    );

    // Idempotent: nothing left to do, and check --live is quiet about it.
    for args in [
        &["apply", "--config", c][..],
        &["apply", "--config", c, "--execute"],
    ] {
        let (stdout, _) = succeeds(&pgveil(args));
        assert_eq!(stdout, "-- nothing to do\n", "{args:?}");
    }
    let (_, stderr) = succeeds(&pgveil(&["check", "--live", "--config", c]));
    assert!(!stderr.contains("no constraint"), "{stderr}");
    assert!(!stderr.contains("ap_guest"), "{stderr}");

    // A direct connection cannot store plaintext, whoever it is (a superuser included) ...
    for user in ["ap_guest", "ap_alice", SUPERUSER] {
        let db = direct(user).await;
        assert_eq!(
            sqlstate(
                &db,
                "INSERT INTO patients (name, ssn) VALUES ('Eve', '\\x313233')"
            )
            .await,
            "23514",
            "{user}"
        );
        assert_eq!(
            sqlstate(
                &db,
                "UPDATE patients SET birth_date = convert_to('1999-01-01 plain', 'UTF8')"
            )
            .await,
            "23514",
            "{user}"
        );
        assert_eq!(sqlstate(&db, DO_INSERT_PLAINTEXT).await, "23514", "{user}");
    }
    // ... nor read a denied column: directly, as a whole row, in a condition, dynamically.
    let guest = direct("ap_guest").await;
    for sql in [
        "SELECT ssn FROM patients",
        "SELECT p FROM patients p",
        "SELECT id FROM patients WHERE birth_date IS NOT NULL",
        "SELECT * FROM patients",
        "COPY patients TO STDOUT",
        DO_READ_SSN,
    ] {
        assert_eq!(sqlstate(&guest, sql).await, "42501", "{sql}");
    }
    // What the guest may read, it still reads; writes keep their privileges.
    let rows = guest
        .query("SELECT id, name FROM patients", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    // The same dynamic SQL through pgveil meets the same database.
    let guest_veil = connect_as(proxy.port(), "ap_guest", PASSWORD)
        .await
        .unwrap();
    for (user, client) in [("ap_guest", &guest_veil), ("ap_alice", &alice)] {
        assert_eq!(
            sqlstate(client, DO_INSERT_PLAINTEXT).await,
            "23514",
            "{user}"
        );
    }
    assert_eq!(sqlstate(&guest_veil, DO_READ_SSN).await, "42501");

    // Everything that worked through pgveil still works.
    after_apply_through_pgveil(&proxy, &alice, &guest_veil).await;
    proxy.assert_no_leaks();
}

/// A representative slice through pgveil after `apply --execute`: both protocols, every
/// access level, equality, update, RETURNING, writes by a denied role.
async fn after_apply_through_pgveil(
    proxy: &Proxy,
    alice: &tokio_postgres::Client,
    guest: &tokio_postgres::Client,
) {
    let birth = NaiveDate::from_ymd_opt(1990, 2, 3).unwrap();
    // Extended protocol: insert, read back, equality on the deterministic column.
    let id: i32 = alice
        .query_one(
            "INSERT INTO patients (name, ssn, birth_date) VALUES ($1, $2, $3) RETURNING id",
            &[&"Grace", &"987-65-4321", &birth],
        )
        .await
        .unwrap()
        .get(0);
    let row = alice
        .query_one(
            "SELECT name, ssn, birth_date FROM patients WHERE ssn = $1",
            &[&"987-65-4321"],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "Grace");
    assert_eq!(row.get::<_, String>(1), "987-65-4321");
    assert_eq!(row.get::<_, NaiveDate>(2), birth);
    alice
        .execute(
            "UPDATE patients SET ssn = $1 WHERE id = $2",
            &[&"555-12-3456", &id],
        )
        .await
        .unwrap();
    // Simple protocol (psql): literals encrypted, values decrypted.
    let out = psql_script(
        proxy.port(),
        "ap_alice",
        "INSERT INTO patients (name, ssn) VALUES ('Ada 2', '111-22-3333');\n\
         SELECT ssn FROM patients WHERE id = 1;\n\
         SELECT count(*) FROM patients WHERE ssn IN ('555-12-3456', '111-22-3333');",
    )
    .unwrap();
    assert_eq!(out, "123-45-6789\n2\n");
    // Billing sees masks.
    let bob = connect_as(proxy.port(), "ap_bob", PASSWORD).await.unwrap();
    let row = bob
        .query_one("SELECT ssn, birth_date FROM patients WHERE id = 1", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "*******6789");
    assert_eq!(
        row.get::<_, NaiveDate>(1),
        NaiveDate::from_ymd_opt(1985, 1, 1).unwrap()
    );
    // The denied role: pgveil refuses the column first; its other reads and its writes work.
    let e = guest
        .query("SELECT ssn FROM patients", &[])
        .await
        .unwrap_err();
    assert_eq!(db_error(&e).0, "42501");
    let names = guest
        .query("SELECT name FROM patients ORDER BY id", &[])
        .await
        .unwrap();
    assert_eq!(names.len(), 3);
    let new: i32 = guest
        .query_one(
            "INSERT INTO patients (name, ssn) VALUES ($1, $2) RETURNING id",
            &[&"Walk-in", &"444-55-6666"],
        )
        .await
        .unwrap()
        .get(0);
    let row = alice
        .query_one("SELECT ssn FROM patients WHERE id = $1", &[&new])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "444-55-6666");
}

#[test]
fn apply_skips_what_is_not_migrated_and_replaces_outdated_constraints() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster();
    cluster.psql(
        "CREATE TABLE legacy (id int PRIMARY KEY, mrn bytea, dob date, note bytea);
         INSERT INTO legacy VALUES (1, convert_to('MRN-plain', 'UTF8'), '2000-01-01', NULL);
         ALTER TABLE legacy ADD CONSTRAINT pgveil_envelope_note CHECK (note IS NULL OR substr(note, 1, 6) = '\\x010000000952'::bytea) NOT VALID;",
    );
    let columns = format!(
        "{}{}{}",
        column_toml("legacy", "mrn", "text", "randomized", ""),
        column_toml("legacy", "dob", "date", "randomized", ""),
        column_toml("legacy", "note", "text", "randomized", ""),
    );
    let config = dir.path().join("legacy.toml");
    std::fs::write(&config, veil_config(dir.path(), "plaintext", &columns)).unwrap();
    let c = config.to_str().unwrap();

    // check --live: the outdated constraint and the plaintext column are warnings.
    let o = pgveil(&["check", "--live", "--config", c]);
    // dob is not bytea: a problem (exit 1), on stderr.
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(out(&o).is_empty(), "{o:?}");
    let stderr = err(&o);
    assert!(
        stderr.contains("legacy.dob is date in the database"),
        "{stderr}"
    );
    assert!(
        stderr.contains("warning: column public.legacy.mrn holds values without pgveil's envelope"),
        "{stderr}"
    );
    assert!(
        stderr.contains("warning: column public.legacy.note: constraint pgveil_envelope_note does not accept the current key ids"),
        "{stderr}"
    );

    let (script, stderr) = succeeds(&pgveil(&["apply", "--config", c]));
    assert!(
        stderr.contains(
            "pgveil: warning: column public.legacy.mrn holds values without pgveil's envelope"
        ) && stderr.contains("its envelope constraint is skipped"),
        "{stderr}"
    );
    assert!(
        stderr.contains("pgveil: warning: column public.legacy.dob is not bytea yet"),
        "{stderr}"
    );
    let lines: Vec<&str> = script.lines().collect();
    assert_eq!(
        lines,
        [
            "BEGIN;",
            "SET LOCAL lock_timeout = '10s';",
            "ALTER TABLE public.legacy DROP CONSTRAINT pgveil_envelope_note;",
            &*format!(
                "ALTER TABLE public.legacy ADD CONSTRAINT pgveil_envelope_note CHECK ({}) NOT VALID;",
                envelope_check(&config, "legacy", "note", "randomized")
            ),
            "COMMIT;",
            "ALTER TABLE public.legacy VALIDATE CONSTRAINT pgveil_envelope_note;",
        ],
        "{script}"
    );
    succeeds(&pgveil(&["apply", "--config", c, "--execute"]));
    let (again, _) = succeeds(&pgveil(&["apply", "--config", c]));
    assert_eq!(again, "-- nothing to do\n");
    // The plaintext column was left alone: no constraint, its row still there.
    assert_eq!(
        cluster.psql("SELECT count(*) FROM pg_constraint WHERE conname = 'pgveil_envelope_mrn'"),
        "0\n"
    );

    // A constraint added NOT VALID by hand (the right one): apply only validates it.
    cluster.psql(&format!(
        "ALTER TABLE legacy DROP CONSTRAINT pgveil_envelope_note;
         ALTER TABLE legacy ADD CONSTRAINT pgveil_envelope_note CHECK ({}) NOT VALID;",
        envelope_check(&config, "legacy", "note", "randomized")
    ));
    let (script, _) = succeeds(&pgveil(&["apply", "--config", c]));
    assert_eq!(
        script,
        "ALTER TABLE public.legacy VALIDATE CONSTRAINT pgveil_envelope_note;\n"
    );
}

#[test]
fn apply_problems_and_failures_keep_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let _ = cluster();
    // A table the database does not have: located, stderr, exit 1, nothing printed.
    let columns = column_toml("no_such_table", "ssn", "text", "deterministic", "");
    let config = dir.path().join("missing.toml");
    std::fs::write(&config, veil_config(dir.path(), "deny", &columns)).unwrap();
    let o = pgveil(&["apply", "--config", config.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(out(&o).is_empty(), "{o:?}");
    let stderr = err(&o);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!("{}:", config.display()))
            && stderr.contains("table public.no_such_table does not exist"),
        "{stderr}"
    );

    // No database there: one line, exit 2.
    let text = veil_config(dir.path(), "deny", &columns).replace(
        &format!("port = {}", cluster().port),
        &format!("port = {}", free_port()),
    );
    let config = dir.path().join("down.toml");
    std::fs::write(&config, text).unwrap();
    for execute in [false, true] {
        let mut args = vec!["apply", "--config", config.to_str().unwrap()];
        if execute {
            args.push("--execute");
        }
        let o = pgveil(&args);
        assert_eq!(o.status.code(), Some(2), "{o:?}");
        assert!(out(&o).is_empty(), "{o:?}");
        assert_eq!(err(&o).lines().count(), 1, "{o:?}");
        assert!(err(&o).starts_with("pgveil: cannot connect"), "{o:?}");
    }

    // A missing configuration file: exit 2; a relay configuration: nothing to do.
    let o = pgveil(&["apply", "--config", "/nonexistent/pgveil.toml"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let relay = dir.path().join("relay.toml");
    std::fs::write(&relay, relay_config(cluster().port, "")).unwrap();
    let (stdout, _) = succeeds(&pgveil(&["apply", "--config", relay.to_str().unwrap()]));
    assert!(stdout.starts_with("-- nothing to do"), "{stdout}");
}
