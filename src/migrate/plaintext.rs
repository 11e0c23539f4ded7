//! A plaintext column becomes an encrypted one: shadow column, copy, verify, swap.
//!
//! 1. *prepare* (catalog only): add `<column>__pgveil bytea` and a trigger that empties it
//!    whenever an update changes the plaintext column but not the shadow, so the shadow never
//!    holds a stale value (pgveil's sessions write both columns in one statement).
//! 2. *copy*: batches in primary-key order read `(key, value, xmin)` of rows whose shadow is
//!    empty, encrypt the values here, and write them with `WHERE xmin = <read xmin>`: a row
//!    changed since it was read is skipped (its shadow stays empty) instead of receiving the
//!    encryption of an older value. Catch-up passes take the rows written meanwhile.
//! 3. *verify*: every shadow value is decrypted and compared with the plaintext value.
//! 4. *swap*, one short transaction under `ACCESS EXCLUSIVE`: the rows still pending are
//!    encrypted, the trigger dropped, the columns renamed (plaintext to
//!    `<column>__pgveil_plain`, shadow to `<column>`) and the envelope constraint added
//!    `NOT VALID`.
//! 5. *finish*: the constraint is validated (no write lock) and the plaintext column dropped.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio_postgres::Client;

use super::batches;
use super::progress::{self, Meter};
use super::table::{plain_name, shadow_name};
use super::{ColumnReport, Job, MigrateError};
use crate::crypto::constraint::{quote_ident, truncate_identifier};
use crate::pgtype::{canonical_from_text, SessionTime};

/// How long a catalog change waits for its lock before giving up and trying again, so it
/// never queues reads and writes behind it for long.
const LOCK_TIMEOUT: &str = "2s";
const LOCK_ATTEMPTS: u32 = 30;
/// Catch-up passes before the swap takes what is left under its lock.
const CATCH_UP_PASSES: u32 = 5;

/// Empties the shadow column (`TG_ARGV[1]`) of a row whose plaintext column (`TG_ARGV[0]`)
/// an update changes without also writing the shadow (pgveil's sessions write both in one
/// statement; any other writer leaves the shadow as it was, now stale). An insert keeps
/// what it wrote: nothing, or pgveil's ciphertext; verify empties any mismatch.
const TRIGGER_FUNCTION: &str = "\
CREATE OR REPLACE FUNCTION pgveil.clear_shadow() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
  IF TG_OP = 'UPDATE'
     AND (to_jsonb(NEW) -> TG_ARGV[0]) IS DISTINCT FROM (to_jsonb(OLD) -> TG_ARGV[0])
     AND (to_jsonb(NEW) -> TG_ARGV[1]) IS NOT DISTINCT FROM (to_jsonb(OLD) -> TG_ARGV[1]) THEN
    NEW := jsonb_populate_record(NEW, jsonb_build_object(TG_ARGV[1], NULL));
  END IF;
  RETURN NEW;
END
$f$";

pub async fn run(
    client: &mut Client,
    job: &Job<'_>,
    meter: &mut Meter,
    report: &mut ColumnReport,
) -> Result<(), MigrateError> {
    let (table, column) = (job.info.table.to_string(), job.column.column.clone());
    let state = progress::load(client, &table, &column).await?;
    let phase = state.as_ref().map(|(p, _)| p.as_str()).unwrap_or("prepare");
    let last_key = state.as_ref().and_then(|(_, k)| k.clone());
    let swapped = matches!(phase, "finish" | "done");
    if !swapped {
        if !job.info.is_plaintext() {
            // The shadow exists beside a bytea column nobody swapped: not a state we made.
            return Err(MigrateError::WrongType {
                column: job.column.qualified_name(),
                found: job.info.type_name.clone(),
                expected: job.column.logical_type.name(),
            });
        }
        prepare(client, job).await?;
        let total = count(client, job, "TRUE").await?;
        meter.start(format!("{} (encrypt)", job.column.qualified_name()), total);
        // First pass from where a killed run stopped, then catch-up passes from the start.
        let mut from = last_key;
        for _ in 0..=CATCH_UP_PASSES {
            copy_pass(client, job, from.take(), meter, report).await?;
            if pending(client, job, &report.invalid).await? <= job.batch_size as u64 {
                break;
            }
        }
        meter.finish();
        if !report.invalid.is_empty() {
            // Swapping now would lose the values that could not be encrypted.
            return Ok(());
        }
        meter.start(format!("{} (verify)", job.column.qualified_name()), total);
        verify_shadow(client, job, meter, report).await?;
        meter.finish();
        if !report.invalid.is_empty() {
            return Ok(());
        }
        swap(client, job, report).await?;
    }
    finish(client, job, report).await
}

