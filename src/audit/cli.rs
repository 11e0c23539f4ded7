//! What `pgveil audit verify|search|report` call: argument parsing with one-line errors, and
//! the text / JSON renderers.
//!
//! Key files are read by [`crate::crypto::keys`] only (base64 of the 32-byte Ed25519 public
//! key, as `pgveil keys init` writes `audit.pub`).

use std::io::Write;
use std::path::Path;

use chrono::{DateTime, Utc};
use ed25519_dalek::VerifyingKey;

use super::record::{format_time, AuditRecord, Outcome, RecordContext, Subjects};
use super::report::{report as build_report, DisclosureReport};
use super::search::{normalize_table, search_each, SearchFilter};
use super::verify::verify_dir;

/// Parses `TABLE:ID` (`patients:17`, `public.patients:17`); the id is everything after the
/// first colon. Returns (`schema.table`, id).
pub fn parse_subject(s: &str) -> Result<(String, String), String> {
    let (table, id) = s
        .split_once(':')
        .ok_or_else(|| format!("invalid subject {s:?}: expected TABLE:ID, e.g. patients:17"))?;
    let table = normalize_table(table)
        .ok_or_else(|| format!("invalid subject {s:?}: bad table name {table:?}"))?;
    if id.is_empty() {
        return Err(format!("invalid subject {s:?}: empty id"));
    }
    Ok((table, id.to_string()))
}

/// Parses an RFC 3339 time (`2026-01-05T10:00:00Z`, `2026-01-05T11:00:00+01:00`).
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| format!("invalid time {s:?}: expected RFC 3339, e.g. 2026-01-05T10:00:00Z"))
}

/// `audit verify`: (exit code, one line). 0 when intact, 1 otherwise.
pub fn verify(dir: &Path, key: &VerifyingKey) -> (i32, String) {
    match verify_dir(dir, key) {
        Ok(summary) => (0, summary.to_string()),
        Err(failure) => (1, format!("audit log verification failed: {failure}")),
    }
}

/// `audit verify --dir DIR --public-key FILE`: like [`verify`]; exit code 2 when the key
/// file cannot be read or parsed.
pub fn verify_with_key_file(dir: &Path, public_key_file: &Path) -> (i32, String) {
    match crate::crypto::keys::load_verifying_key(public_key_file) {
        Ok(key) => verify(dir, &key),
        Err(e) => (2, e.to_string()),
    }
}

/// Raw `audit search` arguments as given on the command line.
#[derive(Debug, Clone, Default)]
pub struct SearchArgs {
    pub user: Option<String>,
    pub role: Option<String>,
    pub table: Option<String>,
    pub column: Option<String>,
    pub subject: Option<String>,
    pub outcome: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub end_user: Option<String>,
    pub purpose: Option<String>,
    pub break_glass: bool,
}

/// Parses and checks search arguments; errors are one line.
pub fn build_filter(args: &SearchArgs) -> Result<SearchFilter, String> {
    let filter = SearchFilter {
        user: args.user.clone(),
        role: args.role.clone(),
        table: args.table.clone(),
        column: args.column.clone(),
        subject: args.subject.as_deref().map(parse_subject).transpose()?,
        outcome: args
            .outcome
            .as_deref()
            .map(|o| {
                Outcome::parse(o)
                    .ok_or_else(|| format!("invalid outcome {o:?}: expected ok, error or refused"))
            })
            .transpose()?,
        since: args.since.as_deref().map(parse_time).transpose()?,
        until: args.until.as_deref().map(parse_time).transpose()?,
        end_user: args.end_user.clone(),
        purpose: args.purpose.clone(),
        break_glass: args.break_glass,
    };
    filter.validate().map_err(|e| e.to_string())?;
    Ok(filter)
}

/// Escapes control characters so a stored value cannot mess with a terminal.
fn clean(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let v: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            v
        })
        .collect()
}

fn list(items: impl Iterator<Item = String>) -> String {
    let v: Vec<String> = items.collect();
    if v.is_empty() {
        "-".into()
    } else {
        v.join(",")
    }
}

fn subjects_text(s: &Subjects) -> String {
    match s {
        Subjects::Known(map) if map.is_empty() => "none".into(),
        Subjects::Known(map) => map
            .iter()
            .map(|(t, ids)| {
                format!(
                    "{}:[{}]",
                    clean(t),
                    clean(&ids.iter().collect::<Vec<_>>().join(","))
                )
            })
            .collect::<Vec<_>>()
            .join(" "),
        Subjects::Unknown(why) => format!("unknown ({})", clean(why)),
    }
}

fn optional(value: Option<&String>) -> String {
    value.map_or_else(|| "-".to_string(), |v| clean(v))
}

/// `end user U`, `purpose P` and, when it was on, `break-glass "REASON"`, joined by `sep`.
fn context_text(c: &RecordContext, sep: &str) -> String {
    let mut s = format!(
        "end user {}{sep}purpose {}",
        optional(c.end_user.as_ref()),
        optional(c.purpose.as_ref())
    );
    if let Some(reason) = &c.break_glass {
        s.push_str(&format!("{sep}break-glass {:?}", clean(reason)));
    }
    s
}

