//! Every test is a leak test: pgveil's upstream traffic passes through a tap that records
//! every byte pgveil sends to PostgreSQL, and PostgreSQL logs every statement
//! (`log_statement = all`). Tests register the plaintext values of protected columns they use
//! with [`secret`]; when a [`super::Proxy`] is dropped, a registered value found in what its
//! tap saw, or in a log entry of one of its upstream connections, fails the test.
//!
//! Values are looked for as their bytes and as lower-case hex (a plaintext smuggled in as a
//! `bytea` literal or binary parameter shows as hex in the log).

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Bytes recorded per tap before older traffic is scanned and dropped.
const KEEP_BYTES: usize = 8 << 20;

static SECRETS: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// Registers `value` as a plaintext that must never reach the database through pgveil.
/// Use distinctive values (short or common ones would be found by chance in ciphertext).
pub fn secret(value: impl AsRef<[u8]>) {
    let value = value.as_ref();
    assert!(
        value.len() >= 6,
        "a registered secret must be at least 6 bytes long to be distinctive"
    );
    let mut secrets = SECRETS.lock().unwrap_or_else(|e| e.into_inner());
    if !secrets.iter().any(|s| s == value) {
        secrets.push(value.to_vec());
    }
}

/// Registers several values with [`secret`].
pub fn secrets<I, V>(values: I)
where
    I: IntoIterator<Item = V>,
    V: AsRef<[u8]>,
{
    for value in values {
        secret(value);
    }
}

fn registered() -> Vec<Vec<u8>> {
    SECRETS.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// The forms in which a registered value would show (itself and its lower-case hex), in one
/// automaton: a test registers hundreds of values and a tap sees megabytes, so one pass over
/// the bytes rather than one per value.
struct Needles {
    names: Vec<String>,
    longest: usize,
    automaton: Option<aho_corasick::AhoCorasick>,
}

impl Needles {
    fn registered() -> Needles {
        let mut names = Vec::new();
        let mut patterns = Vec::new();
        for value in registered() {
            let shown = String::from_utf8_lossy(&value).into_owned();
            patterns.push(hex::encode(&value).into_bytes());
            names.push(format!("{shown} (as hex)"));
            patterns.push(value);
            names.push(shown);
        }
        let longest = patterns.iter().map(Vec::len).max().unwrap_or(0);
        let automaton = aho_corasick::AhoCorasick::new(&patterns).ok();
        Needles {
            names,
            longest,
            automaton,
        }
    }

    /// The names of the registered values found in `hay`.
    fn found_in(&self, hay: &[u8]) -> Vec<&str> {
        let Some(automaton) = &self.automaton else {
            return Vec::new();
        };
        let mut ids: Vec<usize> = automaton
            .find_overlapping_iter(hay)
            .map(|m| m.pattern().as_usize())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids.into_iter().map(|id| self.names[id].as_str()).collect()
    }
}

#[derive(Default)]
struct Seen {
    bytes: Vec<u8>,
    /// Findings in traffic already dropped from `bytes`.
    found: Vec<String>,
    /// Local ports of the tap's connections to PostgreSQL (PostgreSQL logs them with `%r`).
    upstream_ports: HashSet<u16>,
}

/// A TCP forwarder between pgveil and PostgreSQL that records what pgveil sends.
pub struct Tap {
    pub port: u16,
    seen: Arc<Mutex<Seen>>,
    log: PathBuf,
}

impl Tap {
    /// Listens on a free port of 127.0.0.1 and forwards each connection to `upstream_port`.
    pub fn start(upstream_host: &str, upstream_port: u16, log: PathBuf) -> Tap {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let record = seen.clone();
        let host = upstream_host.to_string();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect((host.as_str(), upstream_port)) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                if let Ok(local) = server.local_addr() {
                    lock(&record).upstream_ports.insert(local.port());
                }
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                forward(client, server, record.clone());
            }
        });
        Tap { port, seen, log }
    }

    /// Panics when a registered value reached PostgreSQL through this tap or its log.
    pub fn assert_no_leaks(&self) {
        let needles = Needles::registered();
        let seen = lock(&self.seen);
        let mut found = seen.found.clone();
        for name in needles.found_in(&seen.bytes) {
            found.push(format!("sent upstream: {name}"));
        }
        for entry in log_entries(&self.log, &seen.upstream_ports) {
            for name in needles.found_in(entry.as_bytes()) {
                found.push(format!("in the database log: {name}: {entry}"));
            }
        }
        assert!(
            found.is_empty(),
            "plaintext of a protected column reached the database:\n{}",
            found.join("\n")
        );
    }
}

fn lock(seen: &Mutex<Seen>) -> std::sync::MutexGuard<'_, Seen> {
    seen.lock().unwrap_or_else(|e| e.into_inner())
}

/// Copies both directions; what goes upstream is recorded.
fn forward(client: TcpStream, server: TcpStream, seen: Arc<Mutex<Seen>>) {
    let (Ok(mut client_read), Ok(mut server_write)) = (client.try_clone(), server.try_clone())
    else {
        return;
    };
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match client_read.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            record(&seen, &buf[..n]);
            if server_write.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = server_write.shutdown(Shutdown::Write);
    });
    let (mut server_read, mut client_write) = (server, client);
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut server_read, &mut client_write);
        let _ = client_write.shutdown(Shutdown::Write);
    });
}

fn record(seen: &Mutex<Seen>, bytes: &[u8]) {
    let mut seen = lock(seen);
    seen.bytes.extend_from_slice(bytes);
    if seen.bytes.len() > KEEP_BYTES {
        // Scan what is about to be dropped, keeping an overlap for values split across
        // the cut.
        let needles = Needles::registered();
        let cut = seen.bytes.len() - needles.longest.min(seen.bytes.len());
        let found: Vec<String> = needles
            .found_in(&seen.bytes)
            .into_iter()
            .map(|name| format!("sent upstream: {name}"))
            .collect();
        seen.found.extend(found);
        seen.bytes.drain(..cut);
    }
}

/// The database log's entries (a prefixed line and its continuation lines) written by
/// connections from the given local ports. The harness sets
/// `log_line_prefix = '%m [%p] %r '`, so an entry starts with a time stamp and shows the
/// client as `127.0.0.1(port)`.
fn log_entries(log: &PathBuf, ports: &HashSet<u16>) -> Vec<String> {
    let text = std::fs::read(log).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let mut entries = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let starts_entry = line.len() > 4
            && line.as_bytes()[..4].iter().all(u8::is_ascii_digit)
            && line.as_bytes()[4] == b'-';
        if starts_entry {
            if let Some(entry) = current.take() {
                entries.push(entry);
            }
            current = entry_port(line)
                .filter(|p| ports.contains(p))
                .map(|_| line.to_string());
        } else if let Some(entry) = current.as_mut() {
            entry.push('\n');
            entry.push_str(line);
        }
    }
    entries.extend(current);
    entries
}

fn entry_port(line: &str) -> Option<u16> {
    let start = line.find("127.0.0.1(")? + "127.0.0.1(".len();
    let end = line[start..].find(')')? + start;
    line[start..end].parse().ok()
}
