//! Alerts, end to end: the `[[alert]]` rules fed by the audit writer, delivered to the metric,
//! the alerts file and a real Prometheus Alertmanager (Debian's `prometheus-alertmanager`,
//! started here on a free port); an absent or hanging Alertmanager never holds up the log;
//! and, through pgveil and a real cluster, the refusal and subject rules for a login.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use common::*;
use ed25519_dalek::SigningKey;
use pgveil::alerts::AlertService;
use pgveil::audit::{
    Access, AuditLog, AuditOptions, ColumnAccess, Outcome, RecordContext, RecordDraft,
    StatementKind, Subjects,
};
use pgveil::config::Config;
use serde_json::Value;

const ALERTMANAGER: &str = "/usr/bin/prometheus-alertmanager";

/// Waits (bounded) for something that happens in the background; never a timing assertion.
fn eventually<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(found) = probe() {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `GET path` over HTTP/1.0: (status, body).
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

/// A real Alertmanager on a free loopback port, with a temporary config and storage.
struct Alertmanager {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Alertmanager {
    fn start() -> Alertmanager {
        assert!(
            Path::new(ALERTMANAGER).exists(),
            "{ALERTMANAGER} is missing: scripts/test.sh installs prometheus-alertmanager"
        );
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("alertmanager.yml");
        std::fs::write(
            &config,
            "route:\n  receiver: pgveil-test\n  group_wait: 1s\nreceivers:\n  - name: pgveil-test\n",
        )
        .unwrap();
        let port = free_port();
        let child = Command::new(ALERTMANAGER)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let am = Alertmanager {
            child,
            port,
            _dir: dir,
        };
        eventually("Alertmanager to be ready", || {
            http_get(port, "/-/ready")
                .filter(|(status, _)| *status == 200)
                .map(|_| ())
        });
        am
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The body of `GET /api/v2/alerts`.
    fn alerts_body(&self) -> String {
        let (status, body) = http_get(self.port, "/api/v2/alerts").unwrap();
        assert_eq!(status, 200, "{body}");
        body
    }

    fn alert_named(&self, name: &str) -> Option<Value> {
        let alerts: Vec<Value> = serde_json::from_str(&self.alerts_body()).unwrap();
        alerts
            .into_iter()
            .find(|a| a["labels"]["alertname"] == name)
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An "Alertmanager" that accepts connections and never answers. Counts connections.
struct Hanging {
    port: u16,
    accepted: Arc<AtomicUsize>,
}

impl Hanging {
    fn start() -> Hanging {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming().flatten() {
                count.fetch_add(1, Ordering::SeqCst);
                held.push(stream);
            }
        });
        Hanging { port, accepted }
    }
}

/// The audit log of a test, with the alert rules of `rules` beside its writer.
struct Harness {
    log: AuditLog,
    alerts: AlertService,
    file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn start(rules: &str, alertmanager_url: Option<&str>) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let url = alertmanager_url
            .map(|u| format!("alertmanager_url = \"{u}\"\n"))
            .unwrap_or_default();
        let text = format!(
            "[audit]\ndir = \"audit\"\nsigning_key_file = \"audit.key\"\n[alerts]\nfile = \"alerts.jsonl\"\n{url}{rules}"
        );
        let config = Config::parse(&text, "alerts.toml", dir.path()).unwrap();
        let (sink, alerts) = pgveil::alerts::start(&config.alert_rules, &config.alerts)
            .unwrap()
            .unwrap();
        let mut options =
            AuditOptions::new(dir.path().join("audit"), SigningKey::from_bytes(&[9; 32]));
        options.observer = Some(Box::new(sink));
        let log = AuditLog::open(options).unwrap();
        Harness {
            log,
            alerts,
            file: dir.path().join("alerts.jsonl"),
            _dir: dir,
        }
    }

    async fn append(&self, draft: RecordDraft, context: RecordContext) -> u64 {
        self.log.append_in_context(draft, context).await.unwrap()
    }

    /// The alerts file's lines so far.
    fn alerts(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.file)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn raw_file(&self) -> String {
        std::fs::read_to_string(&self.file).unwrap_or_default()
    }

    async fn stop(self) -> Vec<Value> {
        self.log.shutdown().await;
        drop(self.log);
        self.alerts.finish(Duration::from_secs(10)).await;
        std::fs::read_to_string(&self.file)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// A read of `ids` (subject ids of public.patients) by `login`.
fn read(login: &str, ids: &[&str]) -> RecordDraft {
    let mut subjects = BTreeMap::new();
    subjects.insert(
        "public.patients".to_string(),
        ids.iter().map(|s| s.to_string()).collect(),
    );
    RecordDraft {
        time: Utc::now(),
        session: "s-1".into(),
        client: "127.0.0.1:50000".into(),
        user: login.into(),
        roles: vec![login.to_string()],
        application: "alerts-test".into(),
        kind: StatementKind::Select,
        fingerprint: "SELECT id, ssn FROM patients WHERE id = $1".into(),
        tables: vec!["public.patients".into()],
        columns: vec![ColumnAccess::new("public.patients.ssn", Access::Plaintext)],
        rows: ids.len() as u64,
        outcome: Outcome::Ok,
        sqlstate: None,
        subjects: Subjects::Known(subjects),
    }
}

fn refused(login: &str) -> RecordDraft {
    let mut d = read(login, &[]);
    d.outcome = Outcome::Refused;
    d.sqlstate = Some("0A000".into());
    d.rows = 0;
    d.columns = vec![ColumnAccess::new("public.patients.ssn", Access::Denied)];
    d
}

fn as_user(end_user: &str) -> RecordContext {
    RecordContext {
        end_user: Some(end_user.into()),
        purpose: Some("treatment".into()),
        break_glass: None,
    }
}

fn metrics_text() -> String {
    pgveil::metrics::install().unwrap().render()
}

fn metric(name_and_labels: &str) -> f64 {
    metrics_text()
        .lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Working hours that exclude the current UTC time (so reads now are outside them).
fn hours_excluding_now() -> String {
    let hour = (Utc::now().format("%H").to_string().parse::<u32>().unwrap() + 2) % 24;
    format!("{hour:02}:00-{:02}:00", (hour + 1) % 24)
}

/// Subject ids that must never appear in an alert.
const MRNS: [&str; 3] = ["MRN-4711-A", "MRN-4711-B", "MRN-4711-C"];

#[tokio::test(flavor = "multi_thread")]
async fn every_rule_reaches_a_real_alertmanager() {
    let _ = metrics_text();
    let am = Alertmanager::start();
    let rules = format!(
        "[[alert]]\nname = \"am-bulk\"\nrule = \"subjects_per_user\"\nthreshold = 3\nwindow_secs = 3600\n\
[[alert]]\nname = \"am-refusals\"\nrule = \"refusals_per_user\"\nthreshold = 2\n\
[[alert]]\nname = \"am-glass\"\nrule = \"break_glass\"\n\
[[alert]]\nname = \"am-night\"\nrule = \"outside_hours\"\nhours = \"{}\"\ntime_zone = \"UTC\"\n",
        hours_excluding_now()
    );
    let h = Harness::start(&rules, Some(&am.url()));
    let first = h.append(read("app", &MRNS[..2]), as_user("dr.alice")).await;
    let second = h.append(read("app", &MRNS[1..]), as_user("dr.alice")).await;
    let r1 = h.append(refused("app2"), RecordContext::default()).await;
    let r2 = h.append(refused("app2"), RecordContext::default()).await;
    let glass = RecordContext {
        break_glass: Some("code blue, bed 4".into()),
        ..as_user("dr.bob")
    };
    let g = h.append(read("app", &MRNS[..1]), glass).await;

    let bulk = eventually("am-bulk active in Alertmanager", || {
        am.alert_named("am-bulk")
            .filter(|a| a["status"]["state"] == "active")
    });
    assert_eq!(bulk["labels"]["rule"], "subjects_per_user");
    assert_eq!(bulk["labels"]["login"], "app");
    assert_eq!(bulk["labels"]["end_user"], "dr.alice");
    assert_eq!(
        bulk["annotations"]["audit_seqs"],
        format!("{first},{second}")
    );
    assert_eq!(bulk["annotations"]["count"], "3");
    let refusals = eventually("am-refusals", || am.alert_named("am-refusals"));
    assert_eq!(refusals["labels"]["login"], "app2");
    assert!(refusals["labels"].get("end_user").is_none(), "{refusals}");
    assert_eq!(refusals["annotations"]["audit_seqs"], format!("{r1},{r2}"));
    let glass = eventually("am-glass", || am.alert_named("am-glass"));
    assert_eq!(glass["labels"]["end_user"], "dr.bob");
    assert_eq!(glass["annotations"]["audit_seq_first"], g.to_string());
    let night = eventually("am-night", || am.alert_named("am-night"));
    assert_eq!(night["labels"]["rule"], "outside_hours");

    // No subject id and no break-glass reason in anything Alertmanager received or the file.
    let body = am.alerts_body();
    let file = h.raw_file();
    for secret in MRNS.iter().copied().chain(["code blue", "SELECT"]) {
        assert!(
            !body.contains(secret),
            "{secret} reached Alertmanager: {body}"
        );
        assert!(
            !file.contains(secret),
            "{secret} reached the alerts file: {file}"
        );
    }
    let lines = h.stop().await;
    let names: Vec<&str> = lines.iter().map(|l| l["alert"].as_str().unwrap()).collect();
    for name in ["am-bulk", "am-refusals", "am-glass", "am-night"] {
        assert!(names.contains(&name), "{names:?}");
    }
    assert_eq!(metric("pgveil_alerts_total{rule=\"am-bulk\"}"), 1.0);
    assert_eq!(metric("pgveil_alerts_total{rule=\"am-refusals\"}"), 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_absent_alertmanager_never_holds_up_the_log() {
    let _ = metrics_text();
    // A port nobody listens on: every delivery is refused.
    let closed = free_port();
    let failures_before = metric("pgveil_alert_delivery_failures_total{target=\"alertmanager\"}");
    let h = Harness::start(
        "[[alert]]\nname = \"absent-bulk\"\nrule = \"subjects_per_user\"\nthreshold = 2\n",
        Some(&format!("http://127.0.0.1:{closed}")),
    );
    let mut seqs = Vec::new();
    for i in 0..50 {
        let id = format!("P{i}");
        seqs.push(
            h.append(read("app", &[id.as_str()]), RecordContext::default())
                .await,
        );
    }
    assert_eq!(seqs, (1..=50).collect::<Vec<u64>>());
    // The alert was raised and written although Alertmanager is unreachable ...
    let lines = eventually("the alert in the file", || {
        let l = h.alerts();
        (!l.is_empty()).then_some(l)
    });
    assert_eq!(lines[0]["alert"], "absent-bulk");
    assert_eq!(lines[0]["seqs"], serde_json::json!([1, 2]));
    // ... delivery was attempted and failed, and is retried in the background ...
    eventually("a failed delivery to be counted", || {
        (metric("pgveil_alert_delivery_failures_total{target=\"alertmanager\"}") > failures_before)
            .then_some(())
    });
    // ... while the log keeps taking records.
    assert_eq!(
        h.append(read("app", &["P99"]), RecordContext::default())
            .await,
        51
    );
    let lines = h.stop().await;
    assert_eq!(lines.len(), 1, "one alert per user and window: {lines:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hanging_alertmanager_never_holds_up_the_log_or_other_alerts() {
    let hanging = Hanging::start();
    let h = Harness::start(
        "[[alert]]\nname = \"hang-bulk\"\nrule = \"subjects_per_user\"\nthreshold = 2\n",
        Some(&format!("http://127.0.0.1:{}", hanging.port)),
    );
    h.append(read("app", &["A", "B"]), as_user("first")).await;
    // The post of the first alert is now in flight and will never be answered.
    eventually("the hanging Alertmanager to be connected", || {
        (hanging.accepted.load(Ordering::SeqCst) > 0).then_some(())
    });
    let in_flight = hanging.accepted.load(Ordering::SeqCst);
    // Meanwhile: more records are durable, and another user's alert is raised and written.
    for i in 0..100u64 {
        let id = format!("X{i}");
        let seq = h
            .append(read("app", &[id.as_str()]), as_user("second"))
            .await;
        assert_eq!(seq, i + 2);
    }
    let lines = eventually("the second user's alert", || {
        let l = h.alerts();
        (l.len() == 2).then_some(l)
    });
    assert_eq!(lines[0]["end_user"], "first");
    assert_eq!(lines[1]["end_user"], "second");
    assert_eq!(lines[1]["seqs"], serde_json::json!([2, 3]));
    assert!(hanging.accepted.load(Ordering::SeqCst) >= in_flight);
    h.log.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn alerts_are_deduplicated_per_user_and_window() {
    let _ = metrics_text();
    let h = Harness::start(
        "[[alert]]\nname = \"dedup-bulk\"\nrule = \"subjects_per_user\"\nthreshold = 2\nwindow_secs = 600\n\
[[alert]]\nname = \"dedup-glass\"\nrule = \"break_glass\"\nwindow_secs = 600\n",
        None,
    );
    let glass = |user: &str| RecordContext {
        break_glass: Some("emergency".into()),
        ..as_user(user)
    };
    let a1 = h.append(read("app", &["1", "2"]), as_user("alice")).await;
    h.append(read("app", &["3", "4"]), as_user("alice")).await;
    h.append(read("app", &["5"]), as_user("alice")).await;
    let b1 = h.append(read("app", &["1"]), as_user("bob")).await;
    let b2 = h.append(read("app", &["2"]), as_user("bob")).await;
    // Break-glass twice by carol in one window: one alert (subjects: one each, below 2).
    let g1 = h.append(read("app", &["7"]), glass("carol")).await;
    h.append(read("app", &["7"]), glass("carol")).await;
    // One window later alice's next reads alert again.
    let mut later = read("app", &["8", "9"]);
    later.time = Utc::now() + chrono::Duration::seconds(601);
    let a2 = h.append(later, as_user("alice")).await;
    let lines = h.stop().await;
    let summary: Vec<(String, String, Value)> = lines
        .iter()
        .map(|l| {
            (
                l["alert"].as_str().unwrap().to_string(),
                l["end_user"].as_str().unwrap().to_string(),
                l["seqs"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("dedup-bulk".into(), "alice".into(), serde_json::json!([a1])),
            (
                "dedup-bulk".into(),
                "bob".into(),
                serde_json::json!([b1, b2])
            ),
            (
                "dedup-glass".into(),
                "carol".into(),
                serde_json::json!([g1])
            ),
            ("dedup-bulk".into(), "alice".into(), serde_json::json!([a2])),
        ]
    );
    assert_eq!(metric("pgveil_alerts_total{rule=\"dedup-bulk\"}"), 3.0);
    assert_eq!(metric("pgveil_alerts_total{rule=\"dedup-glass\"}"), 1.0);
}

/// Through pgveil and a real cluster: the login is the user (no session context yet).
#[tokio::test(flavor = "multi_thread")]
async fn refusals_and_bulk_reads_through_pgveil_raise_alerts_for_the_login() {
    let am = Alertmanager::start();
    let dir = tempfile::tempdir().unwrap();
    let table = "alert_patients";
    pgveil::crypto::keys::init_key_dir(&dir.path().join("keys")).unwrap();
    cluster().psql(&format!(
        "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id serial PRIMARY KEY, name text, ssn bytea)"
    ));
    let config = format!(
        "{}\n[keys]\nmaster_key_file = \"keys/master.key\"\n\
[audit]\ndir = \"audit\"\nsigning_key_file = \"keys/audit.key\"\n\
[alerts]\nfile = \"alerts.jsonl\"\nalertmanager_url = \"{}\"\n\
[[alert]]\nname = \"e2e-bulk\"\nrule = \"subjects_per_user\"\nthreshold = 3\n\
[[alert]]\nname = \"e2e-refusals\"\nrule = \"refusals_per_user\"\nthreshold = 2\n\
[policy]\ndefault_access = \"plaintext\"\n\
[[table]]\nname = \"{table}\"\nsubject = \"id\"\n\
[[column]]\ntable = \"{table}\"\ncolumn = \"ssn\"\ntype = \"text\"\nencryption = \"deterministic\"\n",
        relay_config(cluster().port, ""),
        am.url()
    );
    let proxy = Proxy::start(&config, dir.path());
    let client = connect(proxy.port()).await;
    let ssns = ["078-05-1120", "219-09-9999", "457-55-5462"];
    let mut ids = Vec::new();
    for ssn in ssns {
        let row = client
            .query_one(
                &format!("INSERT INTO {table} (name, ssn) VALUES ('x', $1) RETURNING id"),
                &[&ssn],
            )
            .await
            .unwrap();
        ids.push(row.get::<_, i32>(0));
    }
    for id in &ids {
        let row = client
            .query_one(&format!("SELECT id, ssn FROM {table} WHERE id = $1"), &[id])
            .await
            .unwrap();
        assert_eq!(row.get::<_, i32>(0), *id);
    }
    for _ in 0..2 {
        let err = client
            .simple_query(&format!("SELECT ssn FROM {table} WHERE ssn LIKE '0%'"))
            .await
            .unwrap_err();
        assert_eq!(err.code().unwrap().code(), "0A000");
    }
    let bulk = eventually("e2e-bulk in Alertmanager", || am.alert_named("e2e-bulk"));
    assert_eq!(bulk["labels"]["login"], SUPERUSER);
    assert!(bulk["labels"].get("end_user").is_none());
    let refusals = eventually("e2e-refusals in Alertmanager", || {
        am.alert_named("e2e-refusals")
    });
    assert_eq!(refusals["labels"]["login"], SUPERUSER);
    let refused_seqs: Vec<u64> = refusals["annotations"]["audit_seqs"]
        .as_str()
        .unwrap()
        .split(',')
        .map(|s| s.parse().unwrap())
        .collect();
    let bulk_seqs: Vec<u64> = bulk["annotations"]["audit_seqs"]
        .as_str()
        .unwrap()
        .split(',')
        .map(|s| s.parse().unwrap())
        .collect();
    drop(client);
    proxy.shutdown();

    // The sequence numbers point at the records that raised each alert.
    let records = pgveil::audit::search(
        &dir.path().join("audit"),
        &pgveil::audit::SearchFilter::default(),
    )
    .unwrap();
    let by_seq = |seq: u64| records.iter().find(|r| r.seq == seq).unwrap();
    assert_eq!(refused_seqs.len(), 2);
    for seq in refused_seqs {
        assert_eq!(by_seq(seq).outcome, Outcome::Refused);
    }
    assert_eq!(bulk_seqs.len(), 3);
    for seq in bulk_seqs {
        let r = by_seq(seq);
        assert_eq!((r.kind, r.outcome), (StatementKind::Select, Outcome::Ok));
    }
    // Neither values nor subject ids in the alerts file.
    let file = std::fs::read_to_string(dir.path().join("alerts.jsonl")).unwrap();
    assert_eq!(file.lines().count(), 2, "{file}");
    for ssn in ssns {
        assert!(!file.contains(ssn));
    }
    // An alert line holds exactly these fields: counts and audit sequence numbers, never
    // the subject ids (here 1, 2, 3, too small to search for in the text).
    for line in file.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "alert",
                "count",
                "end_user",
                "first_seq",
                "last_seq",
                "login",
                "raised_at",
                "rule",
                "seqs",
                "summary",
                "threshold",
                "time",
                "window_secs"
            ]
        );
    }
}
