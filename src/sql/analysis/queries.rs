//! Queries: WITH, set operations, VALUES, SELECT lists, GROUP BY, DISTINCT, ORDER BY and
//! LIMIT, and what each of them allows on a protected column.

use std::ops::ControlFlow;

use sqlparser::ast::{
    visit_expressions, Distinct, Expr, GroupByExpr, Ident, LimitClause, ObjectName, OrderBy,
    OrderByKind, Query, Select, SelectItem, SelectItemQualifiedWildcardKind, SetExpr, SetOperator,
    SetQuantifier, Statement, Value as SqlValue, ValueWithSpan,
};

use super::scopes::*;
use super::subjects::*;
use super::values::*;
use super::{unsupported, Analyzer, Halt, Outcome};

pub(super) const AGGREGATES: &[&str] = &[
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

pub(super) fn output_at_position(e: &Expr, outputs: &[OutputColumn]) -> Option<Value> {
    if let Expr::Value(ValueWithSpan {
        value: SqlValue::Number(n, _),
        ..
    }) = e
    {
        let i: usize = n.parse().ok()?;
        return outputs.get(i.checked_sub(1)?).map(|o| o.val.clone());
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
                for (col, def) in columns.iter_mut().zip(&cte.alias.columns) {
                    col.name = normalize(&def.name);
                }
                self.ctes.push((normalize(&cte.alias.name), columns));
            }
        }
        let outputs = self.set_expression(&q.body, top, q.order_by.as_ref())?;
        if let Some(limit) = &q.limit_clause {
            match limit {
                LimitClause::LimitOffset {
                    limit,
                    offset,
                    limit_by,
                } => {
                    for e in limit
                        .iter()
                        .chain(offset.iter().map(|o| &o.value))
                        .chain(limit_by)
                    {
                        let v = self.expression(e)?;
                        self.plain_use(&v, "LIMIT/OFFSET")?;
                    }
                }
                LimitClause::OffsetCommaLimit { offset, limit } => {
                    for e in [offset, limit] {
                        let v = self.expression(e)?;
                        self.plain_use(&v, "LIMIT/OFFSET")?;
                    }
                }
            }
        }
        self.ctes.truncate(cte_mark);
        Ok(outputs)
    }

    pub(super) fn source_columns(
        &mut self,
        outputs: &[OutputColumn],
    ) -> Outcome<Vec<SourceColumn>> {
        let mut columns = Vec::with_capacity(outputs.len());
        for o in outputs {
            let (protected, origin) = match &o.val {
                Value::Column { protected, origin } => (*protected, origin.clone()),
                other => {
                    self.plain_use(other, "subquery output")?;
                    (None, None)
                }
            };
            columns.push(SourceColumn {
                name: o.name.clone(),
                protected,
                origin,
            });
        }
        Ok(columns)
    }

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
                self.order_by_outputs(order_by, &outputs)?;
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
                let op_name = match op {
                    SetOperator::Union => "UNION",
                    SetOperator::Except | SetOperator::Minus => "EXCEPT",
                    SetOperator::Intersect => "INTERSECT",
                };
                let dedups = !matches!(set_quantifier, SetQuantifier::All);
                let mut outputs = Vec::with_capacity(l.len());
                for (i, lo) in l.iter().enumerate() {
                    let ro = r.get(i).map_or(Value::Other, |o| o.val.clone());
                    let val = match (lo.val.protected(), ro.protected()) {
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
                            lo.val.clone()
                        }
                        (Some(a), None) if matches!(ro, Value::Null) => Value::Column {
                            protected: Some(a),
                            origin: None,
                        },
                        (None, Some(b)) if matches!(lo.val, Value::Null) => Value::Column {
                            protected: Some(b),
                            origin: None,
                        },
                        (Some(a), None) | (None, Some(a)) => {
                            return self.refuse(&format!("{op_name} with a different value"), a)
                        }
                        (None, None) => {
                            self.plain_use(&lo.val, op_name)?;
                            self.plain_use(&ro, op_name)?;
                            Value::Other
                        }
                    };
                    if let Some(c) = val.protected() {
                        if dedups {
                            self.require_deterministic(c, op_name)?;
                        }
                    }
                    outputs.push(OutputColumn {
                        name: lo.name.clone(),
                        val,
                    });
                }
                self.order_by_outputs(order_by, &outputs)?;
                Ok(outputs)
            }
            SetExpr::Values(values) => {
                self.block_injection(top, "VALUES");
                self.scopes.push(Vec::new());
                let mut width = 0;
                for row in &values.rows {
                    width = width.max(row.len());
                    for e in row.iter() {
                        let v = self.expression(e)?;
                        self.plain_use(&v, "VALUES")?;
                    }
                }
                self.scopes.pop();
                Ok((1..=width)
                    .map(|i| OutputColumn {
                        name: format!("column{i}"),
                        val: Value::Other,
                    })
                    .collect())
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
                let Some(name) = &t.table_name else {
                    return unsupported("TABLE");
                };
                let mut parts = Vec::new();
                if let Some(s) = &t.schema_name {
                    parts.push(Ident::new(s.clone()));
                }
                parts.push(Ident::new(name.clone()));
                let obj = ObjectName::from(parts);
                self.scopes.push(Vec::new());
                self.table_factor_name(&obj, None)?;
                let outputs = self.expand_wildcard(None)?;
                self.scopes.pop();
                self.block_injection(top, "TABLE statement");
                Ok(outputs)
            }
            SetExpr::Merge(_) => unsupported("MERGE"),
        }
    }

    pub(super) fn select(
        &mut self,
        s: &Select,
        top: bool,
        order_by: Option<&OrderBy>,
    ) -> Outcome<Vec<OutputColumn>> {
        self.scopes.push(Vec::new());
        let result = self.select_inner(s, top, order_by);
        self.scopes.pop();
        result
    }

    pub(super) fn select_inner(
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
        let mut grouped = false;
        match &s.group_by {
            GroupByExpr::Expressions(list, _) => {
                for e in list {
                    grouped = true;
                    let v = self.group_item(e, &outputs)?;
                    match v.protected() {
                        Some(c) => self.require_deterministic(c, "GROUP BY")?,
                        None => self.plain_use(&v, "GROUP BY")?,
                    }
                }
            }
            GroupByExpr::All(_) => {
                grouped = true;
                for o in &outputs {
                    if let Some(c) = o.val.protected() {
                        self.require_deterministic(c, "GROUP BY")?;
                    }
                }
            }
        }
        if let Some(h) = &s.having {
            self.condition(h)?;
        }
        match &s.distinct {
            Some(Distinct::Distinct) => {
                for o in &outputs {
                    if let Some(c) = o.val.protected() {
                        self.require_deterministic(c, "DISTINCT")?;
                    }
                }
            }
            Some(Distinct::On(list)) => {
                for e in list {
                    let v = self.group_item(e, &outputs)?;
                    match v.protected() {
                        Some(c) => self.require_deterministic(c, "DISTINCT ON")?,
                        None => self.plain_use(&v, "DISTINCT ON")?,
                    }
                }
            }
            Some(Distinct::All) | None => {}
        }
        if let Some(q) = &s.qualify {
            self.condition(q)?;
        }
        if !s.named_window.is_empty() {
            self.opaque_node(&s.named_window, "WINDOW")?;
        }
        if s.into.is_some() {
            if let Some(c) = outputs.iter().find_map(|o| o.val.protected()) {
                return self.refuse("SELECT INTO", c);
            }
        }
        if let Some(ob) = order_by {
            if let OrderByKind::Expressions(list) = &ob.kind {
                for item in list {
                    self.order_item(&item.expr, &outputs, true)?;
                }
            }
        }
        if top {
            let mut has_agg = false;
            let _ = visit_expressions(&s.projection, |e| {
                if let Expr::Function(f) = e {
                    if f.over.is_none() {
                        let name = f.name.0.last().map(|p| p.to_string().to_ascii_lowercase());
                        if name.is_some_and(|n| AGGREGATES.contains(&n.as_str())) {
                            has_agg = true;
                        }
                    }
                }
                ControlFlow::<()>::Continue(())
            });
            let blocker = if s.distinct.is_some() {
                Some("DISTINCT")
            } else if grouped || s.having.is_some() {
                Some("GROUP BY")
            } else if has_agg {
                Some("aggregate")
            } else if s.into.is_some() {
                Some("SELECT INTO")
            } else {
                None
            };
            let aliases = self
                .scopes
                .last()
                .map(|sc| {
                    sc.iter()
                        .filter_map(|src| {
                            src.table
                                .clone()
                                .map(|t| (t, src.alias.clone(), src.reference))
                        })
                        .collect()
                })
                .unwrap_or_default();
            self.top_level = Some(TopLevel {
                insert_at: self.projection_end(s),
                blocker: blocker.map(str::to_string),
                aliases,
            });
        }
        Ok(outputs)
    }

    pub(super) fn projection(&mut self, items: &[SelectItem]) -> Outcome<Vec<OutputColumn>> {
        let mut outputs = Vec::new();
        for item in items {
            match item {
                SelectItem::UnnamedExpr(e) => {
                    let val = self.expression(e)?;
                    outputs.push(OutputColumn {
                        name: output_name(e),
                        val,
                    });
                }
                SelectItem::ExprWithAlias { expr, alias } => {
                    let val = self.expression(expr)?;
                    outputs.push(OutputColumn {
                        name: normalize(alias),
                        val,
                    });
                }
                SelectItem::ExprWithAliases { expr, aliases } => {
                    let val = self.expression(expr)?;
                    let name = aliases.first().map_or_else(|| output_name(expr), normalize);
                    outputs.push(OutputColumn { name, val });
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
                    return Ok(o.val.clone());
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
                    .map(|o| o.val.clone());
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

    pub(super) fn order_by_outputs(
        &mut self,
        order_by: Option<&OrderBy>,
        outputs: &[OutputColumn],
    ) -> Outcome<()> {
        if let Some(OrderBy {
            kind: OrderByKind::Expressions(list),
            ..
        }) = order_by
        {
            for item in list {
                self.order_item(&item.expr, outputs, false)?;
            }
        }
        Ok(())
    }
}
