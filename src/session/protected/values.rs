//! Values to and from protected columns: literals and parameters encrypted on the way up,
//! stored values decrypted, masked and re-encoded on the way back, in the format the client
//! asked for.

use std::borrow::Cow;

use bytes::Bytes;

use super::state::State;
use crate::crypto::envelope::ColumnCipher;
use crate::metrics::{self, ErrorKind};
use crate::net::backend::DataRow;
use crate::pgerror::{sqlstate, PgError};
use crate::pgtype::{self, SessionTime, WireFormat};
use crate::policy::{mask, Access};
use crate::schema::ProtectedColumn;
use crate::sql::ColumnRef;
use crate::veil::Veil;

/// How to treat each column of the rows being relayed.
#[derive(Clone, Default)]
pub(super) struct RowPlan {
    /// Per shown column: the protected column behind it and the format it is sent in.
    pub columns: Vec<Option<(ColumnRef, i16)>>,
    /// Trailing subject columns pgveil appended, removed before the client sees the row.
    pub strip: usize,
    /// The database's type OID of each column as described (missing: bytea). A protected
    /// column of another type is still plaintext in the database (being migrated).
    pub stored_types: Vec<u32>,
}

impl RowPlan {
    pub fn is_plain(&self) -> bool {
        self.strip == 0 && self.columns.iter().all(Option::is_none)
    }
}

/// The ciphertext of a literal written as text.
pub(super) fn encrypt_text(
    veil: &Veil,
    column: ColumnRef,
    text: &[u8],
    time: &SessionTime,
) -> Result<Vec<u8>, PgError> {
    let (cipher, spec) = cipher_and_spec(veil, column)?;
    let canonical = pgtype::canonical_from_text(spec.logical_type, text, time)
        .map_err(|e| value_error(&e, &spec.qualified_name()))?;
    Ok(cipher.encrypt(&canonical))
}

/// The ciphertexts of a literal written as text under every configured key, the current
/// one first (a comparison with a deterministic column after a key rotation).
pub(super) fn encrypt_text_every_key(
    veil: &Veil,
    column: ColumnRef,
    text: &[u8],
    time: &SessionTime,
) -> Result<Vec<Vec<u8>>, PgError> {
    let (cipher, spec) = cipher_and_spec(veil, column)?;
    let canonical = pgtype::canonical_from_text(spec.logical_type, text, time)
        .map_err(|e| value_error(&e, &spec.qualified_name()))?;
    Ok(cipher.ciphertexts_under_every_key(&canonical))
}

/// How many master keys a column's values may be under (1 until a key rotation).
pub(super) fn key_count(veil: &Veil, column: ColumnRef) -> usize {
    veil.cipher(column).map_or(1, |c| c.key_count())
}

/// The ciphertext of a bound parameter, sent in `format` as `declared_type` (0: unspecified).
pub(super) fn encrypt_param(
    veil: &Veil,
    column: ColumnRef,
    value: &[u8],
    format: i16,
    declared_type: u32,
    time: &SessionTime,
) -> Result<Vec<u8>, PgError> {
    let (cipher, canonical) = canonical_param(veil, column, value, format, declared_type, time)?;
    Ok(cipher.encrypt(&canonical))
}

/// A bound parameter compared with a deterministic column while several master keys are
/// configured: a binary `bytea[]` of its ciphertexts under every key, the current one first.
pub(super) fn encrypt_param_every_key(
    veil: &Veil,
    column: ColumnRef,
    value: &[u8],
    format: i16,
    declared_type: u32,
    time: &SessionTime,
) -> Result<Vec<u8>, PgError> {
    let (cipher, canonical) = canonical_param(veil, column, value, format, declared_type, time)?;
    let every: Vec<Option<Vec<u8>>> = cipher
        .ciphertexts_under_every_key(&canonical)
        .into_iter()
        .map(Some)
        .collect();
    pgtype::array::bytea_array_binary(&every).map_err(|e| {
        let name = veil
            .protection
            .column(column)
            .map(ProtectedColumn::qualified_name)
            .unwrap_or_default();
        value_error(&e, &name)
    })
}

/// A parameter's canonical value, with its column's cipher.
fn canonical_param<'v>(
    veil: &'v Veil,
    column: ColumnRef,
    value: &[u8],
    format: i16,
    declared_type: u32,
    time: &SessionTime,
) -> Result<(&'v ColumnCipher, Vec<u8>), PgError> {
    let (cipher, spec) = cipher_and_spec(veil, column)?;
    let canonical = if format == 1 {
        let source = if declared_type == 0 {
            spec.logical_type.oid()
        } else {
            declared_type
        };
        pgtype::canonical_from_binary(spec.logical_type, source, value, time)
    } else {
        pgtype::canonical_from_text(spec.logical_type, value, time)
    }
    .map_err(|e| value_error(&e, &spec.qualified_name()))?;
    Ok((cipher, canonical))
}

