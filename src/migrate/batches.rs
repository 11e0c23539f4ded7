//! Walking a column's table in primary-key order, one batch of rows at a time (keyset
//! pagination: each batch starts after the last key of the batch before), as the copy,
//! re-encryption and verification passes of `migrate` all do.

use tokio_postgres::{Client, Row};

use super::progress::Meter;
use super::{Job, MigrateError};

/// Runs `select` batch after batch, from after `from` (`None`: the first row) until a batch
/// comes back shorter than `job.batch_size`. `select` takes the key to start after as `$1`
/// (`NULL` for the first batch) and returns at most `job.batch_size` rows in key order, the
/// key as text first. Each batch goes to `step` with its last key (to record as progress),
/// then `meter` advances by its rows. `what` names the reading in an error.
pub(super) async fn walk<F>(
    client: &mut Client,
    job: &Job<'_>,
    select: &str,
    mut from: Option<String>,
    what: &str,
    meter: &mut Meter,
    mut step: F,
) -> Result<(), MigrateError>
where
    F: AsyncFnMut(&mut Client, &[Row], &str) -> Result<(), MigrateError>,
{
    loop {
        let rows = client
            .query(select, &[&from])
            .await
            .map_err(MigrateError::db(what))?;
        let Some(last) = rows.last() else {
            return Ok(());
        };
        let last_key: String = last.try_get(0).map_err(MigrateError::db(what))?;
        step(client, &rows, &last_key).await?;
        meter.advance(rows.len() as u64);
        if (rows.len() as i64) < job.batch_size {
            return Ok(());
        }
        from = Some(last_key);
    }
}
