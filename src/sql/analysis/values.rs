//! What flows bottom-up through the analysis: a value is a (possibly protected) column, a
//! literal with its exact byte range, a parameter, NULL/DEFAULT, or anything else.

use std::ops::Range;

use crate::schema::TableName;
use crate::sql::catalog::ColumnRef;

/// Where a column value comes from (for subject detection): table, column, and which
/// reference to the table (each catalog relation in FROM gets its own number).
pub(super) type Origin = (TableName, String, u32);

#[derive(Debug, Clone)]
pub(super) struct Literal {
    pub(super) range: Range<usize>,
    pub(super) value: String,
    pub(super) cast: Option<String>,
}

#[derive(Debug, Clone)]
pub(super) struct Parameter {
    pub(super) n: u32,
    /// The `$n` token.
    pub(super) range: Range<usize>,
    /// `$n::type`: the range of the whole cast and the type.
    pub(super) cast: Option<(Range<usize>, String)>,
}

#[derive(Debug, Clone)]
pub(super) enum Value {
    Column {
        protected: Option<ColumnRef>,
        origin: Option<Origin>,
    },
    Literal(Literal),
    Parameter(Parameter),
    Null,
    Default,
    Other,
}

impl Value {
    pub(super) fn protected(&self) -> Option<ColumnRef> {
        match self {
            Value::Column { protected, .. } => *protected,
            _ => None,
        }
    }
    pub(super) fn plain() -> Value {
        Value::Column {
            protected: None,
            origin: None,
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct OutputColumn {
    pub(super) name: String,
    pub(super) val: Value,
}
