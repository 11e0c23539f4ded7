//! Test harness: a throwaway PostgreSQL cluster started from the installed server binaries,
//! and pgveil served in-process on a free port.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use pgveil::config::Config;

mod leak;
#[allow(unused_imports)]
pub use leak::{secret, secrets, Tap};

pub const SUPERUSER: &str = "postgres";
pub const PASSWORD: &str = "veil-test-secret";

/// The PostgreSQL binaries: `pg_config --bindir`, else the newest Debian install.
pub fn bindir() -> PathBuf {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return dir;
        }
    }
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    candidates.sort();
    candidates
        .pop()
        .expect("no PostgreSQL server binaries found (install postgresql)")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Runs a PostgreSQL binary, as the `postgres` OS user when we are root (PostgreSQL
/// refuses to run as root).
fn pg_command(program: &Path) -> Command {
    if is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Cluster {
    pub port: u16,
    pub dir: PathBuf,
    /// CA certificate (PEM) that signed the server certificate for `localhost`.
    pub ca_pem: String,
}

static CLUSTERS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Started clusters' ports and log files: pgveil's connections to them are tapped.
static CLUSTER_LOGS: Mutex<Vec<(u16, PathBuf)>> = Mutex::new(Vec::new());

/// The log of the cluster listening on `port`, when the harness started it.
fn cluster_log(port: u16) -> Option<PathBuf> {
    CLUSTER_LOGS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|(p, _)| *p == port)
        .map(|(_, log)| log.clone())
}

/// A tap in front of the harness cluster on `port`, for a pgveil run as its own process.
pub fn tap_to(port: u16) -> Tap {
    let log = cluster_log(port).expect("a cluster started by the harness");
    Tap::start("127.0.0.1", port, log)
}

extern "C" fn stop_clusters() {
    let dirs = CLUSTERS.lock().map(|d| d.clone()).unwrap_or_default();
    for dir in dirs {
        let _ = pg_command(&bindir().join("pg_ctl"))
            .args(["stop", "-m", "immediate", "-w", "-D"])
            .arg(dir.join("data"))
            .output();
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// The cluster shared by the tests of one test binary, stopped when the process exits.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(Cluster::start)
}

impl Cluster {
    pub fn start() -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("pgveil-test-")
            .tempdir()
            .unwrap()
            .keep();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let data = dir.join("data");
        let pwfile = dir.join("pwfile");
        std::fs::write(&pwfile, PASSWORD).unwrap();
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .unwrap();
            assert!(status.success());
        }
        let out = pg_command(&bindir().join("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                SUPERUSER,
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );

        // Every statement is logged, with the client's address and port, so the leak check
        // can attribute each log entry to the connection that sent it.
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .unwrap();
        std::io::Write::write_all(
            &mut conf,
            b"\nlog_statement = 'all'\nlog_line_prefix = '%m [%p] %r '\n",
        )
        .unwrap();
        drop(conf);

        let (ca_pem, cert_pem, key_pem) = make_certs("localhost");
        std::fs::write(data.join("server.crt"), cert_pem).unwrap();
        std::fs::write(data.join("server.key"), key_pem).unwrap();
        std::fs::set_permissions(
            data.join("server.key"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        if is_root() {
            Command::new("chown")
                .args(["postgres:postgres"])
                .arg(data.join("server.crt"))
                .arg(data.join("server.key"))
                .status()
                .unwrap();
        }
        let port = free_port();
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c ssl=on -c fsync=off -c max_connections=200",
            dir.display()
        );
        let out = pg_command(&bindir().join("pg_ctl"))
            .args(["start", "-w", "-t", "60", "-D"])
            .arg(&data)
            .arg("-l")
            .arg(dir.join("server.log"))
            .args(["-o", &options])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        {
            let mut clusters = CLUSTERS.lock().unwrap();
            if clusters.is_empty() {
                // SAFETY: registering a plain extern "C" function with no captured state.
                unsafe { libc::atexit(stop_clusters) };
            }
            clusters.push(dir.clone());
        }
        CLUSTER_LOGS
            .lock()
            .unwrap()
            .push((port, dir.join("server.log")));
        Cluster { port, dir, ca_pem }
    }

    /// Runs SQL directly against the database with psql, as the superuser.
    pub fn psql(&self, sql: &str) -> String {
        psql_at(self.port, SUPERUSER, PASSWORD, sql).expect("psql failed")
    }
}

/// Runs `psql -c sql` against 127.0.0.1:port; Err holds stderr.
pub fn psql_at(port: u16, user: &str, password: &str, sql: &str) -> Result<String, String> {
    let out = Command::new(bindir().join("psql"))
        .args([
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            user,
            "-d",
            "postgres",
            "-c",
            sql,
        ])
        .env("PGPASSWORD", password)
        .env("PGSSLMODE", "disable")
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A certificate authority and a server certificate it signed for `host`.
pub fn make_certs(host: &str) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "pgveil test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(vec![host.to_string(), "127.0.0.1".to_string()]).unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

/// pgveil running in-process on its own runtime thread.
pub struct Proxy {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Between pgveil and a harness cluster: checked for plaintext when the proxy stops.
    tap: Option<Tap>,
}

impl Proxy {
    /// Starts pgveil with `config_toml` (the `[server] listen` is replaced by port 0).
    pub fn start(config_toml: &str, base_dir: &Path) -> Proxy {
        let mut config = Config::parse(config_toml, "test.toml", base_dir)
            .unwrap_or_else(|e| panic!("bad test config: {e}"));
        let tap = cluster_log(config.upstream.port).map(|log| {
            let tap = Tap::start(&config.upstream.host, config.upstream.port, log);
            config.upstream.port = tap.port;
            tap
        });
        let std_listener = StdListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                pgveil::server::serve(listener, std::sync::Arc::new(config), async {
                    let _ = stop_rx.await;
                })
                .await
                .unwrap();
            });
        });
        Proxy {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
            tap,
        }
    }

    /// A plain relay in front of the shared cluster.
    pub fn relay() -> Proxy {
        Proxy::start(&relay_config(cluster().port, ""), Path::new("."))
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Takes the tap out of the proxy, so dropping the proxy checks nothing (for tests of
    /// the leak check itself).
    pub fn take_tap(&mut self) -> Option<Tap> {
        self.tap.take()
    }

    /// Fails the test when a registered plaintext reached the database through this proxy
    /// so far (also checked when the proxy is dropped).
    pub fn assert_no_leaks(&self) {
        if let Some(tap) = &self.tap {
            tap.assert_no_leaks();
        }
    }

    /// Signals shutdown and waits for `serve` to return.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop_and_join();
        if !std::thread::panicking() {
            self.assert_no_leaks();
        }
    }
}

