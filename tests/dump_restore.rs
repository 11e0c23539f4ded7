//! Issue #10: pg_dump and restore through pgveil. A database with protected tables is dumped
//! through pgveil by a role with plaintext access (so the dump holds plaintext, as any
//! logical dump of plaintext does), restored through pgveil into an empty database with psql
//! (plain format) or pg_restore (custom format), and every value is compared; the restored
//! database holds only ciphertext. Data goes as COPY (pg_dump's default) or as INSERTs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use common::*;

/// Protected columns of the dumped tables: (table, column, type, encryption).
const COLUMNS: [(&str, &str, &str, &str); 9] = [
    ("dump_patients", "name", "text", "deterministic"),
    ("dump_patients", "born", "date", "randomized"),
    ("dump_patients", "insured", "bool", "deterministic"),
    ("dump_patients", "score", "numeric", "randomized"),
    ("dump_patients", "notes", "jsonb", "randomized"),
    ("dump_visits", "seen", "timestamptz", "randomized"),
    ("dump_visits", "reason", "text", "randomized"),
    ("dump_visits", "scan", "bytea", "randomized"),
    ("dump_visits", "ref", "uuid", "deterministic"),
];

const SCHEMA: &str = "
CREATE TABLE dump_patients (id serial PRIMARY KEY, name bytea, born bytea, insured bytea,
    score bytea, notes bytea, ward text NOT NULL);
CREATE INDEX dump_patients_name ON dump_patients USING hash (name);
CREATE TABLE dump_visits (id bigserial PRIMARY KEY,
    patient_id int NOT NULL REFERENCES dump_patients ON DELETE CASCADE,
    seen bytea, reason bytea, scan bytea, ref bytea);
CREATE VIEW dump_wards AS SELECT ward, count(*) AS n FROM dump_patients GROUP BY ward;
";

/// Rows written through pgveil: values with quotes, tabs, newlines, backslashes and
/// non-ASCII (what COPY's text format must escape), NULLs, and a long value.
fn data() -> String {
    let long = "dump-long-secret-".repeat(400);
    format!(
        "INSERT INTO dump_patients (name, born, insured, score, notes, ward) VALUES
           ('Zoë O''Brien dump-secret-1', '1987-06-05', true, 98765.4321,
            '{{\"dx\": \"dump-json-secret\", \"codes\": [1, 2.5]}}', 'east'),
           (E'tab\\there\\nnewline\\\\back dump-secret-2', '2000-02-29', false, -0.5, NULL, 'west'),
           (NULL, NULL, NULL, NULL, NULL, 'north'),
           ('{long}', '1960-01-01', true, 0, '[]', 'east');
         INSERT INTO dump_visits (patient_id, seen, reason, scan, ref) VALUES
           (1, '2023-04-05 06:07:08.5+02', 'dump-reason-secret', '\\x00015c0aff',
            '6f1c1a4e-8b1d-4c36-9b9c-2f1e5d7a3b11'),
           (2, '1999-12-31 23:59:59.999999+00', E'line1\\nline2\\\\', NULL, NULL),
           (4, NULL, NULL, '\\x', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11');"
    )
}

struct Setup {
    _dir: tempfile::TempDir,
    proxy: Proxy,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        secrets([
            "dump-secret-1",
            "dump-secret-2",
            "dump-json-secret",
            "dump-reason-secret",
            "dump-long-secret",
            "98765.4321",
            "1987-06-05",
            "6f1c1a4e-8b1d-4c36-9b9c-2f1e5d7a3b11",
        ]);
        let mut toml = String::new();
        for (table, column, ty, encryption) in COLUMNS {
            toml.push_str(&column_toml(table, column, ty, encryption, ""));
        }
        let dir = tempfile::tempdir().unwrap();
        let proxy = Proxy::start(&veil_config(dir.path(), "plaintext", &toml), dir.path());
        cluster().psql("DROP DATABASE IF EXISTS dump_src");
        cluster().psql("CREATE DATABASE dump_src");
        psql_db(cluster().port, "dump_src", SCHEMA).unwrap();
        psql_db(proxy.port(), "dump_src", &data()).unwrap();
        Setup { _dir: dir, proxy }
    })
}

/// Runs a psql script against database `db` at `port` as the superuser; Err holds stderr.
fn psql_db(port: u16, db: &str, sql: &str) -> Result<String, String> {
    psql_script_in(port, SUPERUSER, db, sql)
}

/// Runs the psql script in `file` (a plain-format dump) like [`psql_db`].
fn psql_file(port: u16, db: &str, file: &Path) -> Result<String, String> {
    psql_db(port, db, &std::fs::read_to_string(file).unwrap())
}

fn pg_env() -> [(&'static str, &'static str); 4] {
    [
        ("PGPASSWORD", PASSWORD),
        ("PGSSLMODE", "disable"),
        ("PGCONNECT_TIMEOUT", "10"),
        ("PGOPTIONS", "-c TimeZone=UTC"),
    ]
}

/// Every value of both tables, as pgveil shows it, in a stable order.
fn contents(db: &str) -> String {
    psql_db(
        setup().proxy.port(),
        db,
        "SELECT id, name, born, insured, score, notes, ward FROM dump_patients ORDER BY id;
         SELECT id, patient_id, seen, reason, scan, ref FROM dump_visits ORDER BY id;
         SELECT id FROM dump_patients WHERE name = 'Zoë O''Brien dump-secret-1';
         SELECT last_value, is_called FROM dump_patients_id_seq;",
    )
    .unwrap()
}