/// The ciphertexts of an array parameter's elements, for a column its elements are
/// unnested into: a binary `bytea[]` of the same length, NULL elements kept NULL. With
/// `every_key` (an array compared with the column, `col = ANY($n)`, while several master
/// keys are configured) each element is there under every key.
pub(super) fn encrypt_array_param(
    veil: &Veil,
    column: ColumnRef,
    value: &[u8],
    format: i16,
    time: &SessionTime,
    every_key: bool,
) -> Result<Vec<u8>, PgError> {
    let (cipher, spec) = cipher_and_spec(veil, column)?;
    let name = spec.qualified_name();
    let ty = spec.logical_type;
    let canonical: Vec<Option<Vec<u8>>> = if format == 1 {
        let (element_type, elements) =
            pgtype::array::binary_array_elements(value).map_err(|e| value_error(&e, &name))?;
        elements
            .into_iter()
            .map(|e| {
                e.map(|bytes| pgtype::canonical_from_binary(ty, element_type, bytes, time))
                    .transpose()
            })
            .collect::<Result<_, _>>()
    } else {
        pgtype::array::text_array_elements(value).and_then(|elements| {
            elements
                .into_iter()
                .map(|e| {
                    e.map(|text| pgtype::canonical_from_text(ty, &text, time))
                        .transpose()
                })
                .collect::<Result<_, _>>()
        })
    }
    .map_err(|e| value_error(&e, &name))?;
    let mut encrypted = Vec::with_capacity(canonical.len());
    for element in canonical {
        match element {
            None => encrypted.push(None),
            Some(c) if every_key => {
                encrypted.extend(cipher.ciphertexts_under_every_key(&c).into_iter().map(Some))
            }
            Some(c) => encrypted.push(Some(cipher.encrypt(&c))),
        }
    }
    pgtype::array::bytea_array_binary(&encrypted).map_err(|e| value_error(&e, &name))
}

/// A text-form array literal unnested into `column` (`'{a,NULL}'::text[]`), as a `bytea[]`
/// expression of its elements' ciphertexts (NULL elements kept).
pub(super) fn encrypt_text_array(
    veil: &Veil,
    column: ColumnRef,
    text: &[u8],
    time: &SessionTime,
    standard_strings: bool,
    every_key: bool,
) -> Result<String, PgError> {
    let name = cipher_and_spec(veil, column)?.1.qualified_name();
    let elements = pgtype::array::text_array_elements(text).map_err(|e| value_error(&e, &name))?;
    if elements.is_empty() {
        return Ok("'{}'::bytea[]".to_string());
    }
    let mut parts = Vec::with_capacity(elements.len());
    for element in elements {
        parts.push(match element {
            None => "NULL".to_string(),
            Some(e) if every_key => encrypt_text_every_key(veil, column, &e, time)?
                .iter()
                .map(|c| bytea_literal(c, standard_strings))
                .collect::<Vec<_>>()
                .join(", "),
            Some(e) => bytea_literal(&encrypt_text(veil, column, &e, time)?, standard_strings),
        });
    }
    Ok(format!("ARRAY[{}]::bytea[]", parts.join(", ")))
}

fn cipher_and_spec(
    veil: &Veil,
    column: ColumnRef,
) -> Result<(&ColumnCipher, &ProtectedColumn), PgError> {
    match (veil.cipher(column), veil.protection.column(column)) {
        (Some(cipher), Some(spec)) => Ok((cipher, spec)),
        _ => Err(PgError::error(
            sqlstate::INTERNAL_ERROR,
            "pgveil: protected column without a key",
        )),
    }
}

fn value_error(e: &pgtype::ValueError, column: &str) -> PgError {
    // The message names the type and the column, never the value.
    PgError::error(
        e.sqlstate(),
        format!("{} (for protected column {column})", e.message()),
    )
}

/// A bytea literal of `ciphertext`, as the session's standard_conforming_strings reads it.
pub(super) fn bytea_literal(ciphertext: &[u8], standard_strings: bool) -> String {
    let mut literal = Vec::with_capacity(16 + 2 * ciphertext.len());
    let quote: &[u8] = if standard_strings { b"'" } else { b"E'\\" };
    literal.extend_from_slice(quote);
    pgtype::push_bytea_hex(ciphertext, &mut literal);
    literal.extend_from_slice(b"'::bytea");
    // Only ASCII was written.
    String::from_utf8_lossy(&literal).into_owned()
}

/// The error for a read of a column the session is denied.
pub(super) fn denied_read(column: &ProtectedColumn) -> PgError {
    PgError::error(
        sqlstate::INSUFFICIENT_PRIVILEGE,
        format!(
            "pgveil: permission denied to read protected column {}",
            column.qualified_name()
        ),
    )
}