/// A configuration relaying to `upstream_port`, with extra TOML appended to `[server]`.
pub fn relay_config(upstream_port: u16, server_extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_timeout_secs = 5\n{server_extra}\n[upstream]\nhost = \"127.0.0.1\"\nport = {upstream_port}\ntls = \"disable\"\n"
    )
}

/// A libpq-style connection string to pgveil.
pub fn conn_str(port: u16, user: &str, password: &str) -> String {
    format!("host=127.0.0.1 port={port} user={user} password={password} dbname=postgres sslmode=disable connect_timeout=10")
}

/// Connects tokio-postgres through `port`, driving the connection in the background.
pub async fn connect(port: u16) -> tokio_postgres::Client {
    connect_as(port, SUPERUSER, PASSWORD).await.unwrap()
}

pub async fn connect_as(
    port: u16,
    user: &str,
    password: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) =
        tokio_postgres::connect(&conn_str(port, user, password), tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

pub fn wait_for<F: FnMut() -> bool>(mut condition: F, what: &str) {
    for _ in 0..200 {
        if condition() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("timed out waiting for {what}");
}

// ---------------------------------------------------------------------------------------
// Protected configurations, login roles, other clients.

/// One `[[column]]` of a test configuration.
pub fn column_toml(table: &str, column: &str, ty: &str, encryption: &str, extra: &str) -> String {
    format!(
        "[[column]]\ntable = \"{table}\"\ncolumn = \"{column}\"\ntype = \"{ty}\"\nencryption = \"{encryption}\"\n{extra}\n"
    )
}

/// The first five bytes (hex) of every value stored under the master key in `dir/keys`:
/// the envelope version and the key id derived from that key.
pub fn envelope_prefix(dir: &Path) -> String {
    let master =
        pgveil::crypto::MasterKey::load(Some(&dir.join("keys").join("master.key")), None).unwrap();
    format!("01{:08x}", pgveil::crypto::keyring::key_id(&master))
}

/// A configuration for the shared cluster with keys in `dir/keys` (created when missing),
/// `[policy] default_access` and the given `[[column]]`/`[[table]]` sections.
pub fn veil_config(dir: &Path, default_access: &str, columns: &str) -> String {
    let keys = dir.join("keys");
    if !keys.join("master.key").exists() {
        pgveil::crypto::keys::init_key_dir(&keys).unwrap();
    }
    format!(
        "{}\n[keys]\nmaster_key_file = \"keys/master.key\"\n[policy]\ndefault_access = \"{default_access}\"\n{columns}",
        relay_config(cluster().port, "")
    )
}

/// Creates (or recreates) a login role with `PASSWORD` and the given memberships.
pub fn login_role(name: &str, options: &str, member_of: &[&str]) {
    let mut sql = format!(
        "DROP ROLE IF EXISTS {name}; CREATE ROLE {name} LOGIN {options} PASSWORD '{PASSWORD}';"
    );
    for group in member_of {
        sql.push_str(&format!("GRANT {group} TO {name};"));
    }
    cluster().psql(&sql);
}

/// Creates a group role (NOLOGIN) when missing, member of `member_of`.
pub fn group_role(name: &str, member_of: &[&str]) {
    let mut sql = format!(
        "DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{name}') THEN CREATE ROLE {name} NOLOGIN; END IF; END$$;"
    );
    for group in member_of {
        sql.push_str(&format!("GRANT {group} TO {name};"));
    }
    cluster().psql(&sql);
}

/// Runs a psql script (on stdin, so it may be large) through `port` as `user`; quiet,
/// unaligned, tuples only, NULL shown as `<NULL>`, stopping at the first error.
/// Ok: stdout; Err: stderr.
pub fn psql_script(port: u16, user: &str, sql: &str) -> Result<String, String> {
    psql_script_in(port, user, "postgres", sql)
}

/// [`psql_script`] in database `db`.
pub fn psql_script_in(port: u16, user: &str, db: &str, sql: &str) -> Result<String, String> {
    use std::io::Write;
    let mut child = Command::new(bindir().join("psql"))
        .args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-P",
            "null=<NULL>",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            user,
            "-d",
            db,
            "-f",
            "-",
        ])
        .env("PGPASSWORD", PASSWORD)
        .env("PGSSLMODE", "disable")
        .env("PGCONNECT_TIMEOUT", "10")
        .env("PGOPTIONS", "-c TimeZone=UTC")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let script = sql.to_string();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(script.as_bytes());
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The Python interpreter with psycopg 3: `PGVEIL_PYTHON`, else `.venv/bin/python`, created
/// (with psycopg installed) when missing. Panics when psycopg cannot be made to run.
pub fn python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            if let Ok(p) = std::env::var("PGVEIL_PYTHON") {
                return PathBuf::from(p);
            }
            let root = Path::new(env!("CARGO_MANIFEST_DIR"));
            let python = root.join(".venv/bin/python");
            let has_psycopg = |p: &Path| {
                Command::new(p)
                    .args(["-c", "import psycopg"])
                    .status()
                    .is_ok_and(|s| s.success())
            };
            if !has_psycopg(&python) {
                if !python.exists() {
                    let s = Command::new("python3")
                        .args(["-m", "venv"])
                        .arg(root.join(".venv"))
                        .status()
                        .unwrap();
                    assert!(s.success(), "python3 -m venv failed");
                }
                let s = Command::new(root.join(".venv/bin/pip"))
                    .args(["install", "-q", "psycopg[binary]>=3.1"])
                    .status()
                    .unwrap();
                assert!(s.success(), "pip install psycopg failed");
            }
            assert!(has_psycopg(&python), "psycopg does not import");
            python
        })
        .clone()
}

