//! SQL analysis: decides, per statement, what pgveil must do with a query.
//!
//! * [`may_touch_protected`]: the cheap textual check run on every query. `false` → forward
//!   the query untouched, never parse it.
//! * [`analyze`]: parses a query string (simple protocol: one or several statements;
//!   extended protocol Parse: one statement with `$n`) into one [`StatementPlan`] per
//!   statement: which literals and parameters to encrypt for which column, which protected
//!   columns are read, used in conditions or written, what to refuse (`0A000`), and how to
//!   learn the data subject. Plans depend only on the text, the configuration, the catalog
//!   and the search_path, so they can be cached per statement text.
//! * [`rewrite`] / [`try_rewrite`]: applies byte-range replacements.
//! * [`fingerprint`]: the literal-free statement text for the audit log.
//! * [`Shape`] / [`Template`]: one analysis shared by texts that differ only in the values
//!   of literals bound for protected columns or consumed as opaque plain values
//!   ([`StatementPlan::opaque_literals`]).
//!
//! How the session uses a plan:
//! 1. `Err(AnalyzeError)` when `may_touch_protected` was true → refuse the whole query
//!    (fail closed). A plan with `refusal` → answer that error for the statement.
//! 2. Build replacements (all byte offsets are into the *whole* query string, not the
//!    statement): each [`LiteralBinding`] → `'\x<hex ciphertext>'::bytea`; each entry of
//!    [`StatementPlan::rewrites`] as given; each [`SubjectSource::Injectable`] → a
//!    zero-length insertion `insert_at..insert_at` of its `text` (several at the same offset
//!    are appended in the order listed, so the extra columns come last in that order).
//!    Apply them all in one [`try_rewrite`] call.
//!    With several master keys configured, a literal or parameter compared with a
//!    deterministic column ([`LiteralBinding::matching`], [`StatementPlan::param_uses`]) is
//!    compared with its ciphertext under every key instead, in the form its [`KeyMatch`]
//!    says; the plan itself does not depend on the keys.
//! 3. `params` says which `$n` to encrypt (and which type to show in ParameterDescription);
//!    `result_columns` maps output positions to protected columns when RowDescription
//!    carries no table OID.

mod analysis;
mod catalog;
mod copy;
mod cursor;
mod encoding;
mod fast;
mod fingerprint;
mod settings;
mod template;
mod tokens;

#[cfg(test)]
mod migrating_tests;
#[cfg(test)]
mod tests;

use std::ops::Range;

pub use analysis::analyze;
pub use catalog::{Catalog, ColumnInfo, ColumnRef, Protection, StaticCatalog, TableInfo};
pub use copy::{copy_options, CopyDirection, CopyPlan};
pub use cursor::{cursor_statements, mentions_cursor, CursorOp, CursorStatement};
pub use encoding::{encoding_refusal, is_refused_encoding};
pub use fast::may_touch_protected;
pub use fingerprint::fingerprint;
pub use settings::{mentions_setting, setting_statements, SettingOp, SettingStatement};
pub use template::{Shape, Template};
pub use tokens::words;

use crate::schema::TableName;

/// Statement kind, for the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatementKind {
    Select,
    Insert,
    Update,
    Delete,
    Other,
}

impl StatementKind {
    /// The audit log's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Select => "select",
            Self::Insert => "insert",
            Self::Update => "update",
            Self::Delete => "delete",
            Self::Other => "other",
        }
    }
}

/// A literal that must be replaced by the ciphertext of its value for `column`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiteralBinding {
    /// The whole literal expression in the query string: including a unary minus, a
    /// `::type` / `CAST(… AS type)` cast or a type prefix (`DATE '…'`).
    pub byte_range: Range<usize>,
    pub column: ColumnRef,
    /// The literal's text, unescaped (`E'a\nb'` → "a" newline "b"; `-42`; `true`).
    /// `None` is never produced today (NULL literals are not bound) but kept for callers.
    pub value: Option<String>,
    /// The type the literal was cast to, lower-case as written (`date`, `text`), if any.
    /// Only casts to text-like types, the column's logical type or a type of the same family
    /// (integers/numeric/float; date/timestamps) are accepted.
    pub cast: Option<String>,
    /// The literal is a one-dimensional array in text form (`'{a,NULL}'::text[]`) unnested
    /// into the column: each element is encrypted and the literal replaced by a `bytea[]`.
    pub array: bool,
    /// Set when the literal is compared with the column (`=`, `<>`, `IN`, …), so that with
    /// several master keys configured it is compared with its ciphertext under every key.
    pub matching: Option<KeyMatch>,
}

