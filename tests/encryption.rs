//! Issue #3: column encryption end to end, through real clients (tokio-postgres in binary
//! over the extended protocol, psql in text over the simple protocol, psycopg 3, and a raw
//! protocol client), against a real PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;

use common::*;
use tokio_postgres::SimpleQueryMessage;

/// Every logical type, as configured.
const TYPES: [&str; 14] = [
    "text",
    "varchar",
    "int2",
    "int4",
    "int8",
    "numeric",
    "float8",
    "bool",
    "date",
    "timestamp",
    "timestamptz",
    "uuid",
    "bytea",
    "jsonb",
];

/// Creates `table` with `id int primary key` and, for each type T, `d_T` (deterministic)
/// and `r_T` (randomized) bytea columns; returns their `[[column]]` sections.
fn all_types_table(table: &str) -> String {
    let mut ddl = format!("DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id int PRIMARY KEY");
    let mut toml = String::new();
    for ty in TYPES {
        ddl.push_str(&format!(", d_{ty} bytea, r_{ty} bytea"));
        toml.push_str(&column_toml(
            table,
            &format!("d_{ty}"),
            ty,
            "deterministic",
            "",
        ));
        toml.push_str(&column_toml(
            table,
            &format!("r_{ty}"),
            ty,
            "randomized",
            "",
        ));
    }
    ddl.push_str(", note text)");
    cluster().psql(&ddl);
    toml
}

/// A proxy protecting every column of an all-types `table` (plaintext for everyone).
fn types_proxy(table: &str) -> (tempfile::TempDir, Proxy) {
    let dir = tempfile::tempdir().unwrap();
    let columns = all_types_table(table);
    let proxy = Proxy::start(&veil_config(dir.path(), "plaintext", &columns), dir.path());
    (dir, proxy)
}

/// SQL text literal (standard strings).
fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// What PostgreSQL itself prints for `value::ty` (numeric normalized), in UTC.
fn pg_text(ty: &str, value: &str) -> String {
    let expr = if ty == "numeric" {
        format!("trim_scale({}::numeric)::text", lit(value))
    } else {
        format!("{}::{ty}", lit(value))
    };
    let out = psql_script(
        cluster().port,
        SUPERUSER,
        &format!("SET TimeZone = 'UTC';\nSELECT {expr};\n"),
    )
    .unwrap();
    out.strip_suffix('\n').unwrap_or(&out).to_string()
}

fn big_text() -> String {
    let mut s = String::with_capacity(1 << 20);
    while s.len() < (1 << 20) {
        s.push_str("Ünïcödé text of a patient record 0123456789 ");
    }
    s
}

fn big_bytes() -> Vec<u8> {
    (0..(1usize << 20)).map(|i| (i * 7 % 256) as u8).collect()
}

/// Text-form test values per type (`None`: NULL).
fn text_values(ty: &str) -> Vec<Option<String>> {
    let mut v: Vec<Option<String>> = match ty {
        "text" => vec![
            "123-45-6789".into(),
            "".into(),
            "héllo wörld ✓ 日本 🙂 O'Brien".into(),
            big_text(),
        ],
        "varchar" => vec!["Zoë Ünicode".into(), "".into()],
        "int2" => vec!["-32768".into(), "0".into(), "32767".into()],
        "int4" => vec!["2147483647".into(), "-5".into()],
        "int8" => vec!["-9223372036854775808".into(), "42".into()],
        "numeric" => vec![
            "1.50".into(),
            "-0.000123".into(),
            "123456789012345678901234567890.000100".into(),
            "0".into(),
        ],
        "float8" => vec!["3.25".into(), "-1.5e-300".into(), "0".into()],
        "bool" => vec!["t".into(), "false".into()],
        "date" => vec!["2024-01-05".into(), "2024-02-29".into()],
        "timestamp" => vec![
            "2024-01-05 10:11:12.123456".into(),
            "1999-12-31 23:59:59".into(),
        ],
        "timestamptz" => vec![
            "2024-01-05 10:11:12.5+02".into(),
            "2001-02-03 04:05:06+00".into(),
        ],
        "uuid" => vec!["A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11".into()],
        "bytea" => vec![
            "\\xdeadbeef00".into(),
            "\\x".into(),
            format!("\\x{}", hex::encode(big_bytes())),
        ],
        "jsonb" => vec![
            r#"{"b": 1, "a": [true, null, "ü 日本"]}"#.into(),
            "{}".into(),
            format!(r#"{{"note": "{}"}}"#, big_text()),
        ],
        _ => unreachable!(),
    }
    .into_iter()
    .map(Some)
    .collect();
    v.push(None);
    v
}

// ---------------------------------------------------------------------------------------
// Round trips

#[test]
fn round_trip_psql_text_every_type() {
    let (_dir, proxy) = types_proxy("enc_rt_psql");
    let mut script = String::new();
    let mut expected = Vec::new();
    let mut id = 0;
    for ty in TYPES {
        for value in text_values(ty) {
            id += 1;
            let (sql_value, shown) = match &value {
                Some(v) => (lit(v), pg_text(ty, v)),
                None => ("NULL".to_string(), "<NULL>".to_string()),
            };
            script.push_str(&format!(
                "INSERT INTO enc_rt_psql (id, d_{ty}, r_{ty}) VALUES ({id}, {sql_value}, {sql_value});\n\
                 SELECT d_{ty}, r_{ty} FROM enc_rt_psql WHERE id = {id};\n"
            ));
            expected.push(format!("{shown}|{shown}"));
            if let Some(v) = &value {
                // equality search by literal on the deterministic column
                script.push_str(&format!(
                    "SELECT count(*) FROM enc_rt_psql WHERE d_{ty} = {} AND id = {id};\n",
                    lit(v)
                ));
                expected.push("1".into());
            }
        }
    }
    let out = psql_script(proxy.port(), SUPERUSER, &script).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), expected.len());
    for (i, (got, want)) in lines.iter().zip(&expected).enumerate() {
        assert!(got == want, "line {i}: got {:.200} want {:.200}", got, want);
    }
    check_stored(&"enc_rt_psql".to_string(), id);
}

