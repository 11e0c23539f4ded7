//! Subject detection for the audit log: where the top-level output already holds the
//! subject column, where it can be injected, and why not otherwise.

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

pub(super) fn quote_identifier(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

impl Analyzer<'_> {
    pub(super) fn block_injection(&mut self, top: bool, reason: &str) {
        if top {
            self.top_level = Some(TopLevel {
                insert_at: None,
                blocker: Some(reason.into()),
                aliases: Vec::new(),
            });
        }
    }

    pub(super) fn subjects(&self) -> SubjectPlan {
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
        let mut sources = Vec::new();
        for table in tables {
            let Some(subject) = self.protection.subject_column(&table) else {
                continue;
            };
            let unknown = |reason: &str| SubjectSource::Unknown {
                table: table.clone(),
                reason: reason.to_string(),
            };
            // Which references to the table the returned protected values come from.
            let mut refs: Vec<Option<u32>> = Vec::new();
            for o in &self.top_outputs {
                if let Value::Column {
                    protected: Some(c),
                    origin,
                } = &o.val
                {
                    if self
                        .protection
                        .column(*c)
                        .is_some_and(|col| col.table == table)
                    {
                        let r = origin.as_ref().map(|(_, _, r)| *r);
                        if !refs.contains(&r) {
                            refs.push(r);
                        }
                    }
                }
            }
            let reference = match refs.as_slice() {
                [Some(r)] => *r,
                [None] => {
                    sources.push(unknown(
                        "value passes through an expression or set operation",
                    ));
                    continue;
                }
                _ => {
                    sources.push(unknown("table is read through more than one reference"));
                    continue;
                }
            };
            let selected = self.top_outputs.iter().position(|o| match &o.val {
                Value::Column {
                    origin: Some((t, c, r)),
                    ..
                } => *t == table && c == subject && *r == reference,
                _ => false,
            });
            if let Some(output_position) = selected {
                sources.push(SubjectSource::Selected {
                    table,
                    output_position,
                });
                continue;
            }
            let source = match &self.top_level {
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
            };
            sources.push(source);
        }
        SubjectPlan { sources }
    }
}