/// Runs `tests/clients/<script>` with the connection string as its first argument; returns
/// stdout, panicking with stderr when it fails.
pub fn run_python(script: &str, port: u16, user: &str, args: &[&str]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients")
        .join(script);
    let out = Command::new(python())
        .arg(path)
        .arg(conn_str(port, user, PASSWORD))
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The SQLSTATE and message of a tokio-postgres error (panics when it has none).
pub fn db_error(e: &tokio_postgres::Error) -> (String, String) {
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("not a database error: {e:?}"));
    (db.code().code().to_string(), db.message().to_string())
}

// ---------------------------------------------------------------------------------------
// A raw protocol client: exact control over Parse/Bind/Describe/Execute/Close/Sync.

/// The login the raw client uses: a superuser allowed in by `trust` from 127.0.0.1.
pub const RAW_USER: &str = "veil_raw";

fn raw_user_ready() {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        let c = cluster();
        c.psql(&format!(
            "DROP ROLE IF EXISTS {RAW_USER}; CREATE ROLE {RAW_USER} LOGIN SUPERUSER"
        ));
        let hba = c.dir.join("data/pg_hba.conf");
        let old = std::fs::read_to_string(&hba).unwrap();
        std::fs::write(
            &hba,
            format!("host all {RAW_USER} 127.0.0.1/32 trust\n{old}"),
        )
        .unwrap();
        c.psql("SELECT pg_reload_conf()");
        std::thread::sleep(Duration::from_millis(300));
    });
}

