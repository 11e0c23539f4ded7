//! The one table of PostgreSQL type OIDs pgveil uses (`pg_type.oid`, fixed since they are
//! assigned in PostgreSQL's catalog headers): what RowDescription and ParameterDescription
//! report, what a Bind parameter is declared as, and what the audit reads subject ids from.
//! This file imports nothing, so every module may use it.

/// A Parse parameter type or Bind declaration of 0: "unspecified", the server infers it.
pub const UNSPECIFIED: u32 = 0;

pub const BOOL: u32 = 16;
pub const BYTEA: u32 = 17;
pub const NAME: u32 = 19;
pub const INT8: u32 = 20;
pub const INT2: u32 = 21;
pub const INT4: u32 = 23;
pub const TEXT: u32 = 25;
pub const JSON: u32 = 114;
pub const FLOAT4: u32 = 700;
pub const FLOAT8: u32 = 701;
pub const UNKNOWN: u32 = 705;
pub const BPCHAR: u32 = 1042;
pub const VARCHAR: u32 = 1043;
pub const DATE: u32 = 1082;
pub const TIMESTAMP: u32 = 1114;
pub const TIMESTAMPTZ: u32 = 1184;
pub const NUMERIC: u32 = 1700;
pub const UUID: u32 = 2950;
pub const JSONB: u32 = 3802;
/// `bytea[]`: how an array parameter of ciphertexts is declared upstream.
pub const BYTEA_ARRAY: u32 = 1001;

/// Types whose binary form is their text (so a value declared as one of them is text input).
pub fn is_string(oid: u32) -> bool {
    matches!(oid, TEXT | VARCHAR | UNKNOWN | BPCHAR | NAME)
}
