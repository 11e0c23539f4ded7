//! `pgveil migrate`: bring the stored values of configured columns to the current master key.
//!
//! Two jobs, chosen per column from its type in the database:
//! - still of its logical type (plaintext): copied, encrypted, into a shadow `bytea` column
//!   and swapped in ([`plaintext`]);
//! - `bytea` already: values under a previous master key are re-encrypted in place
//!   ([`reencrypt`]).
//!
//! Both work in batches of short transactions keyed by the table's primary key, record their
//! progress in `pgveil.migration` ([`progress`]) so a killed run continues where it stopped,
//! guard every write so a concurrent write is never overwritten, verify every row at the end
//! and then add the envelope constraint. Values are never printed: a bad row is reported by
//! its primary key.

mod batches;
mod plaintext;
pub mod progress;
mod reencrypt;
mod table;

use std::collections::BTreeSet;

use tokio_postgres::Client;

use crate::config::Config;
use crate::crypto::constraint::EnvelopeConstraint;
use crate::crypto::envelope::ColumnCipher;
use crate::crypto::keyring::KeyRing;
use crate::schema::{ProtectedColumn, TableName};

pub use progress::Meter;

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("{0}")]
    Keys(#[from] crate::crypto::keys::KeyError),
    #[error("no configured column matches {0}")]
    NoSuchColumn(String),
    #[error("table {0} does not exist in the database")]
    NoTable(TableName),
    #[error("column {0} does not exist in the database")]
    NoColumn(String),
    #[error("table {table} needs a single-column primary key for pgveil migrate (it has {found})")]
    PrimaryKey { table: TableName, found: String },
    #[error("column {column} is {found} in the database; pgveil migrate expects {expected} (its configured type) or bytea")]
    WrongType {
        column: String,
        found: String,
        expected: &'static str,
    },
    #[error("{what}: {reason}")]
    Database { what: String, reason: String },
}

impl MigrateError {
    pub(crate) fn db(what: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> Self {
        let what = what.into();
        move |e| MigrateError::Database {
            what,
            reason: crate::net::pgclient::error_text(&e),
        }
    }
}

/// What the command line asked for.
#[derive(Debug, Clone)]
pub struct Options {
    pub table: Option<TableName>,
    pub column: Option<String>,
    pub batch_size: i64,
    pub dry_run: bool,
}

/// What happened to one column.
#[derive(Debug, Default, Clone)]
pub struct ColumnReport {
    pub column: String,
    /// `plaintext`, `reencrypt` or `current` (nothing to do).
    pub job: &'static str,
    /// Rows whose stored value was written by this run.
    pub written: u64,
    /// Rows checked by the verification pass.
    pub verified: u64,
    /// Primary keys of rows whose value is not valid for the column (left unchanged).
    pub invalid: BTreeSet<String>,
    /// Primary keys of rows whose value could not be re-encrypted because another row holds
    /// the same value under the current key and a unique index forbids the duplicate.
    pub duplicates: BTreeSet<String>,
    /// Whether the envelope constraint is in place and validated.
    pub constrained: bool,
}

impl ColumnReport {
    pub fn ok(&self) -> bool {
        self.invalid.is_empty() && self.duplicates.is_empty() && self.constrained
    }
}

/// The columns `options` selects, in configuration order.
pub fn selected(config: &Config, options: &Options) -> Result<Vec<ProtectedColumn>, MigrateError> {
    let columns: Vec<ProtectedColumn> = config
        .protected_columns()
        .into_iter()
        .filter(|c| options.table.as_ref().is_none_or(|t| *t == c.table))
        .filter(|c| options.column.as_deref().is_none_or(|n| n == c.column))
        .collect();
    if columns.is_empty() {
        let what = match (&options.table, &options.column) {
            (Some(t), Some(c)) => format!("{t}.{c}"),
            (Some(t), None) => t.to_string(),
            _ => "the options (no [[column]] is configured)".into(),
        };
        return Err(MigrateError::NoSuchColumn(what));
    }
    Ok(columns)
}

/// Migrates one column; `meter` shows progress.
pub async fn migrate_column(
    client: &mut Client,
    ring: &KeyRing,
    column: &ProtectedColumn,
    options: &Options,
    meter: &mut Meter,
) -> Result<ColumnReport, MigrateError> {
    let cipher = ring.column_cipher(column)?;
    let info = table::TableInfo::load(client, column).await?;
    if !options.dry_run {
        progress::ensure_table(client).await?;
    }
    let mut report = ColumnReport {
        column: column.qualified_name(),
        ..ColumnReport::default()
    };
    let job = Job {
        column,
        cipher: &cipher,
        info: &info,
        key_ids: ring.key_ids(),
        batch_size: options.batch_size.max(1),
    };
    let phase = progress::load(client, &info.table.to_string(), &column.column)
        .await?
        .map(|(phase, _)| phase);
    // "finish": swapped by a run that stopped before dropping the plaintext column.
    if info.is_plaintext() || info.shadow_exists || phase.as_deref() == Some("finish") {
        report.job = "plaintext";
        if !options.dry_run {
            plaintext::run(client, &job, meter, &mut report).await?;
        }
    } else {
        report.job = "reencrypt";
        if !options.dry_run {
            reencrypt::run(client, &job, meter, &mut report).await?;
        }
    }
    Ok(report)
}

/// Everything a column's migration works with.
pub(crate) struct Job<'a> {
    pub column: &'a ProtectedColumn,
    pub cipher: &'a ColumnCipher,
    pub info: &'a table::TableInfo,
    pub key_ids: Vec<u32>,
    pub batch_size: i64,
}

impl Job<'_> {
    /// The column's envelope constraint, naming the key ring's key ids.
    pub fn constraint(&self) -> EnvelopeConstraint {
        EnvelopeConstraint::new(
            &self.info.table,
            &self.info.column,
            &self.info.column,
            self.column.mode,
            &self.key_ids,
        )
    }
}
