//! The audit log, end to end: statements through pgveil produce chained, signed records that
//! the auditor's commands verify, search and report on.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use common::*;
use tokio_postgres::SimpleQueryMessage;

const SSN: &str = "078-05-1120";
const OTHER_SSN: &str = "219-09-9999";

fn setup(dir: &Path, table: &str) -> String {
    secrets([SSN, OTHER_SSN]);
    pgveil::crypto::keys::init_key_dir(&dir.join("keys")).unwrap();
    cluster().psql(&format!(
        "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id serial PRIMARY KEY, name text, ssn bytea, birth_date bytea)"
    ));
    let config = format!(
        "{}\n[keys]\nmaster_key_file = \"keys/master.key\"\n\
[audit]\ndir = \"audit\"\nsigning_key_file = \"keys/audit.key\"\ncheckpoint_every = 5\n\
[policy]\ndefault_access = \"plaintext\"\n\
[[table]]\nname = \"{table}\"\nsubject = \"id\"\n\
[[column]]\ntable = \"{table}\"\ncolumn = \"ssn\"\ntype = \"text\"\nencryption = \"deterministic\"\n\
[[column]]\ntable = \"{table}\"\ncolumn = \"birth_date\"\ntype = \"date\"\nencryption = \"randomized\"\n",
        relay_config(cluster().port, "")
    );
    std::fs::write(dir.join("pgveil.toml"), &config).unwrap();
    config
}

