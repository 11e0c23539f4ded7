//! The on-disk audit record and checkpoint lines, and exactly which bytes are hashed and
//! signed.
//!
//! # Record line
//!
//! One JSON object per line, fields in this order:
//! `seq, time, session, client, user, roles, application, kind, fingerprint, tables, columns,
//! rows, outcome, sqlstate, subjects | subjects_unknown, end_user, purpose, break_glass, prev,
//! hash`.
//! Exactly one of `subjects` / `subjects_unknown` is present. `end_user`, `purpose` and
//! `break_glass` (the session context, [`RecordContext`]) are `null` when not set; records
//! written before they existed lack them and still parse and verify (the hash covers the
//! stored bytes, whatever fields they hold). `time` is RFC 3339 UTC with
//! microseconds (`2026-01-05T10:00:00.000000Z`). The first record of the log has `seq` 1 and
//! `prev` = 64 zeros ([`GENESIS`]).
//!
//! # What the record hash covers
//!
//! The writer serializes the record from its struct, in the field order above, without the
//! `hash` member, as compact JSON (`serde_json::to_string`): call these bytes `B`
//! (they start with `{"seq":` and end with `}`; `prev` is included, so the chain is linked).
//! `hash = hex(SHA-256(B))`. The stored line is `B` with its final `}` replaced by
//! `,"hash":"<64 lower-case hex>"}` and a `\n` appended.
//!
//! `verify` therefore recomputes the hash from the stored bytes alone, independent of any
//! JSON library's ordering or escaping: it requires the line to end with
//! `,"hash":"<64 hex>"}` (75 bytes), drops those 75 bytes, appends `}`, and hashes the result.
//! This is stricter than re-serializing a parsed struct: any byte change in the line, even a
//! semantically equivalent re-escaping, is a mismatch, and nothing depends on how a future
//! `serde_json` formats strings. The line is also parsed (unknown or duplicate fields
//! rejected) to check `seq`, `prev` and the `hash` field itself.
//!
//! # Checkpoint line
//!
//! `{"checkpoint":{"seq":N,"head":"<hash of record N>","time":"...","segment":K,
//! "reason":"periodic|rotate|shutdown","signature":"<base64 Ed25519>"}}`.
//! The signature (standard base64 with padding) is over the UTF-8 bytes of
//!
//! ```text
//! pgveil-audit-checkpoint-v1\nseq=N\nhead=HEX\ntime=TIME\nsegment=K\nreason=REASON\n
//! ```
//!
//! with the values exactly as stored in the line (`N`, `K` decimal). `segment` is the number
//! of the segment file that holds the checkpoint, so a renamed segment is detected. A
//! `rotate` checkpoint is the last line of its segment and promises that segment `K + 1`
//! exists.
//!
//! # Maintenance events
//!
//! Events of pgveil itself (a torn final line removed at start, a segment that vanished or
//! shrank under the writer) are ordinary chained records with `kind` `other`, `session`,
//! `user` and `application` `pgveil`, empty `client`, `roles`, `tables`, `columns`,
//! `rows` 0, `outcome` `ok`, `subjects_unknown` `"maintenance event"` and a fingerprint
//! starting with `pgveil:` (e.g. `pgveil:repair removed torn final line: 37 bytes at
//! offset 4096 of segment-000002.jsonl`). They never contain the removed content.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use super::subjects::SubjectIds;

/// `prev` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Prefix of the fingerprint of pgveil's own maintenance records.
pub const MAINTENANCE_PREFIX: &str = "pgveil:";

/// Length of the trailing `,"hash":"<64 hex>"}` of a record line.
const HASH_SUFFIX_LEN: usize = 75;
const HASH_SUFFIX_HEAD: &[u8] = b",\"hash\":\"";

/// Formats a time as stored: RFC 3339, UTC, microseconds, `Z`.
pub fn format_time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// The statement kind of the analysis, serialized in lower case.
pub use crate::sql::StatementKind;

/// The access applied to one column in one statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Plaintext,
    Masked,
    Denied,
    /// Written (INSERT/UPDATE target). Not a disclosure unless also returned, in which case
    /// the caller lists the column with the access it was returned with.
    Write,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Masked => "masked",
            Self::Denied => "denied",
            Self::Write => "write",
        }
    }

    /// Whether the column's value (or its mask) was returned to the client.
    pub fn is_read(self) -> bool {
        matches!(self, Self::Plaintext | Self::Masked)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Error,
    Refused,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
            Self::Refused => "refused",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ok" => Some(Self::Ok),
            "error" => Some(Self::Error),
            "refused" => Some(Self::Refused),
            _ => None,
        }
    }
}