/// How a value compared with a deterministic column is rewritten when several master keys
/// are configured (after `keys rotate`, until `migrate` has re-encrypted every value): the
/// column may hold the value under any of them, so the value's ciphertext under every key
/// is compared. With one key nothing of this is used.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyMatch {
    /// `col = v`: v's place takes `ANY(<ciphertexts>)`.
    Any,
    /// `col <> v`: v's place takes `ALL(<ciphertexts>)`.
    All,
    /// An item of `col [NOT] IN (…)` (or of an `ARRAY[…]` compared with `= ANY`): v's place
    /// takes the ciphertexts, comma-separated.
    List,
    /// `v = col` / `v <> col` with a plain column reference at `column` (`text`, as
    /// written): v's place takes the column's text and the column's place `ANY(…)`
    /// (`all`: `ALL(…)`).
    Swapped {
        column: Range<usize>,
        text: String,
        all: bool,
    },
    /// `v IS [NOT] DISTINCT FROM col` (either side) with a plain column reference written
    /// `text`: v's place takes `(CASE WHEN col = ANY(<ciphertexts>) THEN col ELSE
    /// <first ciphertext> END)`, which is col exactly when col holds the value under some
    /// key, and NULL when v is.
    Distinct { text: String },
    /// A comparison whose form cannot hold several ciphertexts (`CASE col WHEN v`,
    /// `IN (SELECT v)`, `v = <computed>`): refused (`0A000`) while
    /// several keys are configured; `op` names the operation.
    Unsupported { op: String },
}

/// One place a parameter bound to a protected column occurs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ParamUse {
    pub number: u32,
    /// `$n`, or the whole `$n::type` (which [`StatementPlan::rewrites`] then also replaces
    /// by `$n::bytea`).
    pub byte_range: Range<usize>,
    /// How it is compared with its column (`None`: written into it).
    pub matching: Option<KeyMatch>,
}

/// Why a statement is refused before it reaches the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub sqlstate: &'static str,
    /// Names the column (`schema.table.column`) and the operation; never a value.
    pub message: String,
}

/// How the audit log learns whose data a statement returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubjectSource {
    /// The top-level output already contains the table's subject column at this position.
    Selected {
        table: TableName,
        output_position: usize,
    },
    /// Insert `text` at byte `insert_at` of the query string to append the subject column
    /// as one extra output column (the last one); the session strips it from the rows.
    Injectable {
        table: TableName,
        insert_at: usize,
        text: String,
    },
    /// The subject cannot be determined (aggregate, set operation, DISTINCT, …).
    Unknown { table: TableName, reason: String },
}

/// One entry per table that has a subject column configured and whose protected columns
/// the statement returns (tables in order of the reads).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubjectPlan {
    pub sources: Vec<SubjectSource>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementPlan {
    pub kind: StatementKind,
    /// This statement within the query string (without the terminating `;`).
    pub byte_range: Range<usize>,
    /// Every table referenced, resolved (deduplicated, in order of appearance).
    pub tables: Vec<TableName>,
    /// Literals to encrypt; ranges are exact and non-overlapping, sorted by position.
    pub literals: Vec<LiteralBinding>,
    /// Parameters (`$n`) bound to protected columns (deduplicated).
    pub params: Vec<(u32, ColumnRef)>,
    /// Every occurrence of those parameters, with how it is compared: with several master
    /// keys, a parameter compared anywhere is declared `bytea[]` and carries its ciphertext
    /// under every key (see [`KeyMatch`]); its other uses take the first (current key).
    pub param_uses: Vec<ParamUse>,
    /// Array parameters (`UNNEST($n::text[])`) whose elements are bound to a protected
    /// column: each non-NULL element is encrypted for it and the parameter declared `bytea[]`.
    pub array_params: Vec<(u32, ColumnRef)>,
    /// Those of `array_params` compared with their column (`col = ANY($n)`, `col <> ALL($n)`)
    /// rather than written into it: with several master keys, each element is encrypted
    /// under every key.
    pub array_matches: Vec<u32>,
    /// Protected columns whose values the statement returns.
    pub reads: Vec<ColumnRef>,
    /// Protected columns used in conditions, grouping, DISTINCT, count, joins.
    pub conditions: Vec<ColumnRef>,
    /// Protected columns written.
    pub writes: Vec<ColumnRef>,
    /// Set when pgveil must refuse the statement (SQLSTATE `0A000`).
    pub refusal: Option<Refusal>,
    /// Top-level output position → protected column, where known.
    pub result_columns: Vec<Option<ColumnRef>>,
    pub subject: SubjectPlan,
    /// Value-independent replacements the session must also apply (with the literal
    /// ones) before forwarding: a cast on a parameter bound to a protected column
    /// (`$1::text`) becomes `$1::bytea`. Usually empty.
    pub rewrites: Vec<(Range<usize>, String)>,
    /// Set for a COPY whose rows carry protected columns: the session rewrites its rows.
    pub copy: Option<CopyPlan>,
    /// Protected columns the statement uses that are still plaintext in the database (being
    /// migrated): their values are compared and written as plaintext, and the session
    /// re-reads the catalog after the statement, to see the migration's swap.
    pub migrating: Vec<ColumnRef>,
    /// Ciphertexts the session inserts for the shadow columns of migrating columns.
    pub shadow_writes: Vec<ShadowWrite>,
    /// The highest `$n` the statement names (0: none).
    pub max_param: u32,
    /// The literal tokens the analysis consumed only as opaque plain values (written into
    /// an unprotected column, compared with no protected side, returned as output), sorted:
    /// their text decided nothing, so a [`Template`] may generalize them. Informational for
    /// the session, which forwards them as written.
    pub opaque_literals: Vec<Range<usize>>,
}

