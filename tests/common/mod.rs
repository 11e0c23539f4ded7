//! Test harness: a throwaway PostgreSQL cluster started from the installed server binaries,
//! and pgveil served in-process on a free port.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use pgveil::config::Config;

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
}

impl Proxy {
    /// Starts pgveil with `config_toml` (the `[server] listen` is replaced by port 0).
    pub fn start(config_toml: &str, base_dir: &Path) -> Proxy {
        let config = Config::parse(config_toml, "test.toml", base_dir)
            .unwrap_or_else(|e| panic!("bad test config: {e}"));
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
        }
    }

    /// A plain relay in front of the shared cluster.
    pub fn relay() -> Proxy {
        Proxy::start(&relay_config(cluster().port, ""), Path::new("."))
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
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
