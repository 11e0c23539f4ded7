//! `pgveil reload` (SIGHUP) against the real binary: a valid configuration applies to open
//! sessions from their next statement; an invalid one changes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

struct Served(Child);

impl Drop for Served {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

fn config(port: u16, access: &str) -> String {
    config_in(port, "reload_patients", access, "")
}

/// `policy`: the body of a `[policy]` section.
fn config_in(port: u16, table: &str, access: &str, policy: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\npid_file = \"pgveil.pid\"\n\
[upstream]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"disable\"\n\
[keys]\nmaster_key_file = \"keys/master.key\"\n\
[policy]\n{policy}\n\
[[column]]\ntable = \"{table}\"\ncolumn = \"ssn\"\ntype = \"text\"\nencryption = \"deterministic\"\n\
access = {{ {SUPERUSER} = \"{access}\" }}\n",
        cluster().port
    )
}

/// Starts `pgveil serve` on `path` and waits until it listens.
fn serve(path: &std::path::Path, port: u16) -> Served {
    let child = Command::new(env!("CARGO_BIN_EXE_pgveil"))
        .args(["serve", "--config"])
        .arg(path)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let served = Served(child);
    let dir = path.parent().unwrap();
    wait_for(
        || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                && dir.join("pgveil.pid").exists()
        },
        "pgveil to listen",
    );
    served
}

fn reload(path: &std::path::Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_pgveil"))
        .args(["reload", "--config"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn ssn_of(client: &tokio_postgres::Client) -> Result<String, String> {
    client
        .query_one("SELECT ssn FROM reload_patients WHERE id = 1", &[])
        .await
        .map(|row| row.get::<_, String>(0))
        .map_err(|e| {
            e.code()
                .map(|c| c.code().to_string())
                .unwrap_or_else(|| e.to_string())
        })
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_narrows_access_in_a_live_session_and_rejects_invalid_files() {
    let dir = tempfile::tempdir().unwrap();
    pgveil::crypto::keys::init_key_dir(&dir.path().join("keys")).unwrap();
    cluster().psql("DROP TABLE IF EXISTS reload_patients; CREATE TABLE reload_patients (id int PRIMARY KEY, ssn bytea)");
    let port = free_port();
    let path = dir.path().join("pgveil.toml");
    std::fs::write(&path, config(port, "plaintext")).unwrap();
    let _served = serve(&path, port);

    secret("123-45-6789");
    let client = connect(port).await;
    client
        .execute(
            "INSERT INTO reload_patients VALUES (1, $1)",
            &[&"123-45-6789"],
        )
        .await
        .unwrap();
    assert_eq!(ssn_of(&client).await.unwrap(), "123-45-6789");

    // Narrow to a mask: the same session sees the mask from its next statement.
    std::fs::write(&path, config(port, "mask:last4")).unwrap();
    reload(&path);
    let mut seen = String::new();
    for _ in 0..100 {
        seen = ssn_of(&client).await.unwrap();
        if seen != "123-45-6789" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen, "*******6789");

    // An invalid file is rejected as a whole: `pgveil reload` says why and signals nothing,
    // and a SIGHUP sent anyway leaves the running configuration in force.
    std::fs::write(
        &path,
        config(port, "mask:last4").replace("type = \"text\"", "type = \"txt\""),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pgveil"))
        .args(["reload", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown type \"txt\""));
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    unsafe { libc::kill(_served.0.id() as i32, libc::SIGHUP) };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ssn_of(&client).await.unwrap(), "*******6789");

    // Deny: refused in the live session, and in a new one.
    std::fs::write(&path, config(port, "deny")).unwrap();
    reload(&path);
    let mut outcome = Ok(String::new());
    for _ in 0..100 {
        outcome = ssn_of(&client).await;
        if outcome.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(outcome, Err("42501".to_string()));
    let fresh = connect(port).await;
    assert_eq!(ssn_of(&fresh).await, Err("42501".to_string()));
    // Writing a denied column still works.
    fresh
        .execute(
            "INSERT INTO reload_patients VALUES (2, $1)",
            &[&"987-65-4321"],
        )
        .await
        .unwrap();
}

async fn simple(client: &tokio_postgres::Client, sql: &str) -> Result<(), String> {
    client.simple_query(sql).await.map(drop).map_err(|e| {
        e.code()
            .map_or_else(|| e.to_string(), |c| c.code().to_string())
    })
}

async fn masked_ssn(client: &tokio_postgres::Client) -> Result<String, String> {
    client
        .query_one("SELECT ssn FROM reload_context WHERE id = 1", &[])
        .await
        .map(|row| row.get::<_, String>(0))
        .map_err(|e| {
            e.code()
                .map_or_else(|| e.to_string(), |c| c.code().to_string())
        })
}

/// Polls `read` until it returns `want` (a reload is applied asynchronously to the signal).
async fn eventually<F, Fut>(mut read: F, want: Result<String, String>)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<String, String>>,
{
    let mut seen = read().await;
    for _ in 0..100 {
        if seen == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        seen = read().await;
    }
    assert_eq!(seen, want);
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_applies_require_purpose_and_break_glass_roles_to_a_live_session() {
    let dir = tempfile::tempdir().unwrap();
    pgveil::crypto::keys::init_key_dir(&dir.path().join("keys")).unwrap();
    cluster().psql("DROP TABLE IF EXISTS reload_context; CREATE TABLE reload_context (id int PRIMARY KEY, ssn bytea)");
    let port = free_port();
    let path = dir.path().join("pgveil.toml");
    let write = |policy: &str| {
        std::fs::write(
            &path,
            config_in(port, "reload_context", "mask:last4", policy),
        )
        .unwrap()
    };
    write("require_purpose = false\nbreak_glass_roles = []");
    let _served = serve(&path, port);
    secret("123-45-6789");
    let client = connect(port).await;
    client
        .execute(
            "INSERT INTO reload_context VALUES (1, $1)",
            &[&"123-45-6789"],
        )
        .await
        .unwrap();
    let masked = Ok("*******6789".to_string());
    // No purpose needed, no break-glass allowed.
    assert_eq!(masked_ssn(&client).await, masked);
    assert_eq!(
        simple(&client, "SET pgveil.break_glass = 'code blue'").await,
        Err("42501".to_string())
    );

    // Reload: a purpose is required from the session's next statement; break-glass allowed.
    write(&format!(
        "require_purpose = true\nbreak_glass_roles = [\"{SUPERUSER}\"]"
    ));
    reload(&path);
    eventually(|| masked_ssn(&client), Err("42501".to_string())).await;
    simple(&client, "SET pgveil.purpose = 'treatment'")
        .await
        .unwrap();
    assert_eq!(masked_ssn(&client).await, masked);
    simple(&client, "SET pgveil.break_glass = 'code blue'")
        .await
        .unwrap();
    assert_eq!(masked_ssn(&client).await, Ok("123-45-6789".to_string()));

    // Reload: the role is no longer allowed, so break-glass no longer raises the session's
    // access (and cannot be set again); no purpose is required any more.
    write("require_purpose = false\nbreak_glass_roles = []");
    reload(&path);
    eventually(|| masked_ssn(&client), masked.clone()).await;
    assert_eq!(
        simple(&client, "SET pgveil.break_glass = 'again'").await,
        Err("42501".to_string())
    );
    simple(&client, "RESET ALL").await.unwrap();
    assert_eq!(masked_ssn(&client).await, masked);
}
