//! Shared plans through a real client: simple statements that differ in a plain literal
//! share one analysis. Its own test binary, so that the plan-cache counters (process-wide)
//! count only its statements.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;

fn config(dir: &std::path::Path, table: &str, metrics_port: u16) -> String {
    let columns = column_toml(table, "ssn", "text", "deterministic", "");
    veil_config(dir, "plaintext", &columns).replacen(
        "[upstream]",
        &format!("metrics_listen = \"127.0.0.1:{metrics_port}\"\n[upstream]"),
        1,
    )
}

fn rows(msgs: &[tokio_postgres::SimpleQueryMessage]) -> Vec<Vec<Option<String>>> {
    msgs.iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect()
}

/// Simple statements that differ in a literal for a plain column (one the analysis consumes
/// as an opaque value) share one plan too; the plain literal reaches the database as written
/// and the protected one as ciphertext. A literal the analysis reads (an ORDER BY position)
/// is not shared: ORDER BY on the encrypted column is still refused after ORDER BY 1 ran.
#[tokio::test(flavor = "multi_thread")]
async fn plain_literal_values_share_one_plan() {
    let dir = tempfile::tempdir().unwrap();
    cluster().psql("DROP TABLE IF EXISTS shared_plain; CREATE TABLE shared_plain (id serial PRIMARY KEY, name text, ssn bytea UNIQUE)");
    let metrics_port = free_port();
    let config = config(dir.path(), "shared_plain", metrics_port);
    let proxy = Proxy::start(&config, dir.path());
    let client = connect(proxy.port()).await;
    // (shape hits, misses): this test binary holds no other test, so they are its own.
    let counts = || async {
        let page = metrics_page(metrics_port).await;
        (
            sample(&page, "pgveil_plan_cache_hits_total{key=\"shape\"}"),
            sample(&page, "pgveil_plan_cache_misses_total"),
        )
    };
    let insert = |name: &str, ssn: &str| {
        format!("INSERT INTO shared_plain (name, ssn) VALUES ('{name}', '{ssn}')")
    };
    client
        .simple_query(&insert("Ann", "111-11-1111"))
        .await
        .unwrap();
    let before = counts().await;
    client
        .simple_query(&insert("Bob O''Neil", "222-22-2222"))
        .await
        .unwrap();
    assert_eq!(
        counts().await,
        (before.0 + 1.0, before.1),
        "the INSERT shares"
    );
    for (name, ssn) in [("Ann", "111-11-1111"), ("Bob O'Neil", "222-22-2222")] {
        let by_ssn = client
            .simple_query(&format!(
                "SELECT name, ssn FROM shared_plain WHERE ssn = '{ssn}'"
            ))
            .await
            .unwrap();
        let want = vec![vec![Some(name.to_string()), Some(ssn.to_string())]];
        assert_eq!(rows(&by_ssn), want);
        // A plain comparison, shared after the first: each finds its own row.
        let before = counts().await;
        let by_name = client
            .simple_query(&format!(
                "SELECT name, ssn FROM shared_plain WHERE name = '{}'",
                name.replace('\'', "''")
            ))
            .await
            .unwrap();
        assert_eq!(rows(&by_name), want);
        let (hits, misses) = counts().await;
        assert_eq!(hits - before.0 + misses - before.1, 1.0);
        if name != "Ann" {
            assert_eq!(misses, before.1, "{name}: analysed again");
        }
    }
    let direct =
        cluster().psql("SELECT name || ' ' || encode(ssn, 'hex') FROM shared_plain ORDER BY id");
    let lines: Vec<&str> = direct
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(lines.len(), 2, "{direct}");
    let prefix = format!("{}44", envelope_prefix(dir.path()));
    for (line, (name, ssn)) in lines
        .iter()
        .zip([("Ann", "111-11-1111"), ("Bob O'Neil", "222-22-2222")])
    {
        let cipher = line
            .strip_prefix(&format!("{name} "))
            .unwrap_or_else(|| panic!("{line}"));
        assert!(cipher.starts_with(&prefix), "{line}");
        assert!(!cipher.contains(&hex::encode(ssn)), "{line}");
    }
    // Fixed literals: a position the analysis reads is never taken from another text.
    let order =
        |n: u32| format!("SELECT name, ssn FROM shared_plain WHERE name <> 'x' ORDER BY {n}");
    assert_eq!(
        rows(&client.simple_query(&order(1)).await.unwrap()).len(),
        2
    );
    let err = client.simple_query(&order(2)).await.unwrap_err();
    assert_eq!(db_error(&err).0, "0A000", "{err:?}");
    let limit =
        |n: u32| format!("SELECT name FROM shared_plain WHERE ssn <> 'x' ORDER BY name LIMIT {n}");
    assert_eq!(
        rows(&client.simple_query(&limit(1)).await.unwrap()).len(),
        1
    );
    assert_eq!(
        rows(&client.simple_query(&limit(2)).await.unwrap()).len(),
        2
    );
}
