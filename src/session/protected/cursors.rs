//! What each open cursor will return. A `FETCH` names no table: its rows are whatever the
//! query of its cursor selected, so pgveil keeps, per cursor opened by SQL `DECLARE` and per
//! protocol portal (both live in the database's one namespace of portals), the plan of the
//! statement that opened it. A `FETCH` is admitted with that plan ([`super::gate::admit_fetch`]):
//! the session's policy is checked, rows are decrypted and masked by it and recorded with
//! their subjects, as the underlying SELECT would be. A cursor pgveil did not see opened
//! (inside a function, by dynamic SQL) has no plan and is refused.
//!
//! The book follows the database's lifetime rules conservatively: a name is forgotten as soon
//! as the cursor may be gone (CLOSE, the end of its transaction, a rollback), never kept
//! longer, so a stale plan can never be applied to another cursor of the same name; at worst
//! a FETCH pgveil could have allowed is refused.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use super::state::{plan_at, Portal, Prepared};
use super::values::RowPlan;
use crate::net::backend::Field;
use crate::net::frontend::result_format;
use crate::pgerror::{sqlstate, PgError};
use crate::pgtype::oid;
use crate::sql::{ColumnRef, StatementPlan};
use crate::veil::{Analysis, Database};

/// What a cursor or portal returns: the plan of the statement that opened it.
pub(super) struct CursorSource {
    /// `None`: a statement that cannot touch protected data (the fast path).
    pub analysis: Option<Arc<Analysis>>,
    /// The statement within `analysis`.
    pub index: usize,
    /// Subject columns pgveil appended to its output, stripped from every row.
    pub injected: usize,
    /// The type OID of each output column, when pgveil saw its row description.
    pub types: Option<Vec<u32>>,
}

impl CursorSource {
    pub fn plan(&self) -> Option<&StatementPlan> {
        plan_at(self.analysis.as_ref(), self.index)
    }

    /// A statement that cannot touch protected data.
    pub fn plain() -> Arc<Self> {
        Arc::new(Self {
            analysis: None,
            index: 0,
            injected: 0,
            types: None,
        })
    }

    /// The statement a protocol portal (or an Execute of `DECLARE`) runs.
    pub fn of_prepared(prepared: &Prepared) -> Arc<Self> {
        Arc::new(Self {
            analysis: prepared.analysis.clone(),
            index: 0,
            injected: prepared.injected,
            types: prepared.row.get().map(|row| row.types.clone()),
        })
    }
}

/// A FETCH the gate admitted: its rows come from `source`; `fingerprint` is set when it is
/// recorded.
pub(super) struct Fetch {
    pub source: Arc<CursorSource>,
    pub fingerprint: Option<String>,
}

#[derive(Clone)]
struct Cursor {
    source: Arc<CursorSource>,
    holdable: bool,
    /// A holdable cursor whose transaction committed: it outlives transactions.
    committed: bool,
    /// The cycle (Query or Sync) whose transaction opened it.
    cycle: u64,
}

/// The cursors opened by SQL `DECLARE`, by name.
#[derive(Clone, Default)]
pub(super) struct Cursors {
    open: HashMap<String, Cursor>,
    /// Client messages that end a cycle (Query, Sync, FunctionCall) sent and answered.
    sent: u64,
    answered: u64,
    /// An error happened in the transaction being answered: it rolls back.
    failed: bool,
}

impl Cursors {
    /// A client message that ends a cycle went up.
    pub fn cycle_sent(&mut self) {
        self.sent += 1;
    }

    /// `DECLARE name` goes up in the current cycle.
    pub fn declare(&mut self, name: String, holdable: bool, source: Arc<CursorSource>) {
        let cursor = Cursor {
            source,
            holdable,
            committed: false,
            cycle: self.sent + 1,
        };
        self.open.insert(name, cursor);
    }

    /// `CLOSE name`: a cursor or a protocol portal.
    pub fn close(&mut self, name: &str, portals: &mut HashMap<Bytes, Arc<Portal>>) {
        self.open.remove(name);
        portals.remove(name.as_bytes());
    }

    /// `CLOSE ALL`, `DISCARD ALL`.
    pub fn close_all(&mut self, portals: &mut HashMap<Bytes, Arc<Portal>>) {
        self.open.clear();
        portals.retain(|name, _| name.is_empty());
    }

