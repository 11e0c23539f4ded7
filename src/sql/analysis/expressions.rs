//! Expressions: one step per expression kind, each turning an AST node into a [`Val`] and
//! deciding what its operands may be.

use sqlparser::ast::{BinaryOperator, CastKind, Expr, UnaryOperator, Value, ValueWithSpan};
use sqlparser::tokenizer::Token;

use super::values::*;
use super::{unsupported, Ctx, R};

pub(super) fn is_number(e: &Expr) -> bool {
    matches!(
        e,
        Expr::Value(ValueWithSpan {
            value: Value::Number(..),
            ..
        })
    )
}

impl Ctx<'_> {
    pub(super) fn expr(&mut self, e: &Expr) -> R<Val> {
        match e {
            Expr::Identifier(id) => {
                if id.quote_style.is_none() && id.value.eq_ignore_ascii_case("default") {
                    return Ok(Val::Default);
                }
                match self.lookup_column(std::slice::from_ref(id))? {
                    Some(v) => Ok(v),
                    None => {
                        self.no_whole_row(std::slice::from_ref(id), "a whole-row reference")?;
                        Ok(Val::Other)
                    }
                }
            }
            Expr::CompoundIdentifier(ids) => match self.lookup_column(ids)? {
                Some(v) => Ok(v),
                None => {
                    self.no_whole_row(ids, "a whole-row reference")?;
                    Ok(Val::Other)
                }
            },
            Expr::Value(v) => self.value(v),
            Expr::UnaryOp {
                op: op @ (UnaryOperator::Minus | UnaryOperator::Plus),
                expr: inner,
            } if is_number(inner)
                || matches!(&**inner, Expr::Cast { expr: e, kind: CastKind::DoubleColon, .. } if is_number(e)) =>
            {
                let Val::Lit(mut lit) = self.expr(inner)? else {
                    return Ok(Val::Other);
                };
                // Not locatable: not bindable (refused if compared with a protected column).
                let prev = self
                    .token_index_at(lit.range.start)
                    .and_then(|i| self.tk.prev_solid(i));
                let Some(prev) =
                    prev.filter(|&p| matches!(self.tk.token(p), Some(Token::Minus | Token::Plus)))
                else {
                    return Ok(Val::Other);
                };
                lit.range.start = self.tk.ranges[prev].start;
                if matches!(op, UnaryOperator::Minus) {
                    lit.value = format!("-{}", lit.value);
                }
                Ok(Val::Lit(lit))
            }
            Expr::UnaryOp { op, expr: inner } => {
                let v = self.expr(inner)?;
                self.plain_use(&v, &format!("operator {op}"))?;
                Ok(Val::Other)
            }
            Expr::Nested(inner) => {
                let v = self.expr(inner)?;
                // A parenthesized literal cannot be extended by a cast; keep it bindable
                // only on its own.
                Ok(v)
            }
            Expr::Cast {
                kind,
                expr: inner,
                data_type,
                format,
            } => {
                let v = self.expr(inner)?;
                let ty = data_type.to_string().to_ascii_lowercase();
                if let Some(c) = v.prot() {
                    return self.refuse(&format!("a cast to {ty}"), c);
                }
                if format.is_some() || matches!(&**inner, Expr::Nested(_)) {
                    self.plain_use(&v, "cast")?;
                    return Ok(Val::Other);
                }
                match v {
                    Val::Lit(mut lit) => {
                        let Some(range) = self.cast_range(kind, lit.range.clone()) else {
                            return Ok(Val::Other);
                        };
                        lit.range = range;
                        lit.cast = Some(ty);
                        Ok(Val::Lit(lit))
                    }
                    Val::Param(mut p) => {
                        if p.cast.is_some() {
                            return unsupported("double cast of a parameter");
                        }
                        let Some(range) = self.cast_range(kind, p.range.clone()) else {
                            self.plain_params.insert(p.n);
                            return Ok(Val::Other);
                        };
                        p.cast = Some((range, ty));
                        Ok(Val::Param(p))
                    }
                    Val::Null => Ok(Val::Null),
                    other => {
                        self.plain_use(&other, "cast")?;
                        Ok(Val::Other)
                    }
                }
            }
            Expr::TypedString(ts) => {
                if ts.uses_odbc_syntax {
                    return unsupported("ODBC literal");
                }
                let Val::Lit(mut lit) = self.value(&ts.value)? else {
                    return Ok(Val::Other);
                };
                let Some(start) = self.typed_string_start(lit.range.start) else {
                    return Ok(Val::Other);
                };
                lit.range.start = start;
                lit.cast = Some(ts.data_type.to_string().to_ascii_lowercase());
                Ok(Val::Lit(lit))
            }
            Expr::BinaryOp { left, op, right } => {
                let l = self.expr(left)?;
                let r = self.expr(right)?;
                match op {
                    BinaryOperator::And | BinaryOperator::Or => {
                        self.plain_use(&l, "use as a boolean")?;
                        self.plain_use(&r, "use as a boolean")?;
                    }
                    BinaryOperator::Eq => self.compare(&l, &r, "=")?,
                    BinaryOperator::NotEq => self.compare(&l, &r, "<>")?,
                    other => {
                        let name = other.to_string();
                        self.plain_use(&l, &name)?;
                        self.plain_use(&r, &name)?;
                    }
                }
                Ok(Val::Other)
            }
            Expr::IsNull(inner) | Expr::IsNotNull(inner) => {
                let v = self.expr(inner)?;
                match v.prot() {
                    Some(c) => self.conditions.push(c),
                    // `$1 IS NULL` holds for the ciphertext exactly when it holds for the
                    // plaintext: not a plaintext use of the parameter.
                    None if matches!(v, Val::Param(_)) => {}
                    None => self.plain_use(&v, "IS NULL")?,
                }
                Ok(Val::Other)
            }
            Expr::IsDistinctFrom(l, r) | Expr::IsNotDistinctFrom(l, r) => {
                let (lv, rv) = (self.expr(l)?, self.expr(r)?);
                self.compare(&lv, &rv, "IS DISTINCT FROM")?;
                Ok(Val::Other)
            }
            Expr::InList {
                expr: inner,
                list,
                negated,
            } => {
                let l = self.expr(inner)?;
                let op = if *negated { "NOT IN" } else { "IN" };
                for item in list {
                    let r = self.expr(item)?;
                    self.compare(&l, &r, op)?;
                }
                if list.is_empty() {
                    self.plain_use(&l, op)?;
                }
                Ok(Val::Other)
            }
            Expr::InSubquery {
                expr: inner,
                subquery,
                negated,
            } => {
                let l = self.expr(inner)?;
                let op = if *negated { "NOT IN" } else { "IN" };
                self.scopes.push(Vec::new());
                let outs = self.query(subquery, false);
                self.scopes.pop();
                let outs = outs?;
                match outs.as_slice() {
                    [one] => self.compare(&l, &one.val, op)?,
                    _ => {
                        self.plain_use(&l, op)?;
                        for o in &outs {
                            self.plain_use(&o.val, op)?;
                        }
                    }
                }
                Ok(Val::Other)
            }
            Expr::Between {
                expr: inner,
                low,
                high,
                negated,
            } => {
                let op = if *negated { "NOT BETWEEN" } else { "BETWEEN" };
                for x in [inner, low, high] {
                    let v = self.expr(x)?;
                    self.plain_use(&v, op)?;
                }
                Ok(Val::Other)
            }
            Expr::Like {
                expr: inner,
                pattern,
                escape_char,
                ..
            } => self.pattern_op("LIKE", inner, pattern, escape_char.as_deref()),
            Expr::ILike {
                expr: inner,
                pattern,
                escape_char,
                ..
            } => self.pattern_op("ILIKE", inner, pattern, escape_char.as_deref()),
            Expr::SimilarTo {
                expr: inner,
                pattern,
                escape_char,
                ..
            } => self.pattern_op("SIMILAR TO", inner, pattern, escape_char.as_deref()),
            Expr::Function(f) => self.function(f),
            Expr::Case {
                operand,
                conditions,
                else_result,
                ..
            } => {
                let op_val = match operand {
                    Some(o) => Some(self.expr(o)?),
                    None => None,
                };
                for w in conditions {
                    match &op_val {
                        Some(ov) => {
                            let wv = self.expr(&w.condition)?;
                            self.compare(ov, &wv, "CASE")?;
                        }
                        None => self.cond(&w.condition)?,
                    }
                    let rv = self.expr(&w.result)?;
                    self.plain_use(&rv, "CASE")?;
                }
                if let Some(e) = else_result {
                    let v = self.expr(e)?;
                    self.plain_use(&v, "CASE")?;
                }
                Ok(Val::Other)
            }
            Expr::Exists { subquery, .. } => {
                self.scopes.push(Vec::new());
                let r = self.query(subquery, false);
                self.scopes.pop();
                for o in r? {
                    if let Val::Param(p) = &o.val {
                        self.plain_params.insert(p.n);
                    }
                }
                Ok(Val::Other)
            }
            Expr::Subquery(q) => {
                self.scopes.push(Vec::new());
                let r = self.query(q, false);
                self.scopes.pop();
                let outs = r?;
                match outs.as_slice() {
                    [one] => Ok(match &one.val {
                        Val::Col { prot, .. } => Val::Col {
                            prot: *prot,
                            origin: None,
                        },
                        other => other.clone(),
                    }),
                    _ => {
                        for o in &outs {
                            self.plain_use(&o.val, "subquery")?;
                        }
                        Ok(Val::Other)
                    }
                }
            }
            Expr::Tuple(items) => {
                for x in items {
                    let v = self.expr(x)?;
                    self.plain_use(&v, "row constructor")?;
                }
                Ok(Val::Other)
            }
            Expr::AnyOp { left, right, .. } | Expr::AllOp { left, right, .. } => {
                for x in [left, right] {
                    let v = self.expr(x)?;
                    self.plain_use(&v, "ANY/ALL")?;
                }
                Ok(Val::Other)
            }
            Expr::Collate { expr: inner, .. } => {
                let v = self.expr(inner)?;
                self.plain_use(&v, "COLLATE")?;
                Ok(Val::Other)
            }
            Expr::IsTrue(inner)
            | Expr::IsFalse(inner)
            | Expr::IsNotTrue(inner)
            | Expr::IsNotFalse(inner)
            | Expr::IsUnknown(inner)
            | Expr::IsNotUnknown(inner) => {
                let v = self.expr(inner)?;
                self.plain_use(&v, "IS TRUE/FALSE")?;
                Ok(Val::Other)
            }
            other => {
                self.opaque_node(other, "this expression")?;
                Ok(Val::Other)
            }
        }
    }

    pub(super) fn pattern_op(
        &mut self,
        op: &str,
        l: &Expr,
        r: &Expr,
        esc: Option<&Expr>,
    ) -> R<Val> {
        let lv = self.expr(l)?;
        self.plain_use(&lv, op)?;
        let rv = self.expr(r)?;
        self.plain_use(&rv, op)?;
        if let Some(e) = esc {
            let v = self.expr(e)?;
            self.plain_use(&v, op)?;
        }
        Ok(Val::Other)
    }

    pub(super) fn value(&mut self, v: &ValueWithSpan) -> R<Val> {
        let text = match &v.value {
            Value::Null => return Ok(Val::Null),
            Value::Placeholder(p) => {
                let n = p.strip_prefix('$').and_then(|d| d.parse::<u32>().ok());
                return match n {
                    Some(n) if n > 0 => {
                        let range = self.span_range(v.span)?;
                        Ok(Val::Param(Param {
                            n,
                            range,
                            cast: None,
                        }))
                    }
                    _ => unsupported("placeholder"),
                };
            }
            Value::Number(s, _) => s.clone(),
            Value::Boolean(b) => b.to_string(),
            Value::SingleQuotedString(s)
            | Value::EscapedStringLiteral(s)
            | Value::NationalStringLiteral(s)
            | Value::UnicodeStringLiteral(s) => s.clone(),
            Value::DollarQuotedString(d) => d.value.clone(),
            _ => return Ok(Val::Other),
        };
        let range = self.span_range(v.span)?;
        Ok(Val::Lit(Lit {
            range,
            value: text,
            cast: None,
        }))
    }
}