/// Decrypts, masks and re-encodes the protected values of one DataRow, and drops pgveil's
/// own trailing subject columns.
pub(super) fn decrypt_row(
    row: &DataRow<'_>,
    rows: &RowPlan,
    veil: &Veil,
    state: &State,
) -> Result<Bytes, PgError> {
    let values = row.values().map_err(|_| {
        PgError::error(
            sqlstate::PROTOCOL_VIOLATION,
            "pgveil: malformed DataRow from the database",
        )
    })?;
    let shown = values.len().saturating_sub(rows.strip);
    let mut out: Vec<Option<Cow<'_, [u8]>>> = Vec::with_capacity(shown);
    for (index, stored) in values.into_iter().take(shown).enumerate() {
        let plan = rows.columns.get(index).copied().flatten();
        let value = match (plan, stored) {
            (Some((column, format)), Some(stored)) => {
                let stored_type = rows.stored_types.get(index).copied();
                let stored_type = stored_type.unwrap_or(crate::pgtype::oid::BYTEA);
                reveal_stored(stored, stored_type, column, format, veil, state)?.map(Cow::Owned)
            }
            (_, Some(stored)) => Some(Cow::Borrowed(stored)),
            (_, None) => None,
        };
        out.push(value);
    }
    Ok(DataRow::encode(
        out.iter()
            .map(|v| v.as_deref())
            .collect::<Vec<_>>()
            .into_iter(),
    ))
}

/// One stored value as the session may see it; `None` is SQL NULL (a `mask:null`).
/// `stored` is as the database sent it, in `format` (bytea's text form, or its raw bytes);
/// the value is re-encoded in that same format.
pub(super) fn reveal(
    stored: &[u8],
    column: ColumnRef,
    format: i16,
    veil: &Veil,
    state: &State,
) -> Result<Option<Vec<u8>>, PgError> {
    reveal_stored(
        stored,
        crate::pgtype::oid::BYTEA,
        column,
        format,
        veil,
        state,
    )
}

/// [`reveal`] of a value the database sent as `stored_type`: bytea is ciphertext; any other
/// type is the plaintext of a column being migrated (not decrypted, but masked or refused
/// by the same policy).
pub(super) fn reveal_stored(
    stored: &[u8],
    stored_type: u32,
    column: ColumnRef,
    format: i16,
    veil: &Veil,
    state: &State,
) -> Result<Option<Vec<u8>>, PgError> {
    if stored_type != crate::pgtype::oid::BYTEA {
        let (_, spec) = cipher_and_spec(veil, column)?;
        let canonical = if format == 1 {
            pgtype::canonical_from_binary(spec.logical_type, stored_type, stored, &state.time)
        } else {
            pgtype::canonical_from_text(spec.logical_type, stored, &state.time)
        }
        .map_err(|e| value_error(&e, &spec.qualified_name()))?;
        return show(canonical, column, spec, format, state);
    }
    let ciphertext = if format == 0 {
        let decoded = pgtype::decode_bytea_text(stored);
        Cow::Owned(decoded.ok_or_else(|| corrupt_value(veil, column))?)
    } else {
        Cow::Borrowed(stored)
    };
    reveal_ciphertext(&ciphertext, column, format, veil, state)
}

/// [`reveal`] of a value already taken out of bytea's text form.
pub(super) fn reveal_ciphertext(
    ciphertext: &[u8],
    column: ColumnRef,
    format: i16,
    veil: &Veil,
    state: &State,
) -> Result<Option<Vec<u8>>, PgError> {
    let (cipher, spec) = cipher_and_spec(veil, column)?;
    let canonical = cipher
        .decrypt(ciphertext)
        .map_err(|_| corrupt_value(veil, column))?;
    show(canonical, column, spec, format, state)
}

/// A value's canonical plaintext as the session may see it: masked or refused by its
/// policy, encoded in the client's format.
fn show(
    canonical: Vec<u8>,
    column: ColumnRef,
    spec: &ProtectedColumn,
    format: i16,
    state: &State,
) -> Result<Option<Vec<u8>>, PgError> {
    let wire = WireFormat::from_code(format).unwrap_or(WireFormat::Text);
    let shown = match state.access.get(column) {
        Access::Plaintext => Some(canonical),
        Access::Mask(kind) => mask::apply(kind, spec.logical_type, &canonical).map_err(|_| {
            PgError::error(
                sqlstate::DATA_CORRUPTED,
                format!(
                    "pgveil: a value of protected column {} cannot be masked",
                    spec.qualified_name()
                ),
            )
        })?,
        Access::Deny => return Err(denied_read(spec)),
    };
    match shown {
        None => Ok(None),
        Some(canonical) => pgtype::to_wire(spec.logical_type, &canonical, wire, &state.time)
            .map(Some)
            .map_err(|e| value_error(&e, &spec.qualified_name())),
    }
}

/// A stored value that does not decrypt: counted, and named by its column only.
pub(super) fn corrupt_value(veil: &Veil, column: ColumnRef) -> PgError {
    metrics::get().error(ErrorKind::Database);
    let name = veil
        .protection
        .column(column)
        .map(ProtectedColumn::qualified_name)
        .unwrap_or_default();
    PgError::error(
        sqlstate::DATA_CORRUPTED,
        format!("pgveil: a value of protected column {name} cannot be decrypted (tampered with, or copied from another column)"),
    )
}
