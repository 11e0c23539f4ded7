//! `pgveil migrate`: runs [`crate::migrate`] over the selected columns, prints one summary
//! line per column on stdout and every problem (rows by primary key, never by value) on
//! stderr, and writes one audit record per column migrated.
//!
//! Exit codes: 0 every row of every column covered was verified and constrained; 1 a bad
//! argument, a column that cannot be migrated, or a column with invalid values or duplicates
//! (reported by primary key); 2 an unusable key or an unreachable database.

use std::path::Path;

use crate::audit::record::{Access, ColumnAccess, RecordDraft};
use crate::config::Config;
use crate::migrate::{self, ColumnReport, Meter, Options};
use crate::net::pgclient;

use super::{load_config, runtime, CliError};

/// Rows listed per problem line before the rest are counted.
const ROWS_LISTED: usize = 20;

/// Session settings that make PostgreSQL's text output what pgveil's value parser reads.
const SESSION_SETUP: &str = "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, MDY'; \
SET IntervalStyle = 'postgres'; SET extra_float_digits = 3; SET bytea_output = 'hex'";

pub fn migrate(config_path: &Path, options: Options) -> Result<(), CliError> {
    let config = load_config(config_path)?;
    let columns = match migrate::selected(&config, &options) {
        Ok(columns) => columns,
        Err(e) => return Err(CliError::Invalid(e.to_string())),
    };
    let ring = match crate::server::load_key_ring(&config) {
        Ok(Some(ring)) => ring,
        Ok(None) => return Err(CliError::Invalid("no column is configured".into())),
        Err(e) => return Err(CliError::CannotRun(format!("[keys] {e}"))),
    };
    runtime()?.block_on(async {
        let login = super::live::Login::from_env();
        let pg_login = pgclient::Login {
            user: &login.user,
            password: login.password.as_deref(),
            database: &login.database,
            application: "pgveil migrate",
        };
        let mut client = match pgclient::connect(&config.upstream, &pg_login).await {
            Ok(client) => client,
            Err(e) => {
                return Err(CliError::CannotRun(format!(
                    "cannot connect to the database at {} as {}: {e}",
                    config.upstream_addr(),
                    login.user
                )))
            }
        };
        if let Err(e) = client.batch_execute(SESSION_SETUP).await {
            return Err(CliError::CannotRun(format!(
                "cannot set up the session: {}",
                pgclient::error_text(&e)
            )));
        }
        let mut meter = Meter::new();
        let mut all_ok = true;
        for column in &columns {
            let report =
                match migrate::migrate_column(&mut client, &ring, column, &options, &mut meter)
                    .await
                {
                    Ok(report) => report,
                    Err(e) => {
                        meter.finish();
                        return Err(CliError::Invalid(format!(
                            "{}: {e}",
                            column.qualified_name()
                        )));
                    }
                };
            all_ok &= print_report(&report, options.dry_run);
            if !options.dry_run && report.ok() {
                audit(&config, &report).await;
            }
        }
        if all_ok {
            Ok(())
        } else {
            Err(CliError::Invalid(
                "rows were reported; fix them and run pgveil migrate again".into(),
            ))
        }
    })
}

/// One line on stdout; problems on stderr. Whether the column is fully migrated.
fn print_report(report: &ColumnReport, dry_run: bool) -> bool {
    if dry_run {
        println!("{}: would {}", report.column, describe(report.job));
        return true;
    }
    if !report.invalid.is_empty() {
        eprintln!(
            "pgveil: {}: {} row(s) hold a value that is not valid for the column, left unchanged (primary key {})",
            report.column,
            report.invalid.len(),
            listed(&report.invalid)
        );
    }
    if !report.duplicates.is_empty() {
        eprintln!(
            "pgveil: {}: {} row(s) hold a value another row holds under the current key, which a unique index forbids; left under their previous key (primary key {})",
            report.column,
            report.duplicates.len(),
            listed(&report.duplicates)
        );
    }
    let ok = report.ok();
    println!(
        "{}: {} {}, {} row(s) written, {} row(s) verified{}",
        report.column,
        describe(report.job),
        if ok { "done" } else { "incomplete" },
        report.written,
        report.verified,
        if report.constrained {
            ", envelope constraint validated"
        } else {
            ""
        }
    );
    ok
}

fn describe(job: &str) -> &'static str {
    match job {
        "plaintext" => "encrypt plaintext column",
        _ => "re-encrypt to the current key",
    }
}

fn listed(keys: &std::collections::BTreeSet<String>) -> String {
    let shown: Vec<&str> = keys.iter().take(ROWS_LISTED).map(String::as_str).collect();
    let more = keys.len().saturating_sub(ROWS_LISTED);
    let mut text = shown.join(", ");
    if more > 0 {
        text.push_str(&format!(" and {more} more"));
    }
    text
}

/// One audit record for the column migrated (no values). The log belongs to the running
/// proxy when it is locked; then the record is not written and a line says so.
async fn audit(config: &Config, report: &ColumnReport) {
    let Some(audit) = &config.audit else { return };
    let key = match crate::crypto::keys::load_signing_key(&audit.signing_key_file) {
        Ok(key) => key,
        Err(e) => {
            eprintln!("pgveil: audit record not written: {e}");
            return;
        }
    };
    let options = crate::audit::AuditOptions::new(audit.dir.clone(), key);
    let log = match tokio::task::spawn_blocking(move || crate::audit::AuditLog::open(options)).await
    {
        Ok(Ok(log)) => log,
        Ok(Err(e)) => {
            eprintln!("pgveil: audit record not written: {e}");
            return;
        }
        Err(_) => return,
    };
    let mut draft = RecordDraft::maintenance(&format!(
        "migrate {} ({}), {} row(s) written, {} verified",
        report.column,
        describe(report.job),
        report.written,
        report.verified
    ));
    draft.user = "pgveil migrate".into();
    if let Some((table, _)) = report.column.rsplit_once('.') {
        draft.tables = vec![table.to_string()];
    }
    draft.columns = vec![ColumnAccess::new(report.column.clone(), Access::Write)];
    draft.rows = report.written;
    if let Err(e) = log.append(draft).await {
        eprintln!("pgveil: audit record not written: {e}");
    }
    log.shutdown().await;
}