async fn count(client: &Client, job: &Job<'_>, filter: &str) -> Result<u64, MigrateError> {
    let sql = format!(
        "SELECT count(*) FROM {} WHERE {filter}",
        job.info.quoted_table
    );
    let row = client
        .query_one(&sql, &[])
        .await
        .map_err(MigrateError::db(format!(
            "counting rows of {}",
            job.info.table
        )))?;
    let n: i64 = row.try_get(0).map_err(MigrateError::db("counting rows"))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Rows whose shadow still waits for a value (invalid ones left out).
async fn pending(
    client: &Client,
    job: &Job<'_>,
    invalid: &BTreeSet<String>,
) -> Result<u64, MigrateError> {
    let filter = format!(
        "{} IS NULL AND {} IS NOT NULL",
        job.info.quoted_shadow(),
        job.info.quoted_column()
    );
    Ok(count(client, job, &filter)
        .await?
        .saturating_sub(invalid.len() as u64))
}

fn trigger_name(column: &str) -> String {
    truncate_identifier(&format!("pgveil_shadow_{column}"))
}

/// Runs `sql` (several statements) in one transaction with a short lock timeout, retrying
/// while the lock is not granted.
async fn catalog_change(client: &mut Client, what: &str, sql: &str) -> Result<(), MigrateError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let outcome = client
            .batch_execute(&format!(
                "BEGIN; SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'; {sql}; COMMIT"
            ))
            .await;
        match outcome {
            Ok(()) => return Ok(()),
            Err(e) => {
                let _ = client.batch_execute("ROLLBACK").await;
                let busy = e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE);
                if !busy || attempt >= LOCK_ATTEMPTS {
                    return Err(MigrateError::db(what.to_string())(e));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

async fn prepare(client: &mut Client, job: &Job<'_>) -> Result<(), MigrateError> {
    let info = job.info;
    let sql = format!(
        "{lock};
         {TRIGGER_FUNCTION};
         ALTER TABLE {t} ADD COLUMN IF NOT EXISTS {shadow} bytea;
         DROP TRIGGER IF EXISTS {trigger} ON {t};
         CREATE TRIGGER {trigger} BEFORE INSERT OR UPDATE ON {t} FOR EACH ROW
           EXECUTE PROCEDURE pgveil.clear_shadow({plain_arg}, {shadow_arg});
         INSERT INTO pgveil.migration (table_name, column_name, phase) VALUES ({tn}, {cn}, 'copy')
           ON CONFLICT (table_name, column_name) DO UPDATE SET phase = 'copy', updated_at = now()",
        lock = progress::SHARED_OBJECTS_LOCK,
        t = info.quoted_table,
        shadow = info.quoted_shadow(),
        trigger = quote_ident(&trigger_name(&info.column)),
        plain_arg = sql_string(&info.column),
        shadow_arg = sql_string(&shadow_name(&info.column)),
        tn = sql_string(&info.table.to_string()),
        cn = sql_string(&info.column),
    );
    catalog_change(
        client,
        &format!("preparing {}", job.column.qualified_name()),
        &sql,
    )
    .await
}

/// A string literal (standard_conforming_strings is on in every supported version).
fn sql_string(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Encrypts one plaintext (PostgreSQL's text output) for the column.
fn encrypt(job: &Job<'_>, text: &str) -> Option<Vec<u8>> {
    let canonical = canonical_from_text(
        job.column.logical_type,
        text.as_bytes(),
        &SessionTime::utc(),
    )
    .ok()?;
    Some(job.cipher.encrypt(&canonical))
}

/// One pass over the rows whose shadow is empty, from `from` (exclusive) on.
async fn copy_pass(
    client: &mut Client,
    job: &Job<'_>,
    from: Option<String>,
    meter: &mut Meter,
    report: &mut ColumnReport,
) -> Result<(), MigrateError> {
    let info = job.info;
    let select = format!(
        "SELECT {pk}::text AS pgveil_key, {col}::text, xmin::text FROM {t} \
         WHERE ($1::text IS NULL OR {pk} > {p1}) AND {shadow} IS NULL AND {col} IS NOT NULL \
         ORDER BY {t}.{pk} LIMIT {n}",
        pk = info.pk,
        col = info.quoted_column(),
        t = info.quoted_table,
        p1 = info.pk_param(1),
        shadow = info.quoted_shadow(),
        n = job.batch_size,
    );
    let update = format!(
        "UPDATE {t} SET {shadow} = v.ct FROM unnest($1::text[], $2::bytea[], $3::text[]) AS v(k, ct, x) \
         WHERE {pk} = v.k::{pk_type} AND {t}.xmin::text = v.x",
        t = info.quoted_table,
        shadow = info.quoted_shadow(),
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
            let (mut keys, mut cts, mut xmins) = (Vec::new(), Vec::new(), Vec::new());
            for row in rows {
                let key: String = row.try_get(0).map_err(MigrateError::db("reading keys"))?;
                let text: String = row.try_get(1).map_err(MigrateError::db("reading values"))?;
                let xmin: String = row.try_get(2).map_err(MigrateError::db("reading xmin"))?;
                match encrypt(job, &text) {
                    Some(ct) => {
                        keys.push(key);
                        cts.push(ct);
                        xmins.push(xmin);
                    }
                    None => {
                        report.invalid.insert(key);
                    }
                }
            }
            let tx = client
                .transaction()
                .await
                .map_err(MigrateError::db("starting a batch"))?;
            let written =
                tx.execute(&update, &[&keys, &cts, &xmins])
                    .await
                    .map_err(MigrateError::db(format!(
                        "writing {}",
                        job.column.qualified_name()
                    )))?;
            progress::save(&tx, &table, &column, "copy", Some(last_key)).await?;
            tx.commit()
                .await
                .map_err(MigrateError::db("committing a batch"))?;
            report.written += written;
            Ok(())
        },
    )
    .await
}

/// Decrypts every shadow value and compares it with the plaintext; a mismatch (which the
/// trigger and the xmin guard should make impossible) empties the shadow so the swap
/// encrypts the row again.
async fn verify_shadow(
    client: &mut Client,
    job: &Job<'_>,
    meter: &mut Meter,
    report: &mut ColumnReport,
) -> Result<(), MigrateError> {
    let info = job.info;
    let select = format!(
        "SELECT {pk}::text AS pgveil_key, {col}::text, {shadow}, xmin::text FROM {t} \
         WHERE ($1::text IS NULL OR {pk} > {p1}) ORDER BY {t}.{pk} LIMIT {n}",
        pk = info.pk,
        col = info.quoted_column(),
        shadow = info.quoted_shadow(),
        t = info.quoted_table,
        p1 = info.pk_param(1),
        n = job.batch_size,
    );
    let reset = format!(
        "UPDATE {t} SET {shadow} = NULL WHERE {pk} = {p1} AND xmin::text = $2",
        t = info.quoted_table,
        shadow = info.quoted_shadow(),
        pk = info.pk,
        p1 = info.pk_param(1),
    );
    batches::walk(
        client,
        job,
        &select,
        None,
        "verifying",
        meter,
        async |client, rows, _| {
            for row in rows {
                let key: String = row.try_get(0).map_err(MigrateError::db("verifying"))?;
                let text: Option<String> = row.try_get(1).map_err(MigrateError::db("verifying"))?;
                let stored: Option<Vec<u8>> =
                    row.try_get(2).map_err(MigrateError::db("verifying"))?;
                let xmin: String = row.try_get(3).map_err(MigrateError::db("verifying"))?;
                let agrees = match (&text, &stored) {
                    (None, None) => true,
                    (Some(text), Some(stored)) => {
                        let expected = canonical_from_text(
                            job.column.logical_type,
                            text.as_bytes(),
                            &SessionTime::utc(),
                        );
                        matches!((expected, job.cipher.decrypt(stored)), (Ok(a), Ok(b)) if a == b)
                    }
                    // Pending: written since the copy; the swap takes it.
                    (Some(_), None) => true,
                    (None, Some(_)) => false,
                };
                if !agrees {
                    client
                        .execute(&reset, &[&key, &xmin])
                        .await
                        .map_err(MigrateError::db("verifying"))?;
                }
                report.verified += 1;
            }
            Ok(())
        },
    )
    .await
}

/// The swap, in one transaction under the table's lock: what is still pending is encrypted,
/// then the columns change places.
async fn swap(
    client: &mut Client,
    job: &Job<'_>,
    report: &mut ColumnReport,
) -> Result<(), MigrateError> {
    let info = job.info;
    let constraint = job.constraint();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let tx = client
            .transaction()
            .await
            .map_err(MigrateError::db("starting the swap"))?;
        tx.batch_execute(&format!("SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
            .await
            .map_err(MigrateError::db("starting the swap"))?;
        match tx
            .batch_execute(&format!(
                "LOCK TABLE {} IN ACCESS EXCLUSIVE MODE",
                info.quoted_table
            ))
            .await
        {
            Ok(()) => {}
            Err(e)
                if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE)
                    && attempt < LOCK_ATTEMPTS =>
            {
                drop(tx);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(e) => return Err(MigrateError::db("locking the table for the swap")(e)),
        }
        let rows = tx
            .query(
                &format!(
                    "SELECT {pk}::text AS pgveil_key, {col}::text FROM {t} WHERE {shadow} IS NULL AND {col} IS NOT NULL",
                    pk = info.pk,
                    col = info.quoted_column(),
                    t = info.quoted_table,
                    shadow = info.quoted_shadow(),
                ),
                &[],
            )
            .await
            .map_err(MigrateError::db("reading the last rows"))?;
        let (mut keys, mut cts) = (Vec::new(), Vec::new());
        for row in &rows {
            let key: String = row.try_get(0).map_err(MigrateError::db("reading keys"))?;
            let text: String = row.try_get(1).map_err(MigrateError::db("reading values"))?;
            match encrypt(job, &text) {
                Some(ct) => {
                    keys.push(key);
                    cts.push(ct);
                }
                None => {
                    report.invalid.insert(key);
                }
            }
        }
        if !report.invalid.is_empty() {
            // Rolled back on drop: nothing swapped, the run reports the rows.
            return Ok(());
        }
        let written = tx
            .execute(
                &format!(
                    "UPDATE {t} SET {shadow} = v.ct FROM unnest($1::text[], $2::bytea[]) AS v(k, ct) WHERE {pk} = v.k::{pk_type}",
                    t = info.quoted_table,
                    shadow = info.quoted_shadow(),
                    pk = info.pk,
                    pk_type = info.pk_type,
                ),
                &[&keys, &cts],
            )
            .await
            .map_err(MigrateError::db("writing the last rows"))?;
        report.written += written;
        let t = &info.quoted_table;
        tx.batch_execute(&format!(
            "DROP TRIGGER IF EXISTS {trigger} ON {t};
             ALTER TABLE {t} RENAME COLUMN {col} TO {plain};
             ALTER TABLE {t} RENAME COLUMN {shadow} TO {col};
             {drop_constraint};
             {add_constraint}",
            trigger = quote_ident(&trigger_name(&info.column)),
            col = info.quoted_column(),
            plain = quote_ident(&plain_name(&info.column)),
            shadow = info.quoted_shadow(),
            drop_constraint = constraint.drop_sql(),
            add_constraint = constraint.add_not_valid_sql(),
        ))
        .await
        .map_err(MigrateError::db("swapping the columns"))?;
        progress::save(&tx, &info.table.to_string(), &info.column, "finish", None).await?;
        tx.commit()
            .await
            .map_err(MigrateError::db("committing the swap"))?;
        return Ok(());
    }
}

/// After the swap: validate the constraint (SHARE UPDATE EXCLUSIVE: reads and writes go on)
/// and drop the plaintext column.
async fn finish(
    client: &mut Client,
    job: &Job<'_>,
    report: &mut ColumnReport,
) -> Result<(), MigrateError> {
    let info = job.info;
    let constraint = job.constraint();
    super::reencrypt::ensure_constraint(client, &constraint).await?;
    let sql = format!(
        "ALTER TABLE {t} DROP COLUMN IF EXISTS {plain};
         UPDATE pgveil.migration SET phase = 'done', last_key = NULL, updated_at = now()
          WHERE table_name = {tn} AND column_name = {cn}",
        t = info.quoted_table,
        plain = quote_ident(&plain_name(&info.column)),
        tn = sql_string(&info.table.to_string()),
        cn = sql_string(&info.column),
    );
    catalog_change(client, "dropping the plaintext column", &sql).await?;
    report.constrained = true;
    Ok(())
}
