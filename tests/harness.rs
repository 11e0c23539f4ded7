//! The test harness's leak check catches what it must: a registered value sent upstream by
//! pgveil, in the bytes on the wire and in PostgreSQL's statement log. Without these, a
//! broken tap would make every other test's leak check silently pass.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;

/// A registered value written to an unprotected column goes upstream as is: the tap and
/// the log must both report it.
#[tokio::test(flavor = "multi_thread")]
async fn the_leak_check_finds_a_registered_value_on_the_wire_and_in_the_log() {
    let canary = "harness-canary-5f1e";
    secret(canary);
    cluster().psql("DROP TABLE IF EXISTS harness_notes; CREATE TABLE harness_notes (note text)");
    let mut proxy = Proxy::relay();
    let client = connect(proxy.port()).await;
    client
        .simple_query(&format!("INSERT INTO harness_notes VALUES ('{canary}')"))
        .await
        .unwrap();
    drop(client);
    let tap = proxy
        .take_tap()
        .expect("the proxy in front of the harness cluster is tapped");
    let report = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| tap.assert_no_leaks()))
        .expect_err("the canary went upstream, so the check must fail");
    let message = report.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        message.contains("sent upstream: harness-canary-5f1e"),
        "{message}"
    );
    assert!(
        message.contains("in the database log: harness-canary-5f1e"),
        "{message}"
    );
}

/// The hex form is found too: a plaintext smuggled in as a bytea literal.
#[tokio::test(flavor = "multi_thread")]
async fn the_leak_check_finds_a_value_sent_as_hex() {
    let canary = "harness-hex-canary-77";
    secret(canary);
    let mut proxy = Proxy::relay();
    let client = connect(proxy.port()).await;
    client
        .simple_query(&format!("SELECT '\\x{}'::bytea", hex::encode(canary)))
        .await
        .unwrap();
    drop(client);
    let tap = proxy.take_tap().unwrap();
    let report = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| tap.assert_no_leaks()))
        .expect_err("the hex form went upstream");
    let message = report.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("(as hex)"), "{message}");
}

/// Values that only a direct connection sends (test setup) are not pgveil's leaks.
#[tokio::test(flavor = "multi_thread")]
async fn direct_connections_are_not_attributed_to_pgveil() {
    let canary = "harness-direct-canary-31";
    secret(canary);
    let proxy = Proxy::relay();
    cluster().psql(&format!("SELECT '{canary}'"));
    let client = connect(proxy.port()).await;
    client.simple_query("SELECT 1").await.unwrap();
    drop(client);
    proxy.assert_no_leaks();
}
