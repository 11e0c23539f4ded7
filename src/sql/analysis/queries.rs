//! Queries: WITH, set operations, VALUES, SELECT lists, GROUP BY, DISTINCT, ORDER BY and
//! LIMIT, and what each of them allows on a protected column.

use sqlparser::ast::{
    Distinct, Expr, GroupByExpr, Ident, LimitClause, ObjectName, OrderBy, OrderByKind, Query,
    Select, SelectItem, SelectItemQualifiedWildcardKind, SetExpr, SetOperator, SetQuantifier,
    Statement, Table, Value as SqlValue, ValueWithSpan, Values,
};

use super::scopes::*;
use super::values::*;
use super::{unsupported, Analyzer, Halt, Outcome};

pub(super) fn output_at_position(e: &Expr, outputs: &[OutputColumn]) -> Option<Value> {
    if let Expr::Value(ValueWithSpan {
        value: SqlValue::Number(n, _),
        ..
    }) = e
    {
        let i: usize = n.parse().ok()?;
        return outputs.get(i.checked_sub(1)?).map(|o| o.value.clone());
    }
    None
}

pub(super) fn output_name(e: &Expr) -> String {
    match e {
        Expr::Identifier(id) => normalize(id),
        Expr::CompoundIdentifier(ids) => ids.last().map(normalize).unwrap_or_default(),
        Expr::Function(f) => f
            .name
            .0
            .last()
            .map(|p| p.to_string().to_ascii_lowercase())
            .unwrap_or_default(),
        Expr::Cast { expr, .. } | Expr::Nested(expr) => output_name(expr),
        _ => "?column?".to_string(),
    }
}