    /// What the cursor or portal `name` returns; `None` when pgveil does not know it, or
    /// knows two (a DECLARE and a Bind of the same name: one of them failed, pgveil cannot
    /// tell which).
    pub fn lookup(
        &self,
        name: &str,
        portals: &HashMap<Bytes, Arc<Portal>>,
    ) -> Option<Arc<CursorSource>> {
        let declared = self.open.get(name).map(|c| c.source.clone());
        let bound = (!name.is_empty())
            .then(|| portals.get(name.as_bytes()))
            .flatten()
            .map(|p| CursorSource::of_prepared(&p.prepared));
        match (declared, bound) {
            (Some(source), None) | (None, Some(source)) => Some(source),
            _ => None,
        }
    }

    /// The database reported an error: the transaction it happened in rolls back.
    pub fn error(&mut self) {
        self.failed = true;
    }

    /// A ROLLBACK (also to a savepoint, also a COMMIT of a failed transaction) completed:
    /// every cursor not yet committed may be gone.
    pub fn rolled_back(&mut self) {
        let current = self.answered + 1;
        self.open.retain(|_, c| c.committed || c.cycle > current);
    }

    /// A ReadyForQuery answering a client cycle, with the transaction status.
    pub fn ready(&mut self, status: u8) {
        self.answered += 1;
        if status != b'I' {
            return;
        }
        let (answered, failed) = (self.answered, std::mem::take(&mut self.failed));
        self.open.retain(|_, c| {
            if c.committed || c.cycle > answered {
                return true;
            }
            c.committed = c.holdable && !failed;
            c.committed
        });
    }
}

/// The protected column behind each column of a FETCH's rows: the plan of the statement
/// that opened the cursor says; where the database names a protected table's column, it
/// must say the same, or the rows are not the ones pgveil expects and are withheld.
pub(super) fn fetch_columns(
    fields: &[Field],
    database: &Database,
    source: &CursorSource,
) -> Result<Vec<Option<ColumnRef>>, PgError> {
    let plan = source.plan();
    if let Some(plan) = plan {
        if plan.result_columns.len() + source.injected != fields.len() {
            return Err(cursor_mismatch());
        }
    }
    fields
        .iter()
        .enumerate()
        .map(|(index, field)| {
            let planned = plan.and_then(|p| p.result_columns.get(index).copied().flatten());
            let named = (field.table_oid != 0)
                .then(|| database.by_attribute.get(&(field.table_oid, field.column)))
                .flatten()
                .copied();
            match named {
                Some(column) if Some(column) != planned => Err(cursor_mismatch()),
                _ => Ok(planned),
            }
        })
        .collect()
}

/// How to treat the rows of a FETCH executed by the extended protocol (no RowDescription
/// comes with them): the plan's columns, in the formats the FETCH's Bind asked for.
pub(super) fn fetch_rows(source: &CursorSource, formats: &[i16]) -> RowPlan {
    let Some(plan) = source.plan() else {
        return RowPlan::default();
    };
    RowPlan {
        columns: plan
            .result_columns
            .iter()
            .enumerate()
            .map(|(i, c)| c.map(|c| (c, result_format(formats, i))))
            .collect(),
        strip: source.injected,
        stored_types: source.types.clone().unwrap_or_default(),
    }
}

/// The row layout of a FETCH for its record: each column's type (unknown: text) and format.
pub(super) fn fetch_row_types(
    source: &CursorSource,
    described: Option<&[u32]>,
    formats: &[i16],
) -> Option<(Vec<(u32, i16)>, usize)> {
    let types: Vec<u32> = match (described, source.types.as_deref()) {
        (Some(types), _) | (None, Some(types)) => types.to_vec(),
        (None, None) => {
            let count = source.plan()?.result_columns.len() + source.injected;
            vec![oid::TEXT; count]
        }
    };
    let layout = types
        .iter()
        .enumerate()
        .map(|(i, oid)| (*oid, result_format(formats, i)))
        .collect();
    Some((layout, source.injected))
}

fn cursor_mismatch() -> PgError {
    PgError::error(
        sqlstate::FEATURE_NOT_SUPPORTED,
        "pgveil: the rows of this cursor do not match the statement that opened it, so they are withheld",
    )
}

/// Rows that carry a protected column by a way pgveil did not see.
pub(super) fn unattributed() -> PgError {
    PgError::error(
        sqlstate::FEATURE_NOT_SUPPORTED,
        "pgveil: this statement returns protected columns pgveil did not see it select, so its rows are withheld",
    )
}
