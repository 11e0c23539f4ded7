//! Scopes: the relations of each FROM (catalog tables, CTEs, subqueries, table functions),
//! and name resolution of columns, `*` and whole-row references through the scope stack.

use sqlparser::ast::{
    Ident, JoinConstraint, JoinOperator, ObjectName, ObjectNamePart, TableFactor, TableWithJoins,
};

use crate::schema::TableName;
use crate::sql::catalog::ColumnRef;
use crate::sql::AnalyzeError;

use super::values::*;
use super::{column_name, unsupported, Analyzer, Halt, Outcome};

#[derive(Debug, Clone)]
pub(super) struct SourceColumn {
    pub(super) name: String,
    pub(super) protected: Option<ColumnRef>,
    pub(super) origin: Option<Origin>,
    /// The values of a `VALUES` or `UNNEST` column, bound when written to a protected column.
    pub(super) pending: Option<Box<Pending>>,
}

impl SourceColumn {
    /// The column's value where it is referenced.
    pub(super) fn value(&self) -> Value {
        match &self.pending {
            Some(p) => Value::Pending(p.clone()),
            None => Value::Column {
                protected: self.protected,
                origin: self.origin.clone(),
            },
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct Source {
    pub(super) alias: String,
    pub(super) table: Option<TableName>,
    /// The reference number in [`Origin`] (catalog relations only).
    pub(super) reference: u32,
    /// `None`: a relation whose columns are unknown (table function, unknown table).
    pub(super) columns: Option<Vec<SourceColumn>>,
}

/// Normalizes an identifier as PostgreSQL does: unquoted ASCII folds to lower case.
pub(super) fn normalize(id: &Ident) -> String {
    if id.quote_style.is_some() {
        id.value.clone()
    } else {
        id.value.to_ascii_lowercase()
    }
}

pub(super) fn name_parts(name: &ObjectName) -> Outcome<Vec<String>> {
    name.0
        .iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(id) => Ok(normalize(id)),
            ObjectNamePart::Function(_) => unsupported("function in object name"),
        })
        .collect()
}

impl Analyzer<'_> {
    pub(super) fn push_source(&mut self, src: Source) {
        if let Some(t) = &src.table {
            self.tables.push(t.clone());
        }
        if let Some(scope) = self.scopes.last_mut() {
            scope.push(src);
        }
    }

    pub(super) fn table_with_joins(&mut self, from_item: &TableWithJoins) -> Outcome<()> {
        self.table_factor(&from_item.relation)?;
        for j in &from_item.joins {
            let before = self.scopes.last().map_or(0, Vec::len);
            self.table_factor(&j.relation)?;
            let constraint = match &j.join_operator {
                JoinOperator::Join(c)
                | JoinOperator::Inner(c)
                | JoinOperator::Left(c)
                | JoinOperator::LeftOuter(c)
                | JoinOperator::Right(c)
                | JoinOperator::RightOuter(c)
                | JoinOperator::FullOuter(c)
                | JoinOperator::CrossJoin(c)
                | JoinOperator::Semi(c)
                | JoinOperator::LeftSemi(c)
                | JoinOperator::RightSemi(c)
                | JoinOperator::Anti(c)
                | JoinOperator::LeftAnti(c)
                | JoinOperator::RightAnti(c)
                | JoinOperator::StraightJoin(c) => c,
                _ => return unsupported("join kind"),
            };
            match constraint {
                JoinConstraint::On(e) => self.condition(e)?,
                JoinConstraint::Using(columns) => {
                    for c in columns {
                        let name = name_parts(c)?.pop().unwrap_or_default();
                        self.join_using(before, &name)?;
                    }
                }
                JoinConstraint::Natural => {
                    let names: Vec<String> = self
                        .scopes
                        .last()
                        .map(|sc| {
                            sc[before..]
                                .iter()
                                .flat_map(|s| s.columns.iter().flatten().map(|c| c.name.clone()))
                                .collect()
                        })
                        .unwrap_or_default();
                    let unknown = self
                        .scopes
                        .last()
                        .is_some_and(|sc| sc.iter().any(|s| s.columns.is_none()));
                    if unknown {
                        return unsupported("NATURAL JOIN with a relation of unknown columns");
                    }
                    for n in names {
                        self.join_using(before, &n)?;
                    }
                }
                JoinConstraint::None => {}
            }
        }
        Ok(())
    }

