//! Progress, in the database and on the terminal.
//!
//! In the database: one row per column in `pgveil.migration` with the phase reached and the
//! last primary key done, written in the same transaction as each batch, so a run killed at
//! any point (even with SIGKILL) continues where it stopped. Never a value.
//!
//! On stderr: an `indicatif` bar on a terminal, otherwise a line every few seconds.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio_postgres::{Client, Transaction};

use super::MigrateError;

/// Two migrate runs starting at once (two tables migrated in parallel) would race in
/// `CREATE … IF NOT EXISTS` and `CREATE OR REPLACE FUNCTION`, which PostgreSQL does not make
/// safe against concurrent creation (23505 on its catalog, or "tuple concurrently
/// updated"). Every transaction that creates pgveil's shared objects first takes this
/// transaction-scoped advisory lock (a fixed key of pgveil's), so the second waits for the
/// first's commit and then finds them.
pub const SHARED_OBJECTS_LOCK: &str = "SELECT pg_advisory_xact_lock(7365836572416839)";

const SQL_CREATE: &str = "\
CREATE SCHEMA IF NOT EXISTS pgveil;
CREATE TABLE IF NOT EXISTS pgveil.migration (
    table_name  text NOT NULL,
    column_name text NOT NULL,
    phase       text NOT NULL,
    last_key    text,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (table_name, column_name)
)";

/// How often a line is printed when stderr is not a terminal.
const LINE_EVERY: Duration = Duration::from_secs(5);

pub async fn ensure_table(client: &Client) -> Result<(), MigrateError> {
    client
        .batch_execute(&format!(
            "BEGIN; {SHARED_OBJECTS_LOCK}; {SQL_CREATE}; COMMIT"
        ))
        .await
        .map_err(MigrateError::db("creating pgveil.migration"))
}

/// The phase and last key recorded for a column (none: never started).
pub async fn load(
    client: &Client,
    table: &str,
    column: &str,
) -> Result<Option<(String, Option<String>)>, MigrateError> {
    let row = client
        .query_opt(
            "SELECT phase, last_key FROM pgveil.migration WHERE table_name = $1 AND column_name = $2",
            &[&table, &column],
        )
        .await
        .map_err(MigrateError::db("reading pgveil.migration"))?;
    match row {
        None => Ok(None),
        Some(row) => Ok(Some((
            row.try_get(0)
                .map_err(MigrateError::db("reading pgveil.migration"))?,
            row.try_get(1)
                .map_err(MigrateError::db("reading pgveil.migration"))?,
        ))),
    }
}

/// Records `phase` and `last_key` for a column, inside the batch's transaction.
pub async fn save(
    tx: &Transaction<'_>,
    table: &str,
    column: &str,
    phase: &str,
    last_key: Option<&str>,
) -> Result<(), MigrateError> {
    tx.execute(
        "INSERT INTO pgveil.migration (table_name, column_name, phase, last_key) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (table_name, column_name) DO UPDATE SET phase = EXCLUDED.phase, \
         last_key = EXCLUDED.last_key, updated_at = now()",
        &[&table, &column, &phase, &last_key],
    )
    .await
    .map_err(MigrateError::db("writing pgveil.migration"))?;
    Ok(())
}

/// Progress of one phase of one column on stderr.
pub struct Meter {
    bar: Option<ProgressBar>,
    label: String,
    total: u64,
    done: u64,
    last_line: Instant,
}

impl Meter {
    /// A bar when stderr is a terminal, periodic lines otherwise.
    pub fn new() -> Meter {
        Meter {
            bar: None,
            label: String::new(),
            total: 0,
            done: 0,
            last_line: Instant::now(),
        }
    }

    /// Starts a phase: `label` (column and phase, never a value) over about `total` rows.
    pub fn start(&mut self, label: String, total: u64) {
        self.finish();
        self.label = label;
        self.total = total;
        self.done = 0;
        self.last_line = Instant::now();
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template(
                "{msg} [{bar:30}] {pos}/{len} rows ({per_sec}, {eta} left)",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(self.label.clone());
            self.bar = Some(bar);
        } else {
            eprintln!("pgveil: {}: {} row(s) to go through", self.label, total);
        }
    }

    pub fn advance(&mut self, rows: u64) {
        self.done += rows;
        match &self.bar {
            Some(bar) => bar.set_position(self.done),
            None if self.last_line.elapsed() >= LINE_EVERY => {
                self.last_line = Instant::now();
                eprintln!("pgveil: {}: {}/{} rows", self.label, self.done, self.total);
            }
            None => {}
        }
    }

    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish();
        } else if !self.label.is_empty() {
            eprintln!("pgveil: {}: done, {} row(s)", self.label, self.done);
        }
        self.label.clear();
    }
}

impl Default for Meter {
    fn default() -> Self {
        Self::new()
    }
}