/// The ciphertext of a value written into a migrating column, also written into its shadow
/// column: the session inserts `prefix` and then the ciphertext at `insert_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowWrite {
    pub insert_at: usize,
    pub column: ColumnRef,
    /// `, ` in an INSERT's row, `, "<col>__pgveil" = ` in a SET list.
    pub prefix: String,
    pub value: ShadowValue,
}

/// Where a shadow ciphertext comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShadowValue {
    /// A literal's text, unescaped: a ciphertext literal.
    Literal(String),
    /// Parameter `$n`: an extra parameter the session declares bytea and binds to the
    /// ciphertext of `$n`'s value.
    Param(u32),
}

impl StatementPlan {
    pub(crate) fn empty(kind: StatementKind, byte_range: Range<usize>) -> Self {
        Self {
            kind,
            byte_range,
            tables: Vec::new(),
            literals: Vec::new(),
            params: Vec::new(),
            param_uses: Vec::new(),
            array_params: Vec::new(),
            array_matches: Vec::new(),
            reads: Vec::new(),
            conditions: Vec::new(),
            writes: Vec::new(),
            refusal: None,
            result_columns: Vec::new(),
            subject: SubjectPlan::default(),
            migrating: Vec::new(),
            shadow_writes: Vec::new(),
            max_param: 0,
            rewrites: Vec::new(),
            copy: None,
            opaque_literals: Vec::new(),
        }
    }

    /// True when the session must change the statement text or its parameters.
    pub fn needs_rewrite(&self) -> bool {
        !self.literals.is_empty()
            || !self.params.is_empty()
            || !self.array_params.is_empty()
            || !self.rewrites.is_empty()
            || !self.shadow_writes.is_empty()
    }
}

/// Why a query could not be analysed. When [`may_touch_protected`] was true, the session
/// refuses such a query (fail closed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnalyzeError {
    #[error("pgveil: cannot parse statement: {0}")]
    Parse(String),
    #[error("pgveil: cannot resolve {0}")]
    Resolve(String),
    #[error("pgveil: cannot analyse statement: {0}")]
    Unsupported(String),
}

/// Replaces byte ranges of `sql`. Ranges may come in any order but must be non-overlapping,
/// in bounds and on character boundaries (those from a [`StatementPlan`] are). Fails closed:
/// with an invalid range it returns an empty string (an empty query) rather than text that
/// could still hold a plaintext literal; use [`try_rewrite`] to get an error instead.
pub fn rewrite(sql: &str, replacements: &[(Range<usize>, String)]) -> String {
    try_rewrite(sql, replacements).unwrap_or_default()
}

/// [`rewrite`], reporting an invalid range as an error.
pub fn try_rewrite(
    sql: &str,
    replacements: &[(Range<usize>, String)],
) -> Result<String, AnalyzeError> {
    let mut order: Vec<&(Range<usize>, String)> = replacements.iter().collect();
    order.sort_by_key(|(r, _)| (r.start, r.end));
    let extra: usize = replacements.iter().map(|(_, s)| s.len()).sum();
    let mut out = String::with_capacity(sql.len() + extra);
    let mut pos = 0;
    for (range, text) in order {
        if range.start < pos
            || range.end < range.start
            || range.end > sql.len()
            || !sql.is_char_boundary(range.start)
            || !sql.is_char_boundary(range.end)
        {
            return Err(AnalyzeError::Unsupported(format!(
                "invalid replacement range {}..{}",
                range.start, range.end
            )));
        }
        out.push_str(&sql[pos..range.start]);
        out.push_str(text);
        pos = range.end;
    }
    out.push_str(&sql[pos..]);
    Ok(out)
}