pub struct Raw {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
}

/// One backend message.
#[derive(Debug, Clone)]
pub struct Msg {
    pub tag: u8,
    pub body: Vec<u8>,
}

impl Msg {
    /// An ErrorResponse field (`b'C'` code, `b'M'` message).
    pub fn field(&self, code: u8) -> Option<String> {
        let mut rest = &self.body[..];
        while let Some((&c, tail)) = rest.split_first() {
            if c == 0 {
                break;
            }
            let end = tail.iter().position(|b| *b == 0)?;
            if c == code {
                return Some(String::from_utf8_lossy(&tail[..end]).into_owned());
            }
            rest = &tail[end + 1..];
        }
        None
    }

    /// DataRow values.
    pub fn values(&self) -> Vec<Option<Vec<u8>>> {
        let b = &self.body;
        let n = i16::from_be_bytes([b[0], b[1]]) as usize;
        let mut at = 2;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let len = i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
            at += 4;
            if len < 0 {
                out.push(None);
            } else {
                out.push(Some(b[at..at + len as usize].to_vec()));
                at += len as usize;
            }
        }
        out
    }

    /// RowDescription: (name, table oid, attnum, type oid, format).
    pub fn fields(&self) -> Vec<(String, u32, i16, u32, i16)> {
        let b = &self.body;
        let n = i16::from_be_bytes([b[0], b[1]]) as usize;
        let mut at = 2;
        let mut out = Vec::new();
        for _ in 0..n {
            let end = at + b[at..].iter().position(|c| *c == 0).unwrap();
            let name = String::from_utf8_lossy(&b[at..end]).into_owned();
            at = end + 1;
            let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
            let table = u32_at(at);
            let attnum = i16::from_be_bytes([b[at + 4], b[at + 5]]);
            let ty = u32_at(at + 6);
            let format = i16::from_be_bytes([b[at + 16], b[at + 17]]);
            at += 18;
            out.push((name, table, attnum, ty, format));
        }
        out
    }

    /// ParameterDescription type OIDs.
    pub fn param_types(&self) -> Vec<u32> {
        let b = &self.body;
        let n = i16::from_be_bytes([b[0], b[1]]) as usize;
        (0..n)
            .map(|i| {
                let at = 2 + 4 * i;
                u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
            })
            .collect()
    }
}

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

