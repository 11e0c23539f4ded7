//! `pgveil audit verify|search|report`: where the log is (from the configuration or given
//! directly), then [`crate::audit::cli`] does the work.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::{fail, fail_with, load_config, EXIT_USAGE};
use crate::audit::cli::{self as acli, SearchArgs};
use crate::config::Config;

/// Where `audit verify` finds the log and the public key.
#[derive(Debug, Clone)]
pub enum AuditSource {
    /// `[audit] dir`, and the `.pub` file beside `[audit] signing_key_file`.
    Config(PathBuf),
    /// `--dir DIR --public-key FILE`.
    Direct { dir: PathBuf, public_key: PathBuf },
}

fn audit_dir(config: &Config, path: &Path) -> Result<PathBuf, ExitCode> {
    match &config.audit {
        Some(audit) => Ok(audit.dir.clone()),
        None => Err(fail(format_args!(
            "{}: no [audit] section, so there is no audit log",
            path.display()
        ))),
    }
}

/// The public key written by `pgveil keys init` beside the signing key:
/// `keys/audit.key` → `keys/audit.pub`.
pub fn public_key_beside(signing_key_file: &Path) -> PathBuf {
    signing_key_file.with_extension("pub")
}

pub fn audit_verify(source: &AuditSource) -> ExitCode {
    let (dir, public_key) = match source {
        AuditSource::Direct { dir, public_key } => (dir.clone(), public_key.clone()),
        AuditSource::Config(path) => {
            let config = match load_config(path) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let dir = match audit_dir(&config, path) {
                Ok(d) => d,
                Err(code) => return code,
            };
            let key = config
                .audit
                .as_ref()
                .map(|a| public_key_beside(&a.signing_key_file))
                .unwrap_or_default();
            (dir, key)
        }
    };
    let (code, line) = acli::verify_with_key_file(&dir, &public_key);
    match code {
        0 => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        _ => fail_with(u8::try_from(code).unwrap_or(1), line),
    }
}

pub fn audit_search(config_path: &Path, args: &SearchArgs, json: bool) -> ExitCode {
    let filter = match acli::build_filter(args) {
        Ok(f) => f,
        Err(e) => return fail_with(EXIT_USAGE, e),
    };
    let config = match load_config(config_path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let dir = match audit_dir(&config, config_path) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let result = acli::search(&dir, &filter, json, &mut out);
    let flushed = out.flush();
    match (result, flushed) {
        (Err(e), _) => fail(e),
        (Ok(_), Err(e)) => fail(format_args!("cannot write output: {e}")),
        (Ok(0), Ok(())) if !json => {
            eprintln!("pgveil: no matching records");
            ExitCode::SUCCESS
        }
        (Ok(_), Ok(())) => ExitCode::SUCCESS,
    }
}

pub fn audit_report(
    config_path: &Path,
    subject: &str,
    since: Option<&str>,
    until: Option<&str>,
    json: bool,
) -> ExitCode {
    let parsed = (|| {
        let subject = acli::parse_subject(subject)?;
        let since = since.map(acli::parse_time).transpose()?;
        let until = until.map(acli::parse_time).transpose()?;
        if let (Some(s), Some(u)) = (since, until) {
            if s > u {
                return Err("--since is after --until".to_string());
            }
        }
        Ok((subject, since, until))
    })();
    let (subject, since, until) = match parsed {
        Ok(p) => p,
        Err(e) => return fail_with(EXIT_USAGE, e),
    };
    let config = match load_config(config_path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let dir = match audit_dir(&config, config_path) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let result = acli::report(&dir, &subject, since, until, json, &mut out);
    let flushed = out.flush();
    match (result, flushed) {
        (Err(e), _) => fail(e),
        (Ok(_), Err(e)) => fail(format_args!("cannot write output: {e}")),
        (Ok(_), Ok(())) => ExitCode::SUCCESS,
    }
}
