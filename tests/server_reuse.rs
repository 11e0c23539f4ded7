//! Server connection reuse with `auth = "scram"`: a database connection a client left at rest
//! serves the next client of the same login, and nothing of the first client's session
//! reaches the second (SQL and protocol prepared statements, temporary tables, `SET` values,
//! `SET ROLE`, `SET SESSION AUTHORIZATION`, advisory locks, `LISTEN`, the `pgveil.*`
//! context, an open transaction), nor does its cancel key. Against the TLS-only cluster, with
//! tokio-postgres, psql and psycopg.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::*;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

const AUTH_PASSWORD: &str = "auth-secret";
const USER_PASSWORD: &str = "reuse-secret";
const AUTH_QUERY: &str = "SELECT usename, passwd FROM pgveil.lookup($1)";

/// The cluster's logins and lookup function; pgveil's certificate, in a directory.
fn setup() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let cluster = tls_cluster();
        // Read by pgveil when it starts; set once, before any proxy of this binary runs.
        std::env::set_var("PGVEIL_AUTH_PASSWORD", AUTH_PASSWORD);
        cluster.psql(&common::auth_lookup_sql(AUTH_PASSWORD));
        cluster.psql(&format!(
            "CREATE ROLE reuse_group;
             CREATE ROLE reuse_a LOGIN PASSWORD '{USER_PASSWORD}' IN ROLE reuse_group;
             CREATE ROLE reuse_b LOGIN PASSWORD '{USER_PASSWORD}';
             CREATE ROLE reuse_super LOGIN SUPERUSER PASSWORD '{USER_PASSWORD}';
             CREATE ROLE reuse_pw LOGIN PASSWORD 'first-password';
             CREATE TABLE reuse_t (id int);
             GRANT ALL ON reuse_t TO reuse_a, reuse_b;"
        ));
        let dir = tempfile::Builder::new()
            .prefix("pgveil-reuse-")
            .tempdir()
            .unwrap()
            .keep();
        std::fs::write(dir.join("upstream-ca.crt"), &cluster.ca_pem).unwrap();
        let (_, cert, key) = make_certs("localhost");
        std::fs::write(dir.join("server.crt"), cert).unwrap();
        std::fs::write(dir.join("server.key"), key).unwrap();
        dir
    })
}

/// pgveil with TLS offered to clients and `verify-full` upstream; `extra` goes in `[upstream]`.
fn config(extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_timeout_secs = 5\ntls_cert = \"server.crt\"\ntls_key = \"server.key\"\n\
[upstream]\nhost = \"localhost\"\nport = {}\ntls = \"verify-full\"\nca_file = \"upstream-ca.crt\"\n\
auth = \"scram\"\nauth_user = \"pgveil_auth\"\nauth_query = \"{AUTH_QUERY}\"\n{extra}\n",
        tls_cluster().port
    )
}

fn proxy() -> Proxy {
    Proxy::start(&config(""), setup())
}

/// tokio-postgres to pgveil (plain SCRAM on the client leg; the upstream leg is TLS).
async fn login(
    port: u16,
    user: &str,
    password: &str,
    extra: &str,
) -> Result<Client, tokio_postgres::Error> {
    let conninfo = format!(
        "host=127.0.0.1 port={port} user={user} password={password} dbname=postgres sslmode=disable connect_timeout=10 {extra}"
    );
    let (client, connection) = tokio_postgres::connect(&conninfo, NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

async fn connect(port: u16, user: &str) -> Client {
    login(port, user, USER_PASSWORD, "").await.unwrap()
}

/// The text values of the first row of a simple query (no prepared statement is made).
async fn row(client: &Client, sql: &str) -> Vec<Option<String>> {
    let messages = client.simple_query(sql).await.unwrap();
    let row = messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        })
        .expect("a row");
    (0..row.len())
        .map(|i| row.get(i).map(str::to_string))
        .collect()
}

async fn backend_pid(client: &Client) -> i32 {
    row(client, "SELECT pg_backend_pid()").await[0]
        .as_deref()
        .unwrap()
        .parse()
        .unwrap()
}

