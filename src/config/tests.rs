//! The configuration walker: every key, its defaults, and the problems it reports.

use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, "t.toml", Path::new("/etc/pgveil"))
}

fn problems(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(_) => Vec::new(),
        Err(e) => e.lines(),
    }
}

const FULL: &str = r#"
[server]
listen = "127.0.0.1:6432"
metrics_listen = "127.0.0.1:9187"

[upstream]
host = "127.0.0.1"
port = 5432
tls = "prefer"
auth = "passthrough"

[keys]
master_key_file = "keys/master.key"

[audit]
dir = "audit"
scope = "protected"
signing_key_file = "keys/audit.key"

[policy]
default_access = "deny"

[[table]]
name = "public.patients"
subject = "id"

[[table]]
name = "visits"
subject = "patient_id"

[[column]]
table = "public.patients"
column = "ssn"
type = "text"
encryption = "deterministic"
access = { clinician = "plaintext", billing = "mask:last4" }

[[column]]
table = "public.patients"
column = "birth_date"
type = "date"
encryption = "randomized"
access = { clinician = "plaintext", billing = "mask:year", researcher = "mask:year" }
"#;

#[test]
fn design_example_parses() {
    let config = parse(FULL).unwrap();
    assert_eq!(config.columns.len(), 2);
    assert_eq!(config.tables[1].name, TableName::new("public", "visits"));
    assert_eq!(
        config.keys.master_key_file,
        Some(PathBuf::from("/etc/pgveil/keys/master.key"))
    );
    let ssn = &config.columns[0];
    assert_eq!(ssn.access["billing"], Access::Mask(MaskKind::Last4));
    assert_eq!(config.audit.as_ref().unwrap().scope, AuditScope::Protected);
    assert_eq!(
        config.server.metrics_listen.as_deref(),
        Some("127.0.0.1:9187")
    );
}

#[test]
fn minimal_file_is_a_plain_relay() {
    let config = parse("[server]\nlisten = \"127.0.0.1:7000\"\n[upstream]\nport = 5433\n").unwrap();
    assert!(config.columns.is_empty());
    assert!(config.audit.is_none());
    assert_eq!(config.upstream.tls, UpstreamTls::Prefer);
    assert_eq!(config.server.max_message_size, DEFAULT_MAX_MESSAGE_SIZE);
}

#[test]
fn every_problem_is_reported_with_its_line() {
    let text = "[server]\nlisten = \"nope\"\nbogus = 1\n[upstream]\ntls = \"maybe\"\n[[column]]\ntable = \"t\"\ncolumn = \"c\"\ntype = \"txt\"\nencryption = \"randomized\"\ndomain = \"d\"\naccess = { r = \"mask:year\" }\n";
    let lines = problems(text);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("t.toml:2:") && l.contains("listen")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("t.toml:3:") && l.contains("unknown key \"bogus\"")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("t.toml:5:") && l.contains("maybe")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("unknown type \"txt\"")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("domain is only allowed")),
        "{lines:?}"
    );
    assert!(lines.len() >= 5, "{lines:?}");
}

#[test]
fn duplicate_columns_and_bad_masks_are_errors() {
    let col = "[[column]]\ntable = \"p\"\ncolumn = \"c\"\ntype = \"date\"\nencryption = \"deterministic\"\naccess = { a = \"mask:last4\" }\n";
    let text = format!("[keys]\nmaster_key_file = \"k\"\n{col}{col}");
    let lines = problems(&text);
    assert!(
        lines.iter().any(|l| l.contains("listed twice")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("mask:last4 does not apply to type date")),
        "{lines:?}"
    );
}

#[test]
fn syntax_errors_have_a_location() {
    let lines = problems("[server\nlisten = 1");
    assert_eq!(lines.len(), 1);
    assert!(lines[0].starts_with("t.toml:1:"), "{lines:?}");
}

#[test]
fn missing_required_keys_and_wrong_types() {
    let lines = problems("[keys]\nmaster_key_file = 3\n[[column]]\ntable = \"p\"\n");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("master_key_file: expected a string")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("missing required key \"column\"")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("missing required key \"type\"")),
        "{lines:?}"
    );
}

#[test]
fn domains_must_share_a_type() {
    let text = "[keys]\nmaster_key_file = \"k\"\n[[column]]\ntable = \"a\"\ncolumn = \"x\"\ntype = \"text\"\nencryption = \"deterministic\"\ndomain = \"d\"\n[[column]]\ntable = \"b\"\ncolumn = \"y\"\ntype = \"varchar\"\nencryption = \"deterministic\"\ndomain = \"d\"\n[[column]]\ntable = \"b\"\ncolumn = \"z\"\ntype = \"int4\"\nencryption = \"deterministic\"\ndomain = \"d\"\n";
    let lines = problems(text);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("mixes type int4"), "{lines:?}");
}

#[test]
fn scram_termination_needs_auth_user_and_a_parameterised_auth_query() {
    let lines = problems("[upstream]\nauth = \"scram\"\n");
    assert!(
        lines.iter().any(|l| l.contains("needs auth_user")),
        "{lines:?}"
    );
    let lines =
        problems("[upstream]\nauth = \"scram\"\nauth_user = \"a\"\nauth_query = \"SELECT 1, 2\"\n");
    assert!(lines.iter().any(|l| l.contains("$1")), "{lines:?}");
    let config = parse(
        "[upstream]\nauth = \"scram\"\nauth_user = \"a\"\nauth_dbname = \"postgres\"\nauth_cache_secs = 0\n",
    )
    .unwrap();
    assert_eq!(config.upstream.auth, AuthMode::Scram);
    assert_eq!(config.upstream.auth_dbname.as_deref(), Some("postgres"));
    assert!(config.upstream.auth_cache_ttl.is_zero());
    assert!(config.upstream.auth_query.contains("$1"));
}

#[test]
fn server_reuse_defaults_and_limits() {
    let config = parse(
        "[upstream]
",
    )
    .unwrap();
    let reuse = config.upstream.reuse;
    assert!(reuse.enabled);
    assert_eq!(reuse.idle_timeout, Duration::from_secs(60));
    assert_eq!(reuse.lifetime, Duration::from_secs(3600));
    assert_eq!(reuse.max_idle, 20);
    let config = parse(
        "[upstream]
server_reuse = false
server_idle_timeout_secs = 5
server_lifetime_secs = 30
server_max_idle = 0
",
    )
    .unwrap();
    let reuse = config.upstream.reuse;
    assert!(!reuse.enabled);
    assert_eq!(reuse.idle_timeout, Duration::from_secs(5));
    assert_eq!(reuse.lifetime, Duration::from_secs(30));
    assert_eq!(reuse.max_idle, 0);
    let lines = problems(
        "[upstream]
server_reuse = 1
server_idle_timeout_secs = 0
",
    );
    assert!(
        lines.iter().any(|l| l.contains("server_reuse")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("server_idle_timeout_secs")),
        "{lines:?}"
    );
}
