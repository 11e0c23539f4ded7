//! Data-modifying statements: INSERT (VALUES, ON CONFLICT), UPDATE, DELETE, their target
//! relations and RETURNING.

use sqlparser::ast::{
    ConflictTarget, Delete, Expr, FromTable, Ident, Insert, ObjectName, OnConflictAction, OnInsert,
    SelectItem, SetExpr, TableObject, Update, UpdateTableFromKind,
};

use crate::schema::TableName;
use crate::sql::catalog::ColumnRef;

use super::scopes::*;
use super::subjects::*;
use super::values::*;
use super::{unsupported, Analyzer, Outcome};

impl Analyzer<'_> {
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
            let aliases = self
                .scopes
                .last()
                .map(|sc| {
                    sc.iter()
                        .filter_map(|s| s.table.clone().map(|t| (t, s.alias.clone(), s.reference)))
                        .collect()
                })
                .unwrap_or_default();
            self.top_level = Some(TopLevel {
                insert_at: Some(self.statement_end),
                blocker: None,
                aliases,
            });
        }
        Ok(outputs)
    }

    pub(super) fn insert(&mut self, ins: &Insert, top: bool) -> Outcome<Vec<OutputColumn>> {
        let TableObject::TableName(name) = &ins.table else {
            return unsupported("INSERT INTO function");
        };
        let target = self.target_source(name, ins.table_alias.as_ref().map(|a| &a.alias))?;
        if let Some(t) = &target.table {
            self.tables.push(t.clone());
        }
        let table = target.table.clone();
        let targets: Vec<Option<ColumnRef>> = match (&table, &target.columns) {
            (Some(t), _) if !ins.columns.is_empty() => ins
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
        };
        let target_at = |i: usize| targets.get(i).copied().flatten();
        if !ins.assignments.is_empty() {
            return unsupported("INSERT … SET");
        }
        self.scopes.push(Vec::new());
        let result = (|| -> Outcome<()> {
            if let Some(q) = &ins.source {
                match &*q.body {
                    SetExpr::Values(values) if q.with.is_none() => {
                        for row in &values.rows {
                            for (i, e) in row.iter().enumerate() {
                                let v = self.expression(e)?;
                                self.write(target_at(i), &v)?;
                            }
                        }
                        if let Some(ob) = &q.order_by {
                            self.opaque_node(ob, "ORDER BY")?;
                        }
                    }
                    _ => {
                        let outputs = self.query(q, false)?;
                        for (i, o) in outputs.iter().enumerate() {
                            self.write(target_at(i), &o.val)?;
                        }
                    }
                }
            }
            Ok(())
        })();
        self.scopes.pop();
        result?;
        self.scopes.push(vec![target.clone()]);
        let result = (|| -> Outcome<Vec<OutputColumn>> {
            if let Some(OnInsert::OnConflict(oc)) = &ins.on {
                if let Some(ConflictTarget::Columns(columns)) = &oc.conflict_target {
                    for c in columns {
                        if let (Some(t), n) = (&table, normalize(c)) {
                            if let Some(cr) = self.protection.lookup(t, &n) {
                                self.require_deterministic(cr, "ON CONFLICT")?;
                            }
                        }
                    }
                }
                if let OnConflictAction::DoUpdate(du) = &oc.action {
                    let mut excluded = target.clone();
                    excluded.alias = "excluded".into();
                    excluded.table = None;
                    if let Some(scope) = self.scopes.last_mut() {
                        scope.push(excluded);
                    }
                    for a in &du.assignments {
                        self.assignment(&table, a)?;
                    }
                    if let Some(w) = &du.selection {
                        self.condition(w)?;
                    }
                    if let Some(scope) = self.scopes.last_mut() {
                        scope.pop();
                    }
                }
            } else if ins.on.is_some() {
                return unsupported("ON DUPLICATE KEY");
            }
            self.returning(ins.returning.as_ref(), top)
        })();
        self.scopes.pop();
        result
    }

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
                self.write(target, &v)
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

    pub(super) fn update(&mut self, u: &Update, top: bool) -> Outcome<Vec<OutputColumn>> {
        self.scopes.push(Vec::new());
        let result = (|| -> Outcome<Vec<OutputColumn>> {
            self.table_with_joins(&u.table)?;
            let table = self
                .scopes
                .last()
                .and_then(|sc| sc.first())
                .and_then(|s| s.table.clone());
            if let Some(UpdateTableFromKind::BeforeSet(f) | UpdateTableFromKind::AfterSet(f)) =
                &u.from
            {
                for from_item in f {
                    self.table_with_joins(from_item)?;
                }
            }
            for a in &u.assignments {
                self.assignment(&table, a)?;
            }
            if let Some(w) = &u.selection {
                self.condition(w)?;
            }
            self.returning(u.returning.as_ref(), top)
        })();
        self.scopes.pop();
        result
    }

    pub(super) fn delete(&mut self, d: &Delete, top: bool) -> Outcome<Vec<OutputColumn>> {
        self.scopes.push(Vec::new());
        let result = (|| -> Outcome<Vec<OutputColumn>> {
            let (FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from)) = &d.from;
            for from_item in from {
                self.table_with_joins(from_item)?;
            }
            if let Some(using) = &d.using {
                for from_item in using {
                    self.table_with_joins(from_item)?;
                }
            }
            if let Some(w) = &d.selection {
                self.condition(w)?;
            }
            self.returning(d.returning.as_ref(), top)
        })();
        self.scopes.pop();
        result
    }
}