/// Waits, without blocking the runtime, until `query` (run directly against the cluster)
/// answers `expected`.
async fn until(query: String, expected: &str, what: &str) {
    for _ in 0..400 {
        if tls_cluster().psql(&query).trim() == expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Waits until backend `pid` is parked: idle after pgveil's reset query.
async fn parked(pid: i32) {
    until(
        format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid} AND state = 'idle' AND query LIKE 'SELECT session_user, current_user%'"),
        "1",
        "the connection to be reset and kept",
    )
    .await;
}

async fn gone(pid: i32) {
    until(
        format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}"),
        "0",
        "the connection to be closed",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_of_the_previous_client_survives_reuse() {
    setup();
    let proxy = proxy();
    let port = proxy.port();
    let first = connect(port, "reuse_a").await;
    let pid = backend_pid(&first).await;
    first
        .batch_execute(
            "PREPARE leftover AS SELECT 1;
             CREATE TEMP TABLE leftover_tmp (x int);
             SET work_mem = '77MB';
             SET application_name = 'changed';
             SET pgveil.purpose = 'leftover';
             SELECT pg_advisory_lock(4242);
             LISTEN leftover_channel;
             SET ROLE reuse_group;",
        )
        .await
        .unwrap();
    first.prepare("SELECT 2").await.unwrap();
    drop(first);
    parked(pid).await;
    let default_work_mem = tls_cluster().psql("SHOW work_mem").trim().to_string();

    let second = connect(port, "reuse_a").await;
    assert_eq!(backend_pid(&second).await, pid, "the connection is reused");
    let seen = row(
        &second,
        "SELECT current_user, session_user, current_setting('work_mem'),
                current_setting('application_name'),
                coalesce(current_setting('pgveil.purpose', true), ''),
                (SELECT count(*) FROM pg_prepared_statements),
                to_regclass('pg_temp.leftover_tmp') IS NULL,
                (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()),
                (SELECT count(*) FROM pg_listening_channels())",
    )
    .await;
    let seen: Vec<&str> = seen
        .iter()
        .map(|v| v.as_deref().unwrap_or("NULL"))
        .collect();
    assert_eq!(
        seen,
        ["reuse_a", "reuse_a", &default_work_mem, "", "", "0", "t", "0", "0"],
        "user, session user, work_mem, application_name, pgveil.purpose, prepared statements, no temp table, advisory locks, channels"
    );
    // The protocol-level statement the first client prepared ("s0") is gone as well.
    second.prepare("SELECT 3").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_session_authorization_is_undone() {
    setup();
    let proxy = proxy();
    let port = proxy.port();
    let first = connect(port, "reuse_super").await;
    let pid = backend_pid(&first).await;
    first
        .batch_execute("SET SESSION AUTHORIZATION reuse_b")
        .await
        .unwrap();
    drop(first);
    parked(pid).await;
    let second = connect(port, "reuse_super").await;
    assert_eq!(backend_pid(&second).await, pid);
    let who = row(&second, "SELECT session_user, current_user").await;
    assert_eq!(
        who,
        [Some("reuse_super".into()), Some("reuse_super".into())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_mid_transaction_does_not_give_its_connection_away() {
    setup();
    let proxy = proxy();
    let port = proxy.port();
    let first = connect(port, "reuse_a").await;
    let pid = backend_pid(&first).await;
    first
        .batch_execute("BEGIN; INSERT INTO reuse_t VALUES (7)")
        .await
        .unwrap();
    drop(first);
    gone(pid).await;
    let second = connect(port, "reuse_a").await;
    assert_ne!(backend_pid(&second).await, pid);
    let count = row(&second, "SELECT count(*) FROM reuse_t WHERE id = 7").await;
    assert_eq!(count, [Some("0".into())], "the transaction was rolled back");

    // A failed transaction block is not handed on either.
    let pid = backend_pid(&second).await;
    second.batch_execute("BEGIN").await.unwrap();
    assert!(second.batch_execute("SELECT 1/0").await.is_err());
    drop(second);
    gone(pid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_serve_only_the_same_login() {
    setup();
    let proxy = proxy();
    let port = proxy.port();
    let first = connect(port, "reuse_a").await;
    let pid = backend_pid(&first).await;
    drop(first);
    parked(pid).await;

    let other_user = connect(port, "reuse_b").await;
    assert_ne!(backend_pid(&other_user).await, pid);
    assert_eq!(
        row(&other_user, "SELECT current_user").await,
        [Some("reuse_b".into())]
    );
    drop(other_user);
    // Other startup parameters are another login.
    let other_options = login(port, "reuse_a", USER_PASSWORD, "application_name=other")
        .await
        .unwrap();
    assert_ne!(backend_pid(&other_options).await, pid);
    drop(other_options);
    // A wrong password gets 28P01 and no connection.
    let wrong = login(port, "reuse_a", "wrong", "")
        .await
        .expect_err("refused");
    assert_eq!(wrong.code(), Some(&SqlState::INVALID_PASSWORD), "{wrong}");
    let same = connect(port, "reuse_a").await;
    assert_eq!(
        backend_pid(&same).await,
        pid,
        "the kept connection is still there"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_password_takes_effect_at_once_for_kept_connections() {
    let dir = setup();
    // Cached verifiers would let the old password through for an hour.
    let proxy = Proxy::start(&config("auth_cache_secs = 3600"), dir);
    let port = proxy.port();
    let first = login(port, "reuse_pw", "first-password", "").await.unwrap();
    let pid = backend_pid(&first).await;
    drop(first);
    parked(pid).await;
    tls_cluster().psql("ALTER ROLE reuse_pw PASSWORD 'second-password'");
    let old = login(port, "reuse_pw", "first-password", "")
        .await
        .expect_err("the old password is refused");
    assert_eq!(old.code(), Some(&SqlState::INVALID_PASSWORD), "{old}");
    let new = login(port, "reuse_pw", "second-password", "")
        .await
        .unwrap();
    assert_eq!(
        backend_pid(&new).await,
        pid,
        "the kept connection serves the new password"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_former_clients_cancel_key_does_nothing_to_the_next_client() {
    setup();
    let proxy = proxy();
    let port = proxy.port();
    let first = connect(port, "reuse_a").await;
    let pid = backend_pid(&first).await;
    let old_key = first.cancel_token();
    drop(first);
    parked(pid).await;

    let second = Arc::new(connect(port, "reuse_a").await);
    assert_eq!(backend_pid(&second).await, pid);
    let holder = connect(port, "reuse_b").await;
    holder
        .batch_execute("SELECT pg_advisory_lock(99)")
        .await
        .unwrap();
    let blocked = |client: Arc<Client>| {
        tokio::spawn(async move { client.batch_execute("SELECT pg_advisory_lock(99)").await })
    };
    let waiting = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE pid = {pid} AND wait_event_type = 'Lock'"
    );

    let query = blocked(second.clone());
    until(
        waiting.clone(),
        "1",
        "the second client to wait for the lock",
    )
    .await;
    old_key.cancel_query(NoTls).await.unwrap();
    holder
        .batch_execute("SELECT pg_advisory_unlock(99)")
        .await
        .unwrap();
    query
        .await
        .unwrap()
        .expect("the former client's key cancelled nothing");
    second
        .batch_execute("SELECT pg_advisory_unlock(99)")
        .await
        .unwrap();

    // The second client's own key cancels its query.
    holder
        .batch_execute("SELECT pg_advisory_lock(99)")
        .await
        .unwrap();
    let query = blocked(second.clone());
    until(waiting, "1", "the second client to wait again").await;
    second.cancel_token().cancel_query(NoTls).await.unwrap();
    let error = query.await.unwrap().expect_err("cancelled");
    assert_eq!(error.code(), Some(&SqlState::QUERY_CANCELED), "{error}");
}

/// libpq connection options for TLS on the client leg, bound to pgveil's certificate.
fn tls_conninfo(port: u16, user: &str) -> String {
    format!("host=localhost hostaddr=127.0.0.1 port={port} user={user} password={USER_PASSWORD} dbname=postgres sslmode=require channel_binding=require")
}

fn psql(conninfo: &str, sql: &str) -> Result<String, String> {
    let out = Command::new(bindir().join("psql"))
        .args([
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
            "-d",
            conninfo,
        ])
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn psycopg(conninfo: &str, mode: &str) -> String {
    let out = Command::new(python())
        .arg(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/reuse_session.py"),
        )
        .args([conninfo, mode])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "psycopg {mode}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_and_psycopg_reuse_over_tls_on_both_legs_and_are_told_fresh_parameters() {
    setup();
    let proxy = proxy();
    let conninfo = tls_conninfo(proxy.port(), "reuse_b");
    let default_zone = tls_cluster().psql("SHOW TimeZone").trim().to_string();
    let pid: i32 = psycopg(&conninfo, "dirty").parse().unwrap();
    parked(pid).await;
    // pid, TimeZone and application_name as reported at login, prepared statements, temp table.
    let report = psycopg(&conninfo, "report");
    assert_eq!(report, format!("{pid} {default_zone} - 0 False"));
    // psql's startup packet differs from psycopg's (application_name): another login.
    let who = "SELECT pg_backend_pid(), ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    let out = psql(&conninfo, who).unwrap();
    let (psql_pid, ssl) = out.split_once('|').unwrap();
    assert_ne!(psql_pid, pid.to_string());
    assert_eq!(ssl, "t", "the upstream leg is TLS");
    parked(psql_pid.parse().unwrap()).await;
    assert_eq!(psql(&conninfo, who).unwrap(), out, "reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protected_session_starts_fresh_on_a_reused_connection() {
    let setup = setup();
    let dir = tempfile::tempdir().unwrap();
    for file in ["upstream-ca.crt", "server.crt", "server.key"] {
        std::fs::copy(setup.join(file), dir.path().join(file)).unwrap();
    }
    pgveil::crypto::keys::init_key_dir(&dir.path().join("keys")).unwrap();
    tls_cluster().psql(
        "DROP TABLE IF EXISTS reuse_patients;
         CREATE TABLE reuse_patients (id int PRIMARY KEY, ssn bytea);
         GRANT ALL ON reuse_patients TO reuse_b;",
    );
    let config = format!(
        "{}[keys]\nmaster_key_file = \"keys/master.key\"\n{}",
        config(""),
        column_toml(
            "reuse_patients",
            "ssn",
            "text",
            "deterministic",
            "access = { reuse_b = \"plaintext\" }"
        )
    );
    let proxy = Proxy::start(&config, dir.path());
    let conninfo = tls_conninfo(proxy.port(), "reuse_b");
    let first = psql(
        &conninfo,
        "INSERT INTO reuse_patients VALUES (1, '123-45-6789');
         PREPARE leftover AS SELECT 1;
         SET pgveil.purpose = 'treatment';
         SELECT pg_backend_pid();",
    )
    .unwrap();
    let pid: i32 = first.lines().last().unwrap().parse().unwrap();
    parked(pid).await;
    let err = psql(&conninfo, "EXECUTE leftover").unwrap_err();
    assert!(
        err.contains("prepared statement \"leftover\" does not exist"),
        "{err}"
    );
    parked(pid).await;
    let second = psql(
        &conninfo,
        "SELECT pg_backend_pid(); SHOW pgveil.purpose; SELECT ssn FROM reuse_patients WHERE ssn = '123-45-6789';",
    )
    .unwrap();
    let lines: Vec<&str> = second.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some(pid.to_string().as_str()),
        "reused"
    );
    assert!(!second.contains("treatment"), "{second}");
    assert_eq!(lines.last().copied(), Some("123-45-6789"), "{second}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_reuse_false_gives_every_client_its_own_login() {
    let proxy = Proxy::start(&config("server_reuse = false"), setup());
    let port = proxy.port();
    let first = connect(port, "reuse_a").await;
    let pid = backend_pid(&first).await;
    drop(first);
    gone(pid).await;
    let second = connect(port, "reuse_a").await;
    assert_ne!(backend_pid(&second).await, pid);
}
