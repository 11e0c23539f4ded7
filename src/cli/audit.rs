//! `pgveil audit verify|search|report`: where the log is (from the configuration or given
//! directly), then [`crate::audit::cli`] does the work.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use super::{load_config, CliError};
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

fn audit_dir(config: &Config, path: &Path) -> Result<PathBuf, CliError> {
    match &config.audit {
        Some(audit) => Ok(audit.dir.clone()),
        None => Err(CliError::Invalid(format!(
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

/// Exit 0 and the summary on stdout when the log is intact; 1 and the first bad record
/// when it is not; 2 when the public key cannot be read.
pub fn audit_verify(source: &AuditSource) -> Result<(), CliError> {
    let (dir, public_key) = match source {
        AuditSource::Direct { dir, public_key } => (dir.clone(), public_key.clone()),
        AuditSource::Config(path) => {
            let config = load_config(path)?;
            let dir = audit_dir(&config, path)?;
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
            Ok(())
        }
        1 => Err(CliError::Invalid(line)),
        _ => Err(CliError::CannotRun(line)),
    }
}

/// Runs `produce` on a buffered stdout; a failed write is a command that could not run.
fn write_out(
    produce: impl FnOnce(&mut std::io::BufWriter<std::io::StdoutLock<'static>>) -> Result<usize, String>,
) -> Result<usize, CliError> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let result = produce(&mut out);
    let flushed = out.flush();
    let count = result.map_err(CliError::CannotRun)?;
    flushed.map_err(|e| CliError::CannotRun(format!("cannot write output: {e}")))?;
    Ok(count)
}

pub fn audit_search(config_path: &Path, args: &SearchArgs, json: bool) -> Result<(), CliError> {
    let filter = acli::build_filter(args).map_err(CliError::Invalid)?;
    let config = load_config(config_path)?;
    let dir = audit_dir(&config, config_path)?;
    let count = write_out(|out| acli::search(&dir, &filter, json, out))?;
    if count == 0 && !json {
        eprintln!("pgveil: no matching records");
    }
    Ok(())
}

pub fn audit_report(
    config_path: &Path,
    subject: &str,
    since: Option<&str>,
    until: Option<&str>,
    json: bool,
) -> Result<(), CliError> {
    let subject = acli::parse_subject(subject).map_err(CliError::Invalid)?;
    let since = since
        .map(acli::parse_time)
        .transpose()
        .map_err(CliError::Invalid)?;
    let until = until
        .map(acli::parse_time)
        .transpose()
        .map_err(CliError::Invalid)?;
    if let (Some(s), Some(u)) = (since, until) {
        if s > u {
            return Err(CliError::Invalid("--since is after --until".to_string()));
        }
    }
    let config = load_config(config_path)?;
    let dir = audit_dir(&config, config_path)?;
    write_out(|out| acli::report(&dir, &subject, since, until, json, out))?;
    Ok(())
}