fn pgveil(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pgveil"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn rows(messages: &[SimpleQueryMessage]) -> Vec<&tokio_postgres::SimpleQueryRow> {
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_and_writes_are_recorded_without_values() {
    let dir = tempfile::tempdir().unwrap();
    let table = "audit_patients";
    let config = setup(dir.path(), table);
    let proxy = Proxy::start(&config, dir.path());
    let client = connect(proxy.port()).await;

    client
        .simple_query(&format!(
            "INSERT INTO {table} (name, ssn, birth_date) VALUES ('Ann', '{SSN}', '1970-03-04')"
        ))
        .await
        .unwrap();
    client
        .execute(
            &format!("INSERT INTO {table} (name, ssn) VALUES ($1, $2)"),
            &[&"Bob", &OTHER_SSN],
        )
        .await
        .unwrap();
    // Subject column selected.
    let got = client
        .query(
            &format!("SELECT id, ssn FROM {table} WHERE ssn = $1"),
            &[&SSN],
        )
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    let ann_id: i32 = got[0].get(0);
    // Subject column not selected: pgveil appends it and strips it from the rows.
    let messages = client
        .simple_query(&format!(
            "SELECT name, ssn FROM {table} WHERE ssn = '{OTHER_SSN}'"
        ))
        .await
        .unwrap();
    let found = rows(&messages);
    assert_eq!(found.len(), 1);
    assert_eq!(
        found[0].len(),
        2,
        "the injected subject column reached the client"
    );
    assert_eq!(found[0].get(1), Some(OTHER_SSN));
    let bob = client
        .query_one(
            &format!("SELECT name, ssn FROM {table} WHERE name = 'Bob'"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(bob.len(), 2);
    assert_eq!(bob.get::<_, String>(1), OTHER_SSN);
    // DISTINCT returns protected values whose subjects cannot be told apart: unknown.
    client
        .query(&format!("SELECT DISTINCT ssn FROM {table}"), &[])
        .await
        .unwrap();
    // A refusal.
    let err = client
        .simple_query(&format!("SELECT * FROM {table} WHERE ssn LIKE '0%'"))
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "0A000");
    // Out of scope: not recorded.
    client.simple_query("SELECT 1").await.unwrap();
    drop(client);
    proxy.shutdown();

    let mut recs = common::audit_records(dir.path());
    // Records of writes are appended in the background, so the log's order may differ from
    // the statements' order; their times are taken when each statement completes.
    recs.sort_by(|a, b| a["time"].as_str().cmp(&b["time"].as_str()));
    let kinds: Vec<(&str, &str)> = recs
        .iter()
        .map(|r| (r["kind"].as_str().unwrap(), r["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("insert", "ok"),
            ("insert", "ok"),
            ("select", "ok"),
            ("select", "ok"),
            ("select", "ok"),
            ("select", "ok"),
            ("select", "refused")
        ],
        "{recs:#?}"
    );
    let ann = &recs[2];
    assert_eq!(
        ann["subjects"][format!("public.{table}")],
        serde_json::json!([ann_id.to_string()])
    );
    assert_eq!(ann["rows"], 1);
    assert_eq!(ann["user"], SUPERUSER);
    assert!(ann["columns"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["column"] == format!("public.{table}.ssn") && c["access"] == "plaintext"));
    assert!(
        recs[3]["subjects"][format!("public.{table}")]
            .as_array()
            .is_some_and(|ids| ids.len() == 1),
        "{:#?}",
        recs[3]
    );
    assert!(recs[5]["subjects_unknown"].is_string(), "{:#?}", recs[5]);
    assert_eq!(recs[6]["sqlstate"], "0A000");
    assert_eq!(recs[0]["columns"][0]["access"], "write");
    assert!(recs
        .iter()
        .all(|r| r["fingerprint"].as_str().is_some_and(|f| !f.is_empty())));

    // No value ever reaches the log: not the SSNs, the name, nor the birth date.
    for entry in std::fs::read_dir(dir.path().join("audit")).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        for value in [SSN, OTHER_SSN, "1970-03-04", "Ann", "'0%'"] {
            assert!(!text.contains(value), "{value} found in the audit log");
        }
    }

    // The auditor's commands.
    let config_path = dir.path().join("pgveil.toml");
    let config_arg = config_path.to_str().unwrap();
    let (code, out, err) = pgveil(&["audit", "verify", "--config", config_arg]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = pgveil(&[
        "audit", "search", "--config", config_arg, "--table", table, "--json",
    ]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 7);
    let subject = format!("{table}:{ann_id}");
    let (code, out, err) = pgveil(&[
        "audit",
        "report",
        "--config",
        config_arg,
        "--subject",
        &subject,
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let disclosures: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(disclosures.iter().any(|d| d["seq"] == ann["seq"]), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unwritable_log_withholds_reads_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let table = "audit_failing";
    let config = setup(dir.path(), table);
    let proxy = Proxy::start(&config, dir.path());
    let client = connect(proxy.port()).await;
    client
        .execute(
            &format!("INSERT INTO {table} (name, ssn) VALUES ('Cy', $1)"),
            &[&SSN],
        )
        .await
        .unwrap();

    let audit = dir.path().join("audit");
    let away = dir.path().join("audit.away");
    std::fs::rename(&audit, &away).unwrap();
    let err = client
        .query(&format!("SELECT ssn FROM {table} WHERE ssn = $1"), &[&SSN])
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "58030", "{err}");
    // A write is refused before it runs while the log is failing.
    let err = client
        .simple_query(&format!(
            "INSERT INTO {table} (name, ssn) VALUES ('Di', '{OTHER_SSN}')"
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "58030", "{err}");
    // Statements out of scope still work.
    assert_eq!(
        rows(&client.simple_query("SELECT 41 + 1").await.unwrap())[0].get(0),
        Some("42")
    );

    std::fs::rename(&away, &audit).unwrap();
    let got = client
        .query(&format!("SELECT ssn FROM {table} WHERE ssn = $1"), &[&SSN])
        .await
        .unwrap();
    assert_eq!(got[0].get::<_, String>(0), SSN);
    let count: i64 = client
        .query_one(
            &format!("SELECT count(*) FROM {table} WHERE name = 'Di'"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 0, "the refused write ran");
    drop(client);
    proxy.shutdown();

    // Restart: the chain continues and verifies.
    let proxy = Proxy::start(&config, dir.path());
    let client = connect(proxy.port()).await;
    client
        .query(&format!("SELECT ssn FROM {table}"), &[])
        .await
        .unwrap();
    drop(client);
    proxy.shutdown();
    let recs = common::audit_records(dir.path());
    let seqs: Vec<u64> = recs.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    let config_path = dir.path().join("pgveil.toml");
    let (code, out, err) = pgveil(&["audit", "verify", "--config", config_path.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");

    // Tampering with a stored record is caught and located.
    let segment = std::fs::read_dir(&audit)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .unwrap();
    let text = std::fs::read_to_string(&segment).unwrap();
    std::fs::write(&segment, text.replacen("\"rows\":1", "\"rows\":0", 1)).unwrap();
    let (code, _, err) = pgveil(&["audit", "verify", "--config", config_path.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("segment-") && err.contains("seq"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn scope_all_records_every_statement() {
    let dir = tempfile::tempdir().unwrap();
    let table = "audit_scope_all";
    let config = setup(dir.path(), table).replace(
        "checkpoint_every = 5\n",
        "checkpoint_every = 5\nscope = \"all\"\n",
    );
    let proxy = Proxy::start(&config, dir.path());
    let client = connect(proxy.port()).await;
    client
        .simple_query("SELECT 'not a protected value' AS greeting")
        .await
        .unwrap();
    client
        .query("SELECT $1::int4 + 1", &[&41i32])
        .await
        .unwrap();
    client
        .query(&format!("SELECT ssn FROM {table}"), &[])
        .await
        .unwrap();
    drop(client);
    proxy.shutdown();
    let recs = common::audit_records(dir.path());
    assert_eq!(recs.len(), 3, "{recs:#?}");
    assert!(
        recs[0]["fingerprint"]
            .as_str()
            .unwrap()
            .contains("SELECT ? AS greeting"),
        "{:#?}",
        recs[0]
    );
    assert!(recs.iter().all(|r| r["outcome"] == "ok"));
    let text = std::fs::read_dir(dir.path().join("audit"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap_or_default())
        .collect::<String>();
    assert!(!text.contains("not a protected value"));
    assert!(
        !text.contains("distinctive-parameter-7731"),
        "a parameter value reached the log"
    );
}

/// pgveil run as its own process, killed when dropped.
struct Served(Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(config_path: &Path, port: u16) -> Served {
    let child = Command::new(env!("CARGO_BIN_EXE_pgveil"))
        .args(["serve", "--config"])
        .arg(config_path)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let served = Served(child);
    wait_for(
        || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        "pgveil to listen",
    );
    served
}

/// Reads through pgveil until the connection fails, counting the rows released.
async fn read_until_killed(port: u16, table: &'static str, released: Arc<AtomicU64>) {
    let Ok(client) = connect_as(port, SUPERUSER, PASSWORD).await else {
        return;
    };
    let sql = format!("SELECT ssn FROM {table} WHERE id = 1");
    while let Ok(rows) = client.query(&sql, &[]).await {
        assert_eq!(rows[0].get::<_, String>(0), SSN);
        released.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_reads_loses_no_released_read_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let table = "audit_kill9";
    let tap = tap_to(cluster().port);
    let port = free_port();
    let config = setup(dir.path(), table)
        .replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{port}\""),
        )
        .replace(
            &format!("port = {}\n", cluster().port),
            &format!("port = {}\n", tap.port),
        );
    let config_path = dir.path().join("pgveil.toml");
    std::fs::write(&config_path, &config).unwrap();
    let verify = || pgveil(&["audit", "verify", "--config", config_path.to_str().unwrap()]);

    let mut served = serve(&config_path, port);
    let client = connect(port).await;
    client
        .execute(
            &format!("INSERT INTO {table} (id, name, ssn) VALUES (1, 'Ed', $1)"),
            &[&SSN],
        )
        .await
        .unwrap();
    drop(client);
    let released = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..8)
        .map(|_| tokio::spawn(read_until_killed(port, table, released.clone())))
        .collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while released.load(Ordering::SeqCst) < 300 {
        assert!(std::time::Instant::now() < deadline, "reads stalled");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // SIGKILL while the readers keep the audit writer busy.
    served.0.kill().unwrap();
    served.0.wait().unwrap();
    for r in readers {
        r.await.unwrap();
    }
    let released = released.load(Ordering::SeqCst);

    // The open segment was preallocated: its zero tail is on disk, past the content.
    let segment = dir.path().join("audit").join("segment-000001.jsonl");
    let bytes = std::fs::read(&segment).unwrap();
    let content = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    assert!(content < bytes.len(), "no zero tail after a crash");
    assert!(
        bytes[content..].iter().all(|&b| b == 0),
        "bytes after the content"
    );

    // Before any restart the log verifies, or shows a torn final line (a write cut by the
    // kill) and nothing else.
    let (code, out, err) = verify();
    assert!(
        code == 0 || err.contains("torn final line (crash during write)"),
        "{out}{err}"
    );
    // Every read released to a client has its record.
    let reads = common::audit_records(dir.path())
        .iter()
        .filter(|r| r["kind"] == "select" && r["outcome"] == "ok")
        .count() as u64;
    assert!(
        reads >= released,
        "{reads} records for {released} released reads"
    );

    // A restart repairs what the kill left; after a clean stop the log verifies and ends
    // with its content (no zero tail).
    let served = serve(&config_path, port);
    let client = connect(port).await;
    client
        .query(&format!("SELECT ssn FROM {table}"), &[])
        .await
        .unwrap();
    drop(client);
    let status = Command::new("kill")
        .args(["-TERM", &served.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut served = served;
    assert!(served.0.wait().unwrap().success());
    let (code, out, err) = verify();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("audit log intact"), "{out}");
    let bytes = std::fs::read(&segment).unwrap();
    assert!(
        !bytes.contains(&0),
        "a cleanly stopped segment is cut to its content"
    );
    let after = common::audit_records(dir.path());
    let seqs: Vec<u64> = after.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    tap.assert_no_leaks();
}
