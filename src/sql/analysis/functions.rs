//! Function calls and the nodes not analysed in detail (refused when they involve a
//! protected column).

use std::ops::ControlFlow;

use sqlparser::ast::{
    visit_expressions, DuplicateTreatment, Expr, Function, FunctionArg, FunctionArgExpr,
    FunctionArgumentClause, FunctionArguments, Ident, ObjectNamePart, Query, WindowType,
};

use super::scopes::*;
use super::values::*;
use super::{Analyzer, Halt, Outcome};

impl Analyzer<'_> {
    pub(super) fn function(&mut self, f: &Function) -> Outcome<Value> {
        let name = f
            .name
            .0
            .last()
            .map(|p| p.to_string().to_ascii_lowercase())
            .unwrap_or_default();
        let label = format!("function {name}()");
        if let Some(filter) = &f.filter {
            self.condition(filter)?;
        }
        for o in &f.within_group {
            let v = self.expression(&o.expr)?;
            self.plain_use(&v, "WITHIN GROUP (ORDER BY)")?;
        }
        if let Some(WindowType::WindowSpec(spec)) = &f.over {
            for e in &spec.partition_by {
                let v = self.expression(e)?;
                match v.protected() {
                    Some(c) => self.require_deterministic(c, "PARTITION BY")?,
                    None => self.plain_use(&v, "PARTITION BY")?,
                }
            }
            for o in &spec.order_by {
                let v = self.expression(&o.expr)?;
                self.plain_use(&v, "ORDER BY")?;
            }
        }
        match &f.parameters {
            FunctionArguments::None => {}
            _ => self.opaque_node(&f.parameters, &label)?,
        }
        match &f.args {
            FunctionArguments::None => {}
            FunctionArguments::Subquery(q) => {
                self.scopes.push(Vec::new());
                let r = self.query(q, false);
                self.scopes.pop();
                for o in r? {
                    self.plain_use(&o.value, &label)?;
                }
            }
            FunctionArguments::List(list) => {
                let distinct =
                    matches!(list.duplicate_treatment, Some(DuplicateTreatment::Distinct));
                let count = name == "count" && f.name.0.len() <= 2 && list.args.len() == 1;
                for arg in &list.args {
                    let e = match arg {
                        FunctionArg::Unnamed(a)
                        | FunctionArg::Named { arg: a, .. }
                        | FunctionArg::ExprNamed { arg: a, .. } => a,
                    };
                    let FunctionArgExpr::Expr(e) = e else {
                        if !count {
                            self.no_wildcard_arg(e, &label)?;
                        }
                        continue;
                    };
                    let v = self.expression(e)?;
                    match v.protected() {
                        Some(c) if count => {
                            if distinct {
                                self.require_deterministic(c, "count(DISTINCT)")?;
                            } else {
                                self.conditions.push(c);
                            }
                        }
                        _ => self.plain_use(&v, &label)?,
                    }
                }
                for clause in &list.clauses {
                    match clause {
                        FunctionArgumentClause::OrderBy(items) => {
                            for o in items {
                                let v = self.expression(&o.expr)?;
                                self.plain_use(&v, "ORDER BY")?;
                            }
                        }
                        other => self.opaque_node(other, &label)?,
                    }
                }
            }
        }
        Ok(Value::Other)
    }

    /// Something not analysed in detail: refuse when it involves a protected column (or
    /// could: a name of one that does not resolve here); analyse nested queries for their
    /// own bindings and tables.
    pub(super) fn opaque_node<V: sqlparser::ast::Visit>(
        &mut self,
        node: &V,
        what: &str,
    ) -> Outcome<()> {
        let mut idents: Vec<Vec<Ident>> = Vec::new();
        let mut queries: Vec<Query> = Vec::new();
        let mut wildcards: Vec<FunctionArgExpr> = Vec::new();
        let _ = visit_expressions(node, |e| {
            match e {
                Expr::QualifiedWildcard(name, _) => {
                    wildcards.push(FunctionArgExpr::QualifiedWildcard(name.clone()))
                }
                Expr::Wildcard(_) => wildcards.push(FunctionArgExpr::Wildcard),
                Expr::Identifier(id) => idents.push(vec![id.clone()]),
                Expr::CompoundIdentifier(ids) => idents.push(ids.clone()),
                Expr::Subquery(q)
                | Expr::Exists { subquery: q, .. }
                | Expr::InSubquery { subquery: q, .. } => queries.push((**q).clone()),
                _ => {}
            }
            ControlFlow::<()>::Continue(())
        });
        for w in &wildcards {
            self.no_wildcard_arg(w, what)?;
        }
        for ids in &idents {
            match self.lookup_column(ids)? {
                Some(v) => {
                    self.plain_use(&v, what)?;
                }
                None => {
                    self.no_whole_row(ids, what)?;
                    let last = ids.last().map(normalize).unwrap_or_default();
                    if self.protection.is_protected_column_name(&last) {
                        return Err(Halt::Refuse(format!(
                            "pgveil: {what} is not supported near encrypted column {last}"
                        )));
                    }
                }
            }
        }
        for q in &queries {
            self.scopes.push(Vec::new());
            let r = self.query(q, false);
            self.scopes.pop();
            for o in r? {
                self.plain_use(&o.value, what)?;
            }
        }
        Ok(())
    }

    /// `f(p.*)` / `f(*)` (other than `count(*)`): the whole rows of the relations.
    pub(super) fn no_wildcard_arg(&self, arg: &FunctionArgExpr, what: &str) -> Outcome<()> {
        match arg {
            FunctionArgExpr::Expr(_) => Ok(()),
            FunctionArgExpr::QualifiedWildcard(name) => {
                let ids: Vec<Ident> = name
                    .0
                    .iter()
                    .filter_map(|p| match p {
                        ObjectNamePart::Identifier(id) => Some(id.clone()),
                        ObjectNamePart::Function(_) => None,
                    })
                    .collect();
                self.no_whole_row(&ids, what)
            }
            FunctionArgExpr::Wildcard | FunctionArgExpr::WildcardWithOptions(_) => {
                if let Some(scope) = self.scopes.last() {
                    if let Some(c) = scope
                        .iter()
                        .flat_map(|s| s.columns.iter().flatten())
                        .find_map(|c| c.protected)
                    {
                        return self.refuse(what, c);
                    }
                }
                Ok(())
            }
        }
    }
}