/// One protected column touched by a statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnAccess {
    /// `schema.table.column`.
    pub column: String,
    pub access: Access,
}

impl ColumnAccess {
    pub fn new(column: impl Into<String>, access: Access) -> Self {
        Self {
            column: column.into(),
            access,
        }
    }

    /// `schema.table` part of the column name (everything before the last dot).
    pub fn table(&self) -> &str {
        match self.column.rfind('.') {
            Some(i) => &self.column[..i],
            None => "",
        }
    }
}

/// The data subjects (patients) whose rows the statement touched, or why that is unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subjects {
    /// `{"schema.table": ["id", …]}`.
    Known(BTreeMap<String, SubjectIds>),
    /// `subjects_unknown`: the reason.
    Unknown(String),
}

impl Subjects {
    /// Whether `id` of `table` (`schema.table`) is among the known subjects.
    pub fn contains(&self, table: &str, id: &str) -> bool {
        match self {
            Self::Known(map) => map
                .iter()
                .any(|(t, ids)| t.eq_ignore_ascii_case(table) && ids.contains(id)),
            Self::Unknown(_) => false,
        }
    }
}

/// Everything the caller knows about one statement: all record fields except `seq`, `prev`
/// and `hash`, which the writer assigns. The caller is responsible for a fingerprint
/// without literals; the audit module stores exactly what it is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordDraft {
    /// When the statement ran (stored in UTC with microseconds).
    pub time: DateTime<Utc>,
    /// Session identifier chosen by the proxy.
    pub session: String,
    /// `address:port` of the client.
    pub client: String,
    /// Session user.
    pub user: String,
    /// The session's roles (the user and every role it is a member of).
    pub roles: Vec<String>,
    /// `application_name` of the session.
    pub application: String,
    pub kind: StatementKind,
    /// Normalized statement text without literals (the caller's responsibility).
    pub fingerprint: String,
    /// `schema.table` names of the tables the statement touches.
    pub tables: Vec<String>,
    /// Protected columns touched, with the access applied.
    pub columns: Vec<ColumnAccess>,
    /// Rows returned (or affected, for writes without RETURNING).
    pub rows: u64,
    pub outcome: Outcome,
    /// SQLSTATE of an error or refusal.
    pub sqlstate: Option<String>,
    /// Subject ids (values of each table's configured subject column, as text) or why they
    /// are unknown.
    pub subjects: Subjects,
}

impl RecordDraft {
    /// A chained record describing an event of pgveil itself (see the module docs).
    pub fn maintenance(description: &str) -> Self {
        Self {
            time: Utc::now(),
            session: "pgveil".into(),
            client: String::new(),
            user: "pgveil".into(),
            roles: Vec::new(),
            application: "pgveil".into(),
            kind: StatementKind::Other,
            fingerprint: format!("{MAINTENANCE_PREFIX}{description}"),
            tables: Vec::new(),
            columns: Vec::new(),
            rows: 0,
            outcome: Outcome::Ok,
            sqlstate: None,
            subjects: Subjects::Unknown("maintenance event".into()),
        }
    }
}

/// The session context a statement ran in: who the person is and why they look
/// (DESIGN.md "Session context"). Written into the record, covered by its hash.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordContext {
    pub end_user: Option<String>,
    pub purpose: Option<String>,
    /// The break-glass reason while break-glass is on.
    pub break_glass: Option<String>,
}

impl RecordContext {
    pub fn is_empty(&self) -> bool {
        self.end_user.is_none() && self.purpose.is_none() && self.break_glass.is_none()
    }
}

/// A complete record as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub seq: u64,
    pub time: DateTime<Utc>,
    pub session: String,
    pub client: String,
    pub user: String,
    pub roles: Vec<String>,
    pub application: String,
    pub kind: StatementKind,
    pub fingerprint: String,
    pub tables: Vec<String>,
    pub columns: Vec<ColumnAccess>,
    pub rows: u64,
    pub outcome: Outcome,
    pub sqlstate: Option<String>,
    pub subjects: Subjects,
    /// `end_user`, `purpose`, `break_glass` (all `None` in records written before them).
    pub context: RecordContext,
    /// Hex SHA-256 of the previous record ([`GENESIS`] for the first).
    pub prev: String,
    /// Hex SHA-256 of this record (see the module docs).
    pub hash: String,
}