impl Raw {
    /// Connects through `port` as [`RAW_USER`] and reads up to the first ReadyForQuery.
    pub async fn connect(port: u16) -> Raw {
        use tokio::io::AsyncWriteExt;
        raw_user_ready();
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let mut body = Vec::new();
        body.extend_from_slice(&196608i32.to_be_bytes());
        for (k, v) in [
            ("user", RAW_USER),
            ("database", "postgres"),
            ("TimeZone", "UTC"),
        ] {
            cstr(&mut body, k);
            cstr(&mut body, v);
        }
        body.push(0);
        let mut startup = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        startup.extend_from_slice(&body);
        stream.write_all(&startup).await.unwrap();
        let mut raw = Raw {
            stream,
            buf: Vec::new(),
        };
        let msgs = raw.until_ready().await;
        assert!(
            !msgs.iter().any(|m| m.tag == b'E'),
            "raw login failed: {:?}",
            msgs.iter().find(|m| m.tag == b'E').map(|m| m.field(b'M'))
        );
        raw
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes).await.unwrap();
    }

    pub async fn recv(&mut self) -> Msg {
        use tokio::io::AsyncReadExt;
        loop {
            if self.buf.len() >= 5 {
                let len = i32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if self.buf.len() > len {
                    let tag = self.buf[0];
                    let body = self.buf[5..1 + len].to_vec();
                    self.buf.drain(..1 + len);
                    return Msg { tag, body };
                }
            }
            let mut chunk = vec![0u8; 65536];
            let n = tokio::time::timeout(Duration::from_secs(20), self.stream.read(&mut chunk))
                .await
                .expect("raw client: no answer within 20 s")
                .unwrap();
            assert!(n > 0, "raw client: connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Everything up to and including ReadyForQuery, without ParameterStatus/Notice.
    pub async fn until_ready(&mut self) -> Vec<Msg> {
        let mut out = Vec::new();
        loop {
            let m = self.recv().await;
            let tag = m.tag;
            if tag != b'S' && tag != b'N' && tag != b'K' && tag != b'R' {
                out.push(m);
            }
            if tag == b'Z' {
                return out;
            }
        }
    }

    pub fn query(sql: &str) -> Vec<u8> {
        let mut b = Vec::new();
        cstr(&mut b, sql);
        frame(b'Q', &b)
    }

    pub fn parse(name: &str, sql: &str, types: &[u32]) -> Vec<u8> {
        let mut b = Vec::new();
        cstr(&mut b, name);
        cstr(&mut b, sql);
        b.extend_from_slice(&(types.len() as i16).to_be_bytes());
        for t in types {
            b.extend_from_slice(&t.to_be_bytes());
        }
        frame(b'P', &b)
    }

    /// Bind with text parameters (`None` = NULL) and one result format for all columns.
    pub fn bind(
        portal: &str,
        statement: &str,
        params: &[Option<&[u8]>],
        formats: &[i16],
        result_format: i16,
    ) -> Vec<u8> {
        let mut b = Vec::new();
        cstr(&mut b, portal);
        cstr(&mut b, statement);
        b.extend_from_slice(&(formats.len() as i16).to_be_bytes());
        for f in formats {
            b.extend_from_slice(&f.to_be_bytes());
        }
        b.extend_from_slice(&(params.len() as i16).to_be_bytes());
        for p in params {
            match p {
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(v) => {
                    b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    b.extend_from_slice(v);
                }
            }
        }
        b.extend_from_slice(&1i16.to_be_bytes());
        b.extend_from_slice(&result_format.to_be_bytes());
        frame(b'B', &b)
    }

    pub fn describe(kind: u8, name: &str) -> Vec<u8> {
        let mut b = vec![kind];
        cstr(&mut b, name);
        frame(b'D', &b)
    }

    pub fn close(kind: u8, name: &str) -> Vec<u8> {
        let mut b = vec![kind];
        cstr(&mut b, name);
        frame(b'C', &b)
    }

    pub fn execute(portal: &str, max_rows: i32) -> Vec<u8> {
        let mut b = Vec::new();
        cstr(&mut b, portal);
        b.extend_from_slice(&max_rows.to_be_bytes());
        frame(b'E', &b)
    }

    pub fn sync() -> Vec<u8> {
        frame(b'S', &[])
    }

    /// Sends the concatenated messages and reads up to ReadyForQuery.
    pub async fn batch(&mut self, messages: &[Vec<u8>]) -> Vec<Msg> {
        let all: Vec<u8> = messages.concat();
        self.send(&all).await;
        self.until_ready().await
    }

    /// A simple query; every message up to ReadyForQuery.
    pub async fn simple(&mut self, sql: &str) -> Vec<Msg> {
        self.batch(&[Raw::query(sql)]).await
    }
}

/// The tags of a message list, as a string (`"12TDCZ"`).
pub fn tags(msgs: &[Msg]) -> String {
    msgs.iter().map(|m| m.tag as char).collect()
}

// ---------------------------------------------------------------------------------------
// A second cluster for TLS on both legs and `auth = "scram"`: logins over TLS only.

/// `pg_hba.conf` of [`tls_cluster`]: the superuser (for the harness) as usual; every other
/// login over TLS only, by password (`md5` lets SCRAM verifiers use SCRAM and md5 ones md5);
/// `veil_cert` by client certificate, `veil_trust` and `veil_nopass` by trust.
pub const TLS_HBA: &str = "\
host      all postgres    127.0.0.1/32 scram-sha-256
hostssl   all veil_cert   127.0.0.1/32 cert
hostssl   all veil_trust  127.0.0.1/32 trust
hostssl   all veil_nopass 127.0.0.1/32 trust
hostssl   all all         127.0.0.1/32 md5
hostnossl all all         127.0.0.1/32 reject
";

/// The cluster for TLS-on-both-legs tests (ssl on, the lines of [`TLS_HBA`]), shared by the
/// tests of one binary; the plain [`cluster`] stays as it is.
pub fn tls_cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| Cluster::start_with_hba(TLS_HBA))
}