    pub(super) fn join_using(&mut self, split: usize, name: &str) -> Outcome<()> {
        let Some(scope) = self.scopes.last() else {
            return Ok(());
        };
        let find = |srcs: &[Source]| {
            srcs.iter()
                .rev()
                .find_map(|s| s.columns.as_ref()?.iter().find(|c| c.name == name).cloned())
        };
        let (Some(l), Some(r)) = (find(&scope[..split]), find(&scope[split..])) else {
            return Ok(());
        };
        self.compare(&l.value(), &r.value(), "JOIN USING")
    }

    pub(super) fn table_factor(&mut self, factor: &TableFactor) -> Outcome<()> {
        match factor {
            TableFactor::Table {
                name,
                alias,
                args: None,
                ..
            } => self.table_factor_name(name, alias.as_ref()),
            TableFactor::Derived {
                subquery, alias, ..
            } => {
                let outputs = self.query(subquery, false)?;
                let mut columns = self.source_columns(&outputs)?;
                let alias_name = alias
                    .as_ref()
                    .map(|a| normalize(&a.name))
                    .unwrap_or_default();
                if let Some(a) = alias {
                    for (col, def) in columns.iter_mut().flatten().zip(&a.columns) {
                        col.name = normalize(&def.name);
                    }
                }
                self.push_source(Source {
                    alias: alias_name,
                    table: None,
                    reference: 0,
                    columns,
                });
                Ok(())
            }
            TableFactor::UNNEST {
                alias,
                array_exprs,
                with_offset,
                with_ordinality,
                ..
            } => self.unnest(array_exprs, alias.as_ref(), *with_ordinality, *with_offset),
            TableFactor::NestedJoin {
                table_with_joins,
                alias,
            } => {
                if alias.is_some() {
                    return unsupported("alias on a parenthesized join");
                }
                self.table_with_joins(table_with_joins)
            }
            other => {
                // Table functions and the like: arguments must not involve protected
                // columns; the result has unknown columns.
                self.opaque_node(other, "table function")?;
                let alias = match other {
                    TableFactor::Table { alias, .. }
                    | TableFactor::Function { alias, .. }
                    | TableFactor::TableFunction { alias, .. }
                    | TableFactor::UNNEST { alias, .. } => {
                        alias.as_ref().map(|a| normalize(&a.name))
                    }
                    _ => None,
                }
                .unwrap_or_default();
                self.push_source(Source {
                    alias,
                    table: None,
                    reference: 0,
                    columns: None,
                });
                Ok(())
            }
        }
    }

    /// Resolves a relation name (CTE first, then the catalog) into a source.
    pub(super) fn table_source(
        &mut self,
        name: &ObjectName,
        alias: Option<&sqlparser::ast::TableAlias>,
    ) -> Outcome<Option<Source>> {
        let parts = name_parts(name)?;
        let alias_name = alias.map(|a| normalize(&a.name));
        let cte = match parts.as_slice() {
            [n] => self
                .ctes
                .iter()
                .rev()
                .find(|(c, _)| c == n)
                .map(|(_, columns)| columns.clone()),
            _ => None,
        };
        let mut src = match (parts.as_slice(), cte) {
            ([n], Some(columns)) => Source {
                alias: n.clone(),
                table: None,
                reference: 0,
                columns,
            },
            ([n], None) => self.catalog_source(None, n)?,
            ([.., schema, n], _) => self.catalog_source(Some(schema.as_str()), n)?,
            _ => return unsupported("relation name"),
        };
        if let Some(a) = alias {
            if let Some(columns) = &mut src.columns {
                for (col, def) in columns.iter_mut().zip(&a.columns) {
                    col.name = normalize(&def.name);
                }
            }
        }
        if let Some(a) = alias_name {
            src.alias = a;
        }
        Ok(Some(src))
    }

