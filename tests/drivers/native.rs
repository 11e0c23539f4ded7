//! The matrix clients driven from Rust or by programs built here: tokio-postgres, psql and
//! pgx (Go). Shares the cluster, the tables and the proxy of `main.rs`.

use std::path::Path;
use std::process::Command;

use super::common::*;
use super::{assert_ok, check_table, root, run_client, setup, TYPES};

/// The matrix values in tokio-postgres's own types (the same as matrix_values.py).
fn tokio_values() -> Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>> {
    use chrono::{NaiveDate, TimeZone, Utc};
    let timestamp = NaiveDate::from_ymd_opt(2023, 4, 5)
        .unwrap()
        .and_hms_micro_opt(6, 7, 8, 123_456)
        .unwrap();
    vec![
        Box::new("Zoë O'Brien ✓ 日本 patient-note-4471".to_string()),
        Box::new("varchar-Ünïcode-5512".to_string()),
        Box::new(31337i16),
        Box::new(1_987_654_321i32),
        Box::new(8_765_432_109_876_543i64),
        Box::new(rust_decimal::Decimal::new(987_654_321, 4)),
        Box::new(12345.625f64),
        Box::new(true),
        Box::new(NaiveDate::from_ymd_opt(1987, 6, 5).unwrap()),
        Box::new(timestamp),
        Box::new(
            Utc.with_ymd_and_hms(2023, 4, 5, 6, 7, 8).unwrap()
                + chrono::Duration::milliseconds(500),
        ),
        Box::new(uuid::Uuid::parse_str("6f1c1a4e-8b1d-4c36-9b9c-2f1e5d7a3b11").unwrap()),
        Box::new(b"\x00\x01bytea-secret-9\xff".to_vec()),
        Box::new(
            serde_json::json!({"diagnosis": "hypertension-8812", "codes": [1, 2.5, true, null]}),
        ),
    ]
}

/// A NULL of each matrix type, in tokio-postgres's types (a NULL is type-checked too).
fn tokio_nulls() -> Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>> {
    vec![
        Box::new(None::<String>),
        Box::new(None::<String>),
        Box::new(None::<i16>),
        Box::new(None::<i32>),
        Box::new(None::<i64>),
        Box::new(None::<rust_decimal::Decimal>),
        Box::new(None::<f64>),
        Box::new(None::<bool>),
        Box::new(None::<chrono::NaiveDate>),
        Box::new(None::<chrono::NaiveDateTime>),
        Box::new(None::<chrono::DateTime<chrono::Utc>>),
        Box::new(None::<uuid::Uuid>),
        Box::new(None::<Vec<u8>>),
        Box::new(None::<serde_json::Value>),
    ]
}

/// Reads column `index` of `row` in the Rust type of matrix type `ty` and compares it with
/// the value written, as `Debug` (every type's own equality, one comparison).
fn tokio_check(row: &tokio_postgres::Row, index: usize, ty: &str, want_null: bool) -> usize {
    fn get<T: for<'a> tokio_postgres::types::FromSql<'a> + std::fmt::Debug>(
        row: &tokio_postgres::Row,
        index: usize,
    ) -> String {
        format!("{:?}", row.get::<_, Option<T>>(index))
    }
    let got = match ty {
        "text" | "varchar" => get::<String>(row, index),
        "int2" => get::<i16>(row, index),
        "int4" => get::<i32>(row, index),
        "int8" => get::<i64>(row, index),
        "numeric" => get::<rust_decimal::Decimal>(row, index),
        "float8" => get::<f64>(row, index),
        "bool" => get::<bool>(row, index),
        "date" => get::<chrono::NaiveDate>(row, index),
        "timestamp" => get::<chrono::NaiveDateTime>(row, index),
        "timestamptz" => get::<chrono::DateTime<chrono::Utc>>(row, index),
        "uuid" => get::<uuid::Uuid>(row, index),
        "bytea" => get::<Vec<u8>>(row, index),
        "jsonb" => get::<serde_json::Value>(row, index),
        other => panic!("{other}"),
    };
    let values = tokio_values();
    let position = TYPES.iter().position(|t| *t == ty).unwrap();
    let want = if want_null {
        "None".to_string()
    } else {
        format!("Some({:?})", values[position])
    };
    assert_eq!(got, want, "tokio-postgres: column {index} ({ty})");
    1
}