impl Cluster {
    /// [`Cluster::start`], then `pg_hba.conf` replaced by `hba` and reloaded, with the test
    /// CA as `ssl_ca_file` (which `cert` lines need).
    pub fn start_with_hba(hba: &str) -> Cluster {
        let cluster = Cluster::start();
        let data = cluster.dir.join("data");
        std::fs::write(data.join("root.crt"), &cluster.ca_pem).unwrap();
        std::fs::write(data.join("pg_hba.conf"), hba).unwrap();
        cluster.psql("ALTER SYSTEM SET ssl_ca_file = 'root.crt'");
        cluster.psql("SELECT pg_reload_conf()");
        wait_for(
            || {
                cluster
                    .psql("SELECT count(*) FROM pg_hba_file_rules WHERE error IS NULL AND auth_method = 'cert'")
                    .trim()
                    == "1"
            },
            "pg_hba.conf to load",
        );
        std::thread::sleep(Duration::from_millis(200));
        cluster
    }
}

/// The value of one sample line of a Prometheus text page (0 when absent).
pub fn sample(page: &str, name: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

pub async fn metrics_page(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// The audit records (not checkpoints) in the log under `dir/audit`, in order: each segment's
/// content up to its zero-filled tail, complete lines only (a final line cut short by a
/// crash is not a record).
pub fn audit_records(dir: &Path) -> Vec<serde_json::Value> {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir.join("audit"))
        .map(|entries| entries.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    segments.retain(|p| p.extension().is_some_and(|x| x == "jsonl"));
    segments.sort();
    let mut out = Vec::new();
    for segment in segments {
        let text = std::fs::read_to_string(segment).unwrap();
        let content = text.split('\0').next().unwrap_or_default();
        let complete = &content[..content.rfind('\n').map_or(0, |i| i + 1)];
        for line in complete.lines() {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            if value.get("seq").is_some() && value.get("checkpoint").is_none() {
                out.push(value);
            }
        }
    }
    out
}

/// pgveil's `auth_user` and the SECURITY DEFINER lookup function README recommends
/// ("SCRAM termination") instead of granting `pg_shadow`: `pgveil.lookup($1)`.
pub fn auth_lookup_sql(auth_password: &str) -> String {
    format!(
        "CREATE ROLE pgveil_auth LOGIN PASSWORD '{auth_password}';
         CREATE SCHEMA pgveil;
         CREATE FUNCTION pgveil.lookup(p_user text) RETURNS TABLE (usename name, passwd text)
           LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
           AS $$ SELECT usename, passwd FROM pg_catalog.pg_shadow WHERE usename = p_user $$;
         REVOKE ALL ON FUNCTION pgveil.lookup(text) FROM PUBLIC;
         GRANT USAGE ON SCHEMA pgveil TO pgveil_auth;
         GRANT EXECUTE ON FUNCTION pgveil.lookup(text) TO pgveil_auth"
    )
}
