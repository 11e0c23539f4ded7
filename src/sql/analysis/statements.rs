//! Statement level: which statement kinds are analysed, which are refused, and what a
//! statement pgveil does not rewrite may still carry (DDL with values, COPY, PREPARE).

use std::ops::ControlFlow;

use sqlparser::ast::{visit_relations, ObjectName, Query, SetExpr, Statement};
use sqlparser::tokenizer::Token;

use crate::sql::fast::may_touch_protected;
use crate::sql::StatementKind;

use super::values::*;
use super::{unsupported, Analyzer, Halt, Outcome};

pub(super) fn statement_kind(statement: &Statement) -> StatementKind {
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
    match statement {
        Statement::Query(q) => of_query(q),
        Statement::Insert(_) => StatementKind::Insert,
        Statement::Update(_) => StatementKind::Update,
        Statement::Delete(_) => StatementKind::Delete,
        Statement::Declare { .. } => StatementKind::Select,
        Statement::Explain { statement, .. } => statement_kind(statement),
        Statement::Copy { to: true, .. } => StatementKind::Select,
        Statement::Copy { to: false, .. } => StatementKind::Insert,
        _ => StatementKind::Other,
    }
}

impl Analyzer<'_> {
    pub(super) fn statement(
        &mut self,
        statement: &Statement,
        first: usize,
        last: usize,
    ) -> Outcome<()> {
        match statement {
            Statement::Query(q) => {
                let outputs = self.query(q, true)?;
                self.record_output(outputs)
            }
            Statement::Insert(ins) => {
                let outputs = self.insert(ins, true)?;
                self.record_output(outputs)
            }
            Statement::Update(u) => {
                let outputs = self.update(u, true)?;
                self.record_output(outputs)
            }
            Statement::Delete(d) => {
                let outputs = self.delete(d, true)?;
                self.record_output(outputs)
            }
            Statement::Declare { stmts } => {
                // The cursor's rows come later, from FETCH, which the session attributes to
                // this plan: its output (and an appended subject column) is the query's.
                match stmts.as_slice() {
                    [d] => match &d.for_query {
                        Some(q) => {
                            let outputs = self.query(q, true)?;
                            self.record_output(outputs)
                        }
                        None => Ok(()),
                    },
                    _ => unsupported("DECLARE of several names"),
                }
            }
            Statement::Explain { statement, .. } => {
                // EXPLAIN ANALYZE executes the statement: analyse it fully, but EXPLAIN
                // returns a plan, not rows.
                self.statement(statement, first, last)?;
                self.reads.clear();
                self.result_columns.clear();
                self.top_outputs.clear();
                self.top_level = None;
                Ok(())
            }
            Statement::Copy {
                source,
                to,
                target,
                options,
                legacy_options,
                ..
            } => self.copy(
                &super::copy::CopyStatement {
                    source,
                    to: *to,
                    target,
                    options,
                    legacy: legacy_options,
                },
                first,
            ),
            Statement::Prepare { statement, .. } => {
                // EXECUTE would carry plaintext values: refuse on protected tables.
                let _ = self.statement(statement, first, last);
                if let Some(t) = self
                    .tables
                    .iter()
                    .find(|t| self.protection.is_protected_table(t))
                {
                    return Err(Halt::Refuse(format!(
                        "pgveil: PREPARE is not supported on protected table {t}; use the extended protocol"
                    )));
                }
                if may_touch_protected(
                    &self.sql[self.tokens.ranges[first].start..self.statement_end],
                    self.protection,
                ) {
                    return unsupported("PREPARE of a statement that may touch a protected table");
                }
                self.clear_bindings();
                Ok(())
            }
            Statement::CreateView(v) => {
                self.query(&v.query, false)?;
                if !self.literals.is_empty()
                    || !self.params.is_empty()
                    || !self.array_params.is_empty()
                {
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
                    let outputs = self.query(q, false)?;
                    if let Some(c) = outputs.iter().find_map(|o| o.value.protected()) {
                        return self.refuse("CREATE TABLE AS", c);
                    }
                    for o in &outputs {
                        self.plain_use(&o.value, "CREATE TABLE AS")?;
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
        self.param_uses.clear();
        self.array_params.clear();
        self.array_matches.clear();
        self.rewrites.clear();
        self.reads.clear();
        self.conditions.clear();
        self.writes.clear();
        self.result_columns.clear();
        self.top_outputs.clear();
        self.top_level = None;
    }

    /// Statements pgveil does not rewrite: allowed unless they mention a protected table in
    /// a way that could carry values.
    pub(super) fn other_statement(
        &mut self,
        statement: &Statement,
        first: usize,
        last: usize,
    ) -> Outcome<()> {
        let text = &self.sql[self.tokens.ranges[first].start..self.statement_end];
        // Tables named by the statement (best effort, for the audit log).
        let mut names: Vec<ObjectName> = Vec::new();
        let _ = visit_relations(statement, |r| {
            names.push(r.clone());
            ControlFlow::<()>::Continue(())
        });
        if let Statement::Drop {
            object_type: sqlparser::ast::ObjectType::Table,
            names: dropped,
            ..
        } = statement
        {
            names.extend(dropped.iter().cloned());
        }
        let mut protected_tables = Vec::new();
        for n in &names {
            if let Ok(Some(src)) = self.table_source(n, None) {
                if let Some(t) = src.table {
                    if self.protection.is_protected_table(&t) {
                        protected_tables.push(t.clone());
                    }
                    self.tables.push(t);
                }
            }
        }
        // Strings are values, except the bodies of routines, which are code.
        let code_in_strings = matches!(
            statement,
            Statement::CreateFunction(_) | Statement::CreateProcedure { .. }
        );
        let mentions = if code_in_strings {
            may_touch_protected(text, self.protection) || self.catalog.mentions_protected_view(text)
        } else {
            self.names_protected_table(first, last)
        };
        if !mentions {
            return Ok(());
        }
        let ddl = matches!(
            statement,
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
                // pg_dump locks every table it dumps; a lock carries no values.
                | Statement::Lock(_)
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
                self.tokens.token(i),
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
                for c in self.protection.table_columns(t) {
                    let name = &self.column(c)?.column;
                    let mentioned = (first..=last).any(|i| {
                        matches!(self.tokens.token(i), Some(Token::Word(w)) if (w.quote_style.is_some() && w.value == *name) || (w.quote_style.is_none() && w.value.eq_ignore_ascii_case(name)))
                    });
                    if mentioned {
                        return self.refuse(&format!("{what} with a literal value"), c);
                    }
                }
            }
        }
        Ok(())
    }

    /// True when an identifier among tokens `first..=last` (not a string, not a comment)
    /// is a protected table's name.
    fn names_protected_table(&self, first: usize, last: usize) -> bool {
        // Case folded even when quoted: a false match only costs a refusal.
        (first..=last).any(|i| match self.tokens.token(i) {
            Some(Token::Word(w)) => self
                .protection
                .is_protected_name(&w.value.to_ascii_lowercase()),
            _ => false,
        })
    }

    /// Records the top-level output: reads and result columns.
    pub(super) fn record_output(&mut self, outputs: Vec<OutputColumn>) -> Outcome<()> {
        for o in &outputs {
            let protected = o.value.protected();
            if let Some(c) = protected {
                self.reads.push(c);
            } else {
                self.plain_use(&o.value, "output")?;
                self.opaque_plain(&o.value);
            }
            self.result_columns.push(protected);
        }
        self.top_outputs = outputs;
        Ok(())
    }
}
