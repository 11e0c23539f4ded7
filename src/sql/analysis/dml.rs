//! Data-modifying statements: INSERT (VALUES, ON CONFLICT), UPDATE, DELETE, their target
//! relations and RETURNING.

use sqlparser::ast::{
    ConflictTarget, Delete, Expr, FromTable, Ident, Insert, ObjectName, OnConflictAction, OnInsert,
    SelectItem, SetExpr, TableObject, Update, UpdateTableFromKind,
};

use crate::schema::TableName;
use crate::sql::catalog::ColumnRef;

use super::scopes::*;
use super::values::*;
use super::{unsupported, Analyzer, Outcome};

impl Analyzer<'_> {
    /// The relation a statement writes to (a catalog table or an unknown relation).
    pub(super) fn target_source(
        &mut self,
        name: &ObjectName,
        alias: Option<&Ident>,
    ) -> Outcome<Source> {
        let mut src = match self.table_source(name, None)? {
            Some(s) => s,
            None => return unsupported("target relation"),
        };
        if let Some(a) = alias {
            src.alias = normalize(a);
        }
        Ok(src)
    }

    /// RETURNING: the statement's output; at top level, the subject column can be added at
    /// its end.
    pub(super) fn returning(
        &mut self,
        items: Option<&Vec<SelectItem>>,
        top: bool,
    ) -> Outcome<Vec<OutputColumn>> {
        let Some(items) = items else {
            self.block_injection(top, "no RETURNING");
            return Ok(Vec::new());
        };
        let outputs = self.projection(items)?;
        if top {
            self.top_level_returning();
        }
        Ok(outputs)
    }

    /// INSERT: the values (VALUES rows or a query) are written positionally into the
    /// target columns; ON CONFLICT and RETURNING see the target relation.
    pub(super) fn insert(&mut self, insert: &Insert, top: bool) -> Outcome<Vec<OutputColumn>> {
        let TableObject::TableName(name) = &insert.table else {
            return unsupported("INSERT INTO function");
        };
        let target = self.target_source(name, insert.table_alias.as_ref().map(|a| &a.alias))?;
        if let Some(t) = &target.table {
            self.tables.push(t.clone());
        }
        let targets = self.insert_targets(insert, &target)?;
        if !insert.assignments.is_empty() {
            return unsupported("INSERT … SET");
        }
        let migrating = self.migrating_targets(insert, &targets)?;
        self.scopes.push(Vec::new());
        let result = self.insert_source(insert, &targets, &migrating);
        self.scopes.pop();
        result?;
        self.scopes.push(vec![target.clone()]);
        let result = self
            .on_conflict(insert, &target)
            .and_then(|()| self.returning(insert.returning.as_ref(), top));
        self.scopes.pop();
        result
    }

    /// The protected column (if any) each inserted value goes to, by position.
    fn insert_targets(&self, insert: &Insert, target: &Source) -> Outcome<Vec<Option<ColumnRef>>> {
        Ok(match (&target.table, &target.columns) {
            (Some(t), _) if !insert.columns.is_empty() => insert
                .columns
                .iter()
                .map(|c| {
                    Ok(name_parts(c)?
                        .first()
                        .and_then(|n| self.protection.lookup(t, n)))
                })
                .collect::<Outcome<_>>()?,
            (Some(_), Some(columns)) => columns.iter().map(|c| c.protected).collect(),
            _ => Vec::new(),
        })
    }

    /// The targets that are plaintext in the database (being migrated), by position: only
    /// `INSERT … (columns) VALUES` writes them (with their shadow columns named after them).
    fn migrating_targets(
        &mut self,
        insert: &Insert,
        targets: &[Option<ColumnRef>],
    ) -> Outcome<Vec<bool>> {
        let mut migrating = vec![false; targets.len()];
        for (i, target) in targets.iter().enumerate() {
            let Some(c) = *target else { continue };
            if !self.is_plaintext(c) {
                continue;
            }
            let values = insert
                .source
                .as_ref()
                .is_some_and(|q| q.with.is_none() && matches!(&*q.body, SetExpr::Values(_)));
            if insert.columns.is_empty() || !values {
                return self.refuse_migrating(c, "an INSERT without a column list or from a query");
            }
            self.shadow_target(c, &insert.columns[i])?;
            migrating[i] = true;
        }
        Ok(migrating)
    }

    /// The inserted rows: VALUES are bound one by one, a query's outputs are copied.
    fn insert_source(
        &mut self,
        insert: &Insert,
        targets: &[Option<ColumnRef>],
        migrating: &[bool],
    ) -> Outcome<()> {
        let target_at = |i: usize| targets.get(i).copied().flatten();
        let Some(q) = &insert.source else {
            return Ok(());
        };
        match &*q.body {
            SetExpr::Values(values) if q.with.is_none() => {
                for row in &values.rows {
                    for (i, e) in row.iter().enumerate() {
                        let v = self.expression(e)?;
                        match target_at(i) {
                            Some(c) if migrating.get(i).copied().unwrap_or(false) => {
                                self.write_migrating(c, e, &v, ", ".into())?
                            }
                            target => self.write(target, &v)?,
                        }
                    }
                }
                if let Some(order_by) = &q.order_by {
                    self.opaque_node(order_by, "ORDER BY")?;
                }
            }
            _ => {
                let outputs = self.query(q, false)?;
                for (i, o) in outputs.iter().enumerate() {
                    if matches!(o.value, Value::Spread) {
                        // Positions from here on are unknown: no protected target may follow.
                        if let Some(c) = targets.iter().skip(i).flatten().next() {
                            return self.refuse(
                                "writing a relation of unknown columns (a set-returning function or `*` over one)",
                                *c,
                            );
                        }
                        break;
                    }
                    self.write(target_at(i), &o.value)?;
                }
            }
        }
        Ok(())
    }

    /// ON CONFLICT: a conflict target on a protected column needs deterministic
    /// encryption; DO UPDATE sees the target and `excluded` (the proposed row).
    fn on_conflict(&mut self, insert: &Insert, target: &Source) -> Outcome<()> {
        let on_conflict = match &insert.on {
            Some(OnInsert::OnConflict(on_conflict)) => on_conflict,
            Some(_) => return unsupported("ON DUPLICATE KEY"),
            None => return Ok(()),
        };
        let table = &target.table;
        if let Some(ConflictTarget::Columns(columns)) = &on_conflict.conflict_target {
            for c in columns {
                if let (Some(t), n) = (table, normalize(c)) {
                    if let Some(column) = self.protection.lookup(t, &n) {
                        self.require_deterministic(column, "ON CONFLICT")?;
                    }
                }
            }
        }
        if let OnConflictAction::DoUpdate(do_update) = &on_conflict.action {
            let mut excluded = target.clone();
            excluded.alias = "excluded".into();
            excluded.table = None;
            if let Some(scope) = self.scopes.last_mut() {
                scope.push(excluded);
            }
            for a in &do_update.assignments {
                self.assignment(table, a)?;
            }
            if let Some(w) = &do_update.selection {
                self.condition(w)?;
            }
            if let Some(scope) = self.scopes.last_mut() {
                scope.pop();
            }
        }
        Ok(())
    }

    /// `SET col = value` / `SET (a, b) = (x, y)`: a write into each target column.
    pub(super) fn assignment(
        &mut self,
        table: &Option<TableName>,
        a: &sqlparser::ast::Assignment,
    ) -> Outcome<()> {
        use sqlparser::ast::AssignmentTarget;
        let target_of = |this: &Self, name: &ObjectName| -> Outcome<Option<ColumnRef>> {
            let parts = name_parts(name)?;
            Ok(match (table, parts.last()) {
                (Some(t), Some(c)) => this.protection.lookup(t, c),
                _ => None,
            })
        };
        match &a.target {
            AssignmentTarget::ColumnName(name) => {
                let target = target_of(self, name)?;
                let v = self.expression(&a.value)?;
                match target {
                    Some(c) if self.is_plaintext(c) => {
                        let prefix = self.shadow_assignment(c)?;
                        self.write_migrating(c, &a.value, &v, prefix)
                    }
                    _ => self.write(target, &v),
                }
            }
            AssignmentTarget::Tuple(names) => {
                let targets: Vec<Option<ColumnRef>> = names
                    .iter()
                    .map(|n| target_of(self, n))
                    .collect::<Outcome<_>>()?;
                match &a.value {
                    Expr::Tuple(values) if values.len() == targets.len() => {
                        for (t, e) in targets.iter().zip(values) {
                            let v = self.expression(e)?;
                            self.write(*t, &v)?;
                        }
                        Ok(())
                    }
                    other => {
                        if let Some(c) = targets.iter().flatten().next() {
                            return self.refuse("multi-column assignment from a subquery", *c);
                        }
                        let v = self.expression(other)?;
                        self.plain_use(&v, "assignment")
                    }
                }
            }
        }
    }

    /// UPDATE: the target (first relation), FROM, SET, WHERE, RETURNING.
    pub(super) fn update(&mut self, update: &Update, top: bool) -> Outcome<Vec<OutputColumn>> {
        self.scopes.push(Vec::new());
        let result = (|| -> Outcome<Vec<OutputColumn>> {
            self.table_with_joins(&update.table)?;
            let table = self
                .scopes
                .last()
                .and_then(|sc| sc.first())
                .and_then(|s| s.table.clone());
            if let Some(UpdateTableFromKind::BeforeSet(f) | UpdateTableFromKind::AfterSet(f)) =
                &update.from
            {
                for from_item in f {
                    self.table_with_joins(from_item)?;
                }
            }
            for a in &update.assignments {
                self.assignment(&table, a)?;
            }
            if let Some(w) = &update.selection {
                self.condition(w)?;
            }
            self.returning(update.returning.as_ref(), top)
        })();
        self.scopes.pop();
        result
    }

    /// DELETE: FROM, USING, WHERE, RETURNING.
    pub(super) fn delete(&mut self, delete: &Delete, top: bool) -> Outcome<Vec<OutputColumn>> {
        self.scopes.push(Vec::new());
        let result = (|| -> Outcome<Vec<OutputColumn>> {
            let (FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from)) = &delete.from;
            for from_item in from {
                self.table_with_joins(from_item)?;
            }
            if let Some(using) = &delete.using {
                for from_item in using {
                    self.table_with_joins(from_item)?;
                }
            }
            if let Some(w) = &delete.selection {
                self.condition(w)?;
            }
            self.returning(delete.returning.as_ref(), top)
        })();
        self.scopes.pop();
        result
    }
}
