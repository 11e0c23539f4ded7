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
    // Version 1, the key id derived from this master key, mode D (deterministic).
    let prefix = format!("{}44", envelope_prefix(dir.path()));
    assert!(direct.starts_with(&prefix), "{direct}");
    let err = client
        .simple_query("SELECT * FROM smoke_patients WHERE ssn LIKE '1%'")
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "0A000");
}

fn chrono_date() -> chrono::NaiveDate {
    chrono::NaiveDate::from_ymd_opt(2023, 12, 31).unwrap()
}

/// Listens on a free port and forwards to the cluster, recording every byte sent upstream.
async fn tap() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<u8>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = tokio::net::TcpStream::connect(("127.0.0.1", cluster().port))
                .await
                .unwrap();
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            let record = record.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                while let Ok(n) = cr.read(&mut buf).await {
                    if n == 0 || sw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    record.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut sr, &mut cw).await;
            });
        }
    });
    (port, seen)
}

#[tokio::test(flavor = "multi_thread")]
async fn no_plaintext_value_reaches_the_database() {
    const SECRET: &str = "555-12-3456";
    const SECRET_DATE: &str = "1961-07-14";
    secrets([SECRET, SECRET_DATE]);
    let dir = tempfile::tempdir().unwrap();
    cluster().psql("DROP TABLE IF EXISTS tap_patients; CREATE TABLE tap_patients (id serial PRIMARY KEY, name text, ssn bytea, birth_date bytea)");
    let (tap_port, seen) = tap().await;
    let config = config(dir.path(), "tap_patients").replace(
        &format!("port = {}", cluster().port),
        &format!("port = {tap_port}"),
    );
    let proxy = Proxy::start(&config, dir.path());
    let client = connect(proxy.port()).await;

    client.simple_query(&format!("INSERT INTO tap_patients (name, ssn, birth_date) VALUES ('a', '{SECRET}', '{SECRET_DATE}')")).await.unwrap();
    let date = chrono::NaiveDate::parse_from_str(SECRET_DATE, "%Y-%m-%d").unwrap();
    client
        .execute(
            "INSERT INTO tap_patients (name, ssn, birth_date) VALUES ('b', $1, $2)",
            &[&SECRET, &date],
        )
        .await
        .unwrap();
    let found = client
        .query(
            "SELECT ssn, birth_date FROM tap_patients WHERE ssn = $1",
            &[&SECRET],
        )
        .await
        .unwrap();
    assert_eq!(found.len(), 2);
    assert_eq!(found[0].get::<_, chrono::NaiveDate>(1), date);
    client
        .simple_query(&format!(
            "SELECT name FROM tap_patients WHERE ssn IN ('{SECRET}', 'x')"
        ))
        .await
        .unwrap();
    client
        .simple_query(&format!(
            "UPDATE tap_patients SET ssn = '{SECRET}' WHERE name = 'a'"
        ))
        .await
        .unwrap();

    // Refused statements never go up, nor does anything after them in the same string.
    let err = client
        .simple_query(&format!("SELECT 1 FROM tap_patients WHERE ssn LIKE '{SECRET}'; INSERT INTO tap_patients (ssn) VALUES ('{SECRET}')"))
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "0A000");
    // A refused Parse pipelined with its Bind (plaintext parameter), Execute and Sync: the
    // Bind is dropped by pgveil, as the database would skip it.
    let err = client
        .query_typed(
            "SELECT 1 FROM tap_patients WHERE ssn LIKE $1",
            &[(&SECRET, tokio_postgres::types::Type::TEXT)],
        )
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "0A000");
    // The session goes on.
    assert_eq!(
        client
            .query(
                "SELECT count(*) FROM tap_patients WHERE ssn = $1",
                &[&SECRET]
            )
            .await
            .unwrap()[0]
            .get::<_, i64>(0),
        2
    );
    drop(client);
    proxy.shutdown();

    let sent = seen.lock().unwrap().clone();
    assert!(
        sent.len() > 1000,
        "the tap saw too little traffic: {}",
        sent.len()
    );
    for plaintext in [SECRET, SECRET_DATE] {
        assert!(
            !sent
                .windows(plaintext.len())
                .any(|w| w == plaintext.as_bytes()),
            "{plaintext} reached the database"
        );
    }
    // The binary date (days since 2000-01-01) never went up either.
    let days = (date - chrono::NaiveDate::from_ymd_opt(2000, 1, 1).unwrap()).num_days() as i32;
    assert!(
        !sent.windows(4).any(|w| w == days.to_be_bytes()),
        "the binary date reached the database"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn statements_through_a_view_over_a_protected_table_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    cluster().psql(
        "DROP VIEW IF EXISTS view_patients_outer; DROP VIEW IF EXISTS view_patients_v; DROP TABLE IF EXISTS view_patients; \
         CREATE TABLE view_patients (id serial PRIMARY KEY, name text, ssn bytea, birth_date bytea); \
         CREATE VIEW view_patients_v AS SELECT id, ssn FROM view_patients; \
         CREATE VIEW view_patients_outer AS SELECT ssn FROM view_patients_v",
    );
    let proxy = Proxy::start(&config(dir.path(), "view_patients"), dir.path());
    let client = connect(proxy.port()).await;
    // Simple protocol, a view over the view, and the extended protocol.
    let err = client
        .simple_query("SELECT id FROM view_patients_v WHERE ssn = '123-45-6789'")
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "0A000");
    assert!(
        err.as_db_error()
            .unwrap()
            .message()
            .contains("view_patients_v"),
        "{err}"
    );
    let err = client
        .simple_query("SELECT * FROM view_patients_outer WHERE ssn = '1'")
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "0A000");
    let err = client
        .query(
            "SELECT id FROM view_patients_v WHERE ssn = $1",
            &[&"123-45-6789"],
        )
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "0A000");
    // The table itself works, and the views can still be dropped through pgveil.
    client
        .execute(
            "INSERT INTO view_patients (name, ssn) VALUES ('x', $1)",
            &[&"123-45-6789"],
        )
        .await
        .unwrap();
    client
        .batch_execute("DROP VIEW view_patients_outer; DROP VIEW view_patients_v")
        .await
        .unwrap();
}

