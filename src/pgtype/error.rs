//! The codec's error: what kind of bad value, as a SQLSTATE, and a message that names the type
//! and never the value (values are PHI).

use std::fmt;

use crate::pgerror::sqlstate;
use crate::schema::LogicalType;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueErrorKind {
    /// 22P02
    InvalidText,
    /// 22003
    OutOfRange,
    /// 22008
    DatetimeOverflow,
    /// 22P03
    InvalidBinary,
    /// 42804
    DatatypeMismatch,
    /// 22P05 (jsonb `\u0000`)
    UntranslatableCharacter,
    /// 22007: date/time text that does not parse (PostgreSQL's code for these types)
    InvalidDatetimeFormat,
    /// 22023: unknown time zone in a timestamp, bad hex digits in bytea (as PostgreSQL)
    InvalidParameterValue,
    /// 54001 (nesting deeper than we parse)
    TooComplex,
}

/// A value that cannot be parsed or converted. The message names the type and never the
/// value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueError {
    kind: ValueErrorKind,
    message: String,
}

impl ValueError {
    pub fn kind(&self) -> ValueErrorKind {
        self.kind
    }

    pub fn sqlstate(&self) -> &'static str {
        match self.kind {
            ValueErrorKind::InvalidText => sqlstate::INVALID_TEXT_REPRESENTATION,
            ValueErrorKind::OutOfRange => sqlstate::NUMERIC_VALUE_OUT_OF_RANGE,
            ValueErrorKind::DatetimeOverflow => sqlstate::DATETIME_FIELD_OVERFLOW,
            ValueErrorKind::InvalidBinary => sqlstate::INVALID_BINARY_REPRESENTATION,
            ValueErrorKind::DatatypeMismatch => sqlstate::DATATYPE_MISMATCH,
            ValueErrorKind::UntranslatableCharacter => sqlstate::UNTRANSLATABLE_CHARACTER,
            ValueErrorKind::InvalidDatetimeFormat => sqlstate::INVALID_DATETIME_FORMAT,
            ValueErrorKind::InvalidParameterValue => sqlstate::INVALID_PARAMETER_VALUE,
            ValueErrorKind::TooComplex => sqlstate::STATEMENT_TOO_COMPLEX,
        }
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub(super) fn new(kind: ValueErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    pub(super) fn syntax(ty: LogicalType) -> Self {
        let kind = match ty {
            LogicalType::Date | LogicalType::Timestamp | LogicalType::Timestamptz => {
                ValueErrorKind::InvalidDatetimeFormat
            }
            _ => ValueErrorKind::InvalidText,
        };
        Self {
            kind,
            message: format!("invalid input syntax for type {}", pg_name(ty)),
        }
    }

    pub(super) fn range(ty: LogicalType) -> Self {
        let message = match ty {
            LogicalType::Numeric => "value overflows numeric format".to_string(),
            _ => format!("value out of range for type {}", pg_name(ty)),
        };
        Self {
            kind: ValueErrorKind::OutOfRange,
            message,
        }
    }

    pub(super) fn datetime_range(ty: LogicalType) -> Self {
        let what = if ty == LogicalType::Date {
            "date"
        } else {
            "timestamp"
        };
        Self {
            kind: ValueErrorKind::DatetimeOverflow,
            message: format!("{what} out of range"),
        }
    }

    pub(super) fn binary(ty: LogicalType) -> Self {
        Self {
            kind: ValueErrorKind::InvalidBinary,
            message: format!("incorrect binary data format for type {}", pg_name(ty)),
        }
    }

    pub(super) fn mismatch(ty: LogicalType, source_oid: u32) -> Self {
        Self {
            kind: ValueErrorKind::DatatypeMismatch,
            message: format!(
                "a parameter of type oid {source_oid} cannot be assigned to type {}",
                pg_name(ty)
            ),
        }
    }

    /// A stored canonical value that does not have the shape of its type (should not happen
    /// for values this module produced).
    pub(super) fn corrupt(ty: LogicalType) -> Self {
        Self {
            kind: ValueErrorKind::InvalidBinary,
            message: format!("stored value is not a valid canonical {}", pg_name(ty)),
        }
    }
}

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ValueError {}

/// The name PostgreSQL uses for the type in its own messages.
pub(super) fn pg_name(ty: LogicalType) -> &'static str {
    match ty {
        LogicalType::Text => "text",
        LogicalType::Varchar => "character varying",
        LogicalType::Int2 => "smallint",
        LogicalType::Int4 => "integer",
        LogicalType::Int8 => "bigint",
        LogicalType::Numeric => "numeric",
        LogicalType::Float8 => "double precision",
        LogicalType::Bool => "boolean",
        LogicalType::Date => "date",
        LogicalType::Timestamp => "timestamp without time zone",
        LogicalType::Timestamptz => "timestamp with time zone",
        LogicalType::Uuid => "uuid",
        LogicalType::Bytea => "bytea",
        LogicalType::Jsonb => "json",
    }
}
