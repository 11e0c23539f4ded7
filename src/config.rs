//! The configuration file (DESIGN.md "Configuration").
//!
//! The file is walked key by key over a span-keeping TOML document instead of being handed to
//! serde, so that `pgveil check` can report every problem at once, each with its line and
//! column, rather than stopping at the first.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml_edit::{ImDocument, TableLike};

use crate::crypto::hsm::Pkcs11Config;
use crate::policy::mask::MaskKind;
use crate::policy::Access;
use crate::schema::{EncryptionMode, LogicalType, ProtectedColumn, TableName};

mod alerts;
mod context;
mod keys;
mod upstream;

pub use alerts::{
    AlertRule, AlertRuleKind, AlertmanagerUrl, AlertsConfig, HoursRange, DEFAULT_ALERT_WINDOW,
};
pub use context::{ContextConfig, DEFAULT_MAX_TOKEN_LIFETIME};
pub use upstream::{AuthMode, ServerReuse, UpstreamConfig, UpstreamTls};

pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 1 << 30;

#[derive(Debug, Clone)]
pub struct Config {
    /// Directory of the configuration file; relative paths are resolved against it.
    pub base_dir: PathBuf,
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub keys: KeysConfig,
    /// `None` when the file has no `[audit]` section: nothing is audited.
    pub audit: Option<AuditConfig>,
    pub policy: PolicyConfig,
    pub tables: Vec<TableConfig>,
    pub columns: Vec<ColumnConfig>,
    /// `[context]`: who and why.
    pub context: ContextConfig,
    /// `[alerts]`: where alerts go.
    pub alerts: AlertsConfig,
    /// `[[alert]]` rules.
    pub alert_rules: Vec<AlertRule>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: String,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub require_tls: bool,
    pub metrics_listen: Option<String>,
    pub log_format: LogFormat,
    pub log_level: String,
    pub max_message_size: usize,
    pub shutdown_timeout: Duration,
    /// Session threads; `None`: one per CPU (`server::default_workers`).
    pub workers: Option<usize>,
    /// Where `serve` writes its process id and `reload` reads it. Default: `pgveil.pid`
    /// beside the configuration file.
    pub pid_file: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone, Default)]
pub struct KeysConfig {
    pub master_key_file: Option<PathBuf>,
    /// Earlier master keys, decrypt only (after `pgveil keys rotate`).
    pub previous_master_key_files: Vec<PathBuf>,
    /// The master key in a PKCS#11 token instead of `master_key_file`.
    pub pkcs11: Option<Pkcs11Config>,
}

#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub dir: PathBuf,
    pub scope: AuditScope,
    pub signing_key_file: PathBuf,
    pub segment_max_bytes: u64,
    pub checkpoint_every: u64,
    pub checkpoint_interval: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditScope {
    Protected,
    All,
}

#[derive(Debug, Clone)]
pub struct PolicyConfig {
    pub default_access: Access,
    /// Reads of protected columns need a declared purpose of use.
    pub require_purpose: bool,
    /// Roles that may raise their access to plaintext in an emergency (break-glass).
    /// Role names are not checked here: a role that does not exist grants nothing.
    pub break_glass_roles: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct TableConfig {
    pub name: TableName,
    pub subject: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ColumnConfig {
    pub column: ProtectedColumn,
    /// Role name → access, as written.
    pub access: BTreeMap<String, Access>,
}

/// One problem found in a configuration file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub location: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

impl ConfigError {
    /// Every problem as its own line, for `pgveil check`.
    pub fn lines(&self) -> Vec<String> {
        match self {
            Self::Read { .. } => vec![self.to_string()],
            Self::Invalid(problems) => problems.iter().map(ToString::to_string).collect(),
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base_dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        Self::parse(&text, &path.display().to_string(), &base_dir)
    }

    /// Parses configuration text; `origin` names the file in problem locations.
    pub fn parse(text: &str, origin: &str, base_dir: &Path) -> Result<Self, ConfigError> {
        let doc = ImDocument::parse(text).map_err(|e| {
            let at = e
                .span()
                .map_or_else(|| origin.to_string(), |s| locate(origin, text, s.start));
            ConfigError::Invalid(vec![Problem {
                location: at,
                message: e.message().trim().to_string(),
            }])
        })?;
        let mut walker = Walker {
            origin,
            text,
            problems: Vec::new(),
            base_dir,
        };
        let config = walker.document(doc.as_table());
        if walker.problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(walker.problems))
        }
    }

    pub fn protected_columns(&self) -> Vec<ProtectedColumn> {
        self.columns.iter().map(|c| c.column.clone()).collect()
    }

    /// Who may see what (and `[policy]`'s context rules), as a reload hands it to open
    /// sessions.
    pub fn access_policy(&self) -> crate::policy::Policy {
        crate::policy::Policy::new(
            self.columns
                .iter()
                .map(|c| (c.column.qualified_name(), c.access.clone()))
                .collect(),
            self.policy.default_access,
        )
        .with_context_rules(self.policy.require_purpose, &self.policy.break_glass_roles)
    }

    pub fn subjects(&self) -> HashMap<TableName, String> {
        self.tables
            .iter()
            .filter_map(|t| t.subject.clone().map(|s| (t.name.clone(), s)))
            .collect()
    }

    /// `host:port` of the upstream database.
    pub fn upstream_addr(&self) -> String {
        format!("{}:{}", self.upstream.host, self.upstream.port)
    }
}

fn locate(origin: &str, text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("{origin}:{line}:{column}")
}

struct Walker<'a> {
    origin: &'a str,
    text: &'a str,
    base_dir: &'a Path,
    problems: Vec<Problem>,
}

