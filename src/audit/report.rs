//! `pgveil audit report`: the accounting of disclosures for one data subject.
//!
//! A disclosure is a record, not refused, whose known subjects include the patient and that
//! returned at least one protected column (access `plaintext` or `masked`; `write` and
//! `denied` are not disclosures, so a write without `RETURNING` is not one). All returned
//! protected columns of such a record are listed, since a statement that identified the
//! patient through one table may have returned their data from a joined one.
//!
//! Separately listed: records, not refused, with `subjects_unknown` that returned protected
//! columns and touched the patient's table; they may have disclosed this patient.
//! Both lists are newest first.

use std::path::Path;

use chrono::{DateTime, Utc};

use super::record::{AuditRecord, ColumnAccess, Outcome, Subjects};
use super::search::{normalize_table, scan_records};
use super::AuditError;

/// One record of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportEntry {
    pub record: AuditRecord,
    /// The record line exactly as stored (without newline).
    pub line: String,
    /// The protected columns returned, with the access applied.
    pub columns: Vec<ColumnAccess>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisclosureReport {
    /// `schema.table` of the subject.
    pub table: String,
    pub id: String,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Reads of this subject's protected data, newest first.
    pub disclosures: Vec<ReportEntry>,
    /// Reads of protected columns of the table whose subjects are unknown, newest first.
    pub possible: Vec<ReportEntry>,
}

fn newest_first(v: &mut [ReportEntry]) {
    v.sort_by(|a, b| {
        b.record
            .time
            .cmp(&a.record.time)
            .then(b.record.seq.cmp(&a.record.seq))
    });
}

/// Builds the accounting of disclosures for `subject` = (`table` or `schema.table`, id);
/// `since` and `until` are inclusive.
pub fn report(
    dir: &Path,
    subject: (&str, &str),
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
) -> Result<DisclosureReport, AuditError> {
    let (table, id) = subject;
    let table = normalize_table(table)
        .ok_or_else(|| AuditError::InvalidArgument(format!("invalid table name {table:?}")))?;
    let mut disclosures = Vec::new();
    let mut possible = Vec::new();
    scan_records(dir, |rec, line| {
        if rec.is_maintenance()
            || rec.outcome == Outcome::Refused
            || since.is_some_and(|s| rec.time < s)
            || until.is_some_and(|u| rec.time > u)
        {
            return Ok(());
        }
        let columns: Vec<ColumnAccess> = rec.read_columns().cloned().collect();
        if columns.is_empty() {
            return Ok(());
        }
        let known = rec.subjects.contains(&table, id);
        let maybe = matches!(rec.subjects, Subjects::Unknown(_))
            && (rec.tables.iter().any(|t| t.eq_ignore_ascii_case(&table))
                || columns
                    .iter()
                    .any(|c| c.table().eq_ignore_ascii_case(&table)));
        if known || maybe {
            let entry = ReportEntry {
                record: rec,
                line: String::from_utf8_lossy(line).into_owned(),
                columns,
            };
            if known {
                disclosures.push(entry);
            } else {
                possible.push(entry);
            }
        }
        Ok(())
    })?;
    newest_first(&mut disclosures);
    newest_first(&mut possible);
    Ok(DisclosureReport {
        table,
        id: id.to_string(),
        since,
        until,
        disclosures,
        possible,
    })
}