impl AuditRecord {
    /// Whether this is one of pgveil's own maintenance records.
    pub fn is_maintenance(&self) -> bool {
        self.kind == StatementKind::Other
            && self.session == "pgveil"
            && self.fingerprint.starts_with(MAINTENANCE_PREFIX)
    }

    /// The caller-supplied part of the record.
    pub fn to_draft(&self) -> RecordDraft {
        RecordDraft {
            time: self.time,
            session: self.session.clone(),
            client: self.client.clone(),
            user: self.user.clone(),
            roles: self.roles.clone(),
            application: self.application.clone(),
            kind: self.kind,
            fingerprint: self.fingerprint.clone(),
            tables: self.tables.clone(),
            columns: self.columns.clone(),
            rows: self.rows,
            outcome: self.outcome,
            sqlstate: self.sqlstate.clone(),
            subjects: self.subjects.clone(),
        }
    }

    /// Columns whose values (or masks) were returned to the client.
    pub fn read_columns(&self) -> impl Iterator<Item = &ColumnAccess> {
        self.columns.iter().filter(|c| c.access.is_read())
    }
}

/// Serialization shape of a record without its hash, borrowed from a draft.
#[derive(Serialize)]
struct WireOut<'a> {
    seq: u64,
    time: String,
    session: &'a str,
    client: &'a str,
    user: &'a str,
    roles: &'a [String],
    application: &'a str,
    kind: StatementKind,
    fingerprint: &'a str,
    tables: &'a [String],
    columns: &'a [ColumnAccess],
    rows: u64,
    outcome: Outcome,
    sqlstate: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subjects: Option<&'a BTreeMap<String, SubjectIds>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subjects_unknown: Option<&'a str>,
    end_user: Option<&'a str>,
    purpose: Option<&'a str>,
    break_glass: Option<&'a str>,
    prev: &'a str,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireIn {
    seq: u64,
    time: String,
    session: String,
    client: String,
    user: String,
    roles: Vec<String>,
    application: String,
    kind: StatementKind,
    fingerprint: String,
    tables: Vec<String>,
    columns: Vec<ColumnAccess>,
    rows: u64,
    outcome: Outcome,
    sqlstate: Option<String>,
    #[serde(default)]
    subjects: Option<BTreeMap<String, SubjectIds>>,
    #[serde(default)]
    subjects_unknown: Option<String>,
    #[serde(default)]
    end_user: Option<String>,
    #[serde(default)]
    purpose: Option<String>,
    #[serde(default)]
    break_glass: Option<String>,
    prev: String,
    hash: String,
}

/// A sealed record: the line to store (with its trailing newline) and its hash.
#[derive(Debug, Clone)]
pub struct Sealed {
    pub line: String,
    pub hash: String,
}

/// Assigns `seq` and `prev` to a draft and its session context and computes its line and
/// hash.
pub fn seal(
    draft: &RecordDraft,
    context: &RecordContext,
    seq: u64,
    prev: &str,
) -> Result<Sealed, String> {
    let (subjects, subjects_unknown) = match &draft.subjects {
        Subjects::Known(map) => (Some(map), None),
        Subjects::Unknown(reason) => (None, Some(reason.as_str())),
    };
    let wire = WireOut {
        seq,
        time: format_time(&draft.time),
        session: &draft.session,
        client: &draft.client,
        user: &draft.user,
        roles: &draft.roles,
        application: &draft.application,
        kind: draft.kind,
        fingerprint: &draft.fingerprint,
        tables: &draft.tables,
        columns: &draft.columns,
        rows: draft.rows,
        outcome: draft.outcome,
        sqlstate: draft.sqlstate.as_deref(),
        subjects,
        subjects_unknown,
        end_user: context.end_user.as_deref(),
        purpose: context.purpose.as_deref(),
        break_glass: context.break_glass.as_deref(),
        prev,
    };
    let mut body =
        serde_json::to_string(&wire).map_err(|e| format!("cannot serialize record: {e}"))?;
    let hash = hex::encode(Sha256::digest(body.as_bytes()));
    if body.pop() != Some('}') {
        return Err("serialized record does not end with '}'".into());
    }
    body.push_str(",\"hash\":\"");
    body.push_str(&hash);
    body.push_str("\"}\n");
    Ok(Sealed { line: body, hash })
}

