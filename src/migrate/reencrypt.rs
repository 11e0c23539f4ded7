//! An encrypted column is brought to the current master key: every value under a previous
//! key is decrypted here and encrypted under the current one, in primary-key batches.
//!
//! A batch writes with `WHERE <column> = <the value read>`: a row that a client changed in
//! between (pgveil always writes under the current key) is left as the client wrote it. A
//! unique index cannot see that two key versions hold the same value; when re-encrypting
//! makes such a pair collide, the batch is retried row by row and the rows that collide are
//! reported as duplicates, left unchanged.

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use super::batches;
use super::progress::{self, Meter};
use super::{ColumnReport, Job, MigrateError};
use crate::crypto::constraint::{quote_ident, EnvelopeConstraint};
use crate::crypto::envelope::{HEADER_LEN, VERSION};

pub async fn run(
    client: &mut Client,
    job: &Job<'_>,
    meter: &mut Meter,
    report: &mut ColumnReport,
) -> Result<(), MigrateError> {
    let info = job.info;
    let (table, column) = (info.table.to_string(), info.column.clone());
    let from = match progress::load(client, &table, &column).await? {
        Some((phase, key)) if phase == "reencrypt" => key,
        _ => None,
    };
    let total = count(client, job).await?;
    meter.start(
        format!("{} (re-encrypt)", job.column.qualified_name()),
        total,
    );
    pass(client, job, from, meter, report).await?;
    meter.finish();
    meter.start(format!("{} (verify)", job.column.qualified_name()), total);
    verify(client, job, meter, report).await?;
    meter.finish();
    let constraint = job.constraint();
    if report.invalid.is_empty() {
        // Rows that do not decrypt would fail the validation; they are reported instead.
        ensure_constraint(client, &constraint).await?;
        report.constrained = true;
    }
    let done = if report.invalid.is_empty() && report.duplicates.is_empty() {
        "done"
    } else {
        "reencrypt"
    };
    let tx = client
        .transaction()
        .await
        .map_err(MigrateError::db("recording progress"))?;
    progress::save(&tx, &table, &column, done, None).await?;
    tx.commit()
        .await
        .map_err(MigrateError::db("recording progress"))
}

async fn count(client: &Client, job: &Job<'_>) -> Result<u64, MigrateError> {
    let row = client
        .query_one(
            &format!("SELECT count(*) FROM {}", job.info.quoted_table),
            &[],
        )
        .await
        .map_err(MigrateError::db("counting rows"))?;
    let n: i64 = row.try_get(0).map_err(MigrateError::db("counting rows"))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// `SELECT key, value` of the next batch after `$1`.
fn select_sql(job: &Job<'_>) -> String {
    let info = job.info;
    format!(
        "SELECT {pk}::text AS pgveil_key, {col} FROM {t} WHERE ($1::text IS NULL OR {pk} > {p1}) \
         ORDER BY {t}.{pk} LIMIT {n}",
        pk = info.pk,
        col = info.quoted_column(),
        t = info.quoted_table,
        p1 = info.pk_param(1),
        n = job.batch_size,
    )
}

async fn pass(
    client: &mut Client,
    job: &Job<'_>,
    from: Option<String>,
    meter: &mut Meter,
    report: &mut ColumnReport,
) -> Result<(), MigrateError> {
    let info = job.info;
    let select = select_sql(job);
    let update = format!(
        "UPDATE {t} SET {col} = v.new FROM unnest($1::text[], $2::bytea[], $3::bytea[]) AS v(k, old, new) \
         WHERE {pk} = v.k::{pk_type} AND {col} = v.old",
        t = info.quoted_table,
        col = info.quoted_column(),
        pk = info.pk,
        pk_type = info.pk_type,
    );
    let (table, column) = (info.table.to_string(), info.column.clone());
    let what = format!("reading {}", job.column.qualified_name());
    batches::walk(
        client,
        job,
        &select,
        from,
        &what,
        meter,
        async |client, rows, last_key| {
            let mut batch: Vec<(String, Vec<u8>, Vec<u8>)> = Vec::new();
            for row in rows {
                let key: String = row.try_get(0).map_err(MigrateError::db("reading keys"))?;
                let stored: Option<Vec<u8>> =
                    row.try_get(1).map_err(MigrateError::db("reading values"))?;
                let Some(stored) = stored else { continue };
                if job.cipher.is_current(&stored) {
                    continue;
                }
                match job.cipher.decrypt(&stored) {
                    Ok(plain) => {
                        let fresh = job.cipher.encrypt(&plain);
                        batch.push((key, stored, fresh));
                    }
                    Err(_) => {
                        report.invalid.insert(key);
                    }
                }
            }
            write_batch(client, job, &update, &batch, report).await?;
            let tx = client
                .transaction()
                .await
                .map_err(MigrateError::db("recording progress"))?;
            progress::save(&tx, &table, &column, "reencrypt", Some(last_key)).await?;
            tx.commit()
                .await
                .map_err(MigrateError::db("recording progress"))
        },
    )
    .await
}

/// The batch as the three arrays the update takes.
fn arrays(rows: &[(String, Vec<u8>, Vec<u8>)]) -> (Vec<&str>, Vec<&[u8]>, Vec<&[u8]>) {
    let keys = rows.iter().map(|r| r.0.as_str()).collect();
    let olds = rows.iter().map(|r| r.1.as_slice()).collect();
    let news = rows.iter().map(|r| r.2.as_slice()).collect();
    (keys, olds, news)
}

/// One transaction for the batch; on a unique violation, one transaction per row, and the
/// rows that still collide are duplicates.
async fn write_batch(
    client: &mut Client,
    job: &Job<'_>,
    update: &str,
    batch: &[(String, Vec<u8>, Vec<u8>)],
    report: &mut ColumnReport,
) -> Result<(), MigrateError> {
    if batch.is_empty() {
        return Ok(());
    }
    let what = format!("re-encrypting {}", job.column.qualified_name());
    let (keys, olds, news) = arrays(batch);
    match client.execute(update, &[&keys, &olds, &news]).await {
        Ok(n) => {
            report.written += n;
            return Ok(());
        }
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {}
        Err(e) => return Err(MigrateError::db(what)(e)),
    }
    for row in batch {
        let (keys, olds, news) = arrays(std::slice::from_ref(row));
        match client.execute(update, &[&keys, &olds, &news]).await {
            Ok(n) => report.written += n,
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                report.duplicates.insert(row.0.clone());
            }
            Err(e) => return Err(MigrateError::db(what)(e)),
        }
    }
    Ok(())
}