impl Analyzer<'_> {
    pub(super) fn query(&mut self, q: &Query, top: bool) -> Outcome<Vec<OutputColumn>> {
        let cte_mark = self.ctes.len();
        if let Some(with) = &q.with {
            for cte in &with.cte_tables {
                let outputs = self.query(&cte.query, false)?;
                let mut columns = self.source_columns(&outputs)?;
                for (col, def) in columns.iter_mut().flatten().zip(&cte.alias.columns) {
                    col.name = normalize(&def.name);
                }
                self.ctes.push((normalize(&cte.alias.name), columns));
            }
        }
        let outputs = self.set_expression(&q.body, top, q.order_by.as_ref())?;
        if let Some(limit) = &q.limit_clause {
            self.limit(limit)?;
        }
        self.ctes.truncate(cte_mark);
        Ok(outputs)
    }

    /// The columns a subquery or CTE offers to the query around it; `None` when its width
    /// is unknown (it expands `*` over a relation of unknown columns).
    pub(super) fn source_columns(
        &mut self,
        outputs: &[OutputColumn],
    ) -> Outcome<Option<Vec<SourceColumn>>> {
        if outputs.iter().any(|o| matches!(o.value, Value::Spread)) {
            for o in outputs {
                self.plain_use(&o.value, "subquery output")?;
            }
            return Ok(None);
        }
        let mut columns = Vec::with_capacity(outputs.len());
        for o in outputs {
            let (protected, origin, pending) = match &o.value {
                Value::Column { protected, origin } => (*protected, origin.clone(), None),
                Value::Pending(p) => (None, None, Some(p.clone())),
                other => {
                    self.plain_use(other, "subquery output")?;
                    self.opaque_plain(other);
                    (None, None, None)
                }
            };
            columns.push(SourceColumn {
                name: o.name.clone(),
                protected,
                origin,
                pending,
            });
        }
        Ok(Some(columns))
    }

    /// LIMIT / OFFSET values must be plain.
    fn limit(&mut self, limit: &LimitClause) -> Outcome<()> {
        match limit {
            LimitClause::LimitOffset {
                limit,
                offset,
                limit_by,
            } => {
                let values = limit
                    .iter()
                    .chain(offset.iter().map(|o| &o.value))
                    .chain(limit_by);
                self.plain_operands(values, "LIMIT/OFFSET")?;
            }
            LimitClause::OffsetCommaLimit { offset, limit } => {
                self.plain_operands([offset, limit], "LIMIT/OFFSET")?;
            }
        }
        Ok(())
    }

    /// A query body: SELECT, set operation, VALUES, TABLE, or a data-modifying statement
    /// (in a CTE).
    pub(super) fn set_expression(
        &mut self,
        e: &SetExpr,
        top: bool,
        order_by: Option<&OrderBy>,
    ) -> Outcome<Vec<OutputColumn>> {
        match e {
            SetExpr::Select(s) => self.select(s, top, order_by),
            SetExpr::Query(q) => {
                let outputs = self.query(q, top)?;
                self.order_by(order_by, &outputs, false)?;
                Ok(outputs)
            }
            SetExpr::SetOperation {
                left,
                op,
                set_quantifier,
                right,
            } => {
                let l = self.set_expression(left, false, None)?;
                let r = self.set_expression(right, false, None)?;
                self.block_injection(top, "set operation");
                let outputs = self.set_operation(op, set_quantifier, &l, &r)?;
                self.order_by(order_by, &outputs, false)?;
                Ok(outputs)
            }
            SetExpr::Values(values) => {
                self.block_injection(top, "VALUES");
                self.values(values)
            }
            SetExpr::Insert(statement)
            | SetExpr::Update(statement)
            | SetExpr::Delete(statement) => match statement {
                Statement::Insert(i) => self.insert(i, top),
                Statement::Update(u) => self.update(u, top),
                Statement::Delete(d) => self.delete(d, top),
                _ => unsupported("data-modifying statement"),
            },
            SetExpr::Table(t) => {
                let outputs = self.table_statement(t)?;
                self.block_injection(top, "TABLE statement");
                Ok(outputs)
            }
            SetExpr::Merge(_) => unsupported("MERGE"),
        }
    }

    /// UNION / EXCEPT / INTERSECT: column by column, both sides must decrypt alike, and
    /// a deduplicating operation needs deterministic encryption.
    fn set_operation(
        &mut self,
        op: &SetOperator,
        set_quantifier: &SetQuantifier,
        left: &[OutputColumn],
        right: &[OutputColumn],
    ) -> Outcome<Vec<OutputColumn>> {
        let op_name = match op {
            SetOperator::Union => "UNION",
            SetOperator::Except | SetOperator::Minus => "EXCEPT",
            SetOperator::Intersect => "INTERSECT",
        };
        let dedups = !matches!(set_quantifier, SetQuantifier::All);
        let mut outputs = Vec::with_capacity(left.len());
        for (i, l) in left.iter().enumerate() {
            let r = right.get(i).map_or(Value::Other, |o| o.value.clone());
            let value = self.set_operation_column(&l.value, &r, op_name)?;
            if let Some(c) = value.protected() {
                if dedups {
                    self.require_deterministic(c, op_name)?;
                }
            }
            outputs.push(OutputColumn {
                name: l.name.clone(),
                value,
            });
        }
        Ok(outputs)
    }

    /// One output column of a set operation from its two sides.
    fn set_operation_column(&mut self, l: &Value, r: &Value, op_name: &str) -> Outcome<Value> {
        Ok(match (l.protected(), r.protected()) {
            (Some(a), Some(b)) => {
                let (ca, cb) = (self.column(a)?, self.column(b)?);
                let same = a == b
                    || (ca.domain.is_some()
                        && ca.key_scope() == cb.key_scope()
                        && ca.logical_type == cb.logical_type);
                if !same {
                    return Err(Halt::Refuse(format!(
                        "pgveil: {op_name} combining encrypted columns {} and {} is not supported",
                        ca.qualified_name(),
                        cb.qualified_name()
                    )));
                }
                l.clone()
            }
            (Some(a), None) if matches!(r, Value::Null) => Value::Column {
                protected: Some(a),
                origin: None,
            },
            (None, Some(b)) if matches!(l, Value::Null) => Value::Column {
                protected: Some(b),
                origin: None,
            },
            (Some(a), None) | (None, Some(a)) => {
                return self.refuse(&format!("{op_name} with a different value"), a)
            }
            (None, None) => {
                self.plain_use(l, op_name)?;
                self.plain_use(r, op_name)?;
                Value::Other
            }
        })
    }

    /// `VALUES (…), (…)` as a query (an INSERT's own VALUES is analysed by the INSERT):
    /// each column's values stay pending until the column is written somewhere or used.
    fn values(&mut self, values: &Values) -> Outcome<Vec<OutputColumn>> {
        self.scopes.push(Vec::new());
        let mut columns: Vec<Vec<Value>> = Vec::new();
        for row in &values.rows {
            for (i, e) in row.iter().enumerate() {
                let v = self.expression(e);
                let v = match v {
                    Ok(v) => v,
                    Err(e) => {
                        self.scopes.pop();
                        return Err(e);
                    }
                };
                if columns.len() <= i {
                    columns.resize_with(i + 1, Vec::new);
                }
                columns[i].push(v);
            }
        }
        self.scopes.pop();
        Ok(columns
            .into_iter()
            .enumerate()
            .map(|(i, items)| OutputColumn {
                name: format!("column{}", i + 1),
                value: self.pending(items, Vec::new(), Vec::new()),
            })
            .collect())
    }

    /// A new column of pending values.
    pub(super) fn pending(
        &mut self,
        items: Vec<Value>,
        arrays: Vec<Parameter>,
        casts: Vec<PendingCast>,
    ) -> Value {
        self.next_pending += 1;
        Value::Pending(Box::new(Pending {
            id: self.next_pending,
            items,
            arrays,
            array_literals: Vec::new(),
            casts,
        }))
    }

    /// `TABLE name`: `SELECT * FROM name`.
    fn table_statement(&mut self, t: &Table) -> Outcome<Vec<OutputColumn>> {
        let Some(name) = &t.table_name else {
            return unsupported("TABLE");
        };
        let mut parts = Vec::new();
        if let Some(s) = &t.schema_name {
            parts.push(Ident::new(s.clone()));
        }
        parts.push(Ident::new(name.clone()));
        let name = ObjectName::from(parts);
        self.scopes.push(Vec::new());
        self.table_factor_name(&name, None)?;
        let outputs = self.expand_wildcard(None)?;
        self.scopes.pop();
        Ok(outputs)
    }

    /// A SELECT in its own scope.
    pub(super) fn select(
        &mut self,
        s: &Select,
        top: bool,
        order_by: Option<&OrderBy>,
    ) -> Outcome<Vec<OutputColumn>> {
        self.scopes.push(Vec::new());
        let result = self.select_in_scope(s, top, order_by);
        self.scopes.pop();
        result
    }

    /// The clauses of a SELECT, in the order PostgreSQL evaluates their names.
    fn select_in_scope(
        &mut self,
        s: &Select,
        top: bool,
        order_by: Option<&OrderBy>,
    ) -> Outcome<Vec<OutputColumn>> {
        for from_item in &s.from {
            self.table_with_joins(from_item)?;
        }
        if let Some(w) = &s.selection {
            self.condition(w)?;
        }
        let outputs = self.projection(&s.projection)?;
        let grouped = self.group_by(&s.group_by, &outputs)?;
        if let Some(h) = &s.having {
            self.condition(h)?;
        }
        self.distinct(s.distinct.as_ref(), &outputs)?;
        if let Some(q) = &s.qualify {
            self.condition(q)?;
        }
        if !s.named_window.is_empty() {
            self.opaque_node(&s.named_window, "WINDOW")?;
        }
        if s.into.is_some() {
            if let Some(c) = outputs.iter().find_map(|o| o.value.protected()) {
                return self.refuse("SELECT INTO", c);
            }
        }
        self.order_by(order_by, &outputs, true)?;
        if top {
            self.top_level_select(s, grouped);
        }
        Ok(outputs)
    }

    /// GROUP BY: grouping on a protected column needs deterministic encryption. True when
    /// the SELECT is grouped.
    fn group_by(&mut self, group_by: &GroupByExpr, outputs: &[OutputColumn]) -> Outcome<bool> {
        match group_by {
            GroupByExpr::Expressions(list, _) => {
                for e in list {
                    let v = self.group_item(e, outputs)?;
                    match v.protected() {
                        Some(c) => self.require_deterministic(c, "GROUP BY")?,
                        None => self.plain_use(&v, "GROUP BY")?,
                    }
                }
                Ok(!list.is_empty())
            }
            GroupByExpr::All(_) => {
                for o in outputs {
                    if let Some(c) = o.value.protected() {
                        self.require_deterministic(c, "GROUP BY")?;
                    }
                }
                Ok(true)
            }
        }
    }

    /// DISTINCT / DISTINCT ON: deduplicating on a protected column needs deterministic
    /// encryption.
    fn distinct(&mut self, distinct: Option<&Distinct>, outputs: &[OutputColumn]) -> Outcome<()> {
        match distinct {
            Some(Distinct::Distinct) => {
                for o in outputs {
                    if let Some(c) = o.value.protected() {
                        self.require_deterministic(c, "DISTINCT")?;
                    }
                }
            }
            Some(Distinct::On(list)) => {
                for e in list {
                    let v = self.group_item(e, outputs)?;
                    match v.protected() {
                        Some(c) => self.require_deterministic(c, "DISTINCT ON")?,
                        None => self.plain_use(&v, "DISTINCT ON")?,
                    }
                }
            }
            Some(Distinct::All) | None => {}
        }
        Ok(())
    }

    pub(super) fn projection(&mut self, items: &[SelectItem]) -> Outcome<Vec<OutputColumn>> {
        let mut outputs = Vec::new();
        for item in items {
            match item {
                SelectItem::UnnamedExpr(e) => {
                    let value = self.expression(e)?;
                    outputs.push(OutputColumn {
                        name: output_name(e),
                        value,
                    });
                }
                SelectItem::ExprWithAlias { expr, alias } => {
                    let value = self.expression(expr)?;
                    outputs.push(OutputColumn {
                        name: normalize(alias),
                        value,
                    });
                }
                SelectItem::ExprWithAliases { expr, aliases } => {
                    let value = self.expression(expr)?;
                    let name = aliases.first().map_or_else(|| output_name(expr), normalize);
                    outputs.push(OutputColumn { name, value });
                }
                SelectItem::Wildcard(_) => outputs.extend(self.expand_wildcard(None)?),
                SelectItem::QualifiedWildcard(kind, _) => match kind {
                    SelectItemQualifiedWildcardKind::ObjectName(name) => {
                        let parts = name_parts(name)?;
                        outputs.extend(self.expand_wildcard(Some(&parts))?);
                    }
                    SelectItemQualifiedWildcardKind::Expr(e) => {
                        let v = self.expression(e)?;
                        if let Some(c) = v.protected() {
                            return self.refuse("(expression).*", c);
                        }
                        return unsupported("(expression).*");
                    }
                },
            }
        }
        Ok(outputs)
    }

    /// GROUP BY / DISTINCT ON item: input column first, then output name, or a position.
    pub(super) fn group_item(&mut self, e: &Expr, outputs: &[OutputColumn]) -> Outcome<Value> {
        if let Some(v) = output_at_position(e, outputs) {
            return Ok(v);
        }
        if let Expr::Identifier(id) = e {
            if self.lookup_column(std::slice::from_ref(id))?.is_none() {
                let name = normalize(id);
                if let Some(o) = outputs.iter().find(|o| o.name == name) {
                    return Ok(o.value.clone());
                }
            }
        }
        self.expression(e)
    }

    /// ORDER BY item: output name or position first, then an expression on the inputs.
    pub(super) fn order_item(
        &mut self,
        e: &Expr,
        outputs: &[OutputColumn],
        inputs: bool,
    ) -> Outcome<()> {
        let mut v = output_at_position(e, outputs);
        if v.is_none() {
            if let Expr::Identifier(id) = e {
                let name = normalize(id);
                v = outputs
                    .iter()
                    .find(|o| o.name == name)
                    .map(|o| o.value.clone());
            }
        }
        let v = match v {
            Some(v) => v,
            None if inputs => self.expression(e)?,
            None => return unsupported("ORDER BY expression on a set operation"),
        };
        match v.protected() {
            Some(c) => self.refuse("ORDER BY", c),
            None => self.plain_use(&v, "ORDER BY"),
        }
    }

    /// ORDER BY of a SELECT (`inputs`: may also name its input columns) or of a set
    /// operation or parenthesized query (outputs only).
    pub(super) fn order_by(
        &mut self,
        order_by: Option<&OrderBy>,
        outputs: &[OutputColumn],
        inputs: bool,
    ) -> Outcome<()> {
        if let Some(OrderBy {
            kind: OrderByKind::Expressions(list),
            ..
        }) = order_by
        {
            for item in list {
                self.order_item(&item.expr, outputs, inputs)?;
            }
        }
        Ok(())
    }

    /// A subquery in an expression, in a scope of its own.
    pub(super) fn subquery(&mut self, q: &Query) -> Outcome<Vec<OutputColumn>> {
        self.scopes.push(Vec::new());
        let result = self.query(q, false);
        self.scopes.pop();
        result
    }
}
