//! `[upstream] auth = "scram"`: pgveil terminates the login, with TLS on both legs, against a
//! cluster that accepts logins over TLS only. Real clients: psql and psycopg (libpq, with
//! `channel_binding=require`), asyncpg, pgJDBC and node-postgres; raw protocol where the test
//! must misbehave on purpose.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

const AUTH_PASSWORD: &str = "auth-secret";
const SCRAM_PASSWORD: &str = "scram-secret";
const MD5_PASSWORD: &str = "md5-secret";
const AUTH_QUERY: &str = "SELECT usename, passwd FROM pgveil.lookup($1)";
/// Where the test writes what every configuration uses.
struct Setup {
    dir: PathBuf,
    /// The CA that signed pgveil's client-facing certificate (for `localhost`).
    ca: PathBuf,
}

/// The TLS cluster with pgveil's auth_user, its SECURITY DEFINER lookup function (README,
/// "SCRAM termination") and the test logins; pgveil's certificate.
fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let cluster = tls_cluster();
        // Read by pgveil when it starts; set once, before any proxy of this binary runs.
        std::env::set_var("PGVEIL_AUTH_PASSWORD", AUTH_PASSWORD);
        cluster.psql(&common::auth_lookup_sql(AUTH_PASSWORD));
        cluster.psql(&format!(
            "CREATE ROLE veil_scram LOGIN PASSWORD '{SCRAM_PASSWORD}';
             CREATE ROLE veil_quit LOGIN PASSWORD '{SCRAM_PASSWORD}';
             CREATE ROLE veil_change LOGIN PASSWORD 'first-password';
             CREATE ROLE veil_cert LOGIN PASSWORD '{SCRAM_PASSWORD}';
             CREATE ROLE veil_trust LOGIN PASSWORD '{SCRAM_PASSWORD}';
             CREATE ROLE veil_nopass LOGIN;
             SET password_encryption = 'md5';
             CREATE ROLE veil_md5 LOGIN PASSWORD '{MD5_PASSWORD}';"
        ));
        let dir = tempfile::Builder::new()
            .prefix("pgveil-scram-")
            .tempdir()
            .unwrap()
            .keep();
        std::fs::write(dir.join("upstream-ca.crt"), &cluster.ca_pem).unwrap();
        let (ca, cert, key) = make_certs("localhost");
        std::fs::write(dir.join("ca.crt"), ca).unwrap();
        std::fs::write(dir.join("server.crt"), cert).unwrap();
        std::fs::write(dir.join("server.key"), key).unwrap();
        Setup {
            ca: dir.join("ca.crt"),
            dir,
        }
    })
}

/// pgveil with TLS to clients (not required) and `tls = "verify-full"` upstream.
fn scram_config(auth_user: &str, auth_query: &str, extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_timeout_secs = 5\ntls_cert = \"server.crt\"\ntls_key = \"server.key\"\n\
[upstream]\nhost = \"localhost\"\nport = {}\ntls = \"verify-full\"\nca_file = \"upstream-ca.crt\"\n\
auth = \"scram\"\nauth_user = \"{auth_user}\"\nauth_query = \"{auth_query}\"\n{extra}\n",
        tls_cluster().port
    )
}

fn scram_proxy() -> Proxy {
    let setup = setup();
    Proxy::start(&scram_config("pgveil_auth", AUTH_QUERY, ""), &setup.dir)
}

const WHO: &str = "SELECT current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

