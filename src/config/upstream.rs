//! `[upstream]`: where the database is, how pgveil logs in to it, and which of its
//! connections are kept for the next client (DESIGN.md "Configuration", README "SCRAM
//! termination" and "Server connection reuse").

use std::path::PathBuf;
use std::time::Duration;

use super::{Section, Walker};

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub host: String,
    pub port: u16,
    pub tls: UpstreamTls,
    pub ca_file: Option<PathBuf>,
    pub auth: AuthMode,
    pub auth_user: Option<String>,
    pub auth_query: String,
    /// Where `auth_query` runs; `None`: in the database the client asks for (PgBouncer's
    /// default).
    pub auth_dbname: Option<String>,
    /// How long an `auth_query` answer is reused (`auth_cache_secs`); zero: not at all.
    pub auth_cache_ttl: Duration,
    pub connect_timeout: Duration,
    /// With `auth = "scram"`: database connections kept for the next client of the same login.
    pub reuse: ServerReuse,
}

/// `[upstream] server_reuse` and its limits (README, "Server connection reuse").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerReuse {
    /// `server_reuse`: keep connections at all.
    pub enabled: bool,
    /// `server_idle_timeout_secs`: an unused connection is closed after this long.
    pub idle_timeout: Duration,
    /// `server_lifetime_secs`: a connection is not reused once this old.
    pub lifetime: Duration,
    /// `server_max_idle`: connections kept at most, all logins together.
    pub max_idle: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamTls {
    Disable,
    Prefer,
    Require,
    VerifyFull,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    Passthrough,
    Scram,
}

impl Walker<'_> {
    pub(super) fn upstream(&mut self, s: &mut Section<'_>) -> UpstreamConfig {
        let host = self
            .opt_str(s, "host")
            .unwrap_or_else(|| "127.0.0.1".into());
        let port = self.opt_int(s, "port", 1, 65535).map_or(5432, |p| p as u16);
        let tls = match self
            .opt_choice(s, "tls", &["disable", "prefer", "require", "verify-full"])
            .as_deref()
        {
            Some("disable") => UpstreamTls::Disable,
            Some("require") => UpstreamTls::Require,
            Some("verify-full") => UpstreamTls::VerifyFull,
            _ => UpstreamTls::Prefer,
        };
        let ca_file = self.opt_str(s, "ca_file").map(|p| self.path(&p));
        if tls == UpstreamTls::VerifyFull && ca_file.is_none() {
            let span = self.span_of(s, "tls");
            self.problem(span, "[upstream] tls = \"verify-full\" needs ca_file");
        }
        let auth = match self
            .opt_choice(s, "auth", &["passthrough", "scram"])
            .as_deref()
        {
            Some("scram") => AuthMode::Scram,
            _ => AuthMode::Passthrough,
        };
        let auth_user = self.opt_str(s, "auth_user");
        if auth == AuthMode::Scram && auth_user.is_none() {
            let span = self.span_of(s, "auth");
            self.problem(span, "[upstream] auth = \"scram\" needs auth_user");
        }
        let auth_query = self
            .opt_str(s, "auth_query")
            .unwrap_or_else(|| "SELECT usename, passwd FROM pg_shadow WHERE usename = $1".into());
        if auth == AuthMode::Scram && !auth_query.contains("$1") {
            let span = self.span_of(s, "auth_query");
            self.problem(span, "[upstream] auth_query must take the user name as $1");
        }
        if auth == AuthMode::Scram
            && auth_user
                .as_deref()
                .is_some_and(|u| u.is_empty() || u.contains('\0'))
        {
            let span = self.span_of(s, "auth_user");
            self.problem(span, "[upstream] auth_user must be a role name");
        }
        let auth_dbname = self.opt_str(s, "auth_dbname");
        let auth_cache_ttl = self
            .opt_int(s, "auth_cache_secs", 0, 3600)
            .map_or(Duration::from_secs(30), |v| Duration::from_secs(v as u64));
        let connect_timeout = self
            .opt_int(s, "connect_timeout_secs", 1, 3600)
            .map_or(Duration::from_secs(10), |v| Duration::from_secs(v as u64));
        let reuse = self.server_reuse(s);
        UpstreamConfig {
            host,
            port,
            tls,
            ca_file,
            auth,
            auth_user,
            auth_query,
            auth_dbname,
            auth_cache_ttl,
            connect_timeout,
            reuse,
        }
    }

    fn server_reuse(&mut self, s: &mut Section<'_>) -> ServerReuse {
        let secs =
            |v: Option<i64>, default: u64| Duration::from_secs(v.map_or(default, |v| v as u64));
        ServerReuse {
            enabled: self.opt_bool(s, "server_reuse").unwrap_or(true),
            idle_timeout: secs(self.opt_int(s, "server_idle_timeout_secs", 1, 86_400), 60),
            lifetime: secs(self.opt_int(s, "server_lifetime_secs", 1, 604_800), 3600),
            max_idle: self
                .opt_int(s, "server_max_idle", 0, 10_000)
                .map_or(20, |v| v as usize),
        }
    }
}