/// For a record line (without its newline): the SHA-256 of its hashed bytes (see the module
/// docs) and the stored hash. `None` when the line does not end with a well-formed hash.
pub fn split_hash(line: &[u8]) -> Option<([u8; 32], [u8; 32])> {
    if line.len() < HASH_SUFFIX_LEN + 1 || line.last() != Some(&b'}') {
        return None;
    }
    let cut = line.len() - HASH_SUFFIX_LEN;
    let suffix = &line[cut..];
    if !suffix.starts_with(HASH_SUFFIX_HEAD) || suffix[HASH_SUFFIX_LEN - 2] != b'"' {
        return None;
    }
    let hex_part = &suffix[HASH_SUFFIX_HEAD.len()..HASH_SUFFIX_LEN - 2];
    if !hex_part
        .iter()
        .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return None;
    }
    let mut stored = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut stored).ok()?;
    let mut hasher = Sha256::new();
    hasher.update(&line[..cut]);
    hasher.update(b"}");
    Some((hasher.finalize().into(), stored))
}

/// Decodes a 64-hex-digit hash.
pub fn decode_hash(hex_str: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_str, &mut out).ok()?;
    Some(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckpointReason {
    /// Every `checkpoint_every` records or `checkpoint_interval`.
    Periodic,
    /// Closes a segment; segment `K + 1` follows.
    Rotate,
    /// Written by a clean shutdown.
    Shutdown,
}

impl CheckpointReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Periodic => "periodic",
            Self::Rotate => "rotate",
            Self::Shutdown => "shutdown",
        }
    }
}

/// A signed statement of the chain head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub seq: u64,
    pub head: String,
    pub time: String,
    pub segment: u64,
    pub reason: CheckpointReason,
    pub signature: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointLine {
    checkpoint: Checkpoint,
}

fn checkpoint_message(
    seq: u64,
    head: &str,
    time: &str,
    segment: u64,
    reason: CheckpointReason,
) -> Vec<u8> {
    format!(
        "pgveil-audit-checkpoint-v1\nseq={seq}\nhead={head}\ntime={time}\nsegment={segment}\nreason={}\n",
        reason.as_str()
    )
    .into_bytes()
}

impl Checkpoint {
    pub fn sign(
        seq: u64,
        head: &str,
        segment: u64,
        reason: CheckpointReason,
        key: &SigningKey,
    ) -> Self {
        let time = format_time(&Utc::now());
        let sig = key.sign(&checkpoint_message(seq, head, &time, segment, reason));
        Self {
            seq,
            head: head.to_string(),
            time,
            segment,
            reason,
            signature: base64::engine::general_purpose::STANDARD.encode(sig.to_bytes()),
        }
    }

    /// The exact bytes the signature covers.
    pub fn signed_bytes(&self) -> Vec<u8> {
        checkpoint_message(self.seq, &self.head, &self.time, self.segment, self.reason)
    }

    /// Strict Ed25519 verification of the signature.
    pub fn signature_valid(&self, key: &VerifyingKey) -> bool {
        let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(&self.signature) else {
            return false;
        };
        let Ok(sig) = Signature::from_slice(&raw) else {
            return false;
        };
        key.verify_strict(&self.signed_bytes(), &sig).is_ok()
    }

    /// The stored line, with its trailing newline.
    pub fn to_line(&self) -> Result<String, String> {
        let mut s = serde_json::to_string(&CheckpointLine {
            checkpoint: self.clone(),
        })
        .map_err(|e| format!("cannot serialize checkpoint: {e}"))?;
        s.push('\n');
        Ok(s)
    }
}

/// One parsed line of a segment.
#[derive(Debug, Clone)]
pub enum LogLine {
    Record(Box<AuditRecord>),
    Checkpoint(Checkpoint),
}

/// Why a line is not a valid record or checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine(pub String);

