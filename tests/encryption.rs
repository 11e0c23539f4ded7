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
    register_distinctive(&v);
    v.push(None);
    v
}

/// Registers the distinctive test values with the harness's leak check (a large value by a
/// distinctive part of it; short or numeric ones would be found by chance in ciphertext).
fn register_distinctive(values: &[Option<String>]) {
    for value in values.iter().flatten() {
        let distinctive = value.len() >= 8 && value.chars().any(|c| c.is_alphabetic());
        if value.len() > 4096 {
            secret("Ünïcödé text of a patient record");
        } else if distinctive {
            secret(value);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Round trips

#[test]
fn round_trip_psql_text_every_type() {
    let (dir, proxy) = types_proxy("enc_rt_psql");
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
    check_stored(dir.path(), "enc_rt_psql", id);
}

/// Every stored value is NULL or a ciphertext of the DESIGN format whose mode matches its
/// column, and no stored value contains its plaintext.
fn check_stored(dir: &Path, table: &str, rows: i32) {
    let prefix = envelope_prefix(dir);
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
                assert_ciphertext(&stored, mode, &prefix);
            }
            seen += 1;
        }
        assert!(seen > 0 && seen <= rows, "{ty}: {seen} stored rows");
    }
}

/// `prefix`: the version and key id in hex, as `envelope_prefix` gives them.
fn assert_ciphertext(stored: &[u8], mode: u8, prefix: &str) {
    assert!(
        stored.len() >= 1 + 4 + 1 + 12 + 16,
        "too short: {}",
        stored.len()
    );
    assert_eq!(hex::encode(&stored[..5]), prefix, "version and key id");
    assert_eq!(stored[5], mode, "mode");
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn stored_values_never_contain_the_plaintext() {
    let (dir, proxy) = types_proxy("enc_leak");
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
    let prefix = envelope_prefix(dir.path());
    for (i, v) in values.iter().enumerate() {
        assert_ciphertext(v, if i % 2 == 0 { b'D' } else { b'R' }, &prefix);
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
    let (dir, proxy) = types_proxy("enc_rt_tokio");
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
    check_stored(dir.path(), "enc_rt_tokio", 1000);
}

/// psycopg 3: its own adaptation (text and binary parameters, text and binary results).
#[test]
fn round_trip_psycopg_every_type() {
    let (dir, proxy) = types_proxy("enc_rt_psycopg");
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
    check_stored(dir.path(), "enc_rt_psycopg", 100_000);
}

// ---------------------------------------------------------------------------------------
// Ciphertext properties

fn stored_hex(sql: &str) -> Vec<String> {
    cluster()
        .psql(sql)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Equal values in different forms give one deterministic ciphertext; randomized never
/// repeats.
#[tokio::test(flavor = "multi_thread")]
async fn deterministic_is_form_independent_and_randomized_never_repeats() {
    use rust_decimal::Decimal;
    use std::str::FromStr;
    let (_dir, proxy) = types_proxy("enc_forms");
    let client = connect(proxy.port()).await;
    // numeric: text literal 1.50, literal 1.5, binary 1.5 and 1.50, text parameter 1.500
    client
        .simple_query("INSERT INTO enc_forms (id, d_numeric, r_numeric) VALUES (1, '1.50', '1.50'), (2, 1.5, 1.5)")
        .await
        .unwrap();
    for (id, v) in [(3, "1.5"), (4, "1.50")] {
        let v = Decimal::from_str(v).unwrap();
        client
            .execute(
                "INSERT INTO enc_forms (id, d_numeric, r_numeric) VALUES ($1, $2, $3)",
                &[&id, &v, &v],
            )
            .await
            .unwrap();
    }
    // date: literal, typed literal, binary
    client
        .simple_query("INSERT INTO enc_forms (id, d_date, r_date) VALUES (10, '2024-01-05', '2024-01-05'), (11, '2024-01-05'::date, '2024-01-05'::date), (12, DATE '2024-01-05', DATE '2024-01-05')")
        .await
        .unwrap();
    let day = chrono::NaiveDate::from_ymd_opt(2024, 1, 5).unwrap();
    client
        .execute(
            "INSERT INTO enc_forms (id, d_date, r_date) VALUES (13, $1, $2)",
            &[&day, &day],
        )
        .await
        .unwrap();
    // bool: 't', 'true', true, 'yes', binary
    client
        .simple_query("INSERT INTO enc_forms (id, d_bool) VALUES (20, 't'), (21, 'true'), (22, true), (23, 'yes')")
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO enc_forms (id, d_bool) VALUES (24, $1)",
            &[&true],
        )
        .await
        .unwrap();
    // int8 from a literal, an int8 binary parameter, and int2/int4 parameters (raw client)
    client
        .simple_query("INSERT INTO enc_forms (id, d_int8) VALUES (30, 5), (31, '5')")
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO enc_forms (id, d_int8) VALUES (32, $1)",
            &[&5i64],
        )
        .await
        .unwrap();
    let mut raw = Raw::connect(proxy.port()).await;
    for (id, oid, bytes) in [
        (33, 21u32, 5i16.to_be_bytes().to_vec()),
        (34, 23u32, 5i32.to_be_bytes().to_vec()),
    ] {
        let msgs = raw
            .batch(&[
                Raw::parse(
                    "",
                    &format!("INSERT INTO enc_forms (id, d_int8) VALUES ({id}, $1)"),
                    &[oid],
                ),
                Raw::bind("", "", &[Some(&bytes)], &[1], 0),
                Raw::execute("", 0),
                Raw::sync(),
            ])
            .await;
        assert!(
            !msgs.iter().any(|m| m.tag == b'E'),
            "{:?}",
            msgs.iter().find(|m| m.tag == b'E').map(|m| m.field(b'M'))
        );
    }
    // text: literal vs binary parameter vs text-format parameter
    client
        .simple_query(
            "INSERT INTO enc_forms (id, d_text, r_text) VALUES (40, 'same value', 'same value')",
        )
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO enc_forms (id, d_text, r_text) VALUES (41, $1, $2)",
            &[&"same value", &"same value"],
        )
        .await
        .unwrap();
    let msgs = raw
        .batch(&[
            Raw::parse(
                "",
                "INSERT INTO enc_forms (id, d_text, r_text) VALUES (42, $1, $2)",
                &[],
            ),
            Raw::bind("", "", &[Some(b"same value"), Some(b"same value")], &[0], 0),
            Raw::execute("", 0),
            Raw::sync(),
        ])
        .await;
    assert!(!msgs.iter().any(|m| m.tag == b'E'));

    for (col, ids, count) in [
        ("d_numeric", "1,2,3,4", 4),
        ("d_date", "10,11,12,13", 4),
        ("d_bool", "20,21,22,23,24", 5),
        ("d_int8", "30,31,32,33,34", 5),
        ("d_text", "40,41,42", 3),
    ] {
        let out = stored_hex(&format!(
            "SELECT count(*), count(DISTINCT {col}) FROM enc_forms WHERE id IN ({ids})"
        ));
        assert_eq!(
            out,
            vec![format!("{count}|1")],
            "{col}: equal values, one ciphertext"
        );
    }
    for (col, ids, count) in [
        ("r_numeric", "1,2,3,4", 4),
        ("r_date", "10,11,12,13", 4),
        ("r_text", "40,41,42", 3),
    ] {
        let out = stored_hex(&format!(
            "SELECT count(*), count(DISTINCT {col}) FROM enc_forms WHERE id IN ({ids})"
        ));
        assert_eq!(
            out,
            vec![format!("{count}|{count}")],
            "{col}: randomized repeats"
        );
    }
    // 50 randomized encryptions of one value: 50 different ciphertexts and nonces
    for id in 100..150 {
        client
            .execute(
                "INSERT INTO enc_forms (id, r_text, d_text) VALUES ($1, 'x', 'x')",
                &[&id],
            )
            .await
            .unwrap();
    }
    assert_eq!(
        stored_hex("SELECT count(DISTINCT r_text), count(DISTINCT substring(r_text from 7 for 12)), count(DISTINCT d_text) FROM enc_forms WHERE id >= 100 AND id < 150"),
        vec!["50|50|1".to_string()]
    );
    // numeric comes back normalized, as text too
    let rows = client
        .simple_query("SELECT d_numeric, r_numeric FROM enc_forms WHERE id = 1")
        .await
        .unwrap();
    let row = first_row(&rows);
    assert_eq!((row.get(0), row.get(1)), (Some("1.5"), Some("1.5")));
}

fn first_row(msgs: &[SimpleQueryMessage]) -> &tokio_postgres::SimpleQueryRow {
    msgs.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .expect("no row")
}

fn rows_of(msgs: &[SimpleQueryMessage]) -> Vec<Vec<Option<String>>> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect()
}

fn ids(msgs: &[SimpleQueryMessage]) -> Vec<String> {
    let mut v: Vec<String> = rows_of(msgs)
        .into_iter()
        .map(|r| r[0].clone().unwrap_or_default())
        .collect();
    v.sort();
    v
}

// ---------------------------------------------------------------------------------------
// Search, joins, indexes

fn patients_setup(prefix: &str) -> (tempfile::TempDir, Proxy) {
    let dir = tempfile::tempdir().unwrap();
    cluster().psql(&format!(
        "DROP TABLE IF EXISTS {prefix}_patients, {prefix}_claims; \
         CREATE TABLE {prefix}_patients (id int PRIMARY KEY, name text, ssn bytea, mrn bytea, notes bytea, age bytea); \
         CREATE UNIQUE INDEX ON {prefix}_patients (ssn); \
         CREATE TABLE {prefix}_claims (id int PRIMARY KEY, patient_ssn bytea, amount int)"
    ));
    let columns = format!(
        "{}{}{}{}{}",
        column_toml(
            &format!("{prefix}_patients"),
            "ssn",
            "text",
            "deterministic",
            "domain = \"ssn\""
        ),
        column_toml(
            &format!("{prefix}_claims"),
            "patient_ssn",
            "text",
            "deterministic",
            "domain = \"ssn\""
        ),
        column_toml(
            &format!("{prefix}_patients"),
            "mrn",
            "text",
            "deterministic",
            ""
        ),
        column_toml(
            &format!("{prefix}_patients"),
            "notes",
            "text",
            "randomized",
            ""
        ),
        column_toml(
            &format!("{prefix}_patients"),
            "age",
            "int4",
            "deterministic",
            ""
        ),
    );
    let proxy = Proxy::start(&veil_config(dir.path(), "plaintext", &columns), dir.path());
    (dir, proxy)
}

