//! The answers to Describe: a statement's ParameterDescription (the client's own types for
//! protected parameters, pgveil's shadow parameters hidden) and RowDescription (logical
//! types for protected columns, pgveil's subject columns taken off), and how the rows they
//! describe will be decoded.

use super::{Backend, Message};
use crate::net::backend::{BackendMessage, Field, ParameterDescription, RowDescription};
use crate::net::frontend::result_format;
use crate::pgerror::{sqlstate, PgError};
use crate::session::protected::cursors::{fetch_columns, CursorSource};
use crate::session::protected::state::{Expect, Portal, Prepared, RowInfo, State};
use crate::session::protected::values::{denied_read, RowPlan};
use crate::session::relay::Action;
use crate::sql::{ColumnRef, StatementPlan};
use crate::veil::{Database, Veil};

impl Backend<'_> {
    /// The protected column behind each result column: for a FETCH from its cursor's plan,
    /// otherwise from the database's report and the statement's plan.
    pub(super) fn columns(
        &self,
        fields: &[Field],
        plan: Option<&StatementPlan>,
        cursor: Option<&CursorSource>,
        state: &State,
    ) -> Result<Vec<Option<ColumnRef>>, PgError> {
        match cursor {
            Some(cursor) => fetch_columns(fields, &state.database, cursor),
            None => Ok(result_columns(fields, &state.database, plan)),
        }
    }

    /// A Describe of a statement: pgveil's own after a Parse (`internal`, never shown) or
    /// the client's.
    pub(super) fn describe_statement(
        &mut self,
        state: &mut State,
        (_, message): Message<'_>,
    ) -> Action {
        let Some(Expect::DescribeStatement {
            prepared,
            internal,
            cursor,
        }) = state.expect.front()
        else {
            return Action::Forward;
        };
        let (prepared, internal, cursor) = (prepared.clone(), *internal, cursor.clone());
        match message {
            BackendMessage::ParameterDescription(_) if internal => Action::Drop,
            BackendMessage::ParameterDescription(description) => {
                parameter_description(&description, &prepared, &self.session.veil)
            }
            BackendMessage::RowDescription(_) | BackendMessage::NoData => {
                state.expect.pop_front();
                let fields = fields_of(&message);
                let columns = match self.columns(&fields, prepared.plan(), cursor.as_deref(), state)
                {
                    Ok(columns) => columns,
                    Err(error) => return self.raise(error),
                };
                let strip = cursor.as_ref().map_or(prepared.injected, |c| c.injected);
                set_row(&prepared, &columns, &fields);
                match message {
                    _ if internal => Action::Drop,
                    // Formats belong to a portal, not to a statement: the rows of each
                    // Execute are decoded from its own portal (`portal_rows`).
                    BackendMessage::RowDescription(_) => {
                        self.describe_rows(&fields, &columns, &[], strip, state).0
                    }
                    _ => Action::Forward,
                }
            }
            _ => Action::Forward,
        }
    }

    pub(super) fn describe_portal(
        &mut self,
        state: &mut State,
        (_, message): Message<'_>,
    ) -> Action {
        let Some(Expect::DescribePortal(portal, cursor)) = state.expect.front() else {
            return Action::Forward;
        };
        let (portal, cursor) = (portal.clone(), cursor.clone());
        match message {
            BackendMessage::NoData => {
                state.expect.pop_front();
                let prepared = portal.as_ref().map(|p| &p.prepared);
                if let Some(prepared) =
                    prepared.filter(|p| cursor.is_none() && p.analysis.is_some())
                {
                    set_row(prepared, &[], &[]);
                }
                Action::Forward
            }
            BackendMessage::RowDescription(_) => {
                state.expect.pop_front();
                let fields = fields_of(&message);
                let prepared = portal.as_ref().map(|p| &p.prepared);
                let plan = prepared.and_then(|p| p.plan());
                let columns = match self.columns(&fields, plan, cursor.as_deref(), state) {
                    Ok(columns) => columns,
                    Err(error) => return self.raise(error),
                };
                let formats = portal
                    .as_ref()
                    .map(|p| p.result_formats.clone())
                    .unwrap_or_default();
                let strip = match &cursor {
                    Some(cursor) => cursor.injected,
                    None => prepared.map_or(0, |p| p.injected),
                };
                if let Some(prepared) =
                    prepared.filter(|p| cursor.is_none() && p.analysis.is_some())
                {
                    // The statement's result columns, as pgveil's own Describe would have
                    // found them: later portals of it need not be described again.
                    set_row(prepared, &columns, &fields);
                }
                let (action, plan) = self.describe_rows(&fields, &columns, &formats, strip, state);
                if let (Some(portal), Some(plan)) = (portal, plan) {
                    let _ = portal.described.set(plan);
                }
                action
            }
            _ => Action::Forward,
        }
    }

    /// The answer to pgveil's own Describe of a portal ahead of its Execute: it tells the
    /// statement's result columns (found as for pgveil's Describe of a statement) and is
    /// never shown.
    pub(super) fn describe_owed(&mut self, state: &mut State, (_, message): Message<'_>) -> Action {
        let Some(Expect::DescribeOwed(prepared)) = state.expect.front() else {
            return Action::Forward;
        };
        let prepared = prepared.clone();
        match message {
            BackendMessage::RowDescription(_) | BackendMessage::NoData => {
                state.expect.pop_front();
                let fields = fields_of(&message);
                let columns = result_columns(&fields, &state.database, prepared.plan());
                set_row(&prepared, &columns, &fields);
                Action::Drop
            }
            _ => Action::Forward,
        }
    }

    /// Rewrites a RowDescription: logical types for protected columns, pgveil's own subject
    /// columns removed, and (the backstop) a result that carries a denied column refused.
    /// Returns how rows described so would be decoded (`None` when refused); the caller
    /// decides whom that belongs to, as a Describe is answered before its rows and
    /// possibly long before (asyncpg: Parse, Describe, Flush, later Bind, Execute).
    pub(super) fn describe_rows(
        &mut self,
        fields: &[Field],
        columns: &[Option<ColumnRef>],
        formats: &[i16],
        strip: usize,
        state: &State,
    ) -> (Action, Option<RowPlan>) {
        let strip = strip.min(fields.len());
        if strip == 0 && columns.iter().all(Option::is_none) {
            return (Action::Forward, Some(RowPlan::default()));
        }
        let veil = &self.session.veil;
        let mut fields = fields[..fields.len() - strip].to_vec();
        let mut plan = RowPlan {
            columns: Vec::with_capacity(fields.len()),
            strip,
            stored_types: fields.iter().map(|f| f.type_oid).collect(),
        };
        for (index, (field, column)) in fields.iter_mut().zip(columns).enumerate() {
            let Some((column, spec)) = column.and_then(|c| Some((c, veil.protection.column(c)?)))
            else {
                plan.columns.push(None);
                continue;
            };
            if state.access.is_denied(column) {
                return (self.raise(denied_read(spec)), None);
            }
            field.type_oid = spec.logical_type.oid();
            field.type_size = spec.logical_type.type_size();
            field.type_modifier = -1;
            let format = if formats.is_empty() {
                field.format
            } else {
                result_format(formats, index)
            };
            plan.columns.push(Some((column, format)));
        }
        (Action::Replace(RowDescription::encode(&fields)), Some(plan))
    }
}

