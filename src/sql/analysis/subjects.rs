//! Subject detection for the audit log: where the top-level output already holds the
//! subject column, where it can be injected, and why not otherwise.

use std::ops::ControlFlow;

use sqlparser::ast::{visit_expressions, Expr, Select};

use crate::schema::TableName;
use crate::sql::{SubjectPlan, SubjectSource};

use super::values::*;
use super::Analyzer;

/// What the top-level SELECT (or RETURNING) allows for subject injection.
pub(super) struct TopLevel {
    pub(super) insert_at: Option<usize>,
    pub(super) blocker: Option<String>,
    /// Catalog relations of the top-level FROM: table, alias, reference number.
    pub(super) aliases: Vec<(TableName, String, u32)>,
}

/// Aggregate functions: a row of an aggregate's result belongs to no single subject.
const AGGREGATES: &[&str] = &[
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "array_agg",
    "string_agg",
    "bool_and",
    "bool_or",
    "every",
    "json_agg",
    "jsonb_agg",
    "json_object_agg",
    "jsonb_object_agg",
    "bit_and",
    "bit_or",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "variance",
    "var_pop",
    "var_samp",
    "mode",
    "percentile_cont",
    "percentile_disc",
    "xmlagg",
    "range_agg",
    "any_value",
];

/// Does the SELECT list call an aggregate (not as a window function)?
fn has_aggregate(s: &Select) -> bool {
    let mut found = false;
    let _ = visit_expressions(&s.projection, |e| {
        if let Expr::Function(f) = e {
            if f.over.is_none() {
                let name = f.name.0.last().map(|p| p.to_string().to_ascii_lowercase());
                if name.is_some_and(|n| AGGREGATES.contains(&n.as_str())) {
                    found = true;
                }
            }
        }
        ControlFlow::<()>::Continue(())
    });
    found
}

fn quote_identifier(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

impl Analyzer<'_> {
    /// The top-level output cannot take an extra column (`reason` says why).
    pub(super) fn block_injection(&mut self, top: bool, reason: &str) {
        if top {
            self.top_level = Some(TopLevel {
                insert_at: None,
                blocker: Some(reason.into()),
                aliases: Vec::new(),
            });
        }
    }

    /// The top-level SELECT: the subject column can go at the end of its SELECT list,
    /// unless its rows are not one per table row.
    pub(super) fn top_level_select(&mut self, s: &Select, grouped: bool) {
        let blocker = if s.distinct.is_some() {
            Some("DISTINCT")
        } else if grouped || s.having.is_some() {
            Some("GROUP BY")
        } else if has_aggregate(s) {
            Some("aggregate")
        } else if s.into.is_some() {
            Some("SELECT INTO")
        } else {
            None
        };
        self.top_level = Some(TopLevel {
            insert_at: self.projection_end(s),
            blocker: blocker.map(str::to_string),
            aliases: self.scope_aliases(),
        });
    }

    /// A top-level RETURNING: the subject column can go at the end of the statement.
    pub(super) fn top_level_returning(&mut self) {
        self.top_level = Some(TopLevel {
            insert_at: Some(self.statement_end),
            blocker: None,
            aliases: self.scope_aliases(),
        });
    }

    /// Catalog relations of the innermost scope: table, alias, reference number.
    fn scope_aliases(&self) -> Vec<(TableName, String, u32)> {
        self.scopes
            .last()
            .map(|scope| {
                scope
                    .iter()
                    .filter_map(|source| {
                        source
                            .table
                            .clone()
                            .map(|t| (t, source.alias.clone(), source.reference))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// One source per table that has a subject column and whose protected columns the
    /// statement returns.
    pub(super) fn subjects(&self) -> SubjectPlan {
        let sources = self
            .subject_tables()
            .into_iter()
            .filter_map(|table| {
                let subject = self.protection.subject_column(&table)?;
                Some(self.subject_source(table, subject))
            })
            .collect();
        SubjectPlan { sources }
    }

    /// Tables with a subject column among those read, in order of the reads.
    fn subject_tables(&self) -> Vec<TableName> {
        let mut tables: Vec<TableName> = Vec::new();
        for &c in &self.reads {
            if let Some(col) = self.protection.column(c) {
                if self.protection.subject_column(&col.table).is_some()
                    && !tables.contains(&col.table)
                {
                    tables.push(col.table.clone());
                }
            }
        }
        tables
    }

    /// Which references to `table` the returned protected values come from (`None`: a
    /// value that passed through an expression).
    fn output_references(&self, table: &TableName) -> Vec<Option<u32>> {
        let mut references: Vec<Option<u32>> = Vec::new();
        for o in &self.top_outputs {
            if let Value::Column {
                protected: Some(c),
                origin,
            } = &o.value
            {
                if self
                    .protection
                    .column(*c)
                    .is_some_and(|col| col.table == *table)
                {
                    let r = origin.as_ref().map(|(_, _, r)| *r);
                    if !references.contains(&r) {
                        references.push(r);
                    }
                }
            }
        }
        references
    }

    /// How the audit learns the subject of `table`: already selected, injectable, or not.
    fn subject_source(&self, table: TableName, subject: &str) -> SubjectSource {
        let unknown = |reason: &str| SubjectSource::Unknown {
            table: table.clone(),
            reason: reason.to_string(),
        };
        let reference = match self.output_references(&table).as_slice() {
            [Some(r)] => *r,
            [None] => return unknown("value passes through an expression or set operation"),
            _ => return unknown("table is read through more than one reference"),
        };
        let selected = self.top_outputs.iter().position(|o| match &o.value {
            Value::Column {
                origin: Some((t, c, r)),
                ..
            } => *t == table && c == subject && *r == reference,
            _ => false,
        });
        if let Some(output_position) = selected {
            return SubjectSource::Selected {
                table,
                output_position,
            };
        }
        match &self.top_level {
            None => unknown("statement shape does not allow adding the subject column"),
            Some(TopLevel {
                blocker: Some(b), ..
            }) => unknown(b),
            Some(TopLevel {
                insert_at: None, ..
            }) => unknown("no place to add the subject column"),
            Some(TopLevel {
                insert_at: Some(at),
                aliases,
                ..
            }) => match aliases.iter().find(|(_, _, r)| *r == reference) {
                Some((_, alias, _)) => SubjectSource::Injectable {
                    table: table.clone(),
                    insert_at: *at,
                    text: format!(
                        ", {}.{}",
                        quote_identifier(alias),
                        quote_identifier(subject)
                    ),
                },
                None => unknown("table is read through a subquery or CTE"),
            },
        }
    }
}