/// One human-readable line for a record (without newline).
pub fn render_record(r: &AuditRecord) -> String {
    let outcome = match &r.sqlstate {
        Some(state) => format!("{} {}", r.outcome.as_str(), clean(state)),
        None => r.outcome.as_str().to_string(),
    };
    format!(
        "{} seq {} user {} {} roles {} {} {} tables {} columns {} rows {} subjects {} query {:?}",
        format_time(&r.time),
        r.seq,
        clean(&r.user),
        context_text(&r.context, " "),
        list(r.roles.iter().map(|x| clean(x))),
        r.kind.as_str(),
        outcome,
        list(r.tables.iter().map(|x| clean(x))),
        list(
            r.columns
                .iter()
                .map(|c| format!("{}({})", clean(&c.column), c.access.as_str()))
        ),
        r.rows,
        subjects_text(&r.subjects),
        r.fingerprint,
    )
}

/// `audit search`: writes one line per match (the stored line with `json`), returns the
/// number of matches. Errors are one line.
pub fn search(
    dir: &Path,
    filter: &SearchFilter,
    json: bool,
    out: &mut impl Write,
) -> Result<usize, String> {
    let mut count = 0usize;
    let mut write_err = None;
    let result = search_each(dir, filter, |rec, line| {
        count += 1;
        let r = if json {
            out.write_all(line).and_then(|()| out.write_all(b"\n"))
        } else {
            writeln!(out, "{}", render_record(&rec))
        };
        r.map_err(|e| {
            write_err = Some(e.to_string());
            super::AuditError::Io(e.to_string())
        })
    });
    if let Some(e) = write_err {
        return Err(format!("cannot write output: {e}"));
    }
    result.map_err(|e| e.to_string())?;
    Ok(count)
}

fn period(r: &DisclosureReport) -> String {
    match (r.since, r.until) {
        (None, None) => "whole log".into(),
        (Some(s), None) => format!("since {}", format_time(&s)),
        (None, Some(u)) => format!("until {}", format_time(&u)),
        (Some(s), Some(u)) => format!("{} to {}", format_time(&s), format_time(&u)),
    }
}

/// Text rendering of the accounting of disclosures.
pub fn render_report_text(r: &DisclosureReport) -> String {
    let mut s = format!(
        "Accounting of disclosures for {} id {} ({}): {} disclosure(s), newest first\n",
        clean(&r.table),
        clean(&r.id),
        period(r),
        r.disclosures.len()
    );
    for e in &r.disclosures {
        let rec = &e.record;
        s.push_str(&format!(
            "{}  user {}  {}  roles {}  from {}  application {:?}  {}  columns {}  (seq {})\n",
            format_time(&rec.time),
            clean(&rec.user),
            context_text(&rec.context, "  "),
            list(rec.roles.iter().map(|x| clean(x))),
            clean(&rec.client),
            rec.application,
            rec.kind.as_str(),
            list(
                e.columns
                    .iter()
                    .map(|c| format!("{} ({})", clean(&c.column), c.access.as_str()))
            ),
            rec.seq,
        ));
    }
    if !r.possible.is_empty() {
        s.push_str(&format!(
            "{} statement(s) read protected columns of {} without recorded subjects and may have disclosed this subject, newest first\n",
            r.possible.len(),
            clean(&r.table)
        ));
        for e in &r.possible {
            let rec = &e.record;
            let why = match &rec.subjects {
                Subjects::Unknown(w) => clean(w),
                Subjects::Known(_) => String::new(),
            };
            s.push_str(&format!(
                "{}  user {}  {}  roles {}  from {}  application {:?}  {}  columns {}  rows {}  subjects unknown: {}  (seq {})\n",
                format_time(&rec.time),
                clean(&rec.user),
                context_text(&rec.context, "  "),
                list(rec.roles.iter().map(|x| clean(x))),
                clean(&rec.client),
                rec.application,
                rec.kind.as_str(),
                list(e.columns.iter().map(|c| format!("{} ({})", clean(&c.column), c.access.as_str()))),
                rec.rows,
                why,
                rec.seq,
            ));
        }
    }
    s
}

/// JSON rendering: the stored record lines, disclosures first then the records with unknown
/// subjects (recognizable by their `subjects_unknown` field), each list newest first.
pub fn render_report_json(r: &DisclosureReport) -> String {
    let mut s = String::new();
    for e in r.disclosures.iter().chain(&r.possible) {
        s.push_str(&e.line);
        s.push('\n');
    }
    s
}

/// `audit report`: writes the report; returns the number of disclosures. Errors are one line.
pub fn report(
    dir: &Path,
    subject: &(String, String),
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    json: bool,
    out: &mut impl Write,
) -> Result<usize, String> {
    if let (Some(s), Some(u)) = (since, until) {
        if s > u {
            return Err("--since is after --until".into());
        }
    }
    let r = build_report(dir, (&subject.0, &subject.1), since, until).map_err(|e| e.to_string())?;
    let text = if json {
        render_report_json(&r)
    } else {
        render_report_text(&r)
    };
    out.write_all(text.as_bytes())
        .map_err(|e| format!("cannot write output: {e}"))?;
    Ok(r.disclosures.len())
}
