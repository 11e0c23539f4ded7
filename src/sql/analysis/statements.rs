//! Statement level: which statement kinds are analysed, which are refused, and what a
//! statement pgveil does not rewrite may still carry (DDL with values, COPY, PREPARE).

use std::ops::ControlFlow;

use sqlparser::ast::{visit_relations, CopySource, ObjectName, Query, SetExpr, Statement};
use sqlparser::tokenizer::Token;

use crate::sql::catalog::ColumnRef;
use crate::sql::fast::may_touch_protected;
use crate::sql::StatementKind;

use super::scopes::*;
use super::subjects::*;
use super::values::*;
use super::{unsupported, Ctx, Halt, R};

pub(super) fn statement_kind(st: &Statement) -> StatementKind {
    pub(super) fn of_query(q: &Query) -> StatementKind {
        let kind = match &*q.body {
            SetExpr::Insert(_) => StatementKind::Insert,
            SetExpr::Update(_) => StatementKind::Update,
            SetExpr::Delete(_) => StatementKind::Delete,
            _ => StatementKind::Select,
        };
        // A SELECT whose CTE modifies data is reported as that modification.
        let ctes = q.with.iter().flat_map(|w| &w.cte_tables);
        match ctes
            .map(|c| of_query(&c.query))
            .find(|k| *k != StatementKind::Select)
        {
            Some(k) if kind == StatementKind::Select => k,
            _ => kind,
        }
    }
    match st {
        Statement::Query(q) => of_query(q),
        Statement::Insert(_) => StatementKind::Insert,
        Statement::Update(_) => StatementKind::Update,
        Statement::Delete(_) => StatementKind::Delete,
        Statement::Declare { .. } => StatementKind::Select,
        Statement::Explain { statement, .. } => statement_kind(statement),
        _ => StatementKind::Other,
    }
}

