//! Expressions: one step per expression kind, each turning an AST node into a [`Value`] and
//! deciding what its operands may be.

use sqlparser::ast::{
    BinaryOperator, CastKind, Expr, UnaryOperator, Value as SqlValue, ValueWithSpan,
};
use sqlparser::tokenizer::Token;

use super::values::*;
use super::{unsupported, Analyzer, Outcome};

pub(super) fn is_number(e: &Expr) -> bool {
    matches!(
        e,
        Expr::Value(ValueWithSpan {
            value: SqlValue::Number(..),
            ..
        })
    )
}

impl Analyzer<'_> {
    pub(super) fn expression(&mut self, e: &Expr) -> Outcome<Value> {
        match e {
            Expr::Identifier(id) => {
                if id.quote_style.is_none() && id.value.eq_ignore_ascii_case("default") {
                    return Ok(Value::Default);
                }
                match self.lookup_column(std::slice::from_ref(id))? {
                    Some(v) => Ok(v),
                    None => {
                        self.no_whole_row(std::slice::from_ref(id), "a whole-row reference")?;
                        Ok(Value::Other)
                    }
                }
            }
            Expr::CompoundIdentifier(ids) => match self.lookup_column(ids)? {
                Some(v) => Ok(v),
                None => {
                    self.no_whole_row(ids, "a whole-row reference")?;
                    Ok(Value::Other)
                }
            },
            Expr::Value(v) => self.value(v),
            Expr::UnaryOp {
                op: op @ (UnaryOperator::Minus | UnaryOperator::Plus),
                expr: inner,
            } if is_number(inner)
                || matches!(&**inner, Expr::Cast { expr: e, kind: CastKind::DoubleColon, .. } if is_number(e)) =>
            {
                let Value::Literal(mut lit) = self.expression(inner)? else {
                    return Ok(Value::Other);
                };
                // Not locatable: not bindable (refused if compared with a protected column).
                let prev = self
                    .token_index_at(lit.range.start)
                    .and_then(|i| self.tokens.prev_solid(i));
                let Some(prev) = prev
                    .filter(|&p| matches!(self.tokens.token(p), Some(Token::Minus | Token::Plus)))
                else {
                    return Ok(Value::Other);
                };
                lit.range.start = self.tokens.ranges[prev].start;
                if matches!(op, UnaryOperator::Minus) {
                    lit.value = format!("-{}", lit.value);
                }
                Ok(Value::Literal(lit))
            }
            Expr::UnaryOp { op, expr: inner } => {
                let v = self.expression(inner)?;
                self.plain_use(&v, &format!("operator {op}"))?;
                Ok(Value::Other)
            }
            Expr::Nested(inner) => {
                let v = self.expression(inner)?;
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
                let v = self.expression(inner)?;
                let ty = data_type.to_string().to_ascii_lowercase();
                if let Some(c) = v.protected() {
                    return self.refuse(&format!("a cast to {ty}"), c);
                }
                if format.is_some() || matches!(&**inner, Expr::Nested(_)) {
                    self.plain_use(&v, "cast")?;
                    return Ok(Value::Other);
                }
                match v {
                    Value::Literal(mut lit) => {
                        let Some(range) = self.cast_range(kind, lit.range.clone()) else {
                            return Ok(Value::Other);
                        };
                        lit.range = range;
                        lit.cast = Some(ty);
                        Ok(Value::Literal(lit))
                    }
                    Value::Parameter(mut p) => {
                        if p.cast.is_some() {
                            return unsupported("double cast of a parameter");
                        }
                        let Some(range) = self.cast_range(kind, p.range.clone()) else {
                            self.plain_params.insert(p.n);
                            return Ok(Value::Other);
                        };
                        p.cast = Some((range, ty));
                        Ok(Value::Parameter(p))
                    }
                    Value::Null => Ok(Value::Null),
                    other => {
                        self.plain_use(&other, "cast")?;
                        Ok(Value::Other)
                    }
                }
            }
            Expr::TypedString(ts) => {
                if ts.uses_odbc_syntax {
                    return unsupported("ODBC literal");
                }
                let Value::Literal(mut lit) = self.value(&ts.value)? else {
                    return Ok(Value::Other);
                };
                let Some(start) = self.typed_string_start(lit.range.start) else {
                    return Ok(Value::Other);
                };
                lit.range.start = start;
                lit.cast = Some(ts.data_type.to_string().to_ascii_lowercase());
                Ok(Value::Literal(lit))
            }
            Expr::BinaryOp { left, op, right } => {
                let l = self.expression(left)?;
                let r = self.expression(right)?;
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
                Ok(Value::Other)
            }
            Expr::IsNull(inner) | Expr::IsNotNull(inner) => {
                let v = self.expression(inner)?;
                match v.protected() {
                    Some(c) => self.conditions.push(c),
                    // `$1 IS NULL` holds for the ciphertext exactly when it holds for the
                    // plaintext: not a plaintext use of the parameter.
                    None if matches!(v, Value::Parameter(_)) => {}
                    None => self.plain_use(&v, "IS NULL")?,
                }
                Ok(Value::Other)
            }
            Expr::IsDistinctFrom(l, r) | Expr::IsNotDistinctFrom(l, r) => {
                let (lv, rv) = (self.expression(l)?, self.expression(r)?);
                self.compare(&lv, &rv, "IS DISTINCT FROM")?;
                Ok(Value::Other)
            }
            Expr::InList {
                expr: inner,
                list,
                negated,
            } => {
                let l = self.expression(inner)?;
                let op = if *negated { "NOT IN" } else { "IN" };
                for item in list {
                    let r = self.expression(item)?;
                    self.compare(&l, &r, op)?;
                }
                if list.is_empty() {
                    self.plain_use(&l, op)?;
                }
                Ok(Value::Other)
            }
            Expr::InSubquery {
                expr: inner,
                subquery,
                negated,
            } => {
                let l = self.expression(inner)?;
                let op = if *negated { "NOT IN" } else { "IN" };
                self.scopes.push(Vec::new());
                let outputs = self.query(subquery, false);
                self.scopes.pop();
                let outputs = outputs?;
                match outputs.as_slice() {
                    [one] => self.compare(&l, &one.val, op)?,
                    _ => {
                        self.plain_use(&l, op)?;
                        for o in &outputs {
                            self.plain_use(&o.val, op)?;
                        }
                    }
                }
                Ok(Value::Other)
            }
            Expr::Between {
                expr: inner,
                low,
                high,
                negated,
            } => {
                let op = if *negated { "NOT BETWEEN" } else { "BETWEEN" };
                for x in [inner, low, high] {
                    let v = self.expression(x)?;
                    self.plain_use(&v, op)?;
                }
                Ok(Value::Other)
            }
            Expr::Like {
                expr: inner,
                pattern,
                escape_char,
                ..
            } => self.pattern_match("LIKE", inner, pattern, escape_char.as_deref()),
            Expr::ILike {
                expr: inner,
                pattern,
                escape_char,
                ..
            } => self.pattern_match("ILIKE", inner, pattern, escape_char.as_deref()),
            Expr::SimilarTo {
                expr: inner,
                pattern,
                escape_char,
                ..
            } => self.pattern_match("SIMILAR TO", inner, pattern, escape_char.as_deref()),
            Expr::Function(f) => self.function(f),
            Expr::Case {
                operand,
                conditions,
                else_result,
                ..
            } => {
                let op_val = match operand {
                    Some(o) => Some(self.expression(o)?),
                    None => None,
                };
                for w in conditions {
                    match &op_val {
                        Some(ov) => {
                            let wv = self.expression(&w.condition)?;
                            self.compare(ov, &wv, "CASE")?;
                        }
                        None => self.condition(&w.condition)?,
                    }
                    let rv = self.expression(&w.result)?;
                    self.plain_use(&rv, "CASE")?;
                }
                if let Some(e) = else_result {
                    let v = self.expression(e)?;
                    self.plain_use(&v, "CASE")?;
                }
                Ok(Value::Other)
            }
            Expr::Exists { subquery, .. } => {
                self.scopes.push(Vec::new());
                let r = self.query(subquery, false);
                self.scopes.pop();
                for o in r? {
                    if let Value::Parameter(p) = &o.val {
                        self.plain_params.insert(p.n);
                    }
                }
                Ok(Value::Other)
            }
            Expr::Subquery(q) => {
                self.scopes.push(Vec::new());
                let r = self.query(q, false);
                self.scopes.pop();
                let outputs = r?;
                match outputs.as_slice() {
                    [one] => Ok(match &one.val {
                        Value::Column { protected, .. } => Value::Column {
                            protected: *protected,
                            origin: None,
                        },
                        other => other.clone(),
                    }),
                    _ => {
                        for o in &outputs {
                            self.plain_use(&o.val, "subquery")?;
                        }
                        Ok(Value::Other)
                    }
                }
            }
            Expr::Tuple(items) => {
                for x in items {
                    let v = self.expression(x)?;
                    self.plain_use(&v, "row constructor")?;
                }
                Ok(Value::Other)
            }
            Expr::AnyOp { left, right, .. } | Expr::AllOp { left, right, .. } => {
                for x in [left, right] {
                    let v = self.expression(x)?;
                    self.plain_use(&v, "ANY/ALL")?;
                }
                Ok(Value::Other)
            }
            Expr::Collate { expr: inner, .. } => {
                let v = self.expression(inner)?;
                self.plain_use(&v, "COLLATE")?;
                Ok(Value::Other)
            }
            Expr::IsTrue(inner)
            | Expr::IsFalse(inner)
            | Expr::IsNotTrue(inner)
            | Expr::IsNotFalse(inner)
            | Expr::IsUnknown(inner)
            | Expr::IsNotUnknown(inner) => {
                let v = self.expression(inner)?;
                self.plain_use(&v, "IS TRUE/FALSE")?;
                Ok(Value::Other)
            }
            other => {
                self.opaque_node(other, "this expression")?;
                Ok(Value::Other)
            }
        }
    }

    pub(super) fn pattern_match(
        &mut self,
        op: &str,
        l: &Expr,
        r: &Expr,
        esc: Option<&Expr>,
    ) -> Outcome<Value> {
        let lv = self.expression(l)?;
        self.plain_use(&lv, op)?;
        let rv = self.expression(r)?;
        self.plain_use(&rv, op)?;
        if let Some(e) = esc {
            let v = self.expression(e)?;
            self.plain_use(&v, op)?;
        }
        Ok(Value::Other)
    }

    pub(super) fn value(&mut self, v: &ValueWithSpan) -> Outcome<Value> {
        let text = match &v.value {
            SqlValue::Null => return Ok(Value::Null),
            SqlValue::Placeholder(p) => {
                let n = p.strip_prefix('$').and_then(|d| d.parse::<u32>().ok());
                return match n {
                    Some(n) if n > 0 => {
                        let range = self.span_range(v.span)?;
                        Ok(Value::Parameter(Parameter {
                            n,
                            range,
                            cast: None,
                        }))
                    }
                    _ => unsupported("placeholder"),
                };
            }
            SqlValue::Number(s, _) => s.clone(),
            SqlValue::Boolean(b) => b.to_string(),
            SqlValue::SingleQuotedString(s)
            | SqlValue::EscapedStringLiteral(s)
            | SqlValue::NationalStringLiteral(s)
            | SqlValue::UnicodeStringLiteral(s) => s.clone(),
            SqlValue::DollarQuotedString(d) => d.value.clone(),
            _ => return Ok(Value::Other),
        };
        let range = self.span_range(v.span)?;
        Ok(Value::Literal(Literal {
            range,
            value: text,
            cast: None,
        }))
    }
}
