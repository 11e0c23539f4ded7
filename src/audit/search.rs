//! `pgveil audit search`: streams through the segments and keeps the matching records.

use std::path::Path;

use chrono::{DateTime, Utc};

use super::record::{parse_line, AuditRecord, LogLine, Outcome};
use super::segment::{list_segments, segment_name, LineReader};
use super::AuditError;
use crate::schema::TableName;

/// Which records to list. Every `Some` must match. Identifiers (tables, columns) compare
/// ASCII-case-insensitively; users and roles exactly. `since` and `until` are both
/// inclusive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchFilter {
    pub user: Option<String>,
    /// One of the session's roles.
    pub role: Option<String>,
    /// `table` (meaning `public.table`) or `schema.table`; matches the record's tables and
    /// the tables of its columns.
    pub table: Option<String>,
    /// `column` (any table), `table.column` (`public.table`) or `schema.table.column`.
    pub column: Option<String>,
    /// `(table, id)`: records whose known subjects include that id for that table. Records
    /// with unknown subjects do not match (see the report for those).
    pub subject: Option<(String, String)>,
    pub outcome: Option<Outcome>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// The session context's end user, exactly.
    pub end_user: Option<String>,
    /// The declared purpose of use, exactly.
    pub purpose: Option<String>,
    /// Only records of statements run under break-glass.
    pub break_glass: bool,
}

/// `schema.table` for `table` or `schema.table`.
pub fn normalize_table(t: &str) -> Option<String> {
    TableName::parse(t.trim()).map(|t| t.to_string())
}

/// Column pattern: (`schema.table` if given, column).
fn column_pattern(c: &str) -> Option<(Option<String>, String)> {
    let parts: Vec<&str> = c.trim().split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return None;
    }
    match parts.as_slice() {
        [col] => Some((None, col.to_string())),
        [table, col] => Some((Some(format!("public.{table}")), col.to_string())),
        [schema, table, col] => Some((Some(format!("{schema}.{table}")), col.to_string())),
        _ => None,
    }
}

fn column_matches(pattern: &str, stored: &str) -> bool {
    let Some((table, col)) = column_pattern(pattern) else {
        return false;
    };
    let Some((stored_table, stored_col)) = stored.rsplit_once('.') else {
        return false;
    };
    stored_col.eq_ignore_ascii_case(&col)
        && table.is_none_or(|t| t.eq_ignore_ascii_case(stored_table))
}

impl SearchFilter {
    /// Checks the filter's own syntax (tables, columns, subject table).
    pub fn validate(&self) -> Result<(), AuditError> {
        if let Some(t) = &self.table {
            normalize_table(t)
                .ok_or_else(|| AuditError::InvalidArgument(format!("invalid table name {t:?}")))?;
        }
        if let Some(c) = &self.column {
            column_pattern(c).ok_or_else(|| {
                AuditError::InvalidArgument(format!(
                    "invalid column {c:?}: expected column, table.column or schema.table.column"
                ))
            })?;
        }
        if let Some((t, _)) = &self.subject {
            normalize_table(t)
                .ok_or_else(|| AuditError::InvalidArgument(format!("invalid table name {t:?}")))?;
        }
        if let (Some(s), Some(u)) = (self.since, self.until) {
            if s > u {
                return Err(AuditError::InvalidArgument(
                    "--since is after --until".into(),
                ));
            }
        }
        Ok(())
    }

    pub fn matches(&self, r: &AuditRecord) -> bool {
        if self.user.as_ref().is_some_and(|u| *u != r.user) {
            return false;
        }
        if self
            .role
            .as_ref()
            .is_some_and(|role| !r.roles.iter().any(|x| x == role))
        {
            return false;
        }
        if self.outcome.is_some_and(|o| o != r.outcome) {
            return false;
        }
        if self
            .end_user
            .as_ref()
            .is_some_and(|u| r.context.end_user.as_ref() != Some(u))
            || self
                .purpose
                .as_ref()
                .is_some_and(|p| r.context.purpose.as_ref() != Some(p))
            || (self.break_glass && r.context.break_glass.is_none())
        {
            return false;
        }
        if self.since.is_some_and(|s| r.time < s) || self.until.is_some_and(|u| r.time > u) {
            return false;
        }
        if let Some(t) = &self.table {
            let Some(t) = normalize_table(t) else {
                return false;
            };
            let hit = r.tables.iter().any(|x| x.eq_ignore_ascii_case(&t))
                || r.columns.iter().any(|c| c.table().eq_ignore_ascii_case(&t));
            if !hit {
                return false;
            }
        }
        if let Some(c) = &self.column {
            if !r.columns.iter().any(|x| column_matches(c, &x.column)) {
                return false;
            }
        }
        if let Some((t, id)) = &self.subject {
            let Some(t) = normalize_table(t) else {
                return false;
            };
            if !r.subjects.contains(&t, id) {
                return false;
            }
        }
        true
    }
}

/// Streams every record of the log, in order, with its stored line (without newline).
/// Checkpoints are skipped, and so is a torn final line. Other invalid lines are an error.
pub(crate) fn scan_records(
    dir: &Path,
    mut f: impl FnMut(AuditRecord, &[u8]) -> Result<(), AuditError>,
) -> Result<(), AuditError> {
    if !dir.is_dir() {
        return Err(AuditError::Io(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    for (num, path) in list_segments(dir)? {
        let name = segment_name(num);
        let io = |e: std::io::Error| AuditError::Io(format!("{name}: {e}"));
        let mut reader = LineReader::open(&path).map_err(io)?;
        while let Some(line) = reader.next_line().map_err(io)? {
            let parsed = if line.terminated {
                parse_line(&line.bytes).map_err(|e| e.0)
            } else {
                Err("line is not newline-terminated".into())
            };
            match parsed {
                Ok(LogLine::Record(rec)) => f(*rec, &line.bytes)?,
                Ok(LogLine::Checkpoint(_)) => {}
                Err(why) => {
                    let last = match reader.peek().map_err(io)? {
                        None => true,
                        Some(next) => !next.terminated,
                    };
                    if !last {
                        return Err(AuditError::Corrupt(format!(
                            "{name} line {}: {why}; run `pgveil audit verify`",
                            line.number
                        )));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Calls `f` with each matching record and its stored line, in log order.
pub fn search_each(
    dir: &Path,
    filter: &SearchFilter,
    mut f: impl FnMut(AuditRecord, &[u8]) -> Result<(), AuditError>,
) -> Result<(), AuditError> {
    filter.validate()?;
    scan_records(dir, |rec, line| {
        if filter.matches(&rec) {
            f(rec, line)
        } else {
            Ok(())
        }
    })
}

/// The matching records, in log order.
pub fn search(dir: &Path, filter: &SearchFilter) -> Result<Vec<AuditRecord>, AuditError> {
    let mut out = Vec::new();
    search_each(dir, filter, |rec, _| {
        out.push(rec);
        Ok(())
    })?;
    Ok(out)
}