    pub(super) fn catalog_source(&self, schema: Option<&str>, name: &str) -> Outcome<Source> {
        match self.catalog.resolve(schema, name, self.search_path) {
            Some(info) if self.catalog.is_protected_view(&info.name) => Err(Halt::Refuse(format!(
                "pgveil: {} is a view over a protected table; query the table itself",
                info.name
            ))),
            Some(info) => {
                let reference = self.next_reference.get();
                self.next_reference.set(reference.wrapping_add(1));
                for c in self.protection.table_columns(&info.name) {
                    let col = &self.column(c)?.column;
                    if !info.columns.iter().any(|ci| ci.name == *col) {
                        return Err(Halt::Error(AnalyzeError::Resolve(format!(
                            "protected column {} is missing from the catalog",
                            column_name(self.protection, c)
                        ))));
                    }
                }
                let columns: Vec<SourceColumn> = info
                    .columns
                    .iter()
                    .map(|c| SourceColumn {
                        name: c.name.clone(),
                        protected: self.protection.lookup(&info.name, &c.name),
                        origin: Some((info.name.clone(), c.name.clone(), reference)),
                        pending: None,
                    })
                    .collect();
                Ok(Source {
                    alias: info.name.name.clone(),
                    table: Some(info.name),
                    reference,
                    columns: Some(columns),
                })
            }
            None => {
                let protected_name = self.protection.is_protected_name(name)
                    || schema.is_some_and(|s| {
                        self.protection.is_protected_table(&TableName::new(s, name))
                    });
                if protected_name {
                    return Err(Halt::Error(AnalyzeError::Resolve(format!(
                        "relation {}{name}",
                        schema.map(|s| format!("{s}.")).unwrap_or_default()
                    ))));
                }
                Ok(Source {
                    alias: name.to_string(),
                    table: None,
                    reference: 0,
                    columns: None,
                })
            }
        }
    }

    pub(super) fn table_factor_name(
        &mut self,
        name: &ObjectName,
        alias: Option<&sqlparser::ast::TableAlias>,
    ) -> Outcome<()> {
        if let Some(src) = self.table_source(name, alias)? {
            self.push_source(src);
        }
        Ok(())
    }

    /// Resolves a column reference through the scope stack (innermost first).
    /// `Ok(None)`: no such column anywhere.
    pub(super) fn lookup_column(&self, idents: &[Ident]) -> Outcome<Option<Value>> {
        let names: Vec<String> = idents.iter().map(normalize).collect();
        let Some((col, qual)) = names.split_last() else {
            return Ok(None);
        };
        let val_of = SourceColumn::value;
        if qual.is_empty() {
            for scope in self.scopes.iter().rev() {
                let mut found: Vec<&SourceColumn> = Vec::new();
                let mut unknown = false;
                for src in scope {
                    match &src.columns {
                        Some(columns) => found.extend(columns.iter().filter(|c| c.name == *col)),
                        None => unknown = true,
                    }
                }
                match found.as_slice() {
                    [one] => return Ok(Some(val_of(one))),
                    [] if unknown => {
                        // It may belong to the relation of unknown shape — or to an outer
                        // protected one. Fail closed if it could be protected.
                        if self.protection.is_protected_column_name(col) {
                            return Err(Halt::Error(AnalyzeError::Resolve(format!(
                                "column {col} (ambiguous with a relation of unknown columns)"
                            ))));
                        }
                        // Or it names a relation in scope: then it is that whole row.
                        self.no_whole_row(idents, "a whole-row reference")?;
                        return Ok(Some(Value::plain()));
                    }
                    [] => {}
                    many => {
                        // `JOIN … USING (col)` merges same-named columns; when all are
                        // protected with one key and type, the value decrypts the same.
                        if let Some(first) = many[0].protected {
                            let a = self.column(first)?;
                            let mut same = true;
                            for c in &many[1..] {
                                same &= match c.protected {
                                    Some(p) => {
                                        let b = self.column(p)?;
                                        a.key_scope() == b.key_scope()
                                            && a.logical_type == b.logical_type
                                    }
                                    None => false,
                                };
                            }
                            if same {
                                return Ok(Some(Value::Column {
                                    protected: Some(first),
                                    origin: None,
                                }));
                            }
                        }
                        if many.iter().any(|c| c.protected.is_some()) {
                            return Err(Halt::Error(AnalyzeError::Resolve(format!(
                                "ambiguous column {col}"
                            ))));
                        }
                        return Ok(Some(Value::plain()));
                    }
                }
            }
            return Ok(None);
        }
        for scope in self.scopes.iter().rev() {
            for src in scope.iter().rev() {
                let hit = match qual {
                    [a] => src.alias == *a,
                    [.., s, t] => src
                        .table
                        .as_ref()
                        .is_some_and(|tn| tn.schema == *s && tn.name == *t),
                    [] => false,
                };
                if !hit {
                    continue;
                }
                return Ok(Some(match &src.columns {
                    Some(columns) => match columns.iter().find(|c| c.name == *col) {
                        Some(c) => val_of(c),
                        None => Value::plain(),
                    },
                    None => Value::plain(),
                }));
            }
        }
        // `a.b` where `a` is a column (composite field access)?
        if let [first, ..] = idents {
            if let Some(v) = self.lookup_column(std::slice::from_ref(first))? {
                if let Some(c) = v.protected() {
                    return self.refuse("field access", c);
                }
                return Ok(Some(Value::Other));
            }
        }
        if self.protection.is_protected_column_name(col) {
            return Err(Halt::Error(AnalyzeError::Resolve(format!(
                "column {}",
                names.join(".")
            ))));
        }
        Ok(None)
    }

