//! The envelope constraint (DESIGN.md "Defense in depth"): a `CHECK` named
//! `pgveil_envelope_<column>` that lets the database itself accept only `NULL` or a value with
//! pgveil's envelope: version `0x01`, a key id pgveil knows, the column's mode byte and at
//! least the envelope's length. `pgveil apply` and `pgveil migrate` both build it here, so the
//! two never disagree about its name or its text.
//!
//! The expression compares the first six bytes (version, key id, mode) with the allowed
//! headers using `substring`, which never raises on short values (unlike `get_byte`), and
//! spells them with `decode(…, 'hex')`, which does not depend on `standard_conforming_strings`.

use std::collections::BTreeSet;

use super::envelope::{HEADER_LEN, OVERHEAD, VERSION};
use crate::schema::{EncryptionMode, TableName};

/// PostgreSQL keeps the first 63 bytes of an identifier (NAMEDATALEN - 1).
const MAX_IDENTIFIER_BYTES: usize = 63;

/// `"name"` with embedded quotes doubled: an identifier PostgreSQL reads back as `name`.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `"schema"."table"`.
pub fn quote_table(table: &TableName) -> String {
    format!(
        "{}.{}",
        quote_ident(&table.schema),
        quote_ident(&table.name)
    )
}

/// `name` cut to what PostgreSQL stores (63 bytes, at a character boundary), so a lookup by
/// name finds the constraint PostgreSQL created.
pub fn truncate_identifier(name: &str) -> String {
    if name.len() <= MAX_IDENTIFIER_BYTES {
        return name.to_string();
    }
    let mut end = MAX_IDENTIFIER_BYTES;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_string()
}

/// The envelope constraint of one protected column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeConstraint {
    pub table: TableName,
    /// The column the constraint checks (during a plaintext migration: the shadow column).
    pub column: String,
    /// `pgveil_envelope_<configured column>`, as PostgreSQL stores it.
    pub name: String,
    pub mode: EncryptionMode,
    /// Every key id values may carry (current and previous master keys).
    pub key_ids: Vec<u32>,
}

impl EnvelopeConstraint {
    /// The constraint for `column` of `table`, whose values are named `configured_column` in
    /// the configuration (the same, except on a shadow column during a migration).
    pub fn new(
        table: &TableName,
        column: &str,
        configured_column: &str,
        mode: EncryptionMode,
        key_ids: &[u32],
    ) -> EnvelopeConstraint {
        let mut key_ids = key_ids.to_vec();
        key_ids.sort_unstable();
        key_ids.dedup();
        EnvelopeConstraint {
            table: table.clone(),
            column: column.to_string(),
            name: constraint_name(configured_column),
            mode,
            key_ids,
        }
    }

    /// The first bytes every allowed value starts with (version, key id, mode), in hex.
    fn headers(&self) -> BTreeSet<String> {
        self.key_ids
            .iter()
            .map(|id| {
                let mut header = [0u8; HEADER_LEN];
                header[0] = VERSION;
                header[1..5].copy_from_slice(&id.to_be_bytes());
                header[5] = self.mode.tag();
                hex::encode(header)
            })
            .collect()
    }

    /// Whether a definition as PostgreSQL prints it (`pg_get_constraintdef`) checks what
    /// this constraint checks: the same headers (as `decode('…', 'hex')` or `'\x…'::bytea`
    /// literals) and the envelope's minimum length.
    pub fn matches_definition(&self, definition: &str) -> bool {
        let quoted: BTreeSet<String> = definition
            .split('\'')
            .skip(1)
            .step_by(2)
            .map(|literal| {
                literal
                    .strip_prefix("\\x")
                    .unwrap_or(literal)
                    .to_ascii_lowercase()
            })
            .filter(|literal| literal.len() == 2 * HEADER_LEN && hex::decode(literal).is_ok())
            .collect();
        quoted == self.headers() && definition.contains(&format!(">= {OVERHEAD}"))
    }

    /// The boolean expression of the `CHECK`.
    pub fn expression(&self) -> String {
        let column = quote_ident(&self.column);
        let headers: Vec<String> = self
            .headers()
            .iter()
            .map(|header| format!("decode('{header}', 'hex')"))
            .collect();
        format!(
            "{column} IS NULL OR (octet_length({column}) >= {OVERHEAD} AND substring({column} FROM 1 FOR {HEADER_LEN}) IN ({}))",
            headers.join(", ")
        )
    }