impl Ctx<'_> {
    pub(super) fn statement(&mut self, st: &Statement, first: usize, last: usize) -> R<()> {
        match st {
            Statement::Query(q) => {
                let outs = self.query(q, true)?;
                self.emit_top(outs)
            }
            Statement::Insert(ins) => {
                let outs = self.insert(ins, true)?;
                self.emit_top(outs)
            }
            Statement::Update(u) => {
                let outs = self.update(u, true)?;
                self.emit_top(outs)
            }
            Statement::Delete(d) => {
                let outs = self.delete(d, true)?;
                self.emit_top(outs)
            }
            Statement::Declare { stmts } => {
                for d in stmts {
                    if let Some(q) = &d.for_query {
                        let outs = self.query(q, true)?;
                        self.emit_top(outs)?;
                    }
                }
                // Rows come later, from FETCH.
                self.top = Some(TopInfo {
                    insert_at: None,
                    blocker: Some("cursor: rows are returned by FETCH".into()),
                    aliases: Vec::new(),
                });
                Ok(())
            }
            Statement::Explain { statement, .. } => {
                // EXPLAIN ANALYZE executes the statement: analyse it fully, but EXPLAIN
                // returns a plan, not rows.
                self.statement(statement, first, last)?;
                self.reads.clear();
                self.result_columns.clear();
                self.top_outs.clear();
                self.top = None;
                Ok(())
            }
            Statement::Copy { source, .. } => match source {
                CopySource::Table {
                    table_name,
                    columns,
                } => {
                    let Some(src) = self.table_source(table_name, None)? else {
                        return Ok(());
                    };
                    let Some(table) = src.table.clone() else {
                        return Ok(());
                    };
                    let protected: Vec<ColumnRef> = if columns.is_empty() {
                        let mut v: Vec<ColumnRef> = self.prot.table_columns(&table).collect();
                        v.sort();
                        v
                    } else {
                        columns
                            .iter()
                            .filter_map(|c| self.prot.lookup(&table, &norm(c)))
                            .collect()
                    };
                    match protected.first() {
                        Some(&c) => self.refuse("COPY", c),
                        None => Ok(()),
                    }
                }
                CopySource::Query(q) => {
                    self.query(q, false)?;
                    if let Some(t) = self.tables.iter().find(|t| self.prot.is_protected_table(t)) {
                        return Err(Halt::Refuse(format!(
                            "pgveil: COPY (query) is not supported on protected table {t}"
                        )));
                    }
                    Ok(())
                }
            },
            Statement::Prepare { statement, .. } => {
                // EXECUTE would carry plaintext values: refuse on protected tables.
                let _ = self.statement(statement, first, last);
                if let Some(t) = self.tables.iter().find(|t| self.prot.is_protected_table(t)) {
                    return Err(Halt::Refuse(format!(
                        "pgveil: PREPARE is not supported on protected table {t}; use the extended protocol"
                    )));
                }
                if may_touch_protected(
                    &self.sql[self.tk.ranges[first].start..self.stmt_end],
                    self.prot,
                ) {
                    return unsupported("PREPARE of a statement that may touch a protected table");
                }
                self.clear_bindings();
                Ok(())
            }
            Statement::CreateView(v) => {
                self.query(&v.query, false)?;
                if !self.literals.is_empty() || !self.params.is_empty() {
                    return Err(Halt::Refuse(
                        "pgveil: CREATE VIEW comparing an encrypted column with a literal is not supported"
                            .into(),
                    ));
                }
                self.clear_bindings();
                Ok(())
            }
            Statement::CreateTable(ct) if ct.query.is_some() => {
                if let Some(q) = &ct.query {
                    let outs = self.query(q, false)?;
                    if let Some(c) = outs.iter().find_map(|o| o.val.prot()) {
                        return self.refuse("CREATE TABLE AS", c);
                    }
                    for o in &outs {
                        self.plain_use(&o.val, "CREATE TABLE AS")?;
                    }
                }
                Ok(())
            }
            other => self.other_statement(other, first, last),
        }
    }

    pub(super) fn clear_bindings(&mut self) {
        self.literals.clear();
        self.params.clear();
        self.rewrites.clear();
        self.reads.clear();
        self.conditions.clear();
        self.writes.clear();
        self.result_columns.clear();
        self.top_outs.clear();
        self.top = None;
    }

    /// Statements pgveil does not rewrite: allowed unless they mention a protected table in
    /// a way that could carry values.
    pub(super) fn other_statement(&mut self, st: &Statement, first: usize, last: usize) -> R<()> {
        let text = &self.sql[self.tk.ranges[first].start..self.stmt_end];
        // Tables named by the statement (best effort, for the audit log).
        let mut names: Vec<ObjectName> = Vec::new();
        let _ = visit_relations(st, |r| {
            names.push(r.clone());
            ControlFlow::<()>::Continue(())
        });
        if let Statement::Drop {
            object_type: sqlparser::ast::ObjectType::Table,
            names: dropped,
            ..
        } = st
        {
            names.extend(dropped.iter().cloned());
        }
        let mut protected_tables = Vec::new();
        for n in &names {
            if let Ok(Some(src)) = self.table_source(n, None) {
                if let Some(t) = src.table {
                    if self.prot.is_protected_table(&t) {
                        protected_tables.push(t.clone());
                    }
                    self.tables.push(t);
                }
            }
        }
        if !may_touch_protected(text, self.prot) {
            return Ok(());
        }
        let ddl = matches!(
            st,
            Statement::AlterTable(_)
                | Statement::Truncate(_)
                | Statement::Drop { .. }
                | Statement::CreateIndex(_)
                | Statement::CreateTable(_)
                | Statement::Comment { .. }
                | Statement::Grant(_)
                | Statement::Revoke(_)
                | Statement::Analyze(_)
                | Statement::StartTransaction { .. }
                | Statement::Commit { .. }
                | Statement::Rollback { .. }
                | Statement::Savepoint { .. }
                | Statement::ReleaseSavepoint { .. }
                | Statement::Set(_)
                | Statement::ShowVariable { .. }
                | Statement::Execute { .. }
                | Statement::Deallocate { .. }
                | Statement::Fetch { .. }
                | Statement::Close { .. }
                | Statement::Discard { .. }
        );
        let what = self.leading_words(first, last);
        if !ddl {
            return Err(Halt::Refuse(format!(
                "pgveil: {what} mentioning a protected table cannot be analysed and is not supported"
            )));
        }
        // DDL that embeds a value next to an encrypted column (CHECK, DEFAULT, partial
        // index predicate) would put plaintext into the database.
        let has_literal = (first..=last).any(|i| {
            matches!(
                self.tk.token(i),
                Some(
                    Token::SingleQuotedString(_)
                        | Token::EscapedStringLiteral(_)
                        | Token::DollarQuotedString(_)
                        | Token::NationalStringLiteral(_)
                        | Token::UnicodeStringLiteral(_)
                        | Token::Number(..)
                )
            )
        });
        if has_literal {
            for t in &protected_tables {
                for c in self.prot.table_columns(t) {
                    let name = &self.col(c)?.column;
                    let mentioned = (first..=last).any(|i| {
                        matches!(self.tk.token(i), Some(Token::Word(w)) if (w.quote_style.is_some() && w.value == *name) || (w.quote_style.is_none() && w.value.eq_ignore_ascii_case(name)))
                    });
                    if mentioned {
                        return self.refuse(&format!("{what} with a literal value"), c);
                    }
                }
            }
        }
        Ok(())
    }

    /// Records the top-level output: reads and result columns.
    pub(super) fn emit_top(&mut self, outs: Vec<OutCol>) -> R<()> {
        for o in &outs {
            let prot = o.val.prot();
            if let Some(c) = prot {
                self.reads.push(c);
            } else {
                self.plain_use(&o.val, "output")?;
            }
            self.result_columns.push(prot);
        }
        self.top_outs = outs;
        Ok(())
    }
}