/// Every stored value of the protected columns of `db` is NULL or a ciphertext; returns
/// how many ciphertexts there are.
fn ciphertexts(db: &str) -> usize {
    let mut count = 0;
    for (table, column, _, encryption) in COLUMNS {
        let mode = if encryption == "deterministic" {
            68
        } else {
            82
        };
        let out = psql_db(
            cluster().port,
            db,
            &format!(
                "SELECT count({column}), count(*) FILTER (WHERE {column} IS NOT NULL AND
                   (length({column}) < 34 OR get_byte({column}, 0) <> 1 OR get_byte({column}, 5) <> {mode}))
                 FROM {table}"
            ),
        )
        .unwrap();
        let (stored, bad) = out.trim().split_once('|').unwrap();
        assert_eq!(
            bad, "0",
            "{db}: {table}.{column} holds something other than ciphertext"
        );
        count += stored.parse::<usize>().unwrap();
    }
    count
}

/// Dumps `dump_src` through pgveil with `dump_args`, restores the dump through pgveil into
/// a new database `target` with `restore`, and compares every value.
fn round_trip(
    target: &str,
    dump_args: &[&str],
    restore: impl Fn(u16, &Path) -> Result<(), String>,
) {
    let setup = setup();
    let port = setup.proxy.port();
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("dump");
    let out = Command::new(bindir().join("pg_dump"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            SUPERUSER,
            "-d",
            "dump_src",
        ])
        .args(dump_args)
        .arg("-f")
        .arg(&dump)
        .envs(pg_env())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_dump through pgveil failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    if !dump_args.contains(&"-Fc") {
        // A dump through pgveil by a plaintext role holds plaintext (the README says so).
        let text = std::fs::read_to_string(&dump).unwrap();
        assert!(
            text.contains("dump-secret-1"),
            "the dump holds the plaintext"
        );
    }
    cluster().psql(&format!("DROP DATABASE IF EXISTS {target}"));
    cluster().psql(&format!("CREATE DATABASE {target}"));
    if let Err(e) = restore(port, &dump) {
        let text = std::fs::read_to_string(&dump).unwrap_or_default();
        panic!("restore through pgveil failed: {e}\n{text}");
    }
    setup.proxy.assert_no_leaks();
    let (want, got) = (contents("dump_src"), contents(target));
    assert!(
        want.contains("dump-secret-1") && want.contains("line1"),
        "{want}"
    );
    assert_eq!(got, want, "{target} differs from dump_src");
    // The schema came along: the view (queried through pgveil it is refused, a known limit),
    // the hash index, the sequence's owner.
    let schema =
        "SELECT pg_get_viewdef('dump_wards'), pg_get_indexdef('dump_patients_name'::regclass),
                         pg_get_serial_sequence('dump_patients', 'id')";
    assert_eq!(
        psql_db(cluster().port, target, schema).unwrap(),
        psql_db(cluster().port, "dump_src", schema).unwrap()
    );
    assert_eq!(ciphertexts(target), ciphertexts("dump_src"));
    assert!(ciphertexts(target) >= 20);
}

fn restore_with_psql(port: u16, dump: &Path, target: &str) -> Result<(), String> {
    psql_file(port, target, dump).map(|_| ())
}

#[test]
fn pg_dump_plain_copy_restored_with_psql() {
    round_trip("dump_copy", &["--no-owner"], |port, dump| {
        restore_with_psql(port, dump, "dump_copy")
    });
}

#[test]
fn pg_dump_custom_format_restored_with_pg_restore() {
    round_trip("dump_custom", &["--no-owner", "-Fc"], |port, dump| {
        let out = Command::new(bindir().join("pg_restore"))
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", SUPERUSER])
            .args(["-d", "dump_custom", "--exit-on-error", "--no-owner"])
            .arg(dump)
            .envs(pg_env())
            .output()
            .unwrap();
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    });
}

#[test]
fn pg_dump_inserts_restored_with_psql() {
    round_trip(
        "dump_inserts",
        &["--no-owner", "--inserts"],
        |port, dump| restore_with_psql(port, dump, "dump_inserts"),
    );
}

#[test]
fn pg_dump_column_inserts_restored_with_psql() {
    round_trip(
        "dump_column_inserts",
        &["--no-owner", "--column-inserts", "--rows-per-insert=3"],
        |port, dump| restore_with_psql(port, dump, "dump_column_inserts"),
    );
}

/// The encrypted backup the README recommends: pg_dump straight from PostgreSQL (COPY of
/// ciphertext), restored straight into PostgreSQL; read back through pgveil, every value is
/// there, and the dump holds no plaintext.
#[test]
fn direct_dump_holds_ciphertext_and_reads_back_through_pgveil() {
    let setup = setup();
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("dump");
    let out = Command::new(bindir().join("pg_dump"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &cluster().port.to_string(),
            "-U",
            SUPERUSER,
        ])
        .args(["-d", "dump_src", "--no-owner", "-f"])
        .arg(&dump)
        .envs(pg_env())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&dump).unwrap();
    assert!(text.contains("COPY public.dump_patients"), "a COPY dump");
    for plaintext in [
        "dump-secret-1",
        "dump-json-secret",
        "dump-reason-secret",
        "1987-06-05",
    ] {
        assert!(
            !text.contains(plaintext),
            "the direct dump holds {plaintext}"
        );
    }
    cluster().psql("DROP DATABASE IF EXISTS dump_direct");
    cluster().psql("CREATE DATABASE dump_direct");
    psql_file(cluster().port, "dump_direct", &dump).unwrap();
    setup.proxy.assert_no_leaks();
    assert_eq!(contents("dump_direct"), contents("dump_src"));
}