/// Every stored value is NULL or a ciphertext of the DESIGN format whose mode matches its
/// column, and no stored value contains its plaintext.
fn check_stored(table: &str, rows: i32) {
    for ty in TYPES {
        let out = cluster().psql(&format!(
            "SELECT id, coalesce(encode(d_{ty}, 'hex'), 'NULL'), coalesce(encode(r_{ty}, 'hex'), 'NULL') FROM {table} WHERE d_{ty} IS NOT NULL OR r_{ty} IS NOT NULL ORDER BY id"
        ));
        let mut seen = 0;
        for line in out.lines().filter(|l| !l.is_empty()) {
            let parts: Vec<&str> = line.split('|').collect();
            for (hexed, mode) in [(parts[1], b'D'), (parts[2], b'R')] {
                if hexed == "NULL" {
                    continue;
                }
                let stored = hex::decode(hexed).unwrap();
                assert_ciphertext(&stored, mode);
            }
            seen += 1;
        }
        assert!(seen > 0 && seen <= rows, "{ty}: {seen} stored rows");
    }
}

fn assert_ciphertext(stored: &[u8], mode: u8) {
    assert!(
        stored.len() >= 1 + 4 + 1 + 12 + 16,
        "too short: {}",
        stored.len()
    );
    assert_eq!(stored[0], 0x01, "version");
    assert_eq!(&stored[1..5], &1u32.to_be_bytes(), "key id");
    assert_eq!(stored[5], mode, "mode");
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn stored_values_never_contain_the_plaintext() {
    let (_dir, proxy) = types_proxy("enc_leak");
    let secret_text = "Sensitive-Plaintext-ABCDEFGH";
    let secret_bytes = "\\x5345435245542d42595445532d5858"; // "SECRET-BYTES-XX"
    let json = r#"{"diagnosis": "Sensitive-Plaintext-ABCDEFGH"}"#;
    let script = format!(
        "INSERT INTO enc_leak (id, d_text, r_text, d_varchar, r_varchar, d_bytea, r_bytea, d_jsonb, r_jsonb, d_int8, r_int8) VALUES \
         (1, {t}, {t}, {t}, {t}, {b}, {b}, {j}, {j}, 1234567890123, 1234567890123);\n",
        t = lit(secret_text),
        b = lit(secret_bytes),
        j = lit(json)
    );
    psql_script(proxy.port(), SUPERUSER, &script).unwrap();
    let out = cluster().psql("SELECT encode(d_text,'hex')||','||encode(r_text,'hex')||','||encode(d_varchar,'hex')||','||encode(r_varchar,'hex')||','||encode(d_bytea,'hex')||','||encode(r_bytea,'hex')||','||encode(d_jsonb,'hex')||','||encode(r_jsonb,'hex')||','||encode(d_int8,'hex')||','||encode(r_int8,'hex') FROM enc_leak");
    let values: Vec<Vec<u8>> = out
        .trim()
        .split(',')
        .map(|h| hex::decode(h).unwrap())
        .collect();
    assert_eq!(values.len(), 10);
    for (i, v) in values.iter().enumerate() {
        assert_ciphertext(v, if i % 2 == 0 { b'D' } else { b'R' });
        assert!(!contains(v, secret_text.as_bytes()), "column {i} leaks");
        assert!(!contains(v, b"SECRET-BYTES"), "column {i} leaks");
        assert!(!contains(v, b"Sensitive"), "column {i} leaks");
        assert!(
            !contains(v, &1234567890123i64.to_be_bytes()),
            "column {i} leaks"
        );
    }
    // The database's log must not see the plaintext either.
    let log = std::fs::read(cluster().dir.join("server.log")).unwrap_or_default();
    assert!(!contains(&log, secret_text.as_bytes()));
}

/// tokio-postgres: binary parameters and binary results, deterministic and randomized.
#[tokio::test(flavor = "multi_thread")]
async fn round_trip_tokio_postgres_binary_every_type() {
    use chrono::{NaiveDate, TimeZone, Utc};
    use rust_decimal::Decimal;
    use std::str::FromStr;
    let (_dir, proxy) = types_proxy("enc_rt_tokio");
    let client = connect(proxy.port()).await;
    let id = std::sync::atomic::AtomicI32::new(0);

    macro_rules! rt {
        ($ty:literal, $rust:ty, $value:expr) => {{
            let value: Option<$rust> = $value;
            let id = id.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            client
                .execute(
                    concat!(
                        "INSERT INTO enc_rt_tokio (id, d_",
                        $ty,
                        ", r_",
                        $ty,
                        ") VALUES ($1, $2, $3)"
                    ),
                    &[&id, &value, &value],
                )
                .await
                .unwrap_or_else(|e| panic!("{} insert: {e:?}", $ty));
            let row = client
                .query_one(
                    concat!(
                        "SELECT d_",
                        $ty,
                        ", r_",
                        $ty,
                        " FROM enc_rt_tokio WHERE id = $1"
                    ),
                    &[&id],
                )
                .await
                .unwrap_or_else(|e| panic!("{} select: {e:?}", $ty));
            let d: Option<$rust> = row.get(0);
            let r: Option<$rust> = row.get(1);
            assert_eq!(d, value, "{} deterministic", $ty);
            assert_eq!(r, value, "{} randomized", $ty);
            if value.is_some() {
                let found = client
                    .query(
                        concat!("SELECT id FROM enc_rt_tokio WHERE d_", $ty, " = $1"),
                        &[&value],
                    )
                    .await
                    .unwrap_or_else(|e| panic!("{} search: {e:?}", $ty));
                assert!(
                    found.iter().any(|r| r.get::<_, i32>(0) == id),
                    "{} search by parameter",
                    $ty
                );
            }
            (id, d)
        }};
    }

    for v in ["123-45-6789", "", "héllo wörld ✓ 日本 🙂"] {
        rt!("text", String, Some(v.to_string()));
    }
    rt!("text", String, Some(big_text()));
    rt!("text", String, None);
    rt!("varchar", String, Some("Zoë".to_string()));
    rt!("varchar", String, Some(String::new()));
    rt!("varchar", String, None);
    for v in [i16::MIN, 0, i16::MAX] {
        rt!("int2", i16, Some(v));
    }
    rt!("int2", i16, None);
    for v in [i32::MIN, -1, i32::MAX] {
        rt!("int4", i32, Some(v));
    }
    rt!("int4", i32, None);
    for v in [i64::MIN, 7, i64::MAX] {
        rt!("int8", i64, Some(v));
    }
    rt!("int8", i64, None);
    for v in ["1.50", "-0.000123", "12345678901234567890.0001", "0"] {
        let (_, back) = rt!("numeric", Decimal, Some(Decimal::from_str(v).unwrap()));
        assert_eq!(
            back.unwrap().to_string(),
            Decimal::from_str(v).unwrap().normalize().to_string(),
            "numeric comes back normalized"
        );
    }
    rt!("numeric", Decimal, None);
    for v in [3.25f64, -1.5e-300, 0.0, f64::INFINITY] {
        rt!("float8", f64, Some(v));
    }
    rt!("float8", f64, None);
    rt!("bool", bool, Some(true));
    rt!("bool", bool, Some(false));
    rt!("bool", bool, None);
    rt!("date", NaiveDate, NaiveDate::from_ymd_opt(2024, 1, 5));
    rt!("date", NaiveDate, NaiveDate::from_ymd_opt(1, 1, 1));
    rt!("date", NaiveDate, None);
    let ts = NaiveDate::from_ymd_opt(2024, 1, 5)
        .unwrap()
        .and_hms_micro_opt(10, 11, 12, 123_456)
        .unwrap();
    rt!("timestamp", chrono::NaiveDateTime, Some(ts));
    rt!("timestamp", chrono::NaiveDateTime, None);
    rt!(
        "timestamptz",
        chrono::DateTime<Utc>,
        Some(Utc.with_ymd_and_hms(2024, 1, 5, 8, 11, 12).unwrap())
    );
    rt!("timestamptz", chrono::DateTime<Utc>, None);
    rt!(
        "uuid",
        uuid::Uuid,
        Some(uuid::Uuid::parse_str("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11").unwrap())
    );
    rt!("uuid", uuid::Uuid, None);
    rt!("bytea", Vec<u8>, Some(vec![0xde, 0xad, 0, 0xff]));
    rt!("bytea", Vec<u8>, Some(Vec::new()));
    rt!("bytea", Vec<u8>, Some(big_bytes()));
    rt!("bytea", Vec<u8>, None);
    rt!(
        "jsonb",
        serde_json::Value,
        Some(serde_json::json!({"b": 1, "a": [true, null, "ü 日本"]}))
    );
    rt!("jsonb", serde_json::Value, Some(serde_json::json!({})));
    rt!(
        "jsonb",
        serde_json::Value,
        Some(serde_json::json!({ "note": big_text() }))
    );
    rt!("jsonb", serde_json::Value, None);

    // Values written as text literals read back in binary.
    client
        .simple_query(
            "INSERT INTO enc_rt_tokio (id, d_int8, r_numeric, d_date, d_bool, d_timestamptz, d_jsonb, d_uuid) \
             VALUES (1000, '-17', '1.50', '2024-01-05', 'yes', '2024-01-05 10:00:00+02', '{\"k\": [1, 2]}', 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11')",
        )
        .await
        .unwrap();
    let row = client
        .query_one(
            "SELECT d_int8, r_numeric, d_date, d_bool, d_timestamptz, d_jsonb, d_uuid FROM enc_rt_tokio WHERE id = 1000",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), -17);
    assert_eq!(row.get::<_, Decimal>(1).to_string(), "1.5");
    assert_eq!(
        row.get::<_, NaiveDate>(2),
        NaiveDate::from_ymd_opt(2024, 1, 5).unwrap()
    );
    assert!(row.get::<_, bool>(3));
    assert_eq!(
        row.get::<_, chrono::DateTime<Utc>>(4),
        Utc.with_ymd_and_hms(2024, 1, 5, 8, 0, 0).unwrap()
    );
    assert_eq!(
        row.get::<_, serde_json::Value>(5),
        serde_json::json!({"k": [1, 2]})
    );
    assert_eq!(
        row.get::<_, uuid::Uuid>(6).to_string(),
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    );
    // The RowDescription shows the logical types.
    let stmt = client
        .prepare("SELECT d_text, r_int2, d_numeric, r_timestamptz, d_jsonb, note FROM enc_rt_tokio")
        .await
        .unwrap();
    let names: Vec<&str> = stmt.columns().iter().map(|c| c.type_().name()).collect();
    assert_eq!(
        names,
        ["text", "int2", "numeric", "timestamptz", "jsonb", "text"]
    );
    let stmt = client
        .prepare("SELECT id FROM enc_rt_tokio WHERE d_uuid = $1 AND d_float8 = $2 AND id = $3")
        .await
        .unwrap();
    let names: Vec<&str> = stmt.params().iter().map(|t| t.name()).collect();
    assert_eq!(names, ["uuid", "float8", "int4"]);
    drop(client);
    check_stored("enc_rt_tokio", 1000);
}

/// psycopg 3: its own adaptation (text and binary parameters, text and binary results).
#[test]
fn round_trip_psycopg_every_type() {
    let (_dir, proxy) = types_proxy("enc_rt_psycopg");
    let out = run_python("roundtrip.py", proxy.port(), SUPERUSER, &["enc_rt_psycopg"]);
    assert!(out.contains("roundtrip ok"), "{out}");
    let checks: usize = out
        .lines()
        .find_map(|l| l.strip_prefix("checks "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(checks > 100, "{out}");
    check_stored("enc_rt_psycopg", 100_000);
}