#[tokio::test(flavor = "multi_thread")]
async fn equality_search_in_not_equal_null_and_domain_join() {
    let (_dir, proxy) = patients_setup("srch");
    let c = connect(proxy.port()).await;
    c.simple_query(
        "INSERT INTO srch_patients (id, name, ssn, mrn, notes, age) VALUES \
         (1, 'Ann', '111-11-1111', 'M1', 'note one', 30), \
         (2, 'Bob', '222-22-2222', 'M2', NULL, 40), \
         (3, 'Cid', NULL, 'M3', 'note three', NULL); \
         INSERT INTO srch_claims (id, patient_ssn, amount) VALUES (10, '111-11-1111', 100), (11, '111-11-1111', 50), (12, '222-22-2222', 7)",
    )
    .await
    .unwrap();
    let q = |sql: &'static str| {
        let c = &c;
        async move {
            ids(&c
                .simple_query(sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e:?}")))
        }
    };
    assert_eq!(
        q("SELECT id FROM srch_patients WHERE ssn = '111-11-1111'").await,
        ["1"]
    );
    assert_eq!(
        q("SELECT id FROM srch_patients WHERE '222-22-2222' = ssn").await,
        ["2"]
    );
    assert_eq!(
        q("SELECT id FROM srch_patients WHERE ssn IN ('111-11-1111', '222-22-2222', '999')").await,
        ["1", "2"]
    );
    assert_eq!(
        q("SELECT id FROM srch_patients WHERE ssn <> '111-11-1111'").await,
        ["2"]
    );
    assert_eq!(
        q("SELECT id FROM srch_patients WHERE ssn != '111-11-1111'").await,
        ["2"]
    );
    assert_eq!(
        q("SELECT id FROM srch_patients WHERE ssn NOT IN ('111-11-1111')").await,
        ["2"]
    );
    assert_eq!(
        q("SELECT id FROM srch_patients WHERE ssn IS NULL").await,
        ["3"]
    );
    assert_eq!(
        q("SELECT id FROM srch_patients WHERE ssn IS NOT NULL").await,
        ["1", "2"]
    );
    assert_eq!(
        q("SELECT id FROM srch_patients WHERE notes IS NULL").await,
        ["2"]
    );
    assert_eq!(
        q("SELECT id FROM srch_patients WHERE age = 30").await,
        ["1"]
    );
    assert_eq!(
        q("SELECT id FROM srch_patients WHERE age = '40'").await,
        ["2"]
    );
    assert_eq!(
        q("SELECT count(*) FROM srch_patients WHERE ssn = 'nobody'").await,
        ["0"]
    );
    assert_eq!(
        q("SELECT count(DISTINCT mrn) FROM srch_patients").await,
        ["3"]
    );
    // extended protocol: by parameter, IN with parameters, <>
    let rows = c
        .query(
            "SELECT id, ssn FROM srch_patients WHERE ssn = $1",
            &[&"222-22-2222"],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, String>(1), "222-22-2222");
    let rows = c
        .query(
            "SELECT id FROM srch_patients WHERE ssn IN ($1, $2) ORDER BY id",
            &[&"111-11-1111", &"222-22-2222"],
        )
        .await
        .unwrap();
    assert_eq!(
        rows.iter().map(|r| r.get::<_, i32>(0)).collect::<Vec<_>>(),
        [1, 2]
    );
    let rows = c
        .query(
            "SELECT id FROM srch_patients WHERE ssn <> $1",
            &[&"111-11-1111"],
        )
        .await
        .unwrap();
    assert_eq!(
        rows.iter().map(|r| r.get::<_, i32>(0)).collect::<Vec<_>>(),
        [2]
    );
    let rows = c
        .query("SELECT id FROM srch_patients WHERE age = $1", &[&40i32])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    // a join within one domain, values decrypted on both sides
    let rows = c
        .query(
            "SELECT p.name, p.ssn, c.patient_ssn, c.amount FROM srch_patients p JOIN srch_claims c ON c.patient_ssn = p.ssn WHERE p.ssn = $1 ORDER BY c.amount",
            &[&"111-11-1111"],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].get::<_, String>(1), "111-11-1111");
    assert_eq!(rows[0].get::<_, String>(2), "111-11-1111");
    assert_eq!(rows[0].get::<_, i32>(3), 50);
    let msgs = c
        .simple_query("SELECT p.id, c.id, c.patient_ssn FROM srch_patients p, srch_claims c WHERE p.ssn = c.patient_ssn AND c.patient_ssn = '222-22-2222'")
        .await
        .unwrap();
    assert_eq!(
        rows_of(&msgs),
        vec![vec![
            Some("2".into()),
            Some("12".into()),
            Some("222-22-2222".into())
        ]]
    );
    // GROUP BY on a deterministic column
    let msgs = c
        .simple_query("SELECT patient_ssn, count(*) FROM srch_claims GROUP BY patient_ssn")
        .await
        .unwrap();
    let mut groups = rows_of(&msgs);
    groups.sort();
    assert_eq!(
        groups,
        vec![
            vec![Some("111-11-1111".into()), Some("2".into())],
            vec![Some("222-22-2222".into()), Some("1".into())]
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unique_index_and_on_conflict() {
    let (_dir, proxy) = patients_setup("uniq");
    let c = connect(proxy.port()).await;
    c.simple_query("INSERT INTO uniq_patients (id, ssn) VALUES (1, '123-45-6789')")
        .await
        .unwrap();
    let err = c
        .simple_query("INSERT INTO uniq_patients (id, ssn) VALUES (2, '123-45-6789')")
        .await
        .unwrap_err();
    assert_eq!(db_error(&err).0, "23505");
    let err = c
        .execute(
            "INSERT INTO uniq_patients (id, ssn) VALUES (3, $1)",
            &[&"123-45-6789"],
        )
        .await
        .unwrap_err();
    assert_eq!(db_error(&err).0, "23505");
    let n = c
        .execute(
            "INSERT INTO uniq_patients (id, ssn) VALUES (4, $1) ON CONFLICT (ssn) DO NOTHING",
            &[&"123-45-6789"],
        )
        .await
        .unwrap();
    assert_eq!(n, 0);
    let msgs = c
        .simple_query("INSERT INTO uniq_patients (id, ssn) VALUES (5, '123-45-6789') ON CONFLICT (ssn) DO NOTHING")
        .await
        .unwrap();
    assert!(msgs
        .iter()
        .any(|m| matches!(m, SimpleQueryMessage::CommandComplete(0))));
    let n = c
        .execute(
            "INSERT INTO uniq_patients (id, ssn) VALUES (6, $1) ON CONFLICT (ssn) DO NOTHING",
            &[&"987-65-4321"],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(
        cluster().psql("SELECT count(*) FROM uniq_patients").trim(),
        "2"
    );
}

// ---------------------------------------------------------------------------------------
// Refusals

#[tokio::test(flavor = "multi_thread")]
async fn every_refusal_class_is_0a000_naming_the_column_and_the_session_goes_on() {
    let (_dir, proxy) = patients_setup("refu");
    let c = connect(proxy.port()).await;
    c.simple_query(
        "INSERT INTO refu_patients (id, ssn, mrn, notes, age) VALUES (1, '1', 'm', 'n', 3)",
    )
    .await
    .unwrap();
    let cases: &[(&str, &str)] = &[
        ("SELECT id FROM refu_patients WHERE ssn LIKE '1%'", "ssn"),
        ("SELECT id FROM refu_patients WHERE ssn ILIKE '1%'", "ssn"),
        ("SELECT id FROM refu_patients WHERE age < 5", "age"),
        ("SELECT id FROM refu_patients WHERE age >= 5", "age"),
        (
            "SELECT id FROM refu_patients WHERE age BETWEEN 1 AND 5",
            "age",
        ),
        ("SELECT id FROM refu_patients ORDER BY ssn", "ssn"),
        ("SELECT max(age) FROM refu_patients", "age"),
        ("SELECT lower(ssn) FROM refu_patients", "ssn"),
        ("SELECT id FROM refu_patients WHERE length(mrn) = 3", "mrn"),
        ("SELECT ssn::text FROM refu_patients", "ssn"),
        ("SELECT CAST(age AS text) FROM refu_patients", "age"),
        ("SELECT age + 1 FROM refu_patients", "age"),
        ("UPDATE refu_patients SET age = age * 2", "age"),
        ("SELECT id FROM refu_patients WHERE notes = 'n'", "notes"),
        ("SELECT id FROM refu_patients WHERE notes IN ('n')", "notes"),
        ("SELECT id FROM refu_patients WHERE ssn = mrn", "ssn"),
        ("SELECT ssn || 'x' FROM refu_patients", "ssn"),
    ];
    for (sql, column) in cases {
        // simple protocol
        let err = c.simple_query(sql).await.unwrap_err();
        let (code, message) = db_error(&err);
        assert_eq!(code, "0A000", "{sql}: {message}");
        assert!(message.contains(column), "{sql}: {message}");
        // extended protocol
        let err = c.query(*sql, &[]).await.unwrap_err();
        let (code, message) = db_error(&err);
        assert_eq!(code, "0A000", "extended {sql}: {message}");
        assert!(message.contains(column), "extended {sql}: {message}");
        // the session goes on
        let rows = c
            .query("SELECT id, ssn FROM refu_patients", &[])
            .await
            .unwrap();
        assert_eq!(rows[0].get::<_, String>(1), "1");
    }
    // COPY of a protected table to or from the server's files or programs (tests/copy.rs
    // has the COPY forms that work)
    for sql in [
        "COPY refu_patients TO '/tmp/pgveil-refu-patients'",
        "COPY refu_patients (id, ssn) FROM PROGRAM 'echo 2,plain'",
        "COPY (SELECT ssn FROM refu_patients) TO PROGRAM 'cat'",
    ] {
        let err = c.simple_query(sql).await.unwrap_err();
        let (code, message) = db_error(&err);
        assert_eq!(code, "0A000", "{sql}: {message}");
        assert!(
            message.contains("refu_patients") || message.contains("ssn"),
            "{sql}: {message}"
        );
        c.simple_query("SELECT 1").await.unwrap();
    }
    // COPY of an unprotected table works
    c.simple_query("CREATE TEMP TABLE refu_plain (a int); INSERT INTO refu_plain VALUES (1)")
        .await
        .unwrap();
    // unparseable SQL that names a protected table is refused, not forwarded
    for sql in [
        "SELEC ssn FROM refu_patients",
        "SELECT ssn FROM refu_patients WHERE ((",
    ] {
        let err = c.simple_query(sql).await.unwrap_err();
        assert_eq!(db_error(&err).0, "0A000", "{sql}");
        let err = c.query(sql, &[]).await.unwrap_err();
        assert_eq!(db_error(&err).0, "0A000", "extended {sql}");
    }
    // psql, too
    let err = psql_script(
        proxy.port(),
        SUPERUSER,
        "SELECT id FROM refu_patients WHERE ssn LIKE '%';\n",
    )
    .unwrap_err();
    assert!(err.contains("ssn"), "{err}");
    // nothing was changed by the refused UPDATE
    let rows = c.query("SELECT age FROM refu_patients", &[]).await.unwrap();
    assert_eq!(rows[0].get::<_, i32>(0), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refusal_aborts_the_transaction_block() {
    let (_dir, proxy) = patients_setup("txn");
    let c = connect(proxy.port()).await;
    // simple protocol
    c.simple_query("BEGIN").await.unwrap();
    c.simple_query("INSERT INTO txn_patients (id, ssn) VALUES (1, 'a')")
        .await
        .unwrap();
    let err = c
        .simple_query("SELECT id FROM txn_patients WHERE ssn LIKE 'a'")
        .await
        .unwrap_err();
    assert_eq!(db_error(&err).0, "0A000");
    let err = c.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(db_error(&err).0, "25P02");
    let msgs = c.simple_query("COMMIT").await.unwrap();
    assert!(msgs
        .iter()
        .any(|m| matches!(m, SimpleQueryMessage::CommandComplete(_))));
    assert_eq!(
        cluster().psql("SELECT count(*) FROM txn_patients").trim(),
        "0"
    );
    // extended protocol, in a tokio-postgres transaction
    let mut c = c;
    let t = c.transaction().await.unwrap();
    t.execute("INSERT INTO txn_patients (id, ssn) VALUES (2, $1)", &[&"b"])
        .await
        .unwrap();
    let err = t
        .query("SELECT id FROM txn_patients ORDER BY ssn", &[])
        .await
        .unwrap_err();
    assert_eq!(db_error(&err).0, "0A000");
    let err = t.query("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(db_error(&err).0, "25P02");
    let _ = t.commit().await;
    assert_eq!(
        cluster().psql("SELECT count(*) FROM txn_patients").trim(),
        "0"
    );
    // psql: a script that commits after a refusal commits nothing
    let err = psql_script(
        proxy.port(),
        SUPERUSER,
        "\\set ON_ERROR_STOP 0\nBEGIN;\nINSERT INTO txn_patients (id, ssn) VALUES (3, 'c');\nSELECT ssn + 1 FROM txn_patients;\nSELECT 1;\nCOMMIT;\n",
    );
    let _ = err;
    assert_eq!(
        cluster().psql("SELECT count(*) FROM txn_patients").trim(),
        "0"
    );
    // a multi-statement simple query is one implicit transaction: the refusal rolls back all
    let err = c
        .simple_query("INSERT INTO txn_patients (id, ssn) VALUES (4, 'd'); SELECT lower(ssn) FROM txn_patients; INSERT INTO txn_patients (id, ssn) VALUES (5, 'e')")
        .await
        .unwrap_err();
    assert_eq!(db_error(&err).0, "0A000");
    assert_eq!(
        cluster().psql("SELECT count(*) FROM txn_patients").trim(),
        "0"
    );
    // and the session is usable again
    c.simple_query("INSERT INTO txn_patients (id, ssn) VALUES (6, 'f')")
        .await
        .unwrap();
    assert_eq!(
        cluster().psql("SELECT count(*) FROM txn_patients").trim(),
        "1"
    );
}

/// An error inside a pipelined extended batch: the rest is skipped up to Sync, exactly as
/// PostgreSQL does, and the batch's implicit transaction is rolled back.
#[tokio::test(flavor = "multi_thread")]
async fn pipelined_batch_skips_to_sync_after_an_error() {
    let (_dir, proxy) = patients_setup("pipe");
    let mut raw = Raw::connect(proxy.port()).await;
    let ins = |id: i32| format!("INSERT INTO pipe_patients (id, ssn) VALUES ({id}, $1)");
    let msgs = raw
        .batch(&[
            Raw::parse("", &ins(1), &[]),
            Raw::bind("", "", &[Some(b"one")], &[0], 0),
            Raw::execute("", 0),
            Raw::parse("", "SELECT id FROM pipe_patients WHERE ssn LIKE $1", &[]),
            Raw::bind("", "", &[Some(b"o%")], &[0], 0),
            Raw::execute("", 0),
            Raw::parse("", &ins(2), &[]),
            Raw::bind("", "", &[Some(b"two")], &[0], 0),
            Raw::execute("", 0),
            Raw::sync(),
            Raw::parse("", &ins(3), &[]),
            Raw::bind("", "", &[Some(b"three")], &[0], 0),
            Raw::execute("", 0),
            Raw::sync(),
        ])
        .await;
    assert_eq!(tags(&msgs), "12CEZ", "{msgs:?}");
    let e = &msgs[3];
    assert_eq!(e.field(b'C').as_deref(), Some("0A000"));
    assert!(e.field(b'M').unwrap().contains("ssn"));
    let rest = raw.until_ready().await;
    assert_eq!(tags(&rest), "12CZ");
    assert_eq!(
        cluster()
            .psql("SELECT id FROM pipe_patients ORDER BY id")
            .trim(),
        "3"
    );
    // a refused Bind (a value that is not of the column's type) in the middle of a batch
    cluster().psql("ALTER TABLE pipe_patients ADD COLUMN IF NOT EXISTS n int");
    let msgs = raw
        .batch(&[
            Raw::parse("s_age", "SELECT id FROM pipe_patients WHERE age = $1", &[]),
            Raw::bind("", "s_age", &[Some(b"not a number")], &[0], 0),
            Raw::execute("", 0),
            Raw::bind("", "s_age", &[Some(b"5")], &[0], 0),
            Raw::execute("", 0),
            Raw::sync(),
        ])
        .await;
    assert_eq!(tags(&msgs), "1EZ", "{msgs:?}");
    assert_eq!(msgs[1].field(b'C').as_deref(), Some("22P02"));
    assert!(msgs[1].field(b'M').unwrap().contains("age"));
    assert!(!msgs[1].field(b'M').unwrap().contains("not a number"));
    // and the statement still works afterwards
    let msgs = raw
        .batch(&[
            Raw::bind("", "s_age", &[Some(b"5")], &[0], 0),
            Raw::execute("", 0),
            Raw::sync(),
        ])
        .await;
    assert_eq!(tags(&msgs), "2CZ", "{msgs:?}");
    // psycopg's pipeline mode
    let out = run_python("pipeline.py", proxy.port(), SUPERUSER, &["pipe_patients"]);
    assert!(out.contains("pipeline ok"), "{out}");
}

/// A ciphertext moved to another column in the database does not decrypt: XX001 naming the
/// column, never garbage.
#[tokio::test(flavor = "multi_thread")]
async fn a_ciphertext_moved_to_another_column_is_xx001() {
    let (_dir, proxy) = patients_setup("moved");
    let c = connect(proxy.port()).await;
    c.simple_query("INSERT INTO moved_patients (id, ssn, mrn, notes) VALUES (1, 'ssn-1', 'mrn-1', 'n1'), (2, 'ssn-2', 'mrn-2', 'n2')")
        .await
        .unwrap();
    cluster().psql("UPDATE moved_patients SET mrn = ssn WHERE id = 2");
    for (sql, column) in [
        ("SELECT mrn FROM moved_patients WHERE id = 2", "mrn"),
        ("SELECT id, mrn FROM moved_patients", "mrn"),
    ] {
        let err = c.simple_query(sql).await.unwrap_err();
        let (code, message) = db_error(&err);
        assert_eq!(code, "XX001", "{sql}: {message}");
        assert!(message.contains(column), "{message}");
        let err = c.query(sql, &[]).await.unwrap_err();
        let (code, message) = db_error(&err);
        assert_eq!(code, "XX001", "extended {sql}: {message}");
        assert!(message.contains(column), "{message}");
        // the session goes on
        let rows = c
            .query("SELECT mrn FROM moved_patients WHERE id = 1", &[])
            .await
            .unwrap();
        assert_eq!(rows[0].get::<_, String>(0), "mrn-1");
    }
    // tampered bytes, and a plain value written around pgveil
    cluster().psql("UPDATE moved_patients SET notes = set_byte(notes, 30, get_byte(notes, 30) # 1) WHERE id = 1; UPDATE moved_patients SET ssn = 'plain'::bytea WHERE id = 2");
    for (sql, column) in [
        ("SELECT notes FROM moved_patients WHERE id = 1", "notes"),
        ("SELECT ssn FROM moved_patients WHERE id = 2", "ssn"),
    ] {
        let err = c.query(sql, &[]).await.unwrap_err();
        let (code, message) = db_error(&err);
        assert_eq!(code, "XX001", "{sql}: {message}");
        assert!(message.contains(column), "{message}");
        let out = psql_script(proxy.port(), SUPERUSER, &format!("{sql};\n")).unwrap_err();
        assert!(out.contains(column), "{out}");
    }
}

/// A value that does not decrypt inside a transaction block aborts it, as an error that
/// PostgreSQL raised would: the next statement is 25P02 and COMMIT commits nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_decryption_error_aborts_the_transaction_block() {
    let (_dir, proxy) = patients_setup("movedtx");
    let c = connect(proxy.port()).await;
    c.simple_query("INSERT INTO movedtx_patients (id, ssn, mrn) VALUES (1, 'ssn-1', 'mrn-1')")
        .await
        .unwrap();
    cluster().psql("UPDATE movedtx_patients SET mrn = ssn WHERE id = 1");
    // a transaction that hit it is aborted, as PostgreSQL's own errors abort it
    c.simple_query("BEGIN").await.unwrap();
    c.simple_query("INSERT INTO movedtx_patients (id) VALUES (9)")
        .await
        .unwrap();
    let err = c
        .simple_query("SELECT mrn FROM movedtx_patients")
        .await
        .unwrap_err();
    assert_eq!(db_error(&err).0, "XX001");
    let err = c.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(db_error(&err).0, "25P02");
    c.simple_query("COMMIT").await.unwrap();
    assert_eq!(
        cluster()
            .psql("SELECT count(*) FROM movedtx_patients WHERE id = 9")
            .trim(),
        "0"
    );
    // extended protocol, in a tokio-postgres transaction
    let mut c = c;
    let t = c.transaction().await.unwrap();
    t.execute("INSERT INTO movedtx_patients (id) VALUES ($1)", &[&10i32])
        .await
        .unwrap();
    let err = t
        .query("SELECT id, mrn FROM movedtx_patients", &[])
        .await
        .unwrap_err();
    assert_eq!(db_error(&err).0, "XX001");
    let err = t.query("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(db_error(&err).0, "25P02");
    let _ = t.commit().await;
    // ROLLBACK after it works and the session is usable
    c.simple_query("BEGIN").await.unwrap();
    assert!(c
        .query("SELECT mrn FROM movedtx_patients", &[])
        .await
        .is_err());
    c.simple_query("ROLLBACK").await.unwrap();
    c.simple_query("INSERT INTO movedtx_patients (id, ssn) VALUES (11, 'ok')")
        .await
        .unwrap();
    assert_eq!(
        cluster()
            .psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM movedtx_patients")
            .trim(),
        "1,11"
    );
    // psql, with the error in the middle of a script that goes on
    let out = psql_script(
        proxy.port(),
        SUPERUSER,
        "\\set ON_ERROR_STOP 0\nBEGIN;\nINSERT INTO movedtx_patients (id) VALUES (12);\nSELECT mrn FROM movedtx_patients;\nCOMMIT;\n",
    );
    assert!(out.is_ok(), "{out:?}");
    assert_eq!(
        cluster()
            .psql("SELECT count(*) FROM movedtx_patients WHERE id = 12")
            .trim(),
        "0"
    );
}

// ---------------------------------------------------------------------------------------
// Extended protocol: statements, portals, Describe, Close

#[tokio::test(flavor = "multi_thread")]
async fn named_and_unnamed_statements_and_portals_describe_and_close() {
    let (_dir, proxy) = patients_setup("ext");
    cluster().psql("INSERT INTO ext_patients (id, name) VALUES (0, 'plain')");
    let mut raw = Raw::connect(proxy.port()).await;
    // a named INSERT statement, described, reused with several Binds
    let msgs = raw
        .batch(&[
            Raw::parse(
                "ins",
                "INSERT INTO ext_patients (id, name, ssn, age) VALUES ($1, $2, $3, $4)",
                &[],
            ),
            Raw::describe(b'S', "ins"),
            Raw::sync(),
        ])
        .await;
    assert_eq!(tags(&msgs), "1tnZ", "{msgs:?}");
    assert_eq!(msgs[1].param_types(), [23, 25, 25, 23]);
    for i in 1..=4 {
        let id = i.to_string();
        let ssn = format!("ssn-{i}");
        let age = (20 + i).to_string();
        let msgs = raw
            .batch(&[
                Raw::bind(
                    "",
                    "ins",
                    &[
                        Some(id.as_bytes()),
                        Some(b"P"),
                        Some(ssn.as_bytes()),
                        Some(age.as_bytes()),
                    ],
                    &[0],
                    0,
                ),
                Raw::execute("", 0),
                Raw::sync(),
            ])
            .await;
        assert_eq!(tags(&msgs), "2CZ", "{msgs:?}");
    }
    // a named SELECT; Describe statement shows the logical types
    let msgs = raw
        .batch(&[
            Raw::parse(
                "sel",
                "SELECT id, ssn, age, notes FROM ext_patients WHERE ssn IN ($1, $2, $3) ORDER BY id",
                &[],
            ),
            Raw::describe(b'S', "sel"),
            Raw::sync(),
        ])
        .await;
    assert_eq!(tags(&msgs), "1tTZ", "{msgs:?}");
    assert_eq!(msgs[1].param_types(), [25, 25, 25]);
    let types: Vec<u32> = msgs[2].fields().iter().map(|f| f.3).collect();
    assert_eq!(types, [23, 25, 23, 25]);
    // a named portal, binary results, described, fetched two rows at a time
    let msgs = raw
        .batch(&[
            Raw::bind(
                "p1",
                "sel",
                &[Some(b"ssn-1"), Some(b"ssn-2"), Some(b"ssn-3")],
                &[0],
                1,
            ),
            Raw::describe(b'P', "p1"),
            Raw::execute("p1", 2),
            Raw::execute("p1", 2),
            Raw::sync(),
        ])
        .await;
    assert_eq!(tags(&msgs), "2TDDsDCZ", "{msgs:?}");
    let fields = msgs[1].fields();
    assert_eq!(
        fields.iter().map(|f| (f.3, f.4)).collect::<Vec<_>>(),
        [(23, 1), (25, 1), (23, 1), (25, 1)]
    );
    let rows: Vec<Vec<Option<Vec<u8>>>> = msgs
        .iter()
        .filter(|m| m.tag == b'D')
        .map(Msg::values)
        .collect();
    assert_eq!(rows[0][1].as_deref(), Some(&b"ssn-1"[..]));
    assert_eq!(rows[2][1].as_deref(), Some(&b"ssn-3"[..]));
    assert_eq!(rows[1][2].as_deref(), Some(&22i32.to_be_bytes()[..]));
    assert_eq!(rows[0][3], None);
    // the same statement, unnamed portal, text results, without Describe
    let msgs = raw
        .batch(&[
            Raw::bind("", "sel", &[Some(b"ssn-4"), None, None], &[0], 0),
            Raw::execute("", 0),
            Raw::sync(),
        ])
        .await;
    assert_eq!(tags(&msgs), "2DCZ", "{msgs:?}");
    assert_eq!(msgs[1].values()[1].as_deref(), Some(&b"ssn-4"[..]));
    assert_eq!(msgs[1].values()[2].as_deref(), Some(&b"24"[..]));
    // an unnamed statement: Parse, Describe, Bind, Describe portal, Execute in one batch
    let msgs = raw
        .batch(&[
            Raw::parse("", "SELECT ssn, name FROM ext_patients WHERE ssn = $1", &[]),
            Raw::describe(b'S', ""),
            Raw::bind("", "", &[Some(b"ssn-2")], &[0], 0),
            Raw::describe(b'P', ""),
            Raw::execute("", 0),
            Raw::sync(),
        ])
        .await;
    assert_eq!(tags(&msgs), "1tT2TDCZ", "{msgs:?}");
    assert_eq!(msgs[5].values()[0].as_deref(), Some(&b"ssn-2"[..]));
    // a statement the client declared its own parameter types for
    let msgs = raw
        .batch(&[
            Raw::parse("decl", "SELECT id FROM ext_patients WHERE age = $1", &[20]),
            Raw::describe(b'S', "decl"),
            Raw::bind("", "decl", &[Some(&23i64.to_be_bytes())], &[1], 0),
            Raw::execute("", 0),
            Raw::sync(),
        ])
        .await;
    assert_eq!(tags(&msgs), "1tT2DCZ", "{msgs:?}");
    assert_eq!(msgs[1].param_types(), [20]);
    assert_eq!(msgs[4].values()[0].as_deref(), Some(&b"3"[..]));
    // Close statement and portal; the closed statement is gone upstream too
    let msgs = raw
        .batch(&[
            Raw::bind("p2", "sel", &[Some(b"ssn-1"), None, None], &[0], 0),
            Raw::close(b'P', "p2"),
            Raw::close(b'S', "sel"),
            Raw::sync(),
        ])
        .await;
    assert_eq!(tags(&msgs), "233Z", "{msgs:?}");
    let msgs = raw
        .batch(&[
            Raw::bind("", "sel", &[Some(b"ssn-1"), None, None], &[0], 0),
            Raw::execute("", 0),
            Raw::sync(),
        ])
        .await;
    assert_eq!(tags(&msgs), "EZ", "{msgs:?}");
    assert_eq!(msgs[0].field(b'C').as_deref(), Some("26000"));
    // a new statement under the closed name works, with different columns
    let msgs = raw
        .batch(&[
            Raw::parse(
                "sel",
                "SELECT age, ssn FROM ext_patients WHERE id = $1",
                &[],
            ),
            Raw::bind("", "sel", &[Some(b"1")], &[0], 0),
            Raw::execute("", 0),
            Raw::sync(),
        ])
        .await;
    assert_eq!(tags(&msgs), "12DCZ", "{msgs:?}");
    assert_eq!(msgs[2].values()[0].as_deref(), Some(&b"21"[..]));
    assert_eq!(msgs[2].values()[1].as_deref(), Some(&b"ssn-1"[..]));
    // Flush in the middle of a batch
    let mut batch = Raw::parse("", "SELECT ssn FROM ext_patients WHERE id = 2", &[]);
    batch.extend_from_slice(&Raw::bind("", "", &[], &[], 0));
    batch.extend_from_slice(&Raw::execute("", 0));
    batch.extend_from_slice(&[b'H', 0, 0, 0, 4]);
    raw.send(&batch).await;
    let mut got = Vec::new();
    while got.len() < 4 {
        got.push(raw.recv().await);
    }
    assert_eq!(tags(&got), "12DC");
    assert_eq!(got[2].values()[0].as_deref(), Some(&b"ssn-2"[..]));
    let msgs = raw.batch(&[Raw::sync()]).await;
    assert_eq!(tags(&msgs), "Z");

    // tokio-postgres: named statements reused, and a portal read in chunks
    let mut c = connect(proxy.port()).await;
    let stmt = c
        .prepare("SELECT id, ssn FROM ext_patients WHERE ssn = $1")
        .await
        .unwrap();
    assert_eq!(stmt.params()[0].name(), "text");
    for i in 1..=4 {
        let rows = c.query(&stmt, &[&format!("ssn-{i}")]).await.unwrap();
        assert_eq!(rows[0].get::<_, i32>(0), i);
    }
    let t = c.transaction().await.unwrap();
    let all = t
        .prepare("SELECT ssn, age FROM ext_patients WHERE ssn IS NOT NULL ORDER BY id")
        .await
        .unwrap();
    let portal = t.bind(&all, &[]).await.unwrap();
    let mut seen = Vec::new();
    loop {
        let rows = t.query_portal(&portal, 3).await.unwrap();
        if rows.is_empty() {
            break;
        }
        seen.extend(
            rows.iter()
                .map(|r| (r.get::<_, String>(0), r.get::<_, i32>(1))),
        );
    }
    assert_eq!(
        seen,
        (1..=4)
            .map(|i| (format!("ssn-{i}"), 20 + i))
            .collect::<Vec<_>>()
    );
    t.commit().await.unwrap();
    drop(stmt);
    // dropping the statement closes it; the session goes on
    let rows = c
        .query("SELECT ssn FROM ext_patients WHERE id = $1", &[&3i32])
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, String>(0), "ssn-3");
}

#[tokio::test(flavor = "multi_thread")]
async fn multi_statement_simple_queries_and_returning() {
    let (_dir, proxy) = patients_setup("multi");
    let c = connect(proxy.port()).await;
    let msgs = c
        .simple_query(
            "INSERT INTO multi_patients (id, name, ssn, age) VALUES (1, 'a', 'ssn-a', 1); \
             SELECT 42 AS answer; \
             INSERT INTO multi_patients (id, name, ssn, notes) VALUES (2, 'b', 'ssn-b', 'it''s; tricky'); \
             SELECT id, ssn, notes FROM multi_patients WHERE ssn IN ('ssn-a', 'ssn-b') ORDER BY id; \
             SELECT age FROM multi_patients WHERE ssn = 'ssn-a'",
        )
        .await
        .unwrap();
    assert_eq!(
        rows_of(&msgs),
        vec![
            vec![Some("42".to_string())],
            vec![Some("1".into()), Some("ssn-a".into()), None],
            vec![
                Some("2".into()),
                Some("ssn-b".into()),
                Some("it's; tricky".into())
            ],
            vec![Some("1".into())],
        ]
    );
    // RETURNING a protected column: simple and extended, text and binary
    let msgs = c
        .simple_query("INSERT INTO multi_patients (id, ssn, age) VALUES (3, 'ssn-c', 33) RETURNING ssn, age, id")
        .await
        .unwrap();
    assert_eq!(
        rows_of(&msgs),
        vec![vec![
            Some("ssn-c".into()),
            Some("33".into()),
            Some("3".into())
        ]]
    );
    let row = c
        .query_one(
            "INSERT INTO multi_patients (id, ssn, notes) VALUES ($1, $2, $3) RETURNING ssn, notes",
            &[&4i32, &"ssn-d", &"note d"],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "ssn-d");
    assert_eq!(row.get::<_, String>(1), "note d");
    let rows = c
        .query(
            "UPDATE multi_patients SET ssn = $1 WHERE ssn = $2 RETURNING id, ssn",
            &[&"ssn-d2", &"ssn-d"],
        )
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, String>(1), "ssn-d2");
    let rows = c
        .query(
            "DELETE FROM multi_patients WHERE ssn = $1 RETURNING ssn, notes",
            &[&"ssn-d2"],
        )
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, String>(1), "note d");
    let out = psql_script(
        proxy.port(),
        SUPERUSER,
        "INSERT INTO multi_patients (id, ssn) VALUES (5, 'ssn-e') RETURNING ssn;\nSELECT 1; SELECT ssn FROM multi_patients WHERE id = 5;\n",
    )
    .unwrap();
    assert_eq!(out, "ssn-e\n1\nssn-e\n");
    assert!(!cluster()
        .psql("SELECT encode(ssn, 'escape') FROM multi_patients")
        .contains("ssn-"));
}

#[tokio::test(flavor = "multi_thread")]
async fn unqualified_table_in_another_schema_through_search_path() {
    let dir = tempfile::tempdir().unwrap();
    cluster().psql(
        "DROP SCHEMA IF EXISTS sp_app CASCADE; CREATE SCHEMA sp_app; \
         CREATE TABLE sp_app.people (id int PRIMARY KEY, ssn bytea); \
         DROP TABLE IF EXISTS public.people_sp; CREATE TABLE public.people_sp (id int, ssn text)",
    );
    let columns = column_toml("sp_app.people", "ssn", "text", "deterministic", "");
    let proxy = Proxy::start(&veil_config(dir.path(), "plaintext", &columns), dir.path());
    let prefix = envelope_prefix(dir.path());
    let c = connect(proxy.port()).await;
    c.simple_query("SET search_path = sp_app, public")
        .await
        .unwrap();
    c.simple_query("INSERT INTO people (id, ssn) VALUES (1, 'ssn-1')")
        .await
        .unwrap();
    c.execute(
        "INSERT INTO people (id, ssn) VALUES ($1, $2)",
        &[&2i32, &"ssn-2"],
    )
    .await
    .unwrap();
    let rows = c
        .query("SELECT id, ssn FROM people WHERE ssn = $1", &[&"ssn-2"])
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, String>(1), "ssn-2");
    let msgs = c
        .simple_query("SELECT ssn FROM people WHERE ssn = 'ssn-1'")
        .await
        .unwrap();
    assert_eq!(rows_of(&msgs), vec![vec![Some("ssn-1".to_string())]]);
    let err = c
        .simple_query("SELECT ssn FROM people ORDER BY ssn")
        .await
        .unwrap_err();
    assert_eq!(db_error(&err).0, "0A000");
    let stored = cluster().psql("SELECT encode(ssn, 'hex') FROM sp_app.people ORDER BY id");
    assert!(stored.lines().all(|l| l.starts_with(&prefix)), "{stored}");
    // a session whose search_path is set at connection time (PGOPTIONS) in psql
    let out = std::process::Command::new(bindir().join("psql"))
        .args([
            "-X",
            "-A",
            "-t",
            "-h",
            "127.0.0.1",
            "-p",
            &proxy.port().to_string(),
            "-U",
            SUPERUSER,
            "-d",
            "postgres",
            "-c",
            "SELECT ssn FROM people WHERE ssn = 'ssn-1'",
        ])
        .env("PGPASSWORD", PASSWORD)
        .env("PGSSLMODE", "disable")
        .env("PGOPTIONS", "-c search_path=sp_app")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ssn-1\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // the same unqualified name resolves to public when sp_app is not on the path
    c.simple_query("SET search_path = public").await.unwrap();
    c.simple_query("INSERT INTO people_sp (id, ssn) VALUES (1, 'plain')")
        .await
        .unwrap();
    assert_eq!(
        cluster().psql("SELECT ssn FROM public.people_sp").trim(),
        "plain"
    );
}

/// COPY, DO, cursors and PREPARE in SQL: fine on unprotected tables; on a protected one they
/// work correctly or are refused, and never write plaintext into, or read ciphertext out of,
/// a protected column.
#[tokio::test(flavor = "multi_thread")]
async fn statements_pgveil_does_not_rewrite() {
    let (dir, proxy) = patients_setup("unrw");
    let prefix = envelope_prefix(dir.path());
    let c = connect(proxy.port()).await;
    c.simple_query("INSERT INTO unrw_patients (id, name, ssn) VALUES (1, 'Ann', 'ssn-1')")
        .await
        .unwrap();
    c.simple_query("DROP TABLE IF EXISTS unrw_plain; CREATE TABLE unrw_plain (a int, b text); INSERT INTO unrw_plain VALUES (1, 'x')")
        .await
        .unwrap();
    // unprotected: COPY out and in, DO, cursors, PREPARE/EXECUTE
    let out = psql_script(
        proxy.port(),
        SUPERUSER,
        "COPY unrw_plain TO STDOUT;\n\\copy unrw_plain FROM STDIN\n2\ty\n\\.\nSELECT count(*) FROM unrw_plain;\n\
         DO $$BEGIN INSERT INTO unrw_plain VALUES (3, 'z'); END$$;\n\
         BEGIN;\nDECLARE cur CURSOR FOR SELECT a FROM unrw_plain ORDER BY a;\nFETCH 2 FROM cur;\nCOMMIT;\n\
         PREPARE pq(int) AS SELECT b FROM unrw_plain WHERE a = $1;\nEXECUTE pq(3);\n",
    )
    .unwrap();
    assert_eq!(out, "1\tx\n2\n1\n2\nz\n");
    // protected: each either works correctly or is refused
    let attempts = [
        "DO $$BEGIN INSERT INTO unrw_patients (id, ssn) VALUES (2, 'plain-ssn'); END$$",
        "PREPARE w(text) AS INSERT INTO unrw_patients (id, ssn) VALUES (3, $1::bytea); EXECUTE w('plain-ssn')",
        "PREPARE w2 AS INSERT INTO unrw_patients (id, ssn) VALUES (4, $1); EXECUTE w2('plain-ssn')",
        "COPY unrw_patients (id, ssn) FROM PROGRAM 'echo 7,plain-ssn' WITH (FORMAT csv)",
        "INSERT INTO unrw_patients (id, ssn) SELECT 5, convert_to('plain-ssn', 'UTF8')",
        "INSERT INTO unrw_patients (id, ssn) SELECT 6, b::bytea FROM unrw_plain LIMIT 1",
        "UPDATE unrw_patients SET ssn = decode('706c61696e', 'hex') WHERE id = 1",
        "CREATE TEMP TABLE unrw_copy AS SELECT ssn FROM unrw_patients",
    ];
    for sql in attempts {
        if let Err(e) = c.simple_query(sql).await {
            let (code, message) = db_error(&e);
            assert!(
                code == "0A000" || code == "42501",
                "{sql}: {code} {message}"
            );
        }
    }
    let stored = cluster().psql("SELECT id, encode(ssn, 'hex') FROM unrw_patients ORDER BY id");
    for line in stored.lines().filter(|l| !l.is_empty()) {
        let hexed = line.split('|').nth(1).unwrap();
        assert!(
            hexed.is_empty() || hexed.starts_with(&prefix),
            "plaintext written into a protected column: {line}"
        );
        assert!(!hexed.contains(&hex::encode("plain")), "{line}");
    }
    // a cursor over a protected table: the client never sees ciphertext
    c.simple_query("BEGIN").await.unwrap();
    let declared = c
        .simple_query("DECLARE pc CURSOR FOR SELECT id, ssn FROM unrw_patients WHERE id = 1")
        .await;
    if declared.is_ok() {
        match c.simple_query("FETCH ALL FROM pc").await {
            Ok(msgs) => {
                let rows = rows_of(&msgs);
                assert_eq!(rows, vec![vec![Some("1".into()), Some("ssn-1".into())]]);
            }
            Err(e) => assert_eq!(db_error(&e).0, "0A000"),
        }
    }
    c.simple_query("ROLLBACK").await.unwrap();
    // PREPARE ... EXECUTE of a read: decrypted or refused, never ciphertext
    match c
        .simple_query("PREPARE r AS SELECT ssn FROM unrw_patients WHERE id = 1; EXECUTE r")
        .await
    {
        Ok(msgs) => assert_eq!(rows_of(&msgs), vec![vec![Some("ssn-1".to_string())]]),
        Err(e) => assert_eq!(db_error(&e).0, "0A000"),
    }
    // and the session is fine
    let rows = c
        .query("SELECT ssn FROM unrw_patients WHERE ssn = $1", &[&"ssn-1"])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
}

/// With standard_conforming_strings off a backslash escapes in '…': such text is refused on
/// protected tables rather than read differently from the database (which stored `a\\b`
/// for `'a\\b'`); text without backslashes works as usual.
#[tokio::test(flavor = "multi_thread")]
async fn standard_conforming_strings_off() {
    let (_dir, proxy) = types_proxy("enc_scs");
    let c = connect(proxy.port()).await;
    c.simple_query("SET standard_conforming_strings = off")
        .await
        .unwrap();
    c.simple_query("INSERT INTO enc_scs (id, d_text, note) VALUES (1, 'it''s', 'n')")
        .await
        .unwrap();
    for sql in [
        r"INSERT INTO enc_scs (id, d_text) VALUES (2, 'a\\b')",
        r"INSERT INTO enc_scs (id, note, d_text) VALUES (3, 'x\', 'plain')",
        r"SELECT id FROM enc_scs WHERE note = 'x\' AND d_text = 'it''s'",
    ] {
        let err = c.simple_query(sql).await.unwrap_err();
        assert_eq!(db_error(&err).0, "0A000", "{sql}");
        let err = c.query(sql, &[]).await.unwrap_err();
        assert_eq!(db_error(&err).0, "0A000", "extended {sql}");
    }
    let msgs = c
        .simple_query("SELECT d_text FROM enc_scs WHERE d_text = 'it''s'")
        .await
        .unwrap();
    assert_eq!(rows_of(&msgs), vec![vec![Some("it's".to_string())]]);
    c.simple_query("SET standard_conforming_strings = on")
        .await
        .unwrap();
    c.simple_query(r"INSERT INTO enc_scs (id, d_text) VALUES (4, 'a\b'), (5, E'c\\d')")
        .await
        .unwrap();
    let msgs = c
        .simple_query("SELECT d_text FROM enc_scs WHERE id IN (4, 5) ORDER BY id")
        .await
        .unwrap();
    assert_eq!(
        rows_of(&msgs),
        vec![
            vec![Some(r"a\b".to_string())],
            vec![Some(r"c\d".to_string())]
        ]
    );
    assert_eq!(cluster().psql("SELECT count(*) FROM enc_scs").trim(), "3");
}

/// Values equal in PostgreSQL but written differently meet in one ciphertext; session
/// TimeZone and DateStyle are honoured on input and output.
#[tokio::test(flavor = "multi_thread")]
async fn equal_values_in_other_spellings_and_session_settings() {
    let (_dir, proxy) = types_proxy("enc_spell");
    let c = connect(proxy.port()).await;
    c.simple_query(
        "INSERT INTO enc_spell (id, d_timestamptz, d_jsonb, d_uuid, d_numeric, d_int4, d_bool) VALUES \
         (1, '2024-01-05 10:00+02', '{\"a\":1,\"b\":[1,2]}', 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11', '-0', ' 42 ', 'on'), \
         (2, '2024-01-05 08:00:00Z', '{ \"b\" : [1, 2], \"a\" : 1 }', '{a0eebc999c0b4ef8bb6d6bb9bd380a11}', '0.000', '+42', 'TRUE')",
    )
    .await
    .unwrap();
    for (column, literal) in [
        ("d_timestamptz", "'2024-01-05 09:00+01'"),
        ("d_jsonb", "'{\"b\":[1,2],\"a\":1}'"),
        ("d_uuid", "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'"),
        ("d_numeric", "0"),
        ("d_int4", "42"),
        ("d_bool", "true"),
    ] {
        let msgs = c
            .simple_query(&format!(
                "SELECT id FROM enc_spell WHERE {column} = {literal} ORDER BY id"
            ))
            .await
            .unwrap_or_else(|e| panic!("{column}: {e:?}"));
        assert_eq!(ids(&msgs), ["1", "2"], "{column}");
    }
    // session TimeZone: input without offset is local, output in the session's zone
    c.simple_query("SET TimeZone = 'America/New_York'")
        .await
        .unwrap();
    c.simple_query("INSERT INTO enc_spell (id, d_timestamptz) VALUES (3, '2024-01-05 03:00')")
        .await
        .unwrap();
    let msgs = c
        .simple_query("SELECT id, d_timestamptz FROM enc_spell WHERE d_timestamptz = '2024-01-05 08:00+00' ORDER BY id")
        .await
        .unwrap();
    assert_eq!(
        rows_of(&msgs),
        vec![
            vec![Some("1".into()), Some("2024-01-05 03:00:00-05".into())],
            vec![Some("2".into()), Some("2024-01-05 03:00:00-05".into())],
            vec![Some("3".into()), Some("2024-01-05 03:00:00-05".into())],
        ]
    );
    // DateStyle DMY input
    c.simple_query("SET DateStyle = 'ISO, DMY'").await.unwrap();
    c.simple_query("INSERT INTO enc_spell (id, d_date) VALUES (4, '05/01/2024')")
        .await
        .unwrap();
    c.simple_query("RESET DateStyle; RESET TimeZone")
        .await
        .unwrap();
    let msgs = c
        .simple_query("SELECT d_date FROM enc_spell WHERE d_date = '2024-01-05'")
        .await
        .unwrap();
    assert_eq!(rows_of(&msgs), vec![vec![Some("2024-01-05".to_string())]]);
}

/// Protected values through subqueries, CTEs and derived tables come back decrypted;
/// copying or comparing across keys is refused.
#[tokio::test(flavor = "multi_thread")]
async fn query_shapes_and_cross_key_refusals() {
    let (_dir, proxy) = patients_setup("shape");
    let c = connect(proxy.port()).await;
    c.simple_query("INSERT INTO shape_patients (id, ssn, mrn, notes) VALUES (1, 's1', 'm1', 'n1'); INSERT INTO shape_claims (id, patient_ssn) VALUES (1, 's1')")
        .await
        .unwrap();
    for sql in [
        "SELECT (SELECT ssn FROM shape_patients WHERE id = 1) AS sub",
        "SELECT x.s FROM (SELECT ssn AS s FROM shape_patients) x",
        "WITH x AS (SELECT ssn AS s FROM shape_patients WHERE ssn = 's1') SELECT s FROM x",
        "SELECT DISTINCT ssn FROM shape_patients",
        "SELECT ssn FROM shape_patients WHERE ssn IN (SELECT patient_ssn FROM shape_claims)",
        "SELECT patient_ssn FROM shape_claims UNION SELECT ssn FROM shape_patients",
    ] {
        let msgs = c
            .simple_query(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        assert_eq!(rows_of(&msgs), vec![vec![Some("s1".to_string())]], "{sql}");
        let rows = c.query(sql, &[]).await.unwrap();
        assert_eq!(rows[0].get::<_, String>(0), "s1", "extended {sql}");
    }
    c.simple_query("UPDATE shape_patients SET (ssn, mrn) = ('s2', 'm2') WHERE id = 1")
        .await
        .unwrap();
    let rows = c
        .query(
            "SELECT ssn, mrn FROM shape_patients WHERE ssn = 's2' AND mrn = 'm2'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    // same domain: copying is fine and decrypts
    c.simple_query("INSERT INTO shape_claims (id, patient_ssn) SELECT 2, ssn FROM shape_patients")
        .await
        .unwrap();
    let rows = c
        .query("SELECT patient_ssn FROM shape_claims WHERE id = 2", &[])
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, String>(0), "s2");
    for sql in [
        "UPDATE shape_patients SET mrn = ssn",
        "INSERT INTO shape_patients (id, mrn) SELECT 9, ssn FROM shape_patients",
        "SELECT ssn FROM shape_patients UNION SELECT mrn FROM shape_patients",
        "SELECT id FROM shape_patients WHERE mrn IN (SELECT patient_ssn FROM shape_claims)",
        "SELECT id FROM shape_patients p JOIN shape_claims c ON c.patient_ssn = p.mrn",
        "SELECT coalesce(ssn, mrn) FROM shape_patients",
    ] {
        let err = c.simple_query(sql).await.unwrap_err();
        let (code, message) = db_error(&err);
        assert_eq!(code, "0A000", "{sql}: {message}");
    }
    assert_eq!(
        cluster().psql("SELECT count(*) FROM shape_patients").trim(),
        "1"
    );
}

/// Extended-protocol corner cases, message by message: declared parameter types other than
/// the column's, bad binary data, empty queries, several portals of one statement, a portal
/// kept across Syncs in a transaction, unknown names.
#[tokio::test(flavor = "multi_thread")]
async fn extended_protocol_corner_cases() {
    let (dir, proxy) = types_proxy("enc_praw");
    let prefix = envelope_prefix(dir.path());
    let mut raw = Raw::connect(proxy.port()).await;
    let mut report = Vec::new();
    let show = |msgs: &[Msg]| -> String {
        msgs.iter()
            .map(|m| match m.tag {
                b'E' => format!(
                    "E[{} {}]",
                    m.field(b'C').unwrap_or_default(),
                    m.field(b'M').unwrap_or_default()
                ),
                b'D' => format!(
                    "D{:?}",
                    m.values()
                        .iter()
                        .map(|v| v.as_ref().map(|b| String::from_utf8_lossy(b).into_owned()))
                        .collect::<Vec<_>>()
                ),
                b't' => format!("t{:?}", m.param_types()),
                b'T' => format!(
                    "T{:?}",
                    m.fields().iter().map(|f| (f.3, f.4)).collect::<Vec<_>>()
                ),
                t => (t as char).to_string(),
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    #[rustfmt::skip]
    let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
        ("text-declared int4", vec![
            Raw::parse("", "INSERT INTO enc_praw (id, d_int4) VALUES (1, $1)", &[25]),
            Raw::bind("", "", &[Some(b"42")], &[0], 0), Raw::execute("", 0), Raw::sync()]),
        ("binary int4 into text col", vec![
            Raw::parse("", "INSERT INTO enc_praw (id, d_text) VALUES (2, $1)", &[23]),
            Raw::bind("", "", &[Some(&7i32.to_be_bytes())], &[1], 0), Raw::execute("", 0), Raw::sync()]),
        ("bad binary int4 length", vec![
            Raw::parse("", "INSERT INTO enc_praw (id, d_int4) VALUES (3, $1)", &[]),
            Raw::bind("", "", &[Some(&[1u8, 2, 3])], &[1], 0), Raw::execute("", 0), Raw::sync()]),
        ("text bytea param", vec![
            Raw::parse("", "INSERT INTO enc_praw (id, d_bytea) VALUES (4, $1)", &[]),
            Raw::bind("", "", &[Some(b"\\x0102ff")], &[0], 0), Raw::execute("", 0), Raw::sync()]),
        ("read back", vec![
            Raw::parse("", "SELECT id, d_int4, d_text, d_bytea FROM enc_praw WHERE id IN (1,2,4) ORDER BY id", &[]),
            Raw::bind("", "", &[], &[], 0), Raw::execute("", 0), Raw::sync()]),
        ("param reused for two columns", vec![
            Raw::parse("", "SELECT id FROM enc_praw WHERE d_text = $1 OR note = $1", &[]),
            Raw::bind("", "", &[Some(b"7")], &[0], 0), Raw::execute("", 0), Raw::sync()]),
        ("param reused same column", vec![
            Raw::parse("", "SELECT id FROM enc_praw WHERE d_text = $1 OR d_text = $1", &[]),
            Raw::bind("", "", &[Some(b"7")], &[0], 0), Raw::execute("", 0), Raw::sync()]),
        ("empty query", vec![
            Raw::parse("", "", &[]), Raw::bind("", "", &[], &[], 0), Raw::execute("", 0), Raw::sync()]),
        ("simple empty", vec![Raw::query(""), ]),
        ("simple semicolons", vec![Raw::query(";;"), ]),
        ("two portals one stmt", vec![
            Raw::parse("", "SELECT d_int4 FROM enc_praw WHERE id = $1", &[]),
            Raw::bind("a", "", &[Some(b"1")], &[0], 1),
            Raw::bind("b", "", &[Some(b"1")], &[0], 0),
            Raw::execute("a", 0), Raw::execute("b", 0), Raw::sync()]),
        ("begin", vec![Raw::query("BEGIN")]),
        ("portal across syncs 1", vec![
            Raw::parse("", "SELECT id, d_text FROM enc_praw WHERE id = 2", &[]),
            Raw::bind("keep", "", &[], &[], 0), Raw::sync()]),
        ("portal across syncs 2", vec![Raw::describe(b'P', "keep"), Raw::execute("keep", 0), Raw::sync()]),
        ("commit", vec![Raw::query("COMMIT")]),
        ("plain describe portal", vec![
            Raw::parse("", "SELECT 1 AS one", &[]), Raw::bind("", "", &[], &[], 0),
            Raw::describe(b'P', ""), Raw::execute("", 0), Raw::sync()]),
        ("numeric binary declared", vec![
            Raw::parse("", "INSERT INTO enc_praw (id, d_numeric) VALUES (5, $1)", &[1700]),
            // 1.50: ndigits 2, weight 0, sign 0, dscale 2, digits [1, 5000]
            Raw::bind("", "", &[Some(&[0u8, 2, 0, 0, 0, 0, 0, 2, 0, 1, 0x13, 0x88])], &[1], 0), Raw::execute("", 0), Raw::sync()]),
        ("numeric read", vec![Raw::query("SELECT d_numeric FROM enc_praw WHERE id = 5 AND d_numeric = 1.5")]),
        ("param count mismatch", vec![
            Raw::parse("", "SELECT id FROM enc_praw WHERE d_text = $1", &[]),
            Raw::bind("", "", &[], &[], 0), Raw::execute("", 0), Raw::sync()]),
        ("close unknown", vec![Raw::close(b'S', "nope"), Raw::close(b'P', "nope"), Raw::sync()]),
        ("describe unknown", vec![Raw::describe(b'S', "nope"), Raw::sync()]),
        ("function call-ish", vec![Raw::query("SELECT 1")]),
    ];
    for (name, batch) in cases {
        let msgs = raw.batch(&batch).await;
        report.push(format!("{name}: {}", show(&msgs)));
    }
    let expected = r#"text-declared int4: 1 2 C Z
binary int4 into text col: 1 2 C Z
bad binary int4 length: 1 E[22P03 incorrect binary data format for type integer (for protected column public.enc_praw.d_int4)] Z
text bytea param: 1 2 C Z
read back: 1 2 D[Some("1"), Some("42"), None, None] D[Some("2"), None, Some("7"), None] D[Some("4"), None, None, Some("\\x0102ff")] C Z
param reused for two columns: E[0A000 pgveil: parameter 1 is bound to encrypted column public.enc_praw.d_text and also used elsewhere] Z
param reused same column: 1 2 D[Some("2")] C Z
empty query: 1 2 I Z
simple empty: I Z
simple semicolons: I Z
two portals one stmt: 1 2 2 D[Some("\0\0\0*")] C D[Some("42")] C Z
begin: C Z
portal across syncs 1: 1 2 Z
portal across syncs 2: T[(23, 0), (25, 0)] D[Some("2"), Some("7")] C Z
commit: C Z
plain describe portal: 1 2 T[(23, 0)] D[Some("1")] C Z
numeric binary declared: 1 2 C Z
numeric read: T[(1700, 0)] D[Some("1.5")] C Z
param count mismatch: 1 E[08P01 bind message supplies 0 parameters, but prepared statement "" requires 1] Z
close unknown: 3 3 Z
describe unknown: E[26000 prepared statement "nope" does not exist] Z
function call-ish: T[(23, 0)] D[Some("1")] C Z"#;
    for (got, want) in report.iter().zip(expected.lines()) {
        assert_eq!(got, want);
    }
    assert_eq!(report.len(), expected.lines().count());
    // nothing stored in plaintext
    let stored = cluster().psql("SELECT encode(d_int4, 'hex'), encode(d_text, 'hex'), encode(d_bytea, 'hex'), encode(d_numeric, 'hex') FROM enc_praw");
    for value in stored.split(['|', '\n']).filter(|v| !v.is_empty()) {
        assert!(value.starts_with(&prefix), "{value}");
    }
}

/// Migrations run directly against the database: a configured table created after pgveil
/// cached the catalog is learned by new sessions (old ones refuse it: fail closed), and a
/// table dropped and recreated (new OID) still has its values decrypted, never returned as
/// ciphertext.
#[tokio::test(flavor = "multi_thread")]
async fn tables_created_or_recreated_around_pgveil() {
    let dir = tempfile::tempdir().unwrap();
    cluster().psql(
        "DROP TABLE IF EXISTS ddl_late, ddl_recreated; CREATE TABLE ddl_recreated (id int, ssn bytea)",
    );
    let columns = format!(
        "{}{}",
        column_toml("ddl_late", "ssn", "text", "deterministic", ""),
        column_toml("ddl_recreated", "ssn", "text", "deterministic", "")
    );
    let proxy = Proxy::start(&veil_config(dir.path(), "plaintext", &columns), dir.path());
    let prefix = envelope_prefix(dir.path());
    let old = connect(proxy.port()).await;
    old.simple_query("INSERT INTO ddl_recreated VALUES (1, 'before')")
        .await
        .unwrap();
    cluster().psql(
        "CREATE TABLE ddl_late (id int, ssn bytea); DROP TABLE ddl_recreated; CREATE TABLE ddl_recreated (id int, ssn bytea)",
    );
    // the old session does not know ddl_late: refused, never forwarded in plaintext
    let err = old
        .simple_query("INSERT INTO ddl_late VALUES (1, 'late-secret')")
        .await
        .unwrap_err();
    assert_eq!(db_error(&err).0, "0A000");
    old.simple_query("INSERT INTO ddl_recreated VALUES (2, 'recreated')")
        .await
        .unwrap();
    let new = connect(proxy.port()).await;
    new.simple_query("INSERT INTO ddl_late VALUES (1, 'late-secret')")
        .await
        .unwrap();
    new.execute("INSERT INTO ddl_late VALUES (2, $1)", &[&"late-2"])
        .await
        .unwrap();
    let rows = new
        .query("SELECT ssn FROM ddl_late WHERE ssn = $1", &[&"late-secret"])
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, String>(0), "late-secret");
    for c in [&old, &new] {
        let msgs = c
            .simple_query("SELECT ssn FROM ddl_recreated")
            .await
            .unwrap();
        assert_eq!(rows_of(&msgs), vec![vec![Some("recreated".to_string())]]);
        let rows = c
            .query(
                "SELECT id, ssn FROM ddl_recreated WHERE ssn = $1",
                &[&"recreated"],
            )
            .await
            .unwrap();
        assert_eq!(rows[0].columns()[1].type_().name(), "text");
        assert_eq!(rows[0].get::<_, String>(1), "recreated");
    }
    let stored = cluster().psql(
        "SELECT encode(ssn, 'hex') FROM ddl_late UNION ALL SELECT encode(ssn, 'hex') FROM ddl_recreated",
    );
    assert_eq!(
        stored.lines().filter(|l| l.starts_with(&prefix)).count(),
        3,
        "{stored}"
    );
}

/// Upserts, INSERT ... SELECT, UPDATE ... FROM, and how literal spellings are treated: casts
/// to the logical type are fine; computed values, casts to bytea and other columns refused.
#[tokio::test(flavor = "multi_thread")]
async fn upserts_and_literal_spellings() {
    let (_dir, proxy) = patients_setup("pm");
    let c = connect(proxy.port()).await;
    let cases: &[(&str, &str)] = &[
        ("INSERT INTO pm_patients (id, ssn, notes) VALUES (1, 's1', 'n1')", "OK []"),
        ("INSERT INTO pm_patients (id, ssn, notes) VALUES (2, 's1', 'n2') ON CONFLICT (ssn) DO UPDATE SET notes = 'updated'", "OK []"),
        ("SELECT id, notes FROM pm_patients", r#"OK [[Some("1"), Some("updated")]]"#),
        ("INSERT INTO pm_patients (id, ssn, notes) VALUES (3, 's1', 'n3') ON CONFLICT (ssn) DO UPDATE SET notes = EXCLUDED.notes", "OK []"),
        ("SELECT id, notes FROM pm_patients", r#"OK [[Some("1"), Some("n3")]]"#),
        ("INSERT INTO pm_patients (id, ssn) SELECT 4, 's4'", "OK []"),
        ("SELECT ssn FROM pm_patients WHERE id = 4", r#"OK [[Some("s4")]]"#),
        ("INSERT INTO pm_claims (id, patient_ssn, amount) VALUES (1, 's1', 5)", "OK []"),
        ("UPDATE pm_claims c SET amount = 6 FROM pm_patients p WHERE p.ssn = c.patient_ssn AND p.ssn = 's1'", "OK []"),
        ("SELECT amount FROM pm_claims", r#"OK [[Some("6")]]"#),
        ("UPDATE pm_patients SET ssn = 's5' WHERE ssn = 's4' RETURNING ssn", r#"OK [[Some("s5")]]"#),
        ("SELECT id FROM pm_patients WHERE (ssn, mrn) = ('s1', NULL)", "ERR 0A000"),
        ("SELECT count(*) FILTER (WHERE ssn = 's1') FROM pm_patients", r#"OK [[Some("1")]]"#),
        ("SELECT id FROM pm_patients WHERE ssn = (('s1'))", r#"OK [[Some("1")]]"#),
        ("SELECT id FROM pm_patients WHERE ssn = 's1'::text", r#"OK [[Some("1")]]"#),
        ("SELECT id FROM pm_patients WHERE ssn = CAST('s1' AS text)", r#"OK [[Some("1")]]"#),
        ("SELECT id FROM pm_patients WHERE ssn = text 's1'", r#"OK [[Some("1")]]"#),
        ("SELECT id FROM pm_patients WHERE age = 1 + 1", "ERR 0A000"),
        ("SELECT id FROM pm_patients WHERE ssn = 's' || '1'", "ERR 0A000"),
        ("SELECT id FROM pm_patients WHERE ssn = lower('S1')", "ERR 0A000"),
        ("SELECT id FROM pm_patients WHERE ssn = name", "ERR 0A000"),
        ("SELECT id FROM pm_patients WHERE ssn = '\\x0100'::bytea", "ERR 0A000"),
        ("INSERT INTO pm_patients (id, ssn) VALUES (9, '\\x01000000014400'::bytea)", "ERR 0A000"),
        ("INSERT INTO pm_patients (id, ssn) VALUES (10, NULL)", "OK []"),
        ("SELECT id FROM pm_patients WHERE ssn IS NULL", r#"OK [[Some("10")]]"#),
    ];
    for (sql, want) in cases {
        let got = match c.simple_query(sql).await {
            Ok(msgs) => format!("OK {:?}", rows_of(&msgs)),
            Err(e) => format!("ERR {}", db_error(&e).0),
        };
        assert_eq!(&got, want, "{sql}");
    }
    // mixed result formats in one Bind: binary, text, binary
    let mut raw = Raw::connect(proxy.port()).await;
    let mut body = vec![0u8, 0];
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&3i16.to_be_bytes());
    for f in [1i16, 0, 1] {
        body.extend_from_slice(&f.to_be_bytes());
    }
    let mut bind = vec![b'B'];
    bind.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    bind.extend_from_slice(&body);
    let msgs = raw
        .batch(&[
            Raw::parse("", "SELECT id, ssn, age FROM pm_patients WHERE id = 1", &[]),
            bind,
            Raw::describe(b'P', ""),
            Raw::execute("", 0),
            Raw::sync(),
        ])
        .await;
    assert_eq!(tags(&msgs), "12TDCZ");
    let formats: Vec<(u32, i16)> = msgs[2].fields().iter().map(|f| (f.3, f.4)).collect();
    assert_eq!(formats, [(23, 1), (25, 0), (23, 1)]);
    assert_eq!(
        msgs[3].values(),
        vec![
            Some(1i32.to_be_bytes().to_vec()),
            Some(b"s1".to_vec()),
            None
        ]
    );
}

/// Statement names reused: after `DEALLOCATE` or `DISCARD ALL` in SQL a new Parse under the
/// old name is the statement its Binds run (its parameters were sent in plaintext into the
/// protected column); a Parse under a name that still exists fails and the old statement
/// keeps its protection.
#[tokio::test(flavor = "multi_thread")]
async fn statement_names_reused_after_deallocate() {
    let (dir, proxy) = patients_setup("dea");
    let prefix = envelope_prefix(dir.path());
    let mut raw = Raw::connect(proxy.port()).await;
    let ok = |msgs: &[Msg]| {
        assert!(
            !msgs.iter().any(|m| m.tag == b'E'),
            "{:?}",
            msgs.iter().find(|m| m.tag == b'E').map(|m| m.field(b'M'))
        )
    };
    let insert = |id: i32| {
        format!("INSERT INTO dea_patients (id, ssn) VALUES ({id}, $1) ON CONFLICT (id) DO UPDATE SET ssn = EXCLUDED.ssn")
    };
    ok(&raw
        .batch(&[
            Raw::parse(
                "s",
                "INSERT INTO dea_patients (id, name) VALUES (1, $1)",
                &[],
            ),
            Raw::sync(),
        ])
        .await);
    for (id, reset) in [
        (2, "DEALLOCATE s"),
        (3, "DISCARD ALL"),
        (4, "DEALLOCATE ALL"),
    ] {
        ok(&raw.simple(reset).await);
        ok(&raw
            .batch(&[Raw::parse("s", &insert(id), &[]), Raw::sync()])
            .await);
        let value = format!("PLAINTEXT-{id}");
        ok(&raw
            .batch(&[
                Raw::bind("", "s", &[Some(value.as_bytes())], &[0], 0),
                Raw::execute("", 0),
                Raw::sync(),
            ])
            .await);
    }
    // a Parse under a name that still exists fails; the old statement stays protected
    let msgs = raw
        .batch(&[
            Raw::parse(
                "s",
                "INSERT INTO dea_patients (id, name) VALUES (5, $1)",
                &[],
            ),
            Raw::bind("", "s", &[Some(b"PLAINTEXT-5")], &[0], 0),
            Raw::execute("", 0),
            Raw::sync(),
        ])
        .await;
    assert_eq!(tags(&msgs), "EZ");
    assert_eq!(msgs[0].field(b'C').as_deref(), Some("42P05"));
    ok(&raw
        .batch(&[
            Raw::bind("", "s", &[Some(b"PLAINTEXT-6")], &[0], 0),
            Raw::execute("", 0),
            Raw::sync(),
        ])
        .await);
    let stored = cluster().psql("SELECT id, encode(ssn, 'hex') FROM dea_patients ORDER BY id");
    assert!(!stored.contains(&hex::encode("PLAINTEXT")), "{stored}");
    let ids: Vec<&str> = stored
        .lines()
        .filter(|l| l.contains(&format!("|{prefix}")))
        .map(|l| l.split('|').next().unwrap())
        .collect();
    assert_eq!(ids, ["2", "3", "4"], "{stored}");
    let c = connect(proxy.port()).await;
    let rows = c
        .query(
            "SELECT id FROM dea_patients WHERE ssn = $1",
            &[&"PLAINTEXT-6"],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, i32>(0), 4);
}

/// Differential: literals in the spellings applications send, read back through pgveil,
/// against what PostgreSQL itself makes of them (the same text, or an error of the same
/// class).
#[test]
fn literal_input_agrees_with_postgresql() {
    let (_dir, proxy) = types_proxy("enc_diff");
    #[rustfmt::skip]
    let cases: &[(&str, &str)] = &[
        ("int2", " 12 "), ("int2", "-0"), ("int2", "32768"), ("int2", "1.5"), ("int2", "+7"),
        ("int4", "2147483648"), ("int4", "00042"), ("int4", "4_2"), ("int4", ""),
        ("int8", "9223372036854775807"), ("int8", "-9223372036854775809"),
        ("numeric", "1e3"), ("numeric", ".5"), ("numeric", "+1.0"), ("numeric", " 1.50 "), ("numeric", "-0.00"),
        ("numeric", "1.23e-5"), ("numeric", "Infinity"), ("numeric", "-inf"), ("numeric", "abc"),
        ("numeric", "100"), ("numeric", "1000000000000000000000"), ("numeric", "0.000000000000000000001"),
        ("float8", "1e400"), ("float8", "1.5E+2"), ("float8", "-Infinity"), ("float8", "NaN"), ("float8", " 2 "),
        ("float8", "0.1"), ("float8", "1e-320"), ("float8", "123456789012345678"),
        ("bool", "y"), ("bool", "n"), ("bool", "1"), ("bool", "0"), ("bool", "of"), ("bool", "o"), ("bool", " TRUE "), ("bool", "yes"), ("bool", "2"),
        ("date", "2024-1-5"), ("date", "20240105"), ("date", "2024-02-30"), ("date", "0001-01-01 BC"), ("date", "epoch"), ("date", "-infinity"),
        ("date", "2024-01-05 10:00"),
        ("timestamp", "2024-01-05T10:11:12"), ("timestamp", "2024-01-05 10:11:12.1234567"), ("timestamp", "2024-01-05"),
        ("timestamp", "2024-01-05 24:00:00"), ("timestamp", "2024-01-05 10:11:12+05"), ("timestamp", "epoch"),
        ("timestamptz", "2024-01-05T10:11:12Z"), ("timestamptz", "2024-01-05 10:11:12 America/New_York"),
        ("timestamptz", "2024-07-05 10:11:12 Europe/Paris"), ("timestamptz", "2024-01-05 10:11:12.5-03:30"),
        ("timestamptz", "2024-01-05"), ("timestamptz", "infinity"),
        ("uuid", "a0eebc999c0b4ef8bb6d6bb9bd380a11"), ("uuid", "a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11"), ("uuid", "not-a-uuid"),
        ("bytea", "abc"), ("bytea", "\\x4142"), ("bytea", "a\\\\b"), ("bytea", "\\001x"), ("bytea", "\\xZZ"),
        ("jsonb", "{\"a\":1,\"a\":2}"), ("jsonb", "\"\\u00e9\""), ("jsonb", "[1.50, 1e2, -0]"), ("jsonb", "null"),
        ("jsonb", "{\"k\": \"v\" "), ("jsonb", " 12 "), ("jsonb", "\"\\u0000\""),
        ("text", "tab\there"), ("varchar", "x"),
    ];
    let mut mismatches = Vec::new();
    for (i, (ty, value)) in cases.iter().enumerate() {
        let id = i as i32 + 1;
        let l = lit(value);
        let direct_expr = if *ty == "numeric" {
            format!("trim_scale({l}::numeric)")
        } else {
            format!("{l}::{ty}")
        };
        let direct = psql_script(
            cluster().port,
            SUPERUSER,
            &format!("SET TimeZone = 'UTC';\n\\set VERBOSITY verbose\nSELECT {direct_expr};\n"),
        );
        let through = psql_script(
            proxy.port(),
            SUPERUSER,
            &format!("\\set VERBOSITY verbose\nINSERT INTO enc_diff (id, d_{ty}) VALUES ({id}, {l});\nSELECT d_{ty} FROM enc_diff WHERE id = {id};\n"),
        );
        let class = |r: &Result<String, String>| match r {
            Ok(out) => format!("ok {out:?}"),
            Err(e) => {
                let code = e
                    .split("ERROR:  ")
                    .nth(1)
                    .and_then(|rest| rest.get(..5))
                    .unwrap_or("?????")
                    .to_string();
                format!("error class {}", &code[..2])
            }
        };
        let (d, t) = (class(&direct), class(&through));
        if d != t {
            mismatches.push(format!("{ty} {value:?}: postgres {d}, pgveil {t}"));
        }
    }
    assert!(mismatches.is_empty(), "\n{}", mismatches.join("\n"));
}

/// A search_path set inside a transaction block is undone by ROLLBACK (and SET LOCAL by
/// COMMIT): pgveil must follow, or an unqualified name resolves to another table than the
/// database's, and a literal for a protected column goes up unencrypted.
#[tokio::test(flavor = "multi_thread")]
async fn search_path_undone_at_transaction_end() {
    let dir = tempfile::tempdir().unwrap();
    cluster().psql(
        "DROP SCHEMA IF EXISTS spx CASCADE; CREATE SCHEMA spx; \
         CREATE TABLE spx.people (id int, ssn bytea); \
         DROP TABLE IF EXISTS public.people; CREATE TABLE public.people (id int, ssn text)",
    );
    let columns = column_toml("spx.people", "ssn", "text", "deterministic", "");
    let proxy = Proxy::start(&veil_config(dir.path(), "plaintext", &columns), dir.path());
    let prefix = envelope_prefix(dir.path());
    let c = connect(proxy.port()).await;
    c.simple_query("SET search_path = spx").await.unwrap();
    for (n, change) in [
        (1, "BEGIN; SET search_path = public; ROLLBACK"),
        (2, "BEGIN; SET LOCAL search_path = public; COMMIT"),
        (
            3,
            "BEGIN; SELECT set_config('search_path', 'public', true); COMMIT",
        ),
    ] {
        c.simple_query(change).await.unwrap();
        c.simple_query(&format!(
            "INSERT INTO people (id, ssn) VALUES ({n}, 'secret-{n}')"
        ))
        .await
        .unwrap();
    }
    // the same, one statement at a time
    c.simple_query("BEGIN").await.unwrap();
    c.simple_query("SET search_path = public").await.unwrap();
    c.simple_query("ROLLBACK").await.unwrap();
    c.execute(
        "INSERT INTO people (id, ssn) VALUES (4, $1)",
        &[&"secret-4"],
    )
    .await
    .unwrap();
    // a savepoint rolled back inside a transaction
    c.simple_query("BEGIN").await.unwrap();
    c.simple_query("SAVEPOINT a").await.unwrap();
    c.simple_query("SET search_path = public").await.unwrap();
    c.simple_query("ROLLBACK TO SAVEPOINT a").await.unwrap();
    c.simple_query("INSERT INTO people (id, ssn) VALUES (5, 'secret-5')")
        .await
        .unwrap();
    c.simple_query("COMMIT").await.unwrap();
    assert_eq!(
        cluster().psql("SELECT count(*) FROM public.people").trim(),
        "0"
    );
    let stored = cluster().psql("SELECT id, encode(ssn, 'hex') FROM spx.people ORDER BY id");
    assert_eq!(stored.lines().count(), 5, "{stored}");
    assert!(
        stored.lines().all(|l| l.contains(&format!("|{prefix}"))),
        "plaintext in a protected column:\n{stored}"
    );
    let rows = c
        .query("SELECT ssn FROM people WHERE ssn = $1", &[&"secret-5"])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
}

/// RESET ALL, DISCARD ALL and RESET search_path put back the session's default search_path
/// (here from the startup packet): pgveil follows.
#[tokio::test(flavor = "multi_thread")]
async fn search_path_reset_to_the_session_default() {
    let dir = tempfile::tempdir().unwrap();
    cluster().psql(
        "DROP SCHEMA IF EXISTS spr CASCADE; CREATE SCHEMA spr; \
         CREATE TABLE spr.people (id int, ssn bytea); \
         DROP TABLE IF EXISTS public.people_r; CREATE TABLE public.people_r (id int, ssn text); \
         CREATE TABLE IF NOT EXISTS spr.people_r (id int)",
    );
    let columns = column_toml("spr.people", "ssn", "text", "deterministic", "");
    let proxy = Proxy::start(&veil_config(dir.path(), "plaintext", &columns), dir.path());
    let prefix = envelope_prefix(dir.path());
    let (c, connection) = tokio_postgres::connect(
        &format!(
            "{} options='-c search_path=spr'",
            conn_str(proxy.port(), SUPERUSER, PASSWORD)
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    for (n, reset) in [
        (1, "RESET ALL"),
        (2, "DISCARD ALL"),
        (3, "RESET search_path"),
    ] {
        c.simple_query("SET search_path = public").await.unwrap();
        c.simple_query(reset).await.unwrap();
        c.simple_query(&format!(
            "INSERT INTO people (id, ssn) VALUES ({n}, 'secret-{n}')"
        ))
        .await
        .unwrap();
    }
    let stored = cluster().psql("SELECT id, encode(ssn, 'hex') FROM spr.people ORDER BY id");
    assert_eq!(stored.lines().count(), 3, "{stored}");
    assert!(
        stored.lines().all(|l| l.contains(&format!("|{prefix}"))),
        "plaintext in a protected column:\n{stored}"
    );
}

/// With every statement and parameter logged by the database, no plaintext value of a
/// protected column shows up there: literals, parameters, refusals, value errors,
/// unparseable statements and pipelined batches included.
#[tokio::test(flavor = "multi_thread")]
async fn no_plaintext_reaches_the_database_log() {
    psql_script(
        cluster().port,
        SUPERUSER,
        "ALTER SYSTEM SET log_statement = 'all';\nALTER SYSTEM SET log_min_error_statement = 'error';\nSELECT pg_reload_conf();\n",
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let (_dir, proxy) = patients_setup("logchk");
    let c = connect(proxy.port()).await;
    let m = "MARKERq7x";
    for sql in [
        format!("INSERT INTO logchk_patients (id, ssn, mrn, notes, age) VALUES (1, '{m}-ssn', '{m}-mrn', '{m}-notes', 77)"),
        format!("SELECT id FROM logchk_patients WHERE ssn = '{m}-ssn' OR mrn IN ('{m}-a', '{m}-b')"),
        format!("UPDATE logchk_patients SET notes = '{m}-notes2' WHERE ssn <> '{m}-x'"),
        format!("SELECT id FROM logchk_patients WHERE ssn LIKE '{m}%'"),
        format!("SELECT id FROM logchk_patients WHERE notes = '{m}-notes'"),
        format!("INSERT INTO logchk_patients (id, age) VALUES (2, '{m}')"),
        format!("SELEC ssn FROM logchk_patients WHERE ssn = '{m}-syntax'"),
        format!("COPY logchk_patients (id, ssn) FROM PROGRAM 'echo 9,{m}-copy' WITH (FORMAT csv)"),
        format!("BEGIN; INSERT INTO logchk_patients (id, ssn) VALUES (3, '{m}-txn'); SELECT lower(ssn) FROM logchk_patients; COMMIT"),
        "ROLLBACK".to_string(),
        format!("DELETE FROM logchk_patients WHERE ssn = '{m}-nobody' RETURNING ssn"),
    ] {
        let _ = c.simple_query(&sql).await;
    }
    let _ = c
        .execute(
            "INSERT INTO logchk_patients (id, ssn, notes) VALUES ($1, $2, $3)",
            &[&4i32, &format!("{m}-param"), &format!("{m}-pnotes")],
        )
        .await;
    let _ = c
        .query(
            "SELECT id FROM logchk_patients WHERE ssn = $1",
            &[&format!("{m}-param")],
        )
        .await;
    let _ = c
        .query(
            "SELECT id FROM logchk_patients WHERE ssn LIKE $1",
            &[&format!("{m}%")],
        )
        .await;
    let _ = c
        .query("SELECT id FROM logchk_patients WHERE age = $1", &[&m])
        .await;
    let mut raw = Raw::connect(proxy.port()).await;
    let _ = raw
        .batch(&[
            Raw::parse("", "SELECT id FROM logchk_patients WHERE ssn LIKE $1", &[]),
            Raw::bind("", "", &[Some(format!("{m}-pipe1").as_bytes())], &[0], 0),
            Raw::execute("", 0),
            Raw::parse(
                "",
                "INSERT INTO logchk_patients (id, ssn) VALUES (5, $1)",
                &[],
            ),
            Raw::bind("", "", &[Some(format!("{m}-pipe2").as_bytes())], &[0], 0),
            Raw::execute("", 0),
            Raw::sync(),
        ])
        .await;
    let _ = raw
        .simple(&format!(
            "SELECT age FROM logchk_patients WHERE age = '{m}'"
        ))
        .await;
    // the markers went somewhere: the statements themselves are in the log
    let log = std::fs::read_to_string(cluster().dir.join("server.log")).unwrap();
    assert!(
        log.contains(
            "statement: INSERT INTO logchk_patients (id, ssn, mrn, notes, age) VALUES (1, '\\x01"
        ),
        "log_statement is not on"
    );
    let leaks: Vec<&str> = log.lines().filter(|l| l.contains(m)).collect();
    assert!(
        leaks.is_empty(),
        "plaintext in the database log:\n{}",
        leaks.join("\n")
    );
    // and the data is there, encrypted
    let rows = c
        .query(
            "SELECT ssn FROM logchk_patients WHERE ssn = $1",
            &[&format!("{m}-param")],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
}