/// tokio-postgres (binary parameters and results): prepared statements (Parse, Describe S,
/// Sync, then Bind, Execute, Sync), `query_typed` (Parse, Bind, Describe P, Execute, Sync),
/// a portal read in pieces, the simple protocol, a rolled-back transaction.
#[tokio::test(flavor = "multi_thread")]
async fn tokio_postgres_prepared_typed_portal_and_simple() {
    use tokio_postgres::types::{ToSql, Type};
    let setup = setup();
    let mut client = connect(setup.proxy.port()).await;
    let table = "drv_tokio";
    client
        .batch_execute("SET TimeZone = 'Australia/Adelaide'")
        .await
        .unwrap();
    let columns: Vec<String> = TYPES
        .iter()
        .flat_map(|ty| [format!("d_{ty}"), format!("r_{ty}")])
        .collect();
    let names = columns.join(", ");
    let marks: Vec<String> = (0..columns.len()).map(|i| format!("${}", i + 2)).collect();
    let insert = client
        .prepare(&format!(
            "INSERT INTO {table} (id, {names}) VALUES ($1, {})",
            marks.join(", ")
        ))
        .await
        .unwrap();
    let values = tokio_values();
    let nulls = tokio_nulls();
    let mut row1: Vec<&(dyn ToSql + Sync)> = vec![&1i32];
    let mut row2: Vec<&(dyn ToSql + Sync)> = vec![&2i32];
    for index in 0..columns.len() {
        row1.push(values[index / 2].as_ref() as &(dyn ToSql + Sync));
        row2.push(nulls[index / 2].as_ref() as &(dyn ToSql + Sync));
    }
    assert_eq!(client.execute(&insert, &row1).await.unwrap(), 1);
    assert_eq!(client.execute(&insert, &row2).await.unwrap(), 1);
    let select = client
        .prepare(&format!("SELECT {names} FROM {table} WHERE id = $1"))
        .await
        .unwrap();
    let mut checks = 0;
    for _ in 0..3 {
        let row = client.query_one(&select, &[&1i32]).await.unwrap();
        for (index, column) in columns.iter().enumerate() {
            checks += tokio_check(&row, index, &column[2..], false);
        }
        let row = client.query_one(&select, &[&2i32]).await.unwrap();
        for (index, column) in columns.iter().enumerate() {
            checks += tokio_check(&row, index, &column[2..], true);
        }
    }
    // query_typed: an unnamed statement with its types given, described as a portal.
    let sql = format!("SELECT {names} FROM {table} WHERE id = $1 AND d_text = $2");
    let text = "Zoë O'Brien ✓ 日本 patient-note-4471".to_string();
    let rows = client
        .query_typed(&sql, &[(&1i32, Type::INT4), (&text, Type::TEXT)])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    for (index, column) in columns.iter().enumerate() {
        checks += tokio_check(&rows[0], index, &column[2..], false);
    }
    // A portal fetched one row at a time, inside a transaction that is rolled back.
    let tx = client.transaction().await.unwrap();
    tx.execute(
        &format!("UPDATE {table} SET r_uuid = $1, d_jsonb = $2 WHERE id = 2"),
        &[
            values[11].as_ref() as &(dyn ToSql + Sync),
            values[13].as_ref() as &(dyn ToSql + Sync),
        ],
    )
    .await
    .unwrap();
    let by_uuid = tx
        .prepare(&format!(
            "SELECT id, r_uuid, d_jsonb FROM {table} WHERE r_uuid IS NOT NULL ORDER BY id"
        ))
        .await
        .unwrap();
    let portal = tx.bind(&by_uuid, &[]).await.unwrap();
    let mut seen = Vec::new();
    loop {
        let rows = tx.query_portal(&portal, 1).await.unwrap();
        if rows.is_empty() {
            break;
        }
        checks +=
            tokio_check(&rows[0], 1, "uuid", false) + tokio_check(&rows[0], 2, "jsonb", false);
        seen.push(rows[0].get::<_, i32>(0));
    }
    assert_eq!(seen, [1, 2]);
    tx.rollback().await.unwrap();
    let row = client
        .query_one(&format!("SELECT r_uuid FROM {table} WHERE id = 2"), &[])
        .await
        .unwrap();
    checks += tokio_check(&row, 0, "uuid", true);
    // The simple protocol: every value as PostgreSQL prints it in this session's zone.
    let messages = client
        .simple_query(&format!(
            "SELECT r_date, d_timestamptz, r_numeric, d_bytea FROM {table} WHERE id = 1"
        ))
        .await
        .unwrap();
    let row = messages
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        })
        .unwrap();
    assert_eq!(row.get(0), Some("1987-06-05"));
    assert_eq!(row.get(1), Some("2023-04-05 15:37:08.5+09:30"));
    assert_eq!(row.get(2), Some("98765.4321"));
    assert_eq!(row.get(3), Some("\\x000162797465612d7365637265742d39ff"));
    setup.proxy.assert_no_leaks();
    assert!(checks >= 7 * 28, "{checks}");
    check_table(table, 28);
}

