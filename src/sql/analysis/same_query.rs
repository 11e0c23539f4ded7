//! A simple Query's statements run one after the other, but pgveil analyses them all before
//! the first runs, with the catalog and search path as they were. DDL earlier in the same
//! Query (a temporary table dropped or created, a view replaced, the search path changed)
//! could make a later statement resolve a name differently in the database than in the
//! analysis, so a later statement that touches protected data and uses a name that DDL
//! could change is refused: the client sends the DDL and what depends on it separately.

use std::collections::HashSet;
use std::ops::ControlFlow;

use sqlparser::ast::{visit_relations, ObjectName, Statement};

use super::scopes::normalize;

/// The refusal's message.
pub(super) const SEND_SEPARATELY: &str =
    "pgveil: send DDL and the statements that depend on it separately (a statement on a protected table follows DDL that could change what its names refer to)";

/// What the statements so far in one Query may have changed.
#[derive(Debug, Default)]
pub(super) struct EarlierDdl {
    /// Any name may resolve differently (search path changed, schema or relation renamed,
    /// a statement pgveil could not parse).
    every_name: bool,
    /// Relation names (unqualified, folded) created, dropped or altered.
    names: HashSet<String>,
}

fn last_part(name: &ObjectName) -> Option<String> {
    name.0.last().and_then(|p| p.as_ident()).map(normalize)
}

impl EarlierDdl {
    /// Records what `statement` may change for the statements after it.
    pub(super) fn note(&mut self, statement: &Statement) {
        let names: Vec<&ObjectName> = match statement {
            Statement::CreateTable(ct) => vec![&ct.name],
            Statement::CreateView(cv) => vec![&cv.name],
            Statement::AlterView { name, .. } => vec![name],
            Statement::Drop { names, .. } => names.iter().collect(),
            Statement::AlterTable(at) => {
                let text = statement.to_string().to_ascii_lowercase();
                if text.contains(" rename ") || text.contains(" set schema ") {
                    self.every_name = true;
                }
                vec![&at.name]
            }
            Statement::Set(_) => {
                let text = statement.to_string().to_ascii_lowercase();
                if text.contains("search_path") || text.contains(" all") || text.contains("role") {
                    self.every_name = true;
                }
                Vec::new()
            }
            Statement::Discard { .. }
            | Statement::CreateSchema { .. }
            | Statement::AlterSchema(_)
            | Statement::RenameTable(_) => {
                self.every_name = true;
                Vec::new()
            }
            _ => Vec::new(),
        };
        self.names.extend(names.into_iter().filter_map(last_part));
    }

    /// A statement pgveil could not parse: DDL or a setting of unknown effect, unless it
    /// plainly starts with a keyword that changes no name.
    pub(super) fn note_unparsed(&mut self, first_word: &str) {
        const HARMLESS: [&str; 6] = ["select", "insert", "update", "delete", "values", "with"];
        if !HARMLESS.iter().any(|k| first_word.eq_ignore_ascii_case(k)) {
            self.every_name = true;
        }
    }

    /// True when `statement` uses a name that earlier DDL of the same Query could change.
    pub(super) fn conflicts(&self, statement: &Statement) -> bool {
        if self.every_name {
            return true;
        }
        if self.names.is_empty() {
            return false;
        }
        let mut hit = false;
        let _ = visit_relations(statement, |r| {
            hit |= last_part(r).is_some_and(|n| self.names.contains(&n));
            if hit {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        hit
    }
}
