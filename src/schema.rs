//! Names and types shared by configuration, analysis, crypto and policy: what a protected
//! column is, independent of how it was configured.

use std::fmt;

use crate::pgtype::oid;

/// The type an application sees for a protected column (stored as `bytea`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogicalType {
    Text,
    Varchar,
    Int2,
    Int4,
    Int8,
    Numeric,
    Float8,
    Bool,
    Date,
    Timestamp,
    Timestamptz,
    Uuid,
    Bytea,
    Jsonb,
}

impl LogicalType {
    pub const ALL: [LogicalType; 14] = [
        LogicalType::Text,
        LogicalType::Varchar,
        LogicalType::Int2,
        LogicalType::Int4,
        LogicalType::Int8,
        LogicalType::Numeric,
        LogicalType::Float8,
        LogicalType::Bool,
        LogicalType::Date,
        LogicalType::Timestamp,
        LogicalType::Timestamptz,
        LogicalType::Uuid,
        LogicalType::Bytea,
        LogicalType::Jsonb,
    ];

    /// Parses the configuration spelling (PostgreSQL's type names and common aliases).
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name.to_ascii_lowercase().as_str() {
            "text" => Self::Text,
            "varchar" | "character varying" => Self::Varchar,
            "int2" | "smallint" => Self::Int2,
            "int4" | "integer" | "int" => Self::Int4,
            "int8" | "bigint" => Self::Int8,
            "numeric" | "decimal" => Self::Numeric,
            "float8" | "double precision" => Self::Float8,
            "bool" | "boolean" => Self::Bool,
            "date" => Self::Date,
            "timestamp" | "timestamp without time zone" => Self::Timestamp,
            "timestamptz" | "timestamp with time zone" => Self::Timestamptz,
            "uuid" => Self::Uuid,
            "bytea" => Self::Bytea,
            "jsonb" => Self::Jsonb,
            _ => return None,
        })
    }

    /// PostgreSQL's canonical name, as used in associated data and messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Varchar => "varchar",
            Self::Int2 => "int2",
            Self::Int4 => "int4",
            Self::Int8 => "int8",
            Self::Numeric => "numeric",
            Self::Float8 => "float8",
            Self::Bool => "bool",
            Self::Date => "date",
            Self::Timestamp => "timestamp",
            Self::Timestamptz => "timestamptz",
            Self::Uuid => "uuid",
            Self::Bytea => "bytea",
            Self::Jsonb => "jsonb",
        }
    }

    /// The type OID shown to clients in RowDescription and ParameterDescription.
    pub fn oid(self) -> u32 {
        match self {
            Self::Text => oid::TEXT,
            Self::Varchar => oid::VARCHAR,
            Self::Int2 => oid::INT2,
            Self::Int4 => oid::INT4,
            Self::Int8 => oid::INT8,
            Self::Numeric => oid::NUMERIC,
            Self::Float8 => oid::FLOAT8,
            Self::Bool => oid::BOOL,
            Self::Date => oid::DATE,
            Self::Timestamp => oid::TIMESTAMP,
            Self::Timestamptz => oid::TIMESTAMPTZ,
            Self::Uuid => oid::UUID,
            Self::Bytea => oid::BYTEA,
            Self::Jsonb => oid::JSONB,
        }
    }

    /// The OID of the array type over this type (`text[]`), shown for an array parameter
    /// whose elements are bound to a protected column.
    pub fn array_oid(self) -> u32 {
        match self {
            Self::Text => 1009,
            Self::Varchar => 1015,
            Self::Int2 => 1005,
            Self::Int4 => 1007,
            Self::Int8 => 1016,
            Self::Numeric => 1231,
            Self::Float8 => 1022,
            Self::Bool => 1000,
            Self::Date => 1182,
            Self::Timestamp => 1115,
            Self::Timestamptz => 1185,
            Self::Uuid => 2951,
            Self::Bytea => oid::BYTEA_ARRAY,
            Self::Jsonb => 3807,
        }
    }

    /// `typlen` as RowDescription reports it (-1 for variable length).
    pub fn type_size(self) -> i16 {
        match self {
            Self::Bool => 1,
            Self::Int2 => 2,
            Self::Int4 | Self::Date => 4,
            Self::Int8 | Self::Float8 | Self::Timestamp | Self::Timestamptz => 8,
            Self::Uuid => 16,
            _ => -1,
        }
    }
}

impl fmt::Display for LogicalType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EncryptionMode {
    Deterministic,
    Randomized,
}

impl EncryptionMode {
    /// The mode byte of the ciphertext format.
    pub fn tag(self) -> u8 {
        match self {
            Self::Deterministic => b'D',
            Self::Randomized => b'R',
        }
    }
}

/// A schema-qualified relation name, always lower-case-folded as PostgreSQL stores
/// unquoted identifiers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    pub schema: String,
    pub name: String,
}

impl TableName {
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            schema: schema.into(),
            name: name.into(),
        }
    }

    /// Parses `schema.table` or `table` (meaning `public.table`).
    pub fn parse(qualified: &str) -> Option<Self> {
        let mut parts = qualified.split('.');
        let first = parts.next().filter(|s| !s.is_empty())?;
        match (parts.next(), parts.next()) {
            (None, _) => Some(Self::new("public", first)),
            (Some(second), None) if !second.is_empty() => Some(Self::new(first, second)),
            _ => None,
        }
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// One configured protected column: everything needed to encrypt, decrypt and check it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtectedColumn {
    pub table: TableName,
    pub column: String,
    pub logical_type: LogicalType,
    pub mode: EncryptionMode,
    pub domain: Option<String>,
}

impl ProtectedColumn {
    /// What the key and the associated data are bound to: the domain when there is one,
    /// otherwise the column itself. Two columns can be compared only when these match.
    pub fn key_scope(&self) -> String {
        match &self.domain {
            Some(domain) => format!("domain:{domain}"),
            None => format!("column:{}.{}", self.table, self.column),
        }
    }

    /// `schema.table.column`, the name used in messages and the audit log.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.table, self.column)
    }
}

/// The shadow column `pgveil migrate` fills beside a plaintext column: `<column>__pgveil`
/// (cut to PostgreSQL's 63 bytes, as the database would).
pub fn shadow_column(column: &str) -> String {
    crate::crypto::constraint::truncate_identifier(&format!("{column}__pgveil"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_round_trip() {
        for ty in LogicalType::ALL {
            assert_eq!(LogicalType::from_name(ty.name()), Some(ty));
        }
        assert_eq!(LogicalType::from_name("Integer"), Some(LogicalType::Int4));
        assert_eq!(LogicalType::from_name("money"), None);
    }

    #[test]
    fn table_names_default_to_public() {
        assert_eq!(
            TableName::parse("patients"),
            Some(TableName::new("public", "patients"))
        );
        assert_eq!(
            TableName::parse("ehr.visits"),
            Some(TableName::new("ehr", "visits"))
        );
        assert_eq!(TableName::parse("a.b.c"), None);
        assert_eq!(TableName::parse(".x"), None);
    }

    #[test]
    fn key_scope_prefers_domain() {
        let mut col = ProtectedColumn {
            table: TableName::new("public", "patients"),
            column: "ssn".into(),
            logical_type: LogicalType::Text,
            mode: EncryptionMode::Deterministic,
            domain: None,
        };
        assert_eq!(col.key_scope(), "column:public.patients.ssn");
        col.domain = Some("ssn".into());
        assert_eq!(col.key_scope(), "domain:ssn");
    }
}