/// psql with a libpq connection string; Ok: `user ssl`, Err: stderr.
fn psql_conninfo(conninfo: &str, password: &str) -> Result<String, String> {
    let out = Command::new(bindir().join("psql"))
        .args(["-X", "-A", "-t", "-F", " ", "-c", WHO, "-d", conninfo])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn tls_conninfo(port: u16, user: &str, options: &str) -> String {
    format!("host=localhost hostaddr=127.0.0.1 port={port} user={user} dbname=postgres {options}")
}

#[test]
fn libpq_clients_log_in_over_tls_on_both_legs_with_channel_binding() {
    let setup = setup();
    let proxy = scram_proxy();
    let port = proxy.port();
    let ca = setup.ca.display();
    for options in [
        "sslmode=require channel_binding=require".to_string(),
        format!("sslmode=verify-full sslrootcert={ca} channel_binding=require"),
    ] {
        let conninfo = tls_conninfo(port, "veil_scram", &options);
        assert_eq!(
            psql_conninfo(&conninfo, SCRAM_PASSWORD).as_deref(),
            Ok("veil_scram t"),
            "psql {options}"
        );
        let out = Command::new(python())
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/tls_login.py"))
            .arg(format!("{conninfo} password={SCRAM_PASSWORD}"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psycopg {options}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "veil_scram t");
    }
    // md5 verifiers: md5 to the client, checked against the stored hash.
    let md5 = tls_conninfo(
        port,
        "veil_md5",
        &format!("sslmode=verify-full sslrootcert={ca}"),
    );
    assert_eq!(
        psql_conninfo(&md5, MD5_PASSWORD).as_deref(),
        Ok("veil_md5 t")
    );
    let err = psql_conninfo(&md5, "wrong").unwrap_err();
    assert!(
        err.contains("password authentication failed for user \"veil_md5\""),
        "{err}"
    );
    // md5 has no channel binding: a client that requires it refuses the login itself.
    let err = psql_conninfo(
        &tls_conninfo(port, "veil_md5", "sslmode=require channel_binding=require"),
        MD5_PASSWORD,
    )
    .unwrap_err();
    assert!(err.contains("channel binding"), "{err}");
    // The database trusts veil_trust; pgveil still checks its password.
    let trust = tls_conninfo(port, "veil_trust", "sslmode=require");
    assert_eq!(
        psql_conninfo(&trust, SCRAM_PASSWORD).as_deref(),
        Ok("veil_trust t")
    );
    assert!(psql_conninfo(&trust, "wrong")
        .unwrap_err()
        .contains("password authentication failed"));
    // Without TLS to pgveil there is nothing to bind to: plain SCRAM, upstream still TLS.
    let plain = tls_conninfo(port, "veil_scram", "sslmode=disable");
    assert_eq!(
        psql_conninfo(&plain, SCRAM_PASSWORD).as_deref(),
        Ok("veil_scram t")
    );
}

/// The Python interpreter of [`python`] with `module` importable, installed with pip when
/// missing.
fn python_with(module: &str, package: &str) -> PathBuf {
    let python = python();
    let has = |p: &Path| {
        Command::new(p)
            .args(["-c", &format!("import {module}")])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !has(&python) {
        let status = Command::new(&python)
            .args(["-m", "pip", "install", "-q", package])
            .status()
            .unwrap();
        assert!(status.success(), "pip install {package} failed");
    }
    python
}

/// Runs a client program; returns its stdout, panicking with stderr when it fails.
fn run_client(what: &str, command: &mut Command) -> String {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{what} cannot run ({e}); scripts/test.sh installs it"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn asyncpg_jdbc_and_node_log_in_over_tls_on_both_legs() {
    let setup = setup();
    let proxy = scram_proxy();
    let port = proxy.port().to_string();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let args = [
        "localhost",
        &port,
        "veil_scram",
        SCRAM_PASSWORD,
        setup.ca.to_str().unwrap(),
    ];

    let python = python_with("asyncpg", "asyncpg");
    let out = run_client(
        "asyncpg",
        Command::new(python)
            .arg(root.join("tests/clients/asyncpg_login.py"))
            .args(args),
    );
    assert_eq!(out, "veil_scram t");

    let jar = Path::new("/usr/share/java/postgresql.jar");
    assert!(
        jar.exists(),
        "pgJDBC missing: apt-get install libpostgresql-jdbc-java"
    );
    let out = run_client(
        "pgJDBC",
        Command::new("java")
            .arg("-cp")
            .arg(jar)
            .arg(root.join("tests/clients/java/Login.java"))
            .args(args),
    );
    assert_eq!(out, "veil_scram t");

    let node_dir = root.join("tests/clients/node");
    if !node_dir.join("node_modules/pg").exists() {
        run_client(
            "npm ci",
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--prefix"])
                .arg(&node_dir),
        );
    }
    let out = run_client(
        "node-postgres",
        Command::new("node")
            .arg(node_dir.join("login.js"))
            .args(args),
    );
    assert_eq!(out, "veil_scram t");
}

// ---------------------------------------------------------------------------------------
// Raw protocol: exchanges a real client would never send.

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn sasl_initial(mechanism: &str, data: &str) -> Vec<u8> {
    let mut body = mechanism.as_bytes().to_vec();
    body.push(0);
    body.extend_from_slice(&(data.len() as u32).to_be_bytes());
    body.extend_from_slice(data.as_bytes());
    frame(b'p', &body)
}

async fn read_msg<S: AsyncRead + Unpin>(stream: &mut S) -> Option<(u8, Vec<u8>)> {
    let mut header = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(20), stream.read_exact(&mut header))
        .await
        .expect("no answer within 20 s")
        .ok()?;
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    let mut body = vec![0u8; len - 4];
    stream.read_exact(&mut body).await.ok()?;
    Some((header[0], body))
}

/// An ErrorResponse field.
fn field(body: &[u8], code: u8) -> String {
    Msg {
        tag: b'E',
        body: body.to_vec(),
    }
    .field(code)
    .unwrap_or_default()
}

/// Sends the startup packet for `user` and returns the mechanisms pgveil offers.
async fn start_sasl<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, user: &str) -> Vec<String> {
    let startup =
        pgveil::net::startup::StartupMessage::encode(&[("user", user), ("database", "postgres")]);
    stream.write_all(&startup).await.unwrap();
    let (tag, body) = read_msg(stream).await.expect("an authentication request");
    assert_eq!(tag, b'R');
    assert_eq!(&body[..4], &10u32.to_be_bytes(), "AuthenticationSASL");
    body[4..]
        .split(|b| *b == 0)
        .filter(|m| !m.is_empty())
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .collect()
}

/// A plain-TCP SCRAM exchange up to the server-first message, then a made-up proof: the
/// server-first message and the error that ends the login.
async fn exchange_with_wrong_proof(port: u16, user: &str) -> (String, String, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mechanisms = start_sasl(&mut stream, user).await;
    assert_eq!(mechanisms, ["SCRAM-SHA-256"], "no PLUS without TLS");
    stream
        .write_all(&sasl_initial(
            "SCRAM-SHA-256",
            "n,,n=,r=fyko+d2lbbFgONRv9qkxdawL",
        ))
        .await
        .unwrap();
    let (tag, body) = read_msg(&mut stream).await.unwrap();
    assert_eq!((tag, &body[..4]), (b'R', &11u32.to_be_bytes()[..]));
    let server_first = String::from_utf8(body[4..].to_vec()).unwrap();
    let nonce = server_first
        .split(',')
        .next()
        .unwrap()
        .strip_prefix("r=")
        .unwrap();
    let proof = "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    stream
        .write_all(&frame(
            b'p',
            format!("c=biws,r={nonce},p={proof}").as_bytes(),
        ))
        .await
        .unwrap();
    let (tag, body) = read_msg(&mut stream).await.unwrap();
    assert_eq!(tag, b'E');
    assert!(
        read_msg(&mut stream).await.is_none(),
        "closed after the error"
    );
    (server_first, field(&body, b'C'), field(&body, b'M'))
}

/// `r=…,s=SALT,i=N` without the nonce.
fn salt_and_iterations(server_first: &str) -> String {
    server_first
        .split(',')
        .skip(1)
        .collect::<Vec<_>>()
        .join(",")
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_users_get_exactly_the_answer_of_a_wrong_password() {
    let proxy = scram_proxy();
    let port = proxy.port();
    let (real_first, real_code, real_message) = exchange_with_wrong_proof(port, "veil_scram").await;
    assert_eq!(real_code, "28P01");
    assert_eq!(
        real_message,
        "password authentication failed for user \"veil_scram\""
    );
    for user in ["veil_nobody", "veil_nopass"] {
        let (first, code, message) = exchange_with_wrong_proof(port, user).await;
        assert_eq!(code, real_code, "{user}");
        assert_eq!(message, real_message.replace("veil_scram", user));
        // Same shape, and a salt that stays the same for the same name, like a real one.
        let shape = salt_and_iterations(&first);
        assert_eq!(
            shape.len(),
            salt_and_iterations(&real_first).len(),
            "{user}"
        );
        assert!(shape.ends_with(",i=4096"), "{first}");
        let (again, _, _) = exchange_with_wrong_proof(port, user).await;
        assert_eq!(salt_and_iterations(&again), shape, "{user}");
    }
    assert_eq!(
        salt_and_iterations(&exchange_with_wrong_proof(port, "veil_scram").await.0),
        salt_and_iterations(&real_first)
    );
    // libpq sees the same lines for a wrong password and an unknown user.
    let wrong = psql_conninfo(
        &tls_conninfo(port, "veil_scram", "sslmode=require"),
        "wrong",
    )
    .unwrap_err();
    let unknown = psql_conninfo(
        &tls_conninfo(port, "veil_nobody", "sslmode=require"),
        "wrong",
    )
    .unwrap_err();
    assert!(wrong.contains("password authentication failed"), "{wrong}");
    assert_eq!(unknown.replace("veil_nobody", "veil_scram"), wrong);
}

#[test]
fn logins_the_database_does_not_authenticate_by_password_are_reported() {
    let proxy = scram_proxy();
    // pg_hba.conf says cert: pgveil has no client certificate to present.
    let err = psql_conninfo(
        &tls_conninfo(proxy.port(), "veil_cert", "sslmode=require"),
        SCRAM_PASSWORD,
    )
    .unwrap_err();
    assert!(err.contains("certificate"), "{err}");
    assert!(err.contains("pgveil"), "{err}");
    assert!(err.contains("auth = \"scram\""), "{err}");
}

#[test]
fn a_failing_auth_query_or_auth_user_gives_a_clear_error_and_pgveil_keeps_serving() {
    let setup = setup();
    let broken_query = Proxy::start(
        &scram_config(
            "pgveil_auth",
            "SELECT usename, passwd FROM no_such_table WHERE usename = $1",
            "",
        ),
        &setup.dir,
    );
    let no_auth_user = Proxy::start(
        &scram_config("veil_no_such_role", AUTH_QUERY, ""),
        &setup.dir,
    );
    for _ in 0..2 {
        let err = psql_conninfo(
            &tls_conninfo(broken_query.port(), "veil_scram", "sslmode=require"),
            SCRAM_PASSWORD,
        )
        .unwrap_err();
        assert!(err.contains("auth_query failed"), "{err}");
        let err = psql_conninfo(
            &tls_conninfo(no_auth_user.port(), "veil_scram", "sslmode=require"),
            SCRAM_PASSWORD,
        )
        .unwrap_err();
        assert!(err.contains("auth_user cannot log in"), "{err}");
    }
    // A healthy pgveil next to them is unaffected.
    let proxy = scram_proxy();
    assert_eq!(
        psql_conninfo(
            &tls_conninfo(proxy.port(), "veil_scram", "sslmode=require"),
            SCRAM_PASSWORD
        )
        .as_deref(),
        Ok("veil_scram t")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_mid_exchange_is_closed_and_nothing_reaches_the_database() {
    let proxy = scram_proxy();
    let port = proxy.port();
    // After the startup packet.
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    start_sasl(&mut stream, "veil_quit").await;
    drop(stream);
    // After the client-first message.
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    start_sasl(&mut stream, "veil_quit").await;
    stream
        .write_all(&sasl_initial("SCRAM-SHA-256", "n,,n=,r=abcdefgh"))
        .await
        .unwrap();
    let (tag, _) = read_msg(&mut stream).await.unwrap();
    assert_eq!(tag, b'R');
    drop(stream);
    // Half a message, then silence: pgveil closes once the socket does.
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    start_sasl(&mut stream, "veil_quit").await;
    stream.write_all(b"p\0\0\0\x40SCRAM").await.unwrap();
    stream.shutdown().await.unwrap();
    assert!(read_msg(&mut stream).await.is_none(), "nothing sent back");

    tokio::time::sleep(Duration::from_millis(300)).await;
    let backends =
        tls_cluster().psql("SELECT count(*) FROM pg_stat_activity WHERE usename = 'veil_quit'");
    assert_eq!(backends.trim(), "0", "no database session was opened");
    let ok = psql_conninfo(
        &tls_conninfo(port, "veil_quit", "sslmode=require"),
        SCRAM_PASSWORD,
    );
    assert_eq!(ok.as_deref(), Ok("veil_quit t"));
}

fn tls_client(
    ca: &Path,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).unwrap();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// SSLRequest, 'S', then a TLS handshake with `connector`.
async fn tls_to(
    port: u16,
    connector: &tokio_rustls::TlsConnector,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.write_all(&pgveil::net::startup::ssl_request()).await?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await?;
    assert_eq!(answer[0], b'S');
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_downgrade_from_channel_binding_is_refused() {
    let setup = setup();
    let proxy = scram_proxy();
    let connector = tls_client(&setup.ca, rustls::ALL_VERSIONS);
    let mut tls = tls_to(proxy.port(), &connector).await.unwrap();
    let mechanisms = start_sasl(&mut tls, "veil_scram").await;
    assert_eq!(mechanisms, ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]);
    // `y`: "I support channel binding but the server does not" — after PLUS was offered.
    tls.write_all(&sasl_initial("SCRAM-SHA-256", "y,,n=,r=abcdefgh"))
        .await
        .unwrap();
    let (tag, body) = read_msg(&mut tls).await.unwrap();
    assert_eq!(tag, b'E');
    assert_eq!(field(&body, b'C'), "08P01");
    assert!(
        field(&body, b'M').contains("channel binding negotiation"),
        "{}",
        field(&body, b'M')
    );

    // PLUS named with another binding type, or without binding data, fails too.
    for first in ["p=tls-unique,,n=,r=abcdefgh", "n,,n=,r=abcdefgh"] {
        let mut tls = tls_to(proxy.port(), &connector).await.unwrap();
        start_sasl(&mut tls, "veil_scram").await;
        tls.write_all(&sasl_initial("SCRAM-SHA-256-PLUS", first))
            .await
            .unwrap();
        let (tag, body) = read_msg(&mut tls).await.unwrap();
        assert_eq!(
            (tag, field(&body, b'C').as_str()),
            (b'E', "08P01"),
            "{first}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_1_2_and_1_3_are_accepted_and_older_versions_refused() {
    let setup = setup();
    let proxy = scram_proxy();
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let connector = tls_client(&setup.ca, &[version]);
        let mut tls = tls_to(proxy.port(), &connector)
            .await
            .unwrap_or_else(|e| panic!("{version:?}: {e}"));
        let mechanisms = start_sasl(&mut tls, "veil_scram").await;
        assert!(mechanisms.contains(&"SCRAM-SHA-256-PLUS".to_string()));
    }
    // A TLS 1.1 ClientHello (no supported_versions extension), written by hand since no
    // current library sends one.
    let mut hello = vec![0x03, 0x02];
    hello.extend_from_slice(&[0x5a; 32]);
    hello.push(0); // session id
    hello.extend_from_slice(&[0x00, 0x04, 0xc0, 0x13, 0x00, 0x2f]); // ECDHE-RSA-AES128-SHA, AES128-SHA
    hello.extend_from_slice(&[0x01, 0x00]); // null compression
    let mut handshake = vec![0x01, 0x00];
    handshake.extend_from_slice(&(hello.len() as u16).to_be_bytes());
    handshake.extend_from_slice(&hello);
    let mut record = vec![0x16, 0x03, 0x02];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);

    let mut tcp = TcpStream::connect(("127.0.0.1", proxy.port()))
        .await
        .unwrap();
    tcp.write_all(&pgveil::net::startup::ssl_request())
        .await
        .unwrap();
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.unwrap();
    assert_eq!(answer[0], b'S');
    tcp.write_all(&record).await.unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut reply)).await;
    assert!(
        reply.first() != Some(&0x16),
        "pgveil answered a TLS 1.1 ClientHello with a handshake: {reply:02x?}"
    );
    assert_eq!(reply.first(), Some(&0x15), "an alert: {reply:02x?}");
}

#[test]
fn a_changed_password_is_seen_after_one_failure() {
    let setup = setup();
    let proxy = Proxy::start(
        // Without kept connections: a login that takes one is checked against a fresh
        // verifier (tests/server_reuse.rs).
        &scram_config(
            "pgveil_auth",
            AUTH_QUERY,
            "auth_cache_secs = 3600\nserver_reuse = false",
        ),
        &setup.dir,
    );
    let conninfo = tls_conninfo(proxy.port(), "veil_change", "sslmode=require");
    assert_eq!(
        psql_conninfo(&conninfo, "first-password").as_deref(),
        Ok("veil_change t")
    );
    tls_cluster().psql("ALTER ROLE veil_change PASSWORD 'second-password'");
    // The cached verifier (old salt) makes the first try fail; the failure drops it.
    let first_try = psql_conninfo(&conninfo, "second-password").unwrap_err();
    assert!(
        first_try.contains("password authentication failed"),
        "{first_try}"
    );
    assert_eq!(
        psql_conninfo(&conninfo, "second-password").as_deref(),
        Ok("veil_change t")
    );
    assert!(psql_conninfo(&conninfo, "first-password")
        .unwrap_err()
        .contains("password authentication failed"));
}

#[test]
fn protected_sessions_start_after_a_terminated_login() {
    let setup = setup();
    let dir = tempfile::tempdir().unwrap();
    for file in ["upstream-ca.crt", "server.crt", "server.key"] {
        std::fs::copy(setup.dir.join(file), dir.path().join(file)).unwrap();
    }
    pgveil::crypto::keys::init_key_dir(&dir.path().join("keys")).unwrap();
    tls_cluster().psql(
        "DROP TABLE IF EXISTS scram_patients;
         CREATE TABLE scram_patients (id int PRIMARY KEY, ssn bytea);
         GRANT ALL ON scram_patients TO veil_scram;",
    );
    let config = format!(
        "{}[keys]\nmaster_key_file = \"keys/master.key\"\n{}",
        scram_config("pgveil_auth", AUTH_QUERY, ""),
        column_toml(
            "scram_patients",
            "ssn",
            "text",
            "deterministic",
            "access = { veil_scram = \"plaintext\" }"
        )
    );
    let proxy = Proxy::start(&config, dir.path());
    let out = Command::new(bindir().join("psql"))
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d"])
        .arg(tls_conninfo(
            proxy.port(),
            "veil_scram",
            "sslmode=require channel_binding=require",
        ))
        .args([
            "-c",
            "INSERT INTO scram_patients VALUES (1, '123-45-6789')",
            "-c",
            "SELECT ssn FROM scram_patients WHERE ssn = '123-45-6789'",
        ])
        .env("PGPASSWORD", SCRAM_PASSWORD)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("123-45-6789"));
    let stored = tls_cluster().psql("SELECT encode(ssn, 'hex') FROM scram_patients");
    assert!(
        !stored.contains(&hex::encode("123-45-6789")),
        "stored encrypted"
    );
}

/// `pgveil serve` as a child process, stopped with SIGTERM when dropped.
struct Served(std::process::Child);

impl Drop for Served {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

#[test]
fn the_client_certificate_is_rotated_on_sighup_and_a_broken_pair_is_refused() {
    let setup = setup();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        setup.dir.join("upstream-ca.crt"),
        dir.path().join("upstream-ca.crt"),
    )
    .unwrap();
    let write_pair = |name: &str| {
        let (ca, cert, key) = make_certs("localhost");
        std::fs::write(dir.path().join(format!("{name}-ca.crt")), ca).unwrap();
        std::fs::write(dir.path().join("server.crt"), &cert).unwrap();
        std::fs::write(dir.path().join("server.key"), &key).unwrap();
        (cert, key)
    };
    write_pair("first");
    let port = free_port();
    let path = dir.path().join("pgveil.toml");
    let config = scram_config("pgveil_auth", AUTH_QUERY, "").replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\"\npid_file = \"pgveil.pid\""),
    );
    std::fs::write(&path, config).unwrap();
    let mut served = Served(
        Command::new(env!("CARGO_BIN_EXE_pgveil"))
            .args(["serve", "--config"])
            .arg(&path)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(
        || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                && dir.path().join("pgveil.pid").exists()
        },
        "pgveil to listen",
    );
    // channel_binding=require: the binding must follow the certificate being served.
    let login = |ca: &str| {
        psql_conninfo(
            &tls_conninfo(
                port,
                "veil_scram",
                &format!(
                    "sslmode=verify-full sslrootcert={} channel_binding=require",
                    dir.path().join(format!("{ca}-ca.crt")).display()
                ),
            ),
            SCRAM_PASSWORD,
        )
    };
    let reload = || {
        let out = Command::new(env!("CARGO_BIN_EXE_pgveil"))
            .args(["reload", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    assert_eq!(login("first").as_deref(), Ok("veil_scram t"));

    let (second_cert, _) = write_pair("second");
    reload();
    wait_for(|| login("second").is_ok(), "the new certificate");
    // The old CA no longer verifies what is served (OpenSSL words it variously).
    let err = login("first").unwrap_err();
    assert!(err.contains("SSL") || err.contains("certificate"), "{err}");

    // A key that does not match the certificate, then a key file that is no key: both are
    // refused and the pair in use stays.
    let (_, _, unrelated_key) = make_certs("localhost");
    std::fs::write(dir.path().join("server.crt"), &second_cert).unwrap();
    std::fs::write(dir.path().join("server.key"), unrelated_key).unwrap();
    reload();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(login("second").as_deref(), Ok("veil_scram t"));
    std::fs::write(dir.path().join("server.key"), "not a key").unwrap();
    reload();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(login("second").as_deref(), Ok("veil_scram t"));
    assert!(served.0.try_wait().unwrap().is_none(), "pgveil still runs");
}