/// Simple-protocol statements that differ only in the values bound for protected columns
/// share one analysis (counted as shape hits); every value is still encrypted for its own
/// row and reads back, whichever way the literal is written. (Plain literals:
/// tests/shared_plans.rs.)
#[tokio::test(flavor = "multi_thread")]
async fn distinct_literal_values_share_one_plan() {
    let dir = tempfile::tempdir().unwrap();
    cluster().psql("DROP TABLE IF EXISTS shared_plans; CREATE TABLE shared_plans (id serial PRIMARY KEY, name text, ssn bytea UNIQUE, birth_date bytea)");
    let metrics_port = free_port();
    let config = config(dir.path(), "shared_plans").replacen(
        "[upstream]",
        &format!("metrics_listen = \"127.0.0.1:{metrics_port}\"\n[upstream]"),
        1,
    );
    let proxy = Proxy::start(&config, dir.path());
    let client = connect(proxy.port()).await;
    let ssn = |i: usize| format!("900-{:02}-{:04}", i % 100, i * 37);
    let date = |i: usize| format!("19{:02}-0{}-1{}", 50 + i % 40, 1 + i % 9, i % 10);
    let before = sample(
        &metrics_page(metrics_port).await,
        "pgveil_plan_cache_hits_total{key=\"shape\"}",
    );
    for i in 0..60 {
        // The same shape for most rows; a few other literal spellings in between.
        let (s, d) = match i % 10 {
            7 => (format!("E'{}'", ssn(i)), format!("date '{}'", date(i))),
            8 => (format!("$${}$$", ssn(i)), format!("'{}'::date", date(i))),
            _ => (format!("'{}'", ssn(i)), format!("'{}'", date(i))),
        };
        client
            .simple_query(&format!(
                "INSERT INTO shared_plans (name, ssn, birth_date) VALUES ('n', {s}, {d})"
            ))
            .await
            .unwrap();
    }
    for i in 0..60 {
        let msgs = client
            .simple_query(&format!(
                "SELECT name, ssn, birth_date FROM shared_plans WHERE ssn = '{}'",
                ssn(i)
            ))
            .await
            .unwrap();
        let rows: Vec<_> = msgs
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
                _ => None,
            })
            .collect();
        assert_eq!(rows.len(), 1, "row {i}");
        assert_eq!(rows[0].get(0), Some("n"));
        assert_eq!(rows[0].get(1), Some(ssn(i).as_str()));
        assert_eq!(rows[0].get(2), Some(date(i).as_str()));
        // The extended protocol finds the same ciphertext.
        let found = client
            .query("SELECT name FROM shared_plans WHERE ssn = $1", &[&ssn(i)])
            .await
            .unwrap();
        assert_eq!(found.len(), 1, "row {i}");
    }
    let page = metrics_page(metrics_port).await;
    let shared = sample(&page, "pgveil_plan_cache_hits_total{key=\"shape\"}") - before;
    assert!(shared >= 90.0, "only {shared} shape hits\n{page}");
    assert!(page.contains("pgveil_plan_cache_misses_total"), "{page}");
    let direct = cluster().psql("SELECT encode(ssn, 'hex') || ' ' || encode(birth_date, 'hex') FROM shared_plans ORDER BY id");
    let prefix = envelope_prefix(dir.path());
    let lines: Vec<&str> = direct.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 60);
    for (i, line) in lines.iter().enumerate() {
        assert!(!line.contains(&hex::encode(ssn(i))), "{line}");
        assert!(!line.contains(&hex::encode(date(i))), "{line}");
        let (s, d) = line.trim().split_once(' ').unwrap();
        assert!(s.starts_with(&format!("{prefix}44")), "{line}");
        assert!(
            d.starts_with(&prefix) && !d.starts_with(&format!("{prefix}44")),
            "{line}"
        );
    }
}
