//! What flows bottom-up through the analysis: a value is a (possibly protected) column, a
//! literal with its exact byte range, a parameter, NULL/DEFAULT, or anything else.

use std::ops::Range;

use crate::schema::TableName;
use crate::sql::catalog::ColumnRef;

/// Where a column value comes from (for subject detection): table, column, and which
/// reference to the table (each catalog relation in FROM gets its own number).
pub(super) type Origin = (TableName, String, u32);

/// A literal that could be bound to a protected column.
#[derive(Debug, Clone)]
pub(super) struct Literal {
    /// The whole literal expression in the query string (sign, cast, type prefix included).
    pub(super) range: Range<usize>,
    /// The literal token alone (no sign, cast or type prefix): what
    /// [`Analyzer::opaque_plain`](super::Analyzer::opaque_plain) reports.
    pub(super) token: Range<usize>,
    /// The literal's text, unescaped.
    pub(super) value: String,
    /// The type it is cast to, lower-case as written.
    pub(super) cast: Option<String>,
}

/// A `$n` parameter.
#[derive(Debug, Clone)]
pub(super) struct Parameter {
    pub(super) number: u32,
    /// The `$n` token.
    pub(super) range: Range<usize>,
    /// `$n::type`: the range of the whole cast and the type.
    pub(super) cast: Option<(Range<usize>, String)>,
}

/// The value of an expression, as far as the analysis cares.
#[derive(Debug, Clone)]
pub(super) enum Value {
    /// A column of a relation in scope; `protected` when it is a protected column,
    /// `origin` when it comes straight from a catalog table (for subject detection).
    Column {
        protected: Option<ColumnRef>,
        origin: Option<Origin>,
    },
    Literal(Literal),
    Parameter(Parameter),
    Null,
    Default,
    /// Values not yet bound: one column of a `VALUES` list or the elements of an array
    /// unnested in FROM. Written into a protected column, each is bound to it; used in any
    /// other way, each is plain.
    Pending(Box<Pending>),
    /// Zero or more columns of unknown values: `*` over a relation whose columns are not
    /// known (a set-returning function, a relation pgveil does not know).
    Spread,
    Other,
}

/// The values one column of a `VALUES` list or of an `UNNEST` carries.
#[derive(Debug, Clone)]
pub(super) struct Pending {
    /// Identifies the column, so a plain use and a binding of it are both seen.
    pub(super) id: u32,
    /// Each value that lands in the column (literals, parameters, NULLs, anything else).
    pub(super) items: Vec<Value>,
    /// Array parameters whose elements land in the column.
    pub(super) arrays: Vec<Parameter>,
    /// Array literals in text form (`'{a,b}'::text[]`) whose elements land in the column.
    pub(super) array_literals: Vec<Literal>,
    /// Casts on the way (`p1::varchar`, `ARRAY[…]::varchar[]`): each type must be accepted
    /// for the column, and each is rewritten to bytea when the values are encrypted.
    pub(super) casts: Vec<PendingCast>,
}

/// A cast applied to pending values.
#[derive(Debug, Clone)]
pub(super) struct PendingCast {
    /// The `::type` text.
    pub(super) range: Range<usize>,
    /// The type of each value (an array cast's element type), lower-case as written.
    pub(super) ty: String,
    /// What replaces `range` once the values are ciphertext.
    pub(super) replacement: &'static str,
}

impl Value {
    /// The protected column this value is, if any.
    pub(super) fn protected(&self) -> Option<ColumnRef> {
        match self {
            Value::Column { protected, .. } => *protected,
            _ => None,
        }
    }

    /// An unprotected column of unknown origin.
    pub(super) fn plain() -> Value {
        Value::Column {
            protected: None,
            origin: None,
        }
    }
}

/// One output column of a query (its name, for references by name from outside).
#[derive(Debug, Clone)]
pub(super) struct OutputColumn {
    pub(super) name: String,
    pub(super) value: Value,
}