/// Every value NULL, or under the current key and decrypting; the others are reported
/// (unless already reported as duplicates).
async fn verify(
    client: &mut Client,
    job: &Job<'_>,
    meter: &mut Meter,
    report: &mut ColumnReport,
) -> Result<(), MigrateError> {
    let select = select_sql(job);
    batches::walk(
        client,
        job,
        &select,
        None,
        "verifying",
        meter,
        async |_, rows, _| {
            for row in rows {
                let key: String = row.try_get(0).map_err(MigrateError::db("verifying"))?;
                let stored: Option<Vec<u8>> =
                    row.try_get(1).map_err(MigrateError::db("verifying"))?;
                report.verified += 1;
                let Some(stored) = stored else { continue };
                let good = job.cipher.is_current(&stored) && job.cipher.decrypt(&stored).is_ok();
                if !good && !report.duplicates.contains(&key) {
                    report.invalid.insert(key);
                }
            }
            Ok(())
        },
    )
    .await
}

/// Adds the envelope constraint when it is missing or names other key ids (`NOT VALID`, a
/// catalog change), then validates it (a scan that blocks neither reads nor writes). A
/// constraint that rows violate (values reported as invalid) stays `NOT VALID`.
pub async fn ensure_constraint(
    client: &mut Client,
    constraint: &EnvelopeConstraint,
) -> Result<(), MigrateError> {
    let row = client
        .query_opt(
            "SELECT pg_catalog.pg_get_constraintdef(c.oid), c.convalidated FROM pg_catalog.pg_constraint c \
             WHERE c.conrelid = $1::text::regclass AND c.conname = $2",
            &[&crate::crypto::constraint::quote_table(&constraint.table), &constraint.name],
        )
        .await
        .map_err(MigrateError::db("reading the envelope constraint"))?;
    let wanted: Vec<String> = constraint
        .key_ids
        .iter()
        .map(|id| {
            let mut header = [0u8; HEADER_LEN];
            header[0] = VERSION;
            header[1..5].copy_from_slice(&id.to_be_bytes());
            header[5] = constraint.mode.tag();
            hex::encode(header)
        })
        .collect();
    let current = match &row {
        Some(row) => {
            let def: String = row.try_get(0).map_err(MigrateError::db("reading"))?;
            let validated: bool = row.try_get(1).map_err(MigrateError::db("reading"))?;
            let same = wanted.iter().all(|h| def.contains(h.as_str()))
                && def.matches("decode(").count() == wanted.len()
                && def.contains(&quote_ident(&constraint.column).replace('"', ""));
            Some((same, validated))
        }
        None => None,
    };
    let tx = client
        .transaction()
        .await
        .map_err(MigrateError::db("adding the envelope constraint"))?;
    match current {
        Some((true, true)) => return Ok(()),
        Some((true, false)) => {}
        Some((false, _)) => {
            tx.batch_execute(&format!(
                "SET LOCAL lock_timeout = '5s'; {}; {}",
                constraint.drop_sql(),
                constraint.add_not_valid_sql()
            ))
            .await
            .map_err(MigrateError::db("replacing the envelope constraint"))?;
        }
        None => {
            tx.batch_execute(&format!(
                "SET LOCAL lock_timeout = '5s'; {}",
                constraint.add_not_valid_sql()
            ))
            .await
            .map_err(MigrateError::db("adding the envelope constraint"))?;
        }
    }
    tx.commit()
        .await
        .map_err(MigrateError::db("adding the envelope constraint"))?;
    client
        .batch_execute(&constraint.validate_sql())
        .await
        .map_err(MigrateError::db("validating the envelope constraint"))
}
