//! Columns being migrated (plaintext in the database, migrate's shadow column beside them):
//! the ciphertexts a session adds for their shadow columns, and when it re-reads the
//! catalog to see the migration's swap.
//!
//! The analysis ([`crate::sql::ShadowWrite`]) says where each shadow value goes. A literal's
//! ciphertext is written as a bytea literal; a parameter's is an extra parameter, numbered
//! after every parameter the client can bind, declared bytea in Parse, bound in Bind to the
//! encryption of the client's value and hidden from ParameterDescription.

use std::ops::Range;

use bytes::Bytes;

use super::state::State;
use super::values::{bytea_literal, encrypt_param, encrypt_text};
use crate::net::frontend::Bind;
use crate::pgerror::PgError;
use crate::schema::LogicalType;
use crate::session::introspect::Wanted;
use crate::sql::{ColumnRef, ShadowValue, StatementPlan};
use crate::veil::Veil;

/// The extra parameters of a prepared statement that writes migrating columns.
#[derive(Debug, Clone, Default)]
pub(super) struct ShadowParams {
    /// How many parameters the client binds (those after are pgveil's).
    pub visible: usize,
    /// Per extra parameter: the client's parameter (0-based) it encrypts, and for which column.
    pub sources: Vec<(usize, ColumnRef)>,
}

/// The bytea literals a statement's shadow columns receive.
pub(super) fn shadow_literals(
    plan: &StatementPlan,
    veil: &Veil,
    state: &State,
) -> Result<Vec<(Range<usize>, String)>, PgError> {
    let mut out = Vec::new();
    for write in &plan.shadow_writes {
        if let ShadowValue::Literal(text) = &write.value {
            let ciphertext = encrypt_text(veil, write.column, text.as_bytes(), &state.time)?;
            out.push((
                write.insert_at..write.insert_at,
                format!(
                    "{}{}",
                    write.prefix,
                    bytea_literal(&ciphertext, state.standard_strings)
                ),
            ));
        }
    }
    Ok(out)
}

/// For a Parse: the text insertions of the extra parameters, and which client parameter
/// each encrypts; `param_types` (as declared upstream) gets them declared bytea.
pub(super) fn shadow_params(
    plan: &StatementPlan,
    param_types: &mut Vec<u32>,
) -> (Vec<(Range<usize>, String)>, Option<ShadowParams>) {
    let mut replacements = Vec::new();
    let visible = param_types.len().max(plan.max_param as usize);
    let mut params = ShadowParams {
        visible,
        sources: Vec::new(),
    };
    for write in &plan.shadow_writes {
        let ShadowValue::Param(source) = write.value else {
            continue;
        };
        let number = visible + params.sources.len() + 1;
        params
            .sources
            .push((source.saturating_sub(1) as usize, write.column));
        replacements.push((
            write.insert_at..write.insert_at,
            format!("{}${number}::pg_catalog.bytea", write.prefix),
        ));
    }
    if params.sources.is_empty() {
        return (replacements, None);
    }
    param_types.resize(visible, 0);
    param_types.extend(std::iter::repeat_n(
        LogicalType::Bytea.oid(),
        params.sources.len(),
    ));
    (replacements, Some(params))
}

/// For a Bind: appends the extra parameters (the client's values encrypted); the client's
/// own values are left as sent (`bind` must hold them before any is encrypted in place).
pub(super) fn bind_shadow_params(
    bind: &mut Bind,
    params: &ShadowParams,
    declared: &[u32],
    veil: &Veil,
    state: &State,
) -> Result<(), PgError> {
    bind.expand_param_formats();
    let mut extra = Vec::with_capacity(params.sources.len());
    for &(source, column) in &params.sources {
        let value = match bind.params.get(source) {
            Some(Some(value)) => {
                let format = bind.param_format(source);
                let declared = declared.get(source).copied().unwrap_or(0);
                Some(Bytes::from(encrypt_param(
                    veil,
                    column,
                    value,
                    format,
                    declared,
                    &state.time,
                )?))
            }
            _ => None,
        };
        extra.push(value);
    }
    // A Bind with another count than the statement needs is the database's to refuse: the
    // extra parameters are appended to what the client sent, never padded.
    for value in extra {
        bind.params.push(value);
        bind.param_formats.push(1);
    }
    Ok(())
}

/// The catalog is read again after a statement that uses a migrating column, so the swap
/// (the column becomes bytea, the shadow disappears) is seen by the next statement.
pub(super) fn refresh_after(plan: Option<&StatementPlan>) -> Option<Wanted> {
    plan.filter(|p| !p.migrating.is_empty()).map(|_| Wanted {
        catalog: true,
        search_path: true,
        roles: false,
    })
}