/// The statement's result columns, once: the first answer that tells them.
fn set_row(prepared: &Prepared, columns: &[Option<ColumnRef>], fields: &[Field]) {
    let _ = prepared.row.set(RowInfo {
        columns: columns.to_vec(),
        types: fields.iter().map(|f| f.type_oid).collect(),
    });
}

pub(super) fn fields_of(message: &BackendMessage<'_>) -> Vec<Field> {
    match message {
        BackendMessage::RowDescription(description) => description.fields().unwrap_or_default(),
        _ => Vec::new(),
    }
}

fn parameter_description(
    description: &ParameterDescription<'_>,
    prepared: &Prepared,
    veil: &Veil,
) -> Action {
    // pgveil's own parameters (shadow ciphertexts) are not the client's to see.
    let visible = prepared.shadow.as_ref().map(|s| s.visible);
    if prepared.param_columns.iter().all(Option::is_none) && visible.is_none() {
        return Action::Forward;
    }
    let Ok(mut types) = description.types() else {
        return Action::Forward;
    };
    if let Some(visible) = visible {
        types.truncate(visible);
    }
    for (index, column) in prepared.param_columns.iter().enumerate() {
        let (Some(column), Some(slot)) = (column, types.get_mut(index)) else {
            continue;
        };
        let declared = prepared.client_param_types.get(index).copied().unwrap_or(0);
        let array = prepared.param_arrays.get(index).copied().unwrap_or(false);
        *slot = if declared != 0 {
            declared
        } else {
            veil.protection.column(*column).map_or(*slot, |c| {
                if array {
                    c.logical_type.array_oid()
                } else {
                    c.logical_type.oid()
                }
            })
        };
    }
    Action::Replace(ParameterDescription::encode(&types))
}

/// Which result columns are protected: from the table OID and column number the database
/// reports, or where it reports none (an expression, a set operation), from the analysis.
pub(super) fn result_columns(
    fields: &[Field],
    database: &Database,
    plan: Option<&StatementPlan>,
) -> Vec<Option<ColumnRef>> {
    fields
        .iter()
        .enumerate()
        .map(|(index, field)| {
            let from_plan = || plan.and_then(|p| p.result_columns.get(index).copied().flatten());
            if field.table_oid != 0 {
                // A table dropped and recreated around pgveil has an OID the catalog does not
                // know yet; the analysis (by name) still knows the column is protected.
                database
                    .by_attribute
                    .get(&(field.table_oid, field.column))
                    .copied()
                    .or_else(from_plan)
            } else {
                from_plan()
            }
        })
        .collect()
}

pub(super) fn portal_rows(portal: Option<&Portal>) -> Result<RowPlan, PgError> {
    let Some(portal) = portal else {
        return Ok(RowPlan::default());
    };
    if let Some(described) = portal.described.get() {
        return Ok(described.clone());
    }
    match portal.prepared.row.get() {
        Some(info) => Ok(RowPlan {
            columns: info
                .columns
                .iter()
                .enumerate()
                .map(|(i, c)| c.map(|c| (c, result_format(&portal.result_formats, i))))
                .collect(),
            strip: portal.prepared.injected,
            stored_types: info.types.clone(),
        }),
        None if portal.prepared.analysis.is_none() => Ok(RowPlan::default()),
        None => Err(PgError::error(
            sqlstate::INTERNAL_ERROR,
            "pgveil: the result columns of this statement are unknown, so its rows are withheld",
        )),
    }
}