/// Reads one TOML table, remembering which keys were consumed so the rest can be reported.
struct Section<'t> {
    name: String,
    table: &'t dyn TableLike,
    span: Option<Range<usize>>,
    seen: HashSet<&'static str>,
}

impl Walker<'_> {
    fn problem(&mut self, span: Option<Range<usize>>, message: impl Into<String>) {
        let location = match span {
            Some(span) => locate(self.origin, self.text, span.start),
            None => self.origin.to_string(),
        };
        self.problems.push(Problem {
            location,
            message: message.into(),
        });
    }

    fn path(&self, raw: &str) -> PathBuf {
        let path = PathBuf::from(raw);
        if path.is_absolute() {
            path
        } else {
            self.base_dir.join(path)
        }
    }

    fn document(&mut self, root: &toml_edit::Table) -> Config {
        let mut top = Section {
            name: String::new(),
            table: root,
            span: None,
            seen: HashSet::new(),
        };
        let server = self.sub_table(&mut top, "server").map(|mut s| {
            let c = self.server(&mut s);
            self.finish(s);
            c
        });
        let upstream = self.sub_table(&mut top, "upstream").map(|mut s| {
            let c = self.upstream(&mut s);
            self.finish(s);
            c
        });
        let keys = self.sub_table(&mut top, "keys").map(|mut s| {
            let c = self.keys(&mut s);
            self.finish(s);
            c
        });
        let audit = self.sub_table(&mut top, "audit").map(|mut s| {
            let c = self.audit(&mut s);
            self.finish(s);
            c
        });
        let policy = self.sub_table(&mut top, "policy").map(|mut s| {
            let c = self.policy(&mut s);
            self.finish(s);
            c
        });
        let context = self.sub_table(&mut top, "context").map(|mut s| {
            let c = self.context(&mut s);
            self.finish(s);
            c
        });
        let alerts = self.sub_table(&mut top, "alerts").map(|mut s| {
            let c = self.alerts(&mut s);
            self.finish(s);
            c
        });
        let alert_entries = self.array_of_tables(&mut top, "alert", Self::alert_rule);
        let alert_count = alert_entries.len();
        let alert_rules: Vec<AlertRule> = alert_entries.into_iter().flatten().collect();
        let tables = self.array_of_tables(&mut top, "table", Self::table);
        let columns = self.array_of_tables(&mut top, "column", Self::column);
        self.finish(top);
        self.check_alert_rules(&alert_rules, alert_count, audit.is_some());

        let mut config = Config {
            base_dir: self.base_dir.to_path_buf(),
            server: server.unwrap_or_else(|| self.server(&mut empty_section("server"))),
            upstream: upstream.unwrap_or_else(|| self.upstream(&mut empty_section("upstream"))),
            keys: keys.unwrap_or_default(),
            audit,
            policy: policy.unwrap_or(PolicyConfig {
                default_access: Access::Deny,
                require_purpose: false,
                break_glass_roles: Vec::new(),
            }),
            tables: tables.into_iter().flatten().collect(),
            columns: Vec::new(),
            context: context.unwrap_or_default(),
            alerts: alerts.unwrap_or_default(),
            alert_rules,
        };
        config.columns = self.cross_check(&config, columns);
        config
    }

    /// Checks that need more than one entry: duplicates, domains, table rules.
    fn cross_check(
        &mut self,
        config: &Config,
        columns: Vec<Option<(ColumnConfig, Option<Range<usize>>)>>,
    ) -> Vec<ColumnConfig> {
        let mut seen_tables = HashSet::new();
        for table in &config.tables {
            if !seen_tables.insert(table.name.clone()) {
                self.problem(None, format!("[[table]] {} is listed twice", table.name));
            }
        }
        let mut seen = HashSet::new();
        let mut domains: HashMap<String, (LogicalType, String)> = HashMap::new();
        let mut out = Vec::new();
        for (column, span) in columns.into_iter().flatten() {
            let col = &column.column;
            let name = col.qualified_name();
            if !seen.insert((col.table.clone(), col.column.clone())) {
                self.problem(span.clone(), format!("[[column]] {name} is listed twice"));
            }
            if let Some(domain) = &col.domain {
                let family = text_family(col.logical_type);
                match domains.get(domain) {
                    Some((ty, first)) if *ty != family => self.problem(
                        span.clone(),
                        format!(
                            "[[column]] {name}: domain \"{domain}\" mixes type {} with {} of {first}",
                            col.logical_type, ty
                        ),
                    ),
                    Some(_) => {}
                    None => {
                        domains.insert(domain.clone(), (family, name.clone()));
                    }
                }
            }
            out.push(column);
        }
        let needs_key = !out.is_empty();
        if needs_key
            && config.keys.master_key_file.is_none()
            && config.keys.pkcs11.is_none()
            && std::env::var_os("PGVEIL_MASTER_KEY").is_none()
        {
            self.problem(
                None,
                "[keys]: columns are configured but neither master_key_file, pkcs11 nor the environment variable PGVEIL_MASTER_KEY is set",
            );
        }
        for table in &config.tables {
            if table.subject.is_none() {
                continue;
            }
            if !out.iter().any(|c| c.column.table == table.name) {
                tracing::debug!(table = %table.name, "subject table has no protected column");
            }
        }
        out
    }

    fn server(&mut self, s: &mut Section<'_>) -> ServerConfig {
        let listen = self
            .opt_str(s, "listen")
            .unwrap_or_else(|| "127.0.0.1:6432".into());
        if listen.parse::<SocketAddr>().is_err() {
            let span = self.span_of(s, "listen");
            self.problem(
                span,
                format!("[server] listen: \"{listen}\" is not an address:port"),
            );
        }
        let tls_cert = self.opt_str(s, "tls_cert").map(|p| self.path(&p));
        let tls_key = self.opt_str(s, "tls_key").map(|p| self.path(&p));
        if tls_cert.is_some() != tls_key.is_some() {
            self.problem(
                s.span.clone(),
                "[server]: tls_cert and tls_key must be set together",
            );
        }
        let require_tls = self.opt_bool(s, "require_tls").unwrap_or(false);
        if require_tls && tls_cert.is_none() {
            self.problem(
                s.span.clone(),
                "[server]: require_tls needs tls_cert and tls_key",
            );
        }
        let metrics_listen = self.opt_str(s, "metrics_listen");
        if let Some(addr) = &metrics_listen {
            if addr.parse::<SocketAddr>().is_err() {
                let span = self.span_of(s, "metrics_listen");
                self.problem(
                    span,
                    format!("[server] metrics_listen: \"{addr}\" is not an address:port"),
                );
            }
        }
        let log_format = match self
            .opt_choice(s, "log_format", &["human", "json"])
            .as_deref()
        {
            Some("json") => LogFormat::Json,
            _ => LogFormat::Human,
        };
        let log_level = self
            .opt_str(s, "log_level")
            .unwrap_or_else(|| "info".into());
        let max_message_size = self
            .opt_int(s, "max_message_size", 1024, i64::from(u32::MAX >> 1))
            .map_or(DEFAULT_MAX_MESSAGE_SIZE, |v| v as usize);
        let shutdown_timeout = self
            .opt_int(s, "shutdown_timeout_secs", 0, 86_400)
            .map_or(Duration::from_secs(30), |v| Duration::from_secs(v as u64));
        let workers = self.opt_int(s, "workers", 1, 1024).map(|v| v as usize);
        let pid_file = self
            .opt_str(s, "pid_file")
            .map_or_else(|| self.base_dir.join("pgveil.pid"), |p| self.path(&p));
        ServerConfig {
            workers,
            pid_file,
            listen,
            tls_cert,
            tls_key,
            require_tls,
            metrics_listen,
            log_format,
            log_level,
            max_message_size,
            shutdown_timeout,
        }
    }

    fn keys(&mut self, s: &mut Section<'_>) -> KeysConfig {
        let master_key_file = self.opt_str(s, "master_key_file").map(|p| self.path(&p));
        let previous_master_key_files = self
            .opt_str_array(s, "previous_master_key_files")
            .into_iter()
            .map(|p| self.path(&p))
            .collect();
        let pkcs11 = self.sub_table(s, "pkcs11").and_then(|mut t| {
            t.name = "[keys] pkcs11".into();
            let module = self.req_str(&mut t, "module").map(|p| self.path(&p));
            let token = self.req_str(&mut t, "token");
            let key_label = self.req_str(&mut t, "key_label");
            let pin_env = self.req_str(&mut t, "pin_env");
            let previous_key_labels = self.opt_str_array(&mut t, "previous_key_labels");
            for (key, value) in [
                ("token", &token),
                ("key_label", &key_label),
                ("pin_env", &pin_env),
            ] {
                if value.as_deref() == Some("") {
                    let span = self.span_of(&t, key);
                    self.problem(span, format!("[keys] pkcs11 {key}: must not be empty"));
                }
            }
            self.finish(t);
            Some(Pkcs11Config {
                module: module?,
                token: token?,
                key_label: key_label?,
                pin_env: pin_env?,
                previous_key_labels,
            })
        });
        if pkcs11.is_some() && master_key_file.is_some() {
            let span = self.span_of(s, "pkcs11");
            self.problem(
                span,
                "[keys]: set either master_key_file or pkcs11, not both",
            );
        }
        KeysConfig {
            master_key_file,
            previous_master_key_files,
            pkcs11,
        }
    }

    fn audit(&mut self, s: &mut Section<'_>) -> AuditConfig {
        let dir_raw = self.opt_str(s, "dir").unwrap_or_else(|| "audit".into());
        let dir = self.path(&dir_raw);
        let scope = match self
            .opt_choice(s, "scope", &["protected", "all"])
            .as_deref()
        {
            Some("all") => AuditScope::All,
            _ => AuditScope::Protected,
        };
        let signing_key_file = match self.opt_str(s, "signing_key_file") {
            Some(p) => self.path(&p),
            None => {
                self.problem(s.span.clone(), "[audit]: signing_key_file is required");
                PathBuf::new()
            }
        };
        let segment_max_bytes = self
            .opt_int(s, "segment_max_bytes", 4096, i64::MAX)
            .map_or(64 << 20, |v| v as u64);
        let checkpoint_every = self
            .opt_int(s, "checkpoint_every", 1, i64::MAX)
            .map_or(1000, |v| v as u64);
        let checkpoint_interval = self
            .opt_int(s, "checkpoint_interval_secs", 1, 86_400)
            .map_or(Duration::from_secs(10), |v| Duration::from_secs(v as u64));
        AuditConfig {
            dir,
            scope,
            signing_key_file,
            segment_max_bytes,
            checkpoint_every,
            checkpoint_interval,
        }
    }

    fn policy(&mut self, s: &mut Section<'_>) -> PolicyConfig {
        let default_access = match self.opt_str(s, "default_access") {
            None => Access::Deny,
            Some(text) => match Access::parse(&text) {
                Some(
                    access @ (Access::Mask(MaskKind::Null) | Access::Deny | Access::Plaintext),
                ) => access,
                Some(Access::Mask(kind)) => {
                    // A type-specific mask cannot be the default for every column type.
                    let span = self.span_of(s, "default_access");
                    self.problem(
                        span,
                        format!("[policy] default_access: mask:{} does not apply to every type; use deny, plaintext or mask:null", kind.name()),
                    );
                    Access::Deny
                }
                None => {
                    let span = self.span_of(s, "default_access");
                    self.problem(span, format!("[policy] default_access: unknown access \"{text}\" (expected plaintext, deny or mask:KIND)"));
                    Access::Deny
                }
            },
        };
        let require_purpose = self.opt_bool(s, "require_purpose").unwrap_or(false);
        let break_glass_roles = self.opt_str_list(s, "break_glass_roles");
        PolicyConfig {
            default_access,
            require_purpose,
            break_glass_roles,
        }
    }

    fn table(&mut self, s: &mut Section<'_>) -> Option<TableConfig> {
        let raw = self.req_str(s, "name")?;
        let Some(name) = TableName::parse(&raw) else {
            let span = self.span_of(s, "name");
            self.problem(
                span,
                format!(
                    "{}: \"{raw}\" is not a table name (table or schema.table)",
                    s.name
                ),
            );
            return None;
        };
        let subject = self.opt_str(s, "subject");
        Some(TableConfig { name, subject })
    }

    fn column(&mut self, s: &mut Section<'_>) -> Option<(ColumnConfig, Option<Range<usize>>)> {
        let table_raw = self.req_str(s, "table");
        let column = self.req_str(s, "column");
        let type_raw = self.req_str(s, "type");
        let mode_raw = self.req_str(s, "encryption");
        let domain = self.opt_str(s, "domain");
        let table = table_raw.as_deref().and_then(|raw| {
            let parsed = TableName::parse(raw);
            if parsed.is_none() {
                let span = self.span_of(s, "table");
                self.problem(span, format!("{}: \"{raw}\" is not a table name", s.name));
            }
            parsed
        });
        let label = match (&table, &column) {
            (Some(t), Some(c)) => format!("[[column]] {t}.{c}"),
            _ => s.name.clone(),
        };
        let logical_type = type_raw.as_deref().and_then(|raw| {
            let parsed = LogicalType::from_name(raw);
            if parsed.is_none() {
                let span = self.span_of(s, "type");
                let known: Vec<_> = LogicalType::ALL.iter().map(|t| t.name()).collect();
                self.problem(
                    span,
                    format!(
                        "{label}: unknown type \"{raw}\" (expected one of {})",
                        known.join(", ")
                    ),
                );
            }
            parsed
        });
        let mode = mode_raw.as_deref().and_then(|raw| match raw {
            "deterministic" => Some(EncryptionMode::Deterministic),
            "randomized" => Some(EncryptionMode::Randomized),
            _ => {
                let span = self.span_of(s, "encryption");
                self.problem(span, format!("{label}: unknown encryption \"{raw}\" (expected deterministic or randomized)"));
                None
            }
        });
        if mode == Some(EncryptionMode::Randomized) && domain.is_some() {
            let span = self.span_of(s, "domain");
            self.problem(
                span,
                format!("{label}: domain is only allowed on deterministic columns"),
            );
        }
        let access = self.access_rules(s, &label, logical_type);
        let span = s.span.clone();
        Some((
            ColumnConfig {
                column: ProtectedColumn {
                    table: table?,
                    column: column?,
                    logical_type: logical_type?,
                    mode: mode?,
                    domain,
                },
                access,
            },
            span,
        ))
    }

    fn access_rules(
        &mut self,
        s: &mut Section<'_>,
        label: &str,
        ty: Option<LogicalType>,
    ) -> BTreeMap<String, Access> {
        s.seen.insert("access");
        let mut rules = BTreeMap::new();
        let Some(item) = s.table.get("access") else {
            return rules;
        };
        let Some(table) = item.as_table_like() else {
            self.problem(
                item.span(),
                format!("{label}: access must be a table of role = \"access\""),
            );
            return rules;
        };
        for (role, value) in table.iter() {
            let Some(text) = value.as_str() else {
                self.problem(
                    value.span(),
                    format!("{label}: access for role \"{role}\" must be a string"),
                );
                continue;
            };
            match Access::parse(text) {
                Some(Access::Mask(kind)) if ty.is_some_and(|t| !kind.applies_to(t)) => {
                    let ty = ty.map_or("", LogicalType::name);
                    self.problem(value.span(), format!("{label}: mask:{} does not apply to type {ty}", kind.name()));
                }
                Some(access) => {
                    rules.insert(role.to_string(), access);
                }
                None => self.problem(
                    value.span(),
                    format!("{label}: unknown access \"{text}\" for role \"{role}\" (expected plaintext, deny, or mask:null|redact|last4|year|zip3)"),
                ),
            }
        }
        rules
    }
}

fn empty_section(name: &str) -> Section<'static> {
    static EMPTY: std::sync::OnceLock<toml_edit::Table> = std::sync::OnceLock::new();
    Section {
        name: format!("[{name}]"),
        table: EMPTY.get_or_init(toml_edit::Table::new),
        span: None,
        seen: HashSet::new(),
    }
}

/// Text and varchar share one canonical encoding, so they may share a domain.
fn text_family(ty: LogicalType) -> LogicalType {
    match ty {
        LogicalType::Varchar => LogicalType::Text,
        other => other,
    }
}

#[cfg(test)]
mod tests;