impl fmt::Display for BadLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses one line (without its newline). Does not check the record hash value; see
/// [`split_hash`].
pub fn parse_line(line: &[u8]) -> Result<LogLine, BadLine> {
    if line.starts_with(b"{\"checkpoint\":") {
        let cp: CheckpointLine = serde_json::from_slice(line)
            .map_err(|e| BadLine(format!("malformed checkpoint: {e}")))?;
        return Ok(LogLine::Checkpoint(cp.checkpoint));
    }
    if split_hash(line).is_none() {
        return Err(BadLine("not a record line ending in its hash".into()));
    }
    let w: WireIn =
        serde_json::from_slice(line).map_err(|e| BadLine(format!("malformed record: {e}")))?;
    let time = DateTime::parse_from_rfc3339(&w.time)
        .map_err(|e| BadLine(format!("malformed record time: {e}")))?
        .with_timezone(&Utc);
    let subjects = match (w.subjects, w.subjects_unknown) {
        (Some(map), None) => Subjects::Known(map),
        (None, Some(reason)) => Subjects::Unknown(reason),
        _ => {
            return Err(BadLine(
                "record must have exactly one of subjects and subjects_unknown".into(),
            ))
        }
    };
    Ok(LogLine::Record(Box::new(AuditRecord {
        seq: w.seq,
        time,
        session: w.session,
        client: w.client,
        user: w.user,
        roles: w.roles,
        application: w.application,
        kind: w.kind,
        fingerprint: w.fingerprint,
        tables: w.tables,
        columns: w.columns,
        rows: w.rows,
        outcome: w.outcome,
        sqlstate: w.sqlstate,
        subjects,
        context: RecordContext {
            end_user: w.end_user,
            purpose: w.purpose,
            break_glass: w.break_glass,
        },
        prev: w.prev,
        hash: w.hash,
    })))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use chrono::TimeZone;

    fn seal_plain(draft: &RecordDraft, seq: u64, prev: &str) -> Result<Sealed, String> {
        seal(draft, &RecordContext::default(), seq, prev)
    }

    pub(crate) fn draft(user: &str, id: &str) -> RecordDraft {
        let mut subjects = BTreeMap::new();
        subjects.insert("public.patients".to_string(), vec![id].into());
        RecordDraft {
            time: Utc.with_ymd_and_hms(2026, 1, 5, 10, 0, 0).unwrap(),
            session: "s-1".into(),
            client: "10.0.0.5:51234".into(),
            user: user.into(),
            roles: vec![user.to_string(), "clinician".into()],
            application: "psql".into(),
            kind: StatementKind::Select,
            fingerprint: "SELECT ssn FROM patients WHERE id = $1".into(),
            tables: vec!["public.patients".into()],
            columns: vec![ColumnAccess::new("public.patients.ssn", Access::Plaintext)],
            rows: 1,
            outcome: Outcome::Ok,
            sqlstate: None,
            subjects: Subjects::Known(subjects),
        }
    }

    #[test]
    fn line_layout_and_hash() {
        let s = seal_plain(&draft("alice", "17"), 1, GENESIS).unwrap();
        assert!(s.line.ends_with('\n'));
        let line = s.line.trim_end_matches('\n');
        assert!(line.starts_with(
            "{\"seq\":1,\"time\":\"2026-01-05T10:00:00.000000Z\",\"session\":\"s-1\",\"client\":"
        ));
        let order = [
            "\"seq\"",
            "\"time\"",
            "\"session\"",
            "\"client\"",
            "\"user\"",
            "\"roles\"",
            "\"application\"",
            "\"kind\"",
            "\"fingerprint\"",
            "\"tables\"",
            "\"columns\"",
            "\"rows\"",
            "\"outcome\"",
            "\"sqlstate\":null",
            "\"subjects\"",
            "\"end_user\":null",
            "\"purpose\":null",
            "\"break_glass\":null",
            "\"prev\"",
            "\"hash\"",
        ];
        let mut at = 0;
        for key in order {
            let i = line[at..]
                .find(key)
                .unwrap_or_else(|| panic!("{key} missing or out of order"));
            at += i;
        }
        assert!(!line.contains("subjects_unknown"));
        let (computed, stored) = split_hash(line.as_bytes()).unwrap();
        assert_eq!(computed, stored);
        assert_eq!(hex::encode(stored), s.hash);
        // The hash is SHA-256 of the line without the hash member.
        let body = format!("{}}}", &line[..line.len() - 75]);
        assert_eq!(hex::encode(Sha256::digest(body.as_bytes())), s.hash);
        match parse_line(line.as_bytes()).unwrap() {
            LogLine::Record(r) => {
                assert_eq!(r.seq, 1);
                assert_eq!(r.prev, GENESIS);
                assert_eq!(r.hash, s.hash);
                assert!(r.subjects.contains("public.patients", "17"));
            }
            LogLine::Checkpoint(_) => panic!("record parsed as checkpoint"),
        }
    }

    #[test]
    fn subjects_unknown_and_maintenance() {
        let mut d = draft("bob", "1");
        d.subjects = Subjects::Unknown("no subject column in result".into());
        let s = seal_plain(&d, 2, GENESIS).unwrap();
        assert!(s
            .line
            .contains("\"subjects_unknown\":\"no subject column in result\",\"end_user\""));
        assert!(!s.line.contains("\"subjects\":"));
        let m = seal_plain(&RecordDraft::maintenance("repair x"), 3, &s.hash).unwrap();
        match parse_line(m.line.trim_end().as_bytes()).unwrap() {
            LogLine::Record(r) => assert!(r.is_maintenance()),
            LogLine::Checkpoint(_) => panic!(),
        }
    }

    #[test]
    fn context_fields_are_stored_and_hashed() {
        let context = RecordContext {
            end_user: Some("dr.alice".into()),
            purpose: Some("treatment".into()),
            break_glass: Some("code \"blue\"".into()),
        };
        let with = seal(&draft("app", "17"), &context, 1, GENESIS).unwrap();
        let without = seal_plain(&draft("app", "17"), 1, GENESIS).unwrap();
        assert_ne!(with.hash, without.hash);
        assert!(with.line.contains(
            "\"end_user\":\"dr.alice\",\"purpose\":\"treatment\",\"break_glass\":\"code \\\"blue\\\"\",\"prev\""
        ));
        match parse_line(with.line.trim_end().as_bytes()).unwrap() {
            LogLine::Record(r) => assert_eq!(r.context, context),
            LogLine::Checkpoint(_) => panic!(),
        }
        // Editing the context breaks the hash.
        let edited = with.line.replace("dr.alice", "dr.bob");
        let (computed, stored) = split_hash(edited.trim_end().as_bytes()).unwrap();
        assert_ne!(computed, stored);
    }

    #[test]
    fn records_without_context_fields_still_parse() {
        // A line as written before the context fields existed.
        let line = seal_plain(&draft("app", "17"), 1, GENESIS).unwrap().line;
        let body = line.trim_end().replace(
            ",\"end_user\":null,\"purpose\":null,\"break_glass\":null",
            "",
        );
        let body = &body[..body.len() - 75];
        let hash = hex::encode(Sha256::digest(format!("{body}}}").as_bytes()));
        let old = format!("{body},\"hash\":\"{hash}\"}}");
        let (computed, stored) = split_hash(old.as_bytes()).unwrap();
        assert_eq!(computed, stored);
        match parse_line(old.as_bytes()).unwrap() {
            LogLine::Record(r) => assert!(r.context.is_empty()),
            LogLine::Checkpoint(_) => panic!(),
        }
    }

    #[test]
    fn rejects_extra_or_duplicate_fields() {
        let s = seal_plain(&draft("alice", "17"), 1, GENESIS).unwrap();
        let line = s.line.trim_end();
        let extra = line.replacen("{\"seq\":1,", "{\"seq\":1,\"x\":1,", 1);
        assert!(parse_line(extra.as_bytes()).is_err());
        let dup = line.replacen("{\"seq\":1,", "{\"seq\":1,\"seq\":2,", 1);
        assert!(parse_line(dup.as_bytes()).is_err());
    }

    #[test]
    fn checkpoint_sign_verify() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let cp = Checkpoint::sign(5, GENESIS, 1, CheckpointReason::Periodic, &key);
        assert!(cp.signature_valid(&key.verifying_key()));
        let line = cp.to_line().unwrap();
        assert!(line.starts_with("{\"checkpoint\":{\"seq\":5,\"head\":"));
        match parse_line(line.trim_end().as_bytes()).unwrap() {
            LogLine::Checkpoint(c) => assert_eq!(c, cp),
            LogLine::Record(_) => panic!(),
        }
        let mut edited = cp.clone();
        edited.seq = 6;
        assert!(!edited.signature_valid(&key.verifying_key()));
        let other = SigningKey::from_bytes(&[8u8; 32]);
        assert!(!cp.signature_valid(&other.verifying_key()));
    }
}
