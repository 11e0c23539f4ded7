//! The protocol relay against a real PostgreSQL, with real clients.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn healthy(port: u16) {
    let client = connect(port).await;
    let row = client
        .query_one("SELECT 40 + $1::int4", &[&2i32])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
}

#[tokio::test(flavor = "multi_thread")]
async fn simple_and_extended_queries_in_text_and_binary() {
    let proxy = Proxy::relay();
    let client = connect(proxy.port()).await;
    let messages = client
        .simple_query("SELECT 'héllo' AS greeting, NULL::text AS nothing; SELECT 2")
        .await
        .unwrap();
    let rows: Vec<_> = messages
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        })
        .collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].get("greeting"), Some("héllo"));
    assert_eq!(rows[0].get("nothing"), None);
    assert_eq!(rows[1].get(0), Some("2"));

    // Extended protocol, binary results and parameters.
    let row = client
        .query_one(
            "SELECT $1::int8 * 2, $2::text || '!', $3::bytea, $4::float8",
            &[&21i64, &"hi", &vec![0u8, 255], &1.5f64],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 42);
    assert_eq!(row.get::<_, String>(1), "hi!");
    assert_eq!(row.get::<_, Vec<u8>>(2), vec![0u8, 255]);
    assert_eq!(row.get::<_, f64>(3), 1.5);

    // Named statement reused, and pipelined queries.
    let stmt = client.prepare("SELECT $1::int4 + 1").await.unwrap();
    let values: Vec<i32> = (0..20).collect();
    let params: Vec<[&(dyn tokio_postgres::types::ToSql + Sync); 1]> =
        values.iter().map(|i| [i as _]).collect();
    let futures: Vec<_> = params.iter().map(|p| client.query_one(&stmt, p)).collect();
    let results = futures_util::future::join_all(futures).await;
    for (i, result) in results.into_iter().enumerate() {
        assert_eq!(result.unwrap().get::<_, i32>(0), i as i32 + 1);
    }

    // A large result streams through.
    let rows = client
        .query(
            "SELECT g, repeat('x', 1000) FROM generate_series(1, 20000) g",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 20000);
    assert_eq!(rows[19999].get::<_, i32>(0), 20000);

    // Errors pass through with their SQLSTATE and the session goes on.
    let err = client
        .simple_query("SELECT * FROM no_such_table")
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "42P01");
    healthy(proxy.port()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn transactions_and_errors_keep_postgres_semantics() {
    let proxy = Proxy::relay();
    let mut client = connect(proxy.port()).await;
    client
        .batch_execute("DROP TABLE IF EXISTS relay_tx; CREATE TABLE relay_tx (v int)")
        .await
        .unwrap();
    let tx = client.transaction().await.unwrap();
    tx.execute("INSERT INTO relay_tx VALUES (1)", &[])
        .await
        .unwrap();
    assert!(tx
        .execute("INSERT INTO relay_tx VALUES ('x')", &[])
        .await
        .is_err());
    let err = tx
        .execute("INSERT INTO relay_tx VALUES (2)", &[])
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "25P02");
    drop(tx);
    let count: i64 = client
        .query_one("SELECT count(*) FROM relay_tx", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn psql_runs_through_the_proxy() {
    let proxy = Proxy::relay();
    let out = psql_at(
        proxy.port(),
        SUPERUSER,
        PASSWORD,
        "SELECT 'a' || 'b'; SELECT count(*) FROM generate_series(1,10)",
    )
    .unwrap();
    assert_eq!(out.lines().collect::<Vec<_>>(), vec!["ab", "10"]);
    let err = psql_at(proxy.port(), SUPERUSER, PASSWORD, "SELECT 1/0").unwrap_err();
    assert!(err.contains("division by zero"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_in_and_out() {
    let proxy = Proxy::relay();
    let client = connect(proxy.port()).await;
    client
        .batch_execute(
            "DROP TABLE IF EXISTS relay_copy; CREATE TABLE relay_copy (id int, name text)",
        )
        .await
        .unwrap();
    let sink = client.copy_in("COPY relay_copy FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    let mut data = String::new();
    for i in 0..5000 {
        data.push_str(&format!("{i}\tname {i}\n"));
    }
    sink.send(bytes::Bytes::from(data.clone())).await.unwrap();
    let copied = sink.finish().await.unwrap();
    assert_eq!(copied, 5000);

    let stream = client.copy_out("COPY relay_copy TO STDOUT").await.unwrap();
    futures_util::pin_mut!(stream);
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(String::from_utf8(out).unwrap(), data);

    // A failed COPY leaves the session usable.
    let err = client
        .simple_query("COPY relay_copy FROM '/nonexistent/file'")
        .await
        .unwrap_err();
    assert!(err.code().is_some());
    healthy(proxy.port()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn notifications_reach_an_idle_client() {
    let proxy = Proxy::relay();
    let (listener, mut connection) = tokio_postgres::connect(
        &conn_str(proxy.port(), SUPERUSER, PASSWORD),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            if let Ok(tokio_postgres::AsyncMessage::Notification(n)) = message {
                let _ = tx.send((n.channel().to_string(), n.payload().to_string()));
            }
        }
    });
    listener.batch_execute("LISTEN relay_events").await.unwrap();
    let notifier = connect(proxy.port()).await;
    notifier
        .batch_execute("NOTIFY relay_events, 'payload-1'")
        .await
        .unwrap();
    let (channel, payload) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(channel, "relay_events");
    assert_eq!(payload, "payload-1");
    // Notices pass through too.
    listener
        .batch_execute("DO $$ BEGIN RAISE NOTICE 'hello notice'; END $$")
        .await
        .unwrap();
    drop(listener);
    driver.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_reaches_the_right_backend() {
    let proxy = Proxy::relay();
    let client = connect(proxy.port()).await;
    let other = connect(proxy.port()).await;
    let token = client.cancel_token();
    let sleeper = tokio::spawn(async move { client.simple_query("SELECT pg_sleep(30)").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(20), sleeper)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "57014");
    assert!(started.elapsed() < Duration::from_secs(20));
    // The other session was not cancelled.
    assert_eq!(
        other
            .query_one("SELECT 1", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_password_is_refused_with_28p01() {
    let proxy = Proxy::relay();
    let err = connect_as(proxy.port(), SUPERUSER, "wrong")
        .await
        .err()
        .unwrap();
    assert_eq!(err.code().unwrap().code(), "28P01");
    healthy(proxy.port()).await;
}

fn tls_client_config(ca_pem: &str) -> tokio_postgres_rustls::MakeRustlsConnect {
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_postgres_rustls::MakeRustlsConnect::new(config)
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_can_use_tls_and_require_tls_refuses_plain_clients() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_certs("localhost");
    std::fs::write(dir.path().join("server.crt"), cert).unwrap();
    std::fs::write(dir.path().join("server.key"), key).unwrap();
    let config = relay_config(
        cluster().port,
        "tls_cert = \"server.crt\"\ntls_key = \"server.key\"\nrequire_tls = true",
    );
    let proxy = Proxy::start(&config, dir.path());
    let conn = format!("host=localhost port={} user={SUPERUSER} password={PASSWORD} dbname=postgres sslmode=require", proxy.port());
    let (client, connection) = tokio_postgres::connect(&conn, tls_client_config(&ca))
        .await
        .unwrap();
    tokio::spawn(connection);
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    // TLS ends at pgveil; the upstream leg here is plain.
    assert!(!row.get::<_, bool>(0));
    assert_eq!(
        client
            .query_one("SELECT $1::text", &[&"over tls"])
            .await
            .unwrap()
            .get::<_, String>(0),
        "over tls"
    );

    let err = connect_as(proxy.port(), SUPERUSER, PASSWORD)
        .await
        .err()
        .unwrap();
    let db = err.as_db_error().expect("a FATAL error from pgveil");
    assert_eq!(db.code().code(), "28000");
    assert!(
        db.message().contains("requires an encrypted connection"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_tls_is_negotiated_and_verified() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.crt"), &cluster().ca_pem).unwrap();
    for (mode, host) in [
        ("require", "127.0.0.1"),
        ("verify-full", "localhost"),
        ("prefer", "127.0.0.1"),
    ] {
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nhost = \"{host}\"\nport = {}\ntls = \"{mode}\"\nca_file = \"ca.crt\"\n",
            cluster().port
        );
        let proxy = Proxy::start(&config, dir.path());
        let client = connect(proxy.port()).await;
        let row = client
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap();
        assert!(
            row.get::<_, bool>(0),
            "upstream leg not encrypted with tls = {mode}"
        );
    }
    // verify-full against a CA that did not sign the server certificate fails closed.
    let (other_ca, _, _) = make_certs("localhost");
    std::fs::write(dir.path().join("other.crt"), other_ca).unwrap();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nhost = \"localhost\"\nport = {}\ntls = \"verify-full\"\nca_file = \"other.crt\"\n",
        cluster().port
    );
    let proxy = Proxy::start(&config, dir.path());
    let err = connect_as(proxy.port(), SUPERUSER, PASSWORD)
        .await
        .err()
        .unwrap();
    assert_eq!(err.code().unwrap().code(), "08006", "{err}");
}

/// Reads what the proxy sends until it closes, with a time limit.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    out
}

fn startup_packet() -> Vec<u8> {
    pgveil::net::startup::StartupMessage::encode(&[("user", SUPERUSER), ("database", "postgres")])
        .to_vec()
}

/// Logs in over a raw socket (SCRAM through the proxy is done by tokio-postgres, so here we
/// use a trust-free path: only the startup phase is exercised before bad input).
async fn raw_connect(port: u16) -> TcpStream {
    TcpStream::connect(("127.0.0.1", port)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_closes_only_that_connection() {
    let proxy = Proxy::start(
        &relay_config(cluster().port, "max_message_size = 65536"),
        Path::new("."),
    );

    // Garbage instead of a startup packet.
    let mut s = raw_connect(proxy.port()).await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let reply = read_until_closed(&mut s).await;
    assert_eq!(reply.first(), Some(&b'E'), "{reply:?}");
    assert!(String::from_utf8_lossy(&reply).contains("08P01"));
    healthy(proxy.port()).await;

    // An unsupported protocol version.
    let mut s = raw_connect(proxy.port()).await;
    s.write_all(&[0, 0, 0, 8, 0, 2, 0, 0]).await.unwrap();
    let reply = read_until_closed(&mut s).await;
    assert!(
        String::from_utf8_lossy(&reply).contains("0A000"),
        "{reply:?}"
    );
    healthy(proxy.port()).await;

    // A truncated startup packet, then the client goes away.
    let mut s = raw_connect(proxy.port()).await;
    s.write_all(&startup_packet()[..10]).await.unwrap();
    drop(s);
    healthy(proxy.port()).await;

    // After startup: a length field over max_message_size.
    let mut s = raw_connect(proxy.port()).await;
    s.write_all(&startup_packet()).await.unwrap();
    s.write_all(b"Q\x00\x10\x00\x00SELECT 1").await.unwrap();
    let reply = read_until_closed(&mut s).await;
    assert!(
        String::from_utf8_lossy(&reply).contains("54000"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    healthy(proxy.port()).await;

    // A length field that cannot be valid.
    let mut s = raw_connect(proxy.port()).await;
    s.write_all(&startup_packet()).await.unwrap();
    s.write_all(b"Q\x00\x00\x00\x02").await.unwrap();
    let reply = read_until_closed(&mut s).await;
    assert!(
        String::from_utf8_lossy(&reply).contains("08P01"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    healthy(proxy.port()).await;

    // A message type that does not exist.
    let mut s = raw_connect(proxy.port()).await;
    s.write_all(&startup_packet()).await.unwrap();
    s.write_all(b"z\x00\x00\x00\x04").await.unwrap();
    let reply = read_until_closed(&mut s).await;
    assert!(
        String::from_utf8_lossy(&reply).contains("invalid frontend message type"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    healthy(proxy.port()).await;

    // A message that is invalid in its state (a password message with nothing asked).
    let mut s = raw_connect(proxy.port()).await;
    s.write_all(b"p\x00\x00\x00\x08abc\0").await.unwrap();
    let reply = read_until_closed(&mut s).await;
    assert_eq!(reply.first(), Some(&b'E'));
    healthy(proxy.port()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_that_dies_gives_a_fatal_error_and_the_proxy_stays_up() {
    // A fake database that accepts the login and then drops the connection.
    let fake = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake_port = fake.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = fake.accept().await {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            // AuthenticationOk, then ReadyForQuery, then vanish on the first query.
            let _ = s.write_all(b"R\0\0\0\x08\0\0\0\0Z\0\0\0\x05I").await;
            let _ = s.read(&mut buf).await;
            drop(s);
        }
    });
    let proxy = Proxy::start(&relay_config(fake_port, ""), Path::new("."));
    let mut s = raw_connect(proxy.port()).await;
    s.write_all(&startup_packet()).await.unwrap();
    let mut greeting = [0u8; 15];
    s.read_exact(&mut greeting).await.unwrap();
    s.write_all(b"Q\0\0\0\x0dSELECT 1\0").await.unwrap();
    let reply = read_until_closed(&mut s).await;
    let text = String::from_utf8_lossy(&reply);
    assert!(text.contains("FATAL") && text.contains("08006"), "{text}");

    // The proxy still answers: a second client gets the same clean error, not a hang.
    let mut s = raw_connect(proxy.port()).await;
    s.write_all(&startup_packet()).await.unwrap();
    s.read_exact(&mut greeting).await.unwrap();
    assert_eq!(&greeting[..1], b"R");

    // A database that is not there at all.
    let proxy = Proxy::start(&relay_config(free_port(), ""), Path::new("."));
    let err = connect_as(proxy.port(), SUPERUSER, PASSWORD)
        .await
        .err()
        .unwrap();
    assert_eq!(err.code().unwrap().code(), "08006");
}

#[tokio::test(flavor = "multi_thread")]
async fn graceful_shutdown_lets_a_query_in_flight_finish() {
    let proxy = Proxy::relay();
    let busy = connect(proxy.port()).await;
    let idle = connect(proxy.port()).await;
    let query = tokio::spawn(async move {
        let row = busy
            .query_one("SELECT pg_sleep(1.5), 'finished'::text", &[])
            .await;
        (row.map(|r| r.get::<_, String>(1)), busy)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopper = tokio::task::spawn_blocking(move || proxy.shutdown());
    let (result, busy) = query.await.unwrap();
    assert_eq!(result.unwrap(), "finished");
    tokio::time::timeout(Duration::from_secs(10), stopper)
        .await
        .unwrap()
        .unwrap();
    // Both sessions were closed once idle.
    assert!(busy.simple_query("SELECT 1").await.is_err());
    assert!(idle.simple_query("SELECT 1").await.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_and_health_endpoints() {
    let metrics_port = free_port();
    let config = relay_config(
        cluster().port,
        &format!("metrics_listen = \"127.0.0.1:{metrics_port}\""),
    );
    let proxy = Proxy::start(&config, Path::new("."));
    healthy(proxy.port()).await;
    let get = |path: &'static str| async move {
        let mut s = TcpStream::connect(("127.0.0.1", metrics_port))
            .await
            .unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    };
    let health = get("/healthz").await;
    assert!(
        health.starts_with("HTTP/1.1 200") && health.ends_with("ok\n"),
        "{health}"
    );
    let metrics = get("/metrics").await;
    for name in [
        "pgveil_connections_total",
        "pgveil_connections_open",
        "pgveil_bytes_total{direction=\"client_to_server\"}",
        "pgveil_queries_total",
        "pgveil_query_duration_seconds_bucket",
        "pgveil_errors_total{kind=\"protocol\"}",
    ] {
        assert!(metrics.contains(name), "missing {name} in\n{metrics}");
    }
    assert!(get("/nope").await.starts_with("HTTP/1.1 404"));
}

#[tokio::test(flavor = "multi_thread")]
async fn function_calls_relay_through_psql_large_objects() {
    // libpq's large-object functions use the FunctionCall message.
    let proxy = Proxy::relay();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.bin");
    let output = dir.path().join("out.bin");
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&input, &payload).unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let imported = psql_at(
        proxy.port(),
        SUPERUSER,
        PASSWORD,
        &format!("\\lo_import {}", input.display()),
    )
    .unwrap();
    let oid: u32 = imported.split_whitespace().last().unwrap().parse().unwrap();
    psql_at(
        proxy.port(),
        SUPERUSER,
        PASSWORD,
        &format!("\\lo_export {oid} {}", output.display()),
    )
    .unwrap();
    assert_eq!(std::fs::read(&output).unwrap(), payload);
    psql_at(
        proxy.port(),
        SUPERUSER,
        PASSWORD,
        &format!("SELECT lo_unlink({oid})"),
    )
    .unwrap();
    healthy(proxy.port()).await;
}
