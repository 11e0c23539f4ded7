//! End-to-end: a protected column written and read through pgveil, stored as ciphertext.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;

fn config(dir: &std::path::Path, table: &str) -> String {
    pgveil::crypto::keys::init_key_dir(&dir.join("keys")).unwrap();
    format!(
        "{}\n[keys]\nmaster_key_file = \"keys/master.key\"\n[policy]\ndefault_access = \"plaintext\"\n\
[[column]]\ntable = \"{table}\"\ncolumn = \"ssn\"\ntype = \"text\"\nencryption = \"deterministic\"\n\
[[column]]\ntable = \"{table}\"\ncolumn = \"birth_date\"\ntype = \"date\"\nencryption = \"randomized\"\n",
        relay_config(cluster().port, "")
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn smoke() {
    let dir = tempfile::tempdir().unwrap();
    cluster().psql("DROP TABLE IF EXISTS smoke_patients; CREATE TABLE smoke_patients (id serial PRIMARY KEY, name text, ssn bytea UNIQUE, birth_date bytea)");
    let proxy = Proxy::start(&config(dir.path(), "smoke_patients"), dir.path());
    let client = connect(proxy.port()).await;
    client.simple_query("INSERT INTO smoke_patients (name, ssn, birth_date) VALUES ('Ann', '123-45-6789', '2024-01-05')").await.unwrap();
    client
        .execute(
            "INSERT INTO smoke_patients (name, ssn, birth_date) VALUES ($1, $2, $3)",
            &[&"Bob", &"987-65-4321", &chrono_date()],
        )
        .await
        .unwrap();
    let rows = client
        .query(
            "SELECT name, ssn, birth_date FROM smoke_patients WHERE ssn = $1",
            &[&"123-45-6789"],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, String>(1), "123-45-6789");
    let msgs = client
        .simple_query("SELECT name, ssn, birth_date FROM smoke_patients WHERE ssn = '987-65-4321'")
        .await
        .unwrap();
    let row = msgs
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .unwrap();
    assert_eq!(row.get(1), Some("987-65-4321"));
    assert_eq!(row.get(2), Some("2023-12-31"));
    let direct = cluster().psql("SELECT encode(ssn, 'hex') FROM smoke_patients ORDER BY id");
    assert!(!direct.contains(&hex::encode("123-45-6789")), "{direct}");
    assert!(direct.starts_with("01000000014"), "{direct}");
    let err = client
        .simple_query("SELECT * FROM smoke_patients WHERE ssn LIKE '1%'")
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "0A000");
}

fn chrono_date() -> chrono::NaiveDate {
    chrono::NaiveDate::from_ymd_opt(2023, 12, 31).unwrap()
}