    pub(super) fn expand_wildcard(
        &mut self,
        qualifier: Option<&[String]>,
    ) -> Outcome<Vec<OutputColumn>> {
        let Some(scope) = self.scopes.last() else {
            return Ok(Vec::new());
        };
        let mut outputs = Vec::new();
        let mut matched = false;
        let mut after_unknown = false;
        for src in scope {
            if let Some(q) = qualifier {
                let hit = match q {
                    [a] => src.alias == *a,
                    [.., s, t] => src
                        .table
                        .as_ref()
                        .is_some_and(|tn| tn.schema == *s && tn.name == *t),
                    [] => false,
                };
                if !hit {
                    continue;
                }
            }
            matched = true;
            if after_unknown && src.columns.iter().flatten().any(|c| c.protected.is_some()) {
                // Output positions of the protected columns would be unknown.
                return unsupported(
                    "* over a relation of unknown columns before a protected table",
                );
            }
            after_unknown |= src.columns.is_none();
            match &src.columns {
                Some(columns) => outputs.extend(columns.iter().map(|c| OutputColumn {
                    name: c.name.clone(),
                    value: c.value(),
                })),
                // Unknown relation: its width is unknown, so are later positions. It holds
                // no protected column (unknown relations never have a protected name).
                None => outputs.push(OutputColumn {
                    name: "?column?".into(),
                    value: Value::Spread,
                }),
            }
        }
        if qualifier.is_some() && !matched {
            return unsupported("unknown relation in qualified *");
        }
        Ok(outputs)
    }

    /// A name that is not a column may be a whole-row reference to a relation (`p`,
    /// `ssn(p)`, `(p).ssn`, `row_to_json(p)`): refused when that row holds protected columns.
    pub(super) fn no_whole_row(&self, ids: &[Ident], what: &str) -> Outcome<()> {
        let names: Vec<String> = ids.iter().map(normalize).collect();
        for scope in self.scopes.iter().rev() {
            for src in scope.iter().rev() {
                let hit = match names.as_slice() {
                    [a] => src.alias == *a,
                    [.., s, t] => src
                        .table
                        .as_ref()
                        .is_some_and(|tn| tn.schema == *s && tn.name == *t),
                    [] => false,
                };
                if hit {
                    if let Some(c) = src.columns.iter().flatten().find_map(|c| c.protected) {
                        return self.refuse(what, c);
                    }
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}