    /// `ALTER TABLE … ADD CONSTRAINT … CHECK (…) NOT VALID`: a catalog change only (a brief
    /// ACCESS EXCLUSIVE lock, no scan); from then on every write is checked.
    pub fn add_not_valid_sql(&self) -> String {
        format!(
            "ALTER TABLE {} ADD CONSTRAINT {} CHECK ({}) NOT VALID",
            quote_table(&self.table),
            quote_ident(&self.name),
            self.expression()
        )
    }

    /// `ALTER TABLE … VALIDATE CONSTRAINT …`: scans the existing rows under a SHARE UPDATE
    /// EXCLUSIVE lock, which blocks neither reads nor writes.
    pub fn validate_sql(&self) -> String {
        format!(
            "ALTER TABLE {} VALIDATE CONSTRAINT {}",
            quote_table(&self.table),
            quote_ident(&self.name)
        )
    }

    /// `ALTER TABLE … DROP CONSTRAINT IF EXISTS …` (to replace one whose key ids are stale).
    pub fn drop_sql(&self) -> String {
        format!(
            "ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}",
            quote_table(&self.table),
            quote_ident(&self.name)
        )
    }
}

/// `pgveil_envelope_<column>`, truncated as PostgreSQL would.
pub fn constraint_name(column: &str) -> String {
    truncate_identifier(&format!("pgveil_envelope_{column}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_definition_is_recognized_as_postgres_prints_it() {
        let table = TableName::parse("public.patients").unwrap();
        let c = EnvelopeConstraint::new(&table, "ssn", "ssn", EncryptionMode::Deterministic, &[1]);
        let header = c.headers().into_iter().next().unwrap();
        let printed = format!("CHECK (((ssn IS NULL) OR ((octet_length(ssn) >= {OVERHEAD}) AND (SUBSTRING(ssn FROM 1 FOR 6) = decode('{header}'::text, 'hex'::text)))))");
        assert!(c.matches_definition(&printed), "{printed}");
        let as_bytea = format!("CHECK (((ssn IS NULL) OR ((octet_length(ssn) >= {OVERHEAD}) AND (substr(ssn, 1, 6) = '\\x{header}'::bytea))))");
        assert!(c.matches_definition(&as_bytea), "{as_bytea}");
        let rotated =
            EnvelopeConstraint::new(&table, "ssn", "ssn", EncryptionMode::Deterministic, &[1, 2]);
        assert!(!rotated.matches_definition(&printed));
        assert!(!c.matches_definition("CHECK ((octet_length(ssn) >= 1))"));
    }

    #[test]
    fn expression_allows_each_key_id_and_the_mode() {
        let c = EnvelopeConstraint::new(
            &TableName::new("public", "patients"),
            "ssn",
            "ssn",
            EncryptionMode::Deterministic,
            &[0x6f1c2a90, 0x01020304, 0x6f1c2a90],
        );
        assert_eq!(c.name, "pgveil_envelope_ssn");
        assert_eq!(
            c.expression(),
            "\"ssn\" IS NULL OR (octet_length(\"ssn\") >= 34 AND substring(\"ssn\" FROM 1 FOR 6) IN (decode('010102030444', 'hex'), decode('016f1c2a9044', 'hex')))"
        );
        assert_eq!(
            c.add_not_valid_sql(),
            format!(
                "ALTER TABLE \"public\".\"patients\" ADD CONSTRAINT \"pgveil_envelope_ssn\" CHECK ({}) NOT VALID",
                c.expression()
            )
        );
        assert_eq!(
            c.validate_sql(),
            "ALTER TABLE \"public\".\"patients\" VALIDATE CONSTRAINT \"pgveil_envelope_ssn\""
        );
    }

    #[test]
    fn names_are_quoted_and_truncated_like_postgresql() {
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        let long = "c".repeat(60);
        assert_eq!(constraint_name(&long).len(), 63);
        let accented = format!("{}é", "c".repeat(46));
        // "pgveil_envelope_" is 16 bytes: 16 + 46 = 62, and 'é' is two bytes.
        assert_eq!(constraint_name(&accented).len(), 62);
    }
}
