//! `pgveil check [--live]`: validate the configuration, the files it names, and with
//! `--live` the database it describes. Problems on stderr, one a line, located
//! `file:line:column:` where they can be; the summary on stdout.

use std::path::Path;

use super::live::{self, LiveError};
use super::{defense, CliError};
use crate::config::{Config, ConfigError};

pub fn check(config_path: &Path, live: bool) -> Result<(), CliError> {
    let config = match Config::load(config_path) {
        Ok(config) => config,
        Err(error @ ConfigError::Read { .. }) => {
            return Err(CliError::Config {
                path: config_path.to_path_buf(),
                error,
            })
        }
        Err(e) => return Err(CliError::Problems(e.lines())),
    };
    let file_problems = referenced_file_problems(&config);
    if !file_problems.is_empty() {
        return Err(CliError::Problems(
            file_problems
                .iter()
                .map(|p| format!("{}: {p}", config_path.display()))
                .collect(),
        ));
    }
    let summary = format!(
        "{}: valid ({} protected column(s), {} table rule(s))",
        config_path.display(),
        config.columns.len(),
        config.tables.len()
    );
    if !live {
        println!("{summary}");
        return Ok(());
    }
    let login = live::Login::from_env();
    let text = std::fs::read_to_string(config_path).unwrap_or_default();
    let locator = live::Locator::new(&config_path.display().to_string(), &text);
    let (problems, warnings) = super::runtime()?
        .block_on(async {
            let client = live::connect(&config.upstream, &login, "pgveil check").await?;
            let problems = live::check(&client, &config, &locator).await?;
            let inspection = defense::inspect(&client, &config).await?;
            Ok::<_, LiveError>((problems, inspection.warnings(&locator)))
        })
        .map_err(|e| CliError::CannotRun(e.to_string()))?;
    // Warnings (defense in depth) never change the exit status.
    for warning in &warnings {
        eprintln!("{}", super::one_line(warning));
    }
    if !problems.is_empty() {
        return Err(CliError::Problems(
            problems.into_iter().map(|p| p.line).collect(),
        ));
    }
    println!(
        "{summary}; every table, column and role exists in {} as {}",
        config.upstream_addr(),
        login.user
    );
    Ok(())
}

/// The files the configuration names, loaded the way `serve` loads them: keys (present,
/// owner-only, the right length) and TLS material.
fn referenced_file_problems(config: &Config) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(e) = crate::server::load_key_ring(config) {
        problems.push(format!("[keys] {e}"));
    }
    if let Some(audit) = &config.audit {
        if let Err(e) = crate::crypto::keys::load_signing_key(&audit.signing_key_file) {
            problems.push(format!("[audit] {e}"));
        }
    }
    if let Some(path) = &config.context.token_public_key_file {
        if let Err(e) = crate::context::load_token_key(path) {
            problems.push(e.to_string());
        }
    }
    if let Some(file) = &config.alerts.file {
        let dir = file
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !dir.is_dir() {
            problems.push(format!(
                "[alerts] file {}: directory {} does not exist",
                file.display(),
                dir.display()
            ));
        }
    }
    if let (Some(cert), Some(key)) = (&config.server.tls_cert, &config.server.tls_key) {
        if let Err(e) = crate::net::tls::server_config(cert, key) {
            problems.push(format!("[server] {e}"));
        }
    }
    if config.upstream.tls == crate::config::UpstreamTls::VerifyFull {
        if let Err(e) = crate::net::tls::upstream_config(config.upstream.ca_file.as_deref()) {
            problems.push(format!("[upstream] {e}"));
        }
    }
    problems
}