/// Each matrix type's value as an SQL literal and as PostgreSQL prints it (TimeZone UTC,
/// DateStyle ISO): what psql shows.
const PSQL_VALUES: [(&str, &str, &str); 14] = [
    (
        "text",
        "'Zoë O''Brien ✓ 日本 patient-note-4471'",
        "Zoë O'Brien ✓ 日本 patient-note-4471",
    ),
    ("varchar", "'varchar-Ünïcode-5512'", "varchar-Ünïcode-5512"),
    ("int2", "31337", "31337"),
    ("int4", "1987654321", "1987654321"),
    ("int8", "8765432109876543", "8765432109876543"),
    ("numeric", "98765.4321", "98765.4321"),
    ("float8", "12345.625", "12345.625"),
    ("bool", "true", "t"),
    ("date", "'1987-06-05'", "1987-06-05"),
    (
        "timestamp",
        "'2023-04-05 06:07:08.123456'",
        "2023-04-05 06:07:08.123456",
    ),
    (
        "timestamptz",
        "'2023-04-05 08:07:08.5+02'",
        "2023-04-05 06:07:08.5+00",
    ),
    (
        "uuid",
        "'6f1c1a4e-8b1d-4c36-9b9c-2f1e5d7a3b11'",
        "6f1c1a4e-8b1d-4c36-9b9c-2f1e5d7a3b11",
    ),
    (
        "bytea",
        "'\\x000162797465612d7365637265742d39ff'",
        "\\x000162797465612d7365637265742d39ff",
    ),
    (
        "jsonb",
        r#"'{"diagnosis": "hypertension-8812", "codes": [1, 2.5, true, null]}'"#,
        r#"{"codes": [1, 2.5, true, null], "diagnosis": "hypertension-8812"}"#,
    ),
];

/// psql (the simple protocol, literals in the statement text, text results): every type
/// written as a literal and read back as PostgreSQL prints it, searched by literals (one in
/// DateStyle DMY order); SQL-level PREPARE refused.
#[test]
fn psql_literals_search_and_prepare_refused() {
    let setup = setup();
    let table = "drv_psql";
    let columns: Vec<String> = PSQL_VALUES
        .iter()
        .flat_map(|(ty, _, _)| [format!("d_{ty}"), format!("r_{ty}")])
        .collect();
    let literals: Vec<&str> = PSQL_VALUES
        .iter()
        .flat_map(|(_, literal, _)| [*literal, *literal])
        .collect();
    let shown: Vec<&str> = PSQL_VALUES
        .iter()
        .flat_map(|(_, _, shown)| [*shown, *shown])
        .collect();
    let names = columns.join(", ");
    let script = format!(
        "INSERT INTO {table} (id, {names}) VALUES (1, {});
         INSERT INTO {table} (id) VALUES (2);
         SELECT {names} FROM {table} WHERE id = 1;
         SELECT {names} FROM {table} WHERE id = 2;
         SELECT id FROM {table} WHERE d_text = {} AND d_jsonb = {} AND d_timestamptz = {};
         SET DateStyle = 'ISO, DMY';
         SELECT id, r_date, d_timestamp FROM {table} WHERE d_date = '05/06/1987';",
        literals.join(", "),
        literals[0],
        literals[26],
        literals[20],
    );
    let out = psql_script(setup.proxy.port(), SUPERUSER, &script).unwrap();
    setup.proxy.assert_no_leaks();
    let lines: Vec<&str> = out.lines().collect();
    let row: Vec<&str> = lines[0].split('|').collect();
    assert_eq!(row, shown, "psql row 1");
    assert_eq!(lines[1], vec!["<NULL>"; 28].join("|"), "psql row 2");
    assert_eq!(lines[2], "1", "psql search");
    assert_eq!(
        lines[3], "1|1987-06-05|2023-04-05 06:07:08.123456",
        "psql DateStyle DMY input"
    );
    assert_eq!(lines.len(), 4, "{out}");
    // SQL-level PREPARE on a protected table is refused (a known limit: the README's
    // "Drivers and ORMs"); drivers prepare with the extended protocol instead.
    let refused = psql_script(
        setup.proxy.port(),
        SUPERUSER,
        &format!("PREPARE by_id(int) AS SELECT r_date FROM {table} WHERE id = $1;"),
    )
    .unwrap_err();
    assert!(refused.contains("PREPARE is not supported"), "{refused}");
    check_table(table, 28);
}

/// pgx v4 (Go, Debian's golang-github-jackc-pgx-v4-dev, built in GOPATH mode: the machine
/// reaches no Go module proxy): prepared and cached, described only, and simple protocol.
#[test]
fn pgx_prepared_described_and_simple() {
    let setup = setup();
    let gopath = Path::new("/usr/share/gocode/src/github.com/jackc/pgx/v4");
    assert!(
        gopath.exists(),
        "pgx missing: apt-get install golang-go golang-github-jackc-pgx-v4-dev"
    );
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let binary = out_dir.join("pgx_matrix");
    let built = run_client(
        "go build",
        Command::new("go")
            .args(["build", "-o"])
            .arg(&binary)
            .arg(root().join("tests/clients/go/pgx_matrix.go"))
            .env("GO111MODULE", "off")
            .env("GOPATH", "/usr/share/gocode")
            .env("GOCACHE", out_dir.join("go-build"))
            .env("GOFLAGS", ""),
    );
    drop(built);
    let out = run_client(
        "pgx",
        Command::new(&binary)
            .arg(conn_str(setup.proxy.port(), SUPERUSER, PASSWORD))
            .arg("drv_pgx"),
    );
    setup.proxy.assert_no_leaks();
    assert_ok(&out, "pgx", 3 * 3 * 2 * 28);
    check_table("drv_pgx", 3 * 28);
}
