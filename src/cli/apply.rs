//! `pgveil apply [--execute]`: make the database enforce what it can (DESIGN.md "Defense in
//! depth", [`super::defense`]). Without `--execute` it prints the SQL it would run, one
//! statement a line, on stdout; with it, it runs that SQL upstream (the constraints added
//! and the privileges replaced in one transaction, then each constraint validated on its
//! own) and prints each statement as it is done. A second run prints `-- nothing to do`.
//! Columns it skips and roles it cannot stop are warnings on stderr.

use std::path::Path;

use tokio_postgres::Client;

use super::defense::{self, Plan};
use super::live::{self, LiveError, ProblemKind};
use super::{load_config, warn, CliError};
use crate::config::Config;

/// Stdout when the database already enforces everything `apply` can make it enforce.
pub const NOTHING_TO_DO: &str = "-- nothing to do";

pub fn apply(config_path: &Path, execute: bool) -> Result<(), CliError> {
    let config = load_config(config_path)?;
    if config.columns.is_empty() {
        println!("{NOTHING_TO_DO}: no protected column is configured");
        return Ok(());
    }
    let login = live::Login::from_env();
    let text = std::fs::read_to_string(config_path).unwrap_or_default();
    let locator = live::Locator::new(&config_path.display().to_string(), &text);
    super::runtime()?.block_on(async {
        let client = live::connect(&config.upstream, &login, "pgveil apply")
            .await
            .map_err(cannot_run)?;
        // A table or column the configuration names but the database lacks: the plan
        // would be partial, so nothing is done (the configuration is wrong, exit 1).
        let missing: Vec<String> = live::check(&client, &config, &locator)
            .await
            .map_err(cannot_run)?
            .into_iter()
            .filter(|p| {
                matches!(
                    p.kind,
                    ProblemKind::MissingTable | ProblemKind::MissingColumn
                )
            })
            .map(|p| p.line)
            .collect();
        if !missing.is_empty() {
            return Err(CliError::Problems(missing));
        }
        let plan = defense::inspect(&client, &config)
            .await
            .map_err(cannot_run)?
            .plan();
        for warning in &plan.warnings {
            warn(warning);
        }
        if plan.is_empty() {
            println!("{NOTHING_TO_DO}");
            return Ok(());
        }
        if execute {
            run(&client, &plan, &config).await
        } else {
            for line in plan.script() {
                println!("{line}");
            }
            Ok(())
        }
    })
}

fn cannot_run(e: LiveError) -> CliError {
    CliError::CannotRun(e.to_string())
}

/// Runs the plan: the transaction (all or nothing), then each validation. Each statement is
/// printed once it is done.
async fn run(client: &Client, plan: &Plan, config: &Config) -> Result<(), CliError> {
    let failed = |statement: &str, e: &tokio_postgres::Error| {
        CliError::CannotRun(format!(
            "{statement}: {} (at {}; nothing of the transaction was applied)",
            crate::net::pgclient::error_text(e),
            config.upstream_addr()
        ))
    };
    if !plan.transaction.is_empty() {
        let mut batch = vec!["BEGIN".to_string(), defense::LOCK_TIMEOUT.to_string()];
        batch.extend(plan.transaction.iter().cloned());
        for statement in &batch {
            if let Err(e) = client.batch_execute(statement).await {
                // The transaction is aborted; end it so the connection closes cleanly.
                let _ = client.batch_execute("ROLLBACK").await;
                return Err(failed(statement, &e));
            }
        }
        client
            .batch_execute("COMMIT")
            .await
            .map_err(|e| failed("COMMIT", &e))?;
        for line in plan.script().iter().take(plan.transaction.len() + 3) {
            println!("{line}");
        }
    }
    for statement in &plan.validate {
        // A value without the envelope written since the check was added NOT VALID would
        // fail this; the constraint stays, checking every new row.
        client.batch_execute(statement).await.map_err(|e| {
            CliError::Invalid(format!(
                "{statement}: {}; the constraint stays in place NOT VALID and checks every new row",
                crate::net::pgclient::error_text(&e)
            ))
        })?;
        println!("{statement};");
    }
    Ok(())
}
