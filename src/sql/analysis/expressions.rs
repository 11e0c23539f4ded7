//! Expressions: one step per expression kind, each turning an AST node into a [`Value`] and
//! deciding what its operands may be.

use sqlparser::ast::{
    BinaryOperator, CaseWhen, CastKind, DataType, Expr, FunctionArgExpr, Ident, Query, TypedString,
    UnaryOperator, Value as SqlValue, ValueWithSpan,
};

use std::ops::Range;

use super::comparisons::Shape;
use super::values::{Literal, Parameter, Value};
use super::{unsupported, Analyzer, Outcome};
use crate::schema::{EncryptionMode, LogicalType};
use crate::sql::{KeyMatch, LiteralBinding};

fn is_number(e: &Expr) -> bool {
    matches!(
        e,
        Expr::Value(ValueWithSpan {
            value: SqlValue::Number(..),
            ..
        })
    )
}

/// The operand of a unary sign that makes a signed literal: `-42`, `-42::int8`.
fn is_signed_number_operand(inner: &Expr) -> bool {
    is_number(inner)
        || matches!(inner, Expr::Cast { expr: e, kind: CastKind::DoubleColon, .. } if is_number(e))
}

fn is_default_keyword(id: &Ident) -> bool {
    id.quote_style.is_none() && id.value.eq_ignore_ascii_case("default")
}

impl Analyzer<'_> {
    /// The value of an expression. One arm per expression kind pgveil understands, each a
    /// call or a one-liner; everything else is an opaque node (refused near a protected
    /// column).
    pub(super) fn expression(&mut self, e: &Expr) -> Outcome<Value> {
        match e {
            Expr::Identifier(id) if is_default_keyword(id) => Ok(Value::Default),
            Expr::Identifier(id) => self.column_reference(std::slice::from_ref(id)),
            Expr::CompoundIdentifier(ids) => self.column_reference(ids),
            Expr::Value(v) => self.value(v),
            Expr::UnaryOp {
                op: op @ (UnaryOperator::Minus | UnaryOperator::Plus),
                expr: inner,
            } if is_signed_number_operand(inner) => self.signed_number(op, inner),
            Expr::UnaryOp {
                op: UnaryOperator::Not,
                expr: inner,
            } => {
                let v = self.expression(inner)?;
                self.truth(inner, &v)?;
                Ok(Value::Other)
            }
            Expr::UnaryOp { op, expr: inner } => {
                self.plain_operands([&**inner], &format!("operator {op}"))
            }
            // A parenthesized literal cannot be extended by a cast; keep it bindable only
            // on its own.
            Expr::Nested(inner) => self.expression(inner),
            Expr::Cast {
                kind,
                expr: inner,
                data_type,
                format,
            } => self.cast(kind, inner, data_type, format.is_some()),
            Expr::TypedString(ts) => self.typed_string(ts),
            Expr::BinaryOp { left, op, right } => self.binary_operation(left, op, right),
            Expr::IsNull(inner) | Expr::IsNotNull(inner) => self.null_test(inner),
            Expr::IsDistinctFrom(l, r) | Expr::IsNotDistinctFrom(l, r) => {
                let (lv, rv) = (self.expression(l)?, self.expression(r)?);
                let shape = Shape::Distinct {
                    left_column: self.column_text(l).map(|(_, text)| text),
                    right_column: self.column_text(r).map(|(_, text)| text),
                };
                self.compare_shaped(&lv, &rv, "IS DISTINCT FROM", &shape)?;
                Ok(Value::Other)
            }
            Expr::InList {
                expr: inner,
                list,
                negated,
            } => self.in_list(inner, list, *negated),
            Expr::InSubquery {
                expr: inner,
                subquery,
                negated,
            } => self.in_subquery(inner, subquery, *negated),
            Expr::Between {
                expr: inner,
                low,
                high,
                negated,
            } => {
                let op = if *negated { "NOT BETWEEN" } else { "BETWEEN" };
                self.plain_operands([&**inner, &**low, &**high], op)
            }
            Expr::Like { .. } | Expr::ILike { .. } | Expr::SimilarTo { .. } => {
                self.pattern_match(e)
            }
            Expr::Function(f) => self.function(f),
            Expr::Case {
                operand,
                conditions,
                else_result,
                ..
            } => self.case(operand.as_deref(), conditions, else_result.as_deref()),
            Expr::Exists { subquery, .. } => self.exists(subquery),
            Expr::Subquery(q) => self.scalar_subquery(q),
            Expr::Tuple(items) => self.plain_operands(items, "row constructor"),
            Expr::Array(array) => self.plain_operands(&array.elem, "ARRAY[…]"),
            // `p.*` / `*` as a value: the whole row, refused when it holds a protected column.
            Expr::QualifiedWildcard(name, _) => {
                let arg = FunctionArgExpr::QualifiedWildcard(name.clone());
                self.no_wildcard_arg(&arg, "a whole-row reference (x.*)")?;
                Ok(Value::Other)
            }
            Expr::Wildcard(_) => {
                self.no_wildcard_arg(&FunctionArgExpr::Wildcard, "a whole-row reference (*)")?;
                Ok(Value::Other)
            }
            Expr::AnyOp {
                left,
                compare_op,
                right,
                ..
            } => self.quantified(left, compare_op, right, false),
            Expr::AllOp {
                left,
                compare_op,
                right,
            } => self.quantified(left, compare_op, right, true),
            Expr::Collate { expr: inner, .. } => self.plain_operands([&**inner], "COLLATE"),
            Expr::IsTrue(inner)
            | Expr::IsFalse(inner)
            | Expr::IsNotTrue(inner)
            | Expr::IsNotFalse(inner)
            | Expr::IsUnknown(inner)
            | Expr::IsNotUnknown(inner) => self.plain_operands([&**inner], "IS TRUE/FALSE"),
            other => {
                self.opaque_node(other, "this expression")?;
                Ok(Value::Other)
            }
        }
    }

    /// Operands that must not be protected columns (in order; each checked before the next
    /// is analysed). The result is a computed value.
    pub(super) fn plain_operands<'e>(
        &mut self,
        operands: impl IntoIterator<Item = &'e Expr>,
        op: &str,
    ) -> Outcome<Value> {
        for operand in operands {
            let v = self.expression(operand)?;
            self.plain_use(&v, op)?;
        }
        Ok(Value::Other)
    }

    /// A (possibly qualified) name used as a value: a column, or else maybe a whole row.
    fn column_reference(&mut self, idents: &[Ident]) -> Outcome<Value> {
        match self.lookup_column(idents)? {
            Some(v) => Ok(v),
            None => {
                self.no_whole_row(idents, "a whole-row reference")?;
                Ok(Value::Other)
            }
        }
    }

    /// `-42` / `+42` (also with a `::` cast): the sign belongs to the literal's value and range.
    fn signed_number(&mut self, op: &UnaryOperator, inner: &Expr) -> Outcome<Value> {
        let Value::Literal(mut literal) = self.expression(inner)? else {
            return Ok(Value::Other);
        };
        // Not locatable: not bindable (refused if compared with a protected column).
        let Some(sign_start) = self.sign_start(literal.range.start) else {
            return Ok(Value::Other);
        };
        literal.range.start = sign_start;
        if matches!(op, UnaryOperator::Minus) {
            literal.value = format!("-{}", literal.value);
        }
        Ok(Value::Literal(literal))
    }

    /// `x::type` / `CAST(x AS type)`: a protected column must not be cast; a literal or
    /// parameter keeps the cast so the whole cast expression can be replaced.
    fn cast(
        &mut self,
        kind: &CastKind,
        inner: &Expr,
        data_type: &DataType,
        has_format: bool,
    ) -> Outcome<Value> {
        let v = self.expression(inner)?;
        let ty = data_type.to_string().to_ascii_lowercase();
        if let Some(c) = v.protected() {
            return self.refuse(&format!("a cast to {ty}"), c);
        }
        if let Value::Pending(pending) = v {
            if has_format {
                self.plain_use(&Value::Pending(pending), "cast")?;
                return Ok(Value::Other);
            }
            return self.pending_cast(pending, inner, kind, ty);
        }
        if has_format || matches!(inner, Expr::Nested(_)) {
            self.plain_use(&v, "cast")?;
            return Ok(Value::Other);
        }
        match v {
            Value::Literal(mut literal) => {
                let Some(range) = self.cast_range(kind, literal.range.clone()) else {
                    return Ok(Value::Other);
                };
                literal.range = range;
                literal.cast = Some(ty);
                Ok(Value::Literal(literal))
            }
            Value::Parameter(mut p) => {
                if p.cast.is_some() {
                    return unsupported("double cast of a parameter");
                }
                let Some(range) = self.cast_range(kind, p.range.clone()) else {
                    self.plain_params.insert(p.number);
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

    /// `DATE '…'`: a literal whose range starts at the type name.
    fn typed_string(&mut self, ts: &TypedString) -> Outcome<Value> {
        if ts.uses_odbc_syntax {
            return unsupported("ODBC literal");
        }
        let Value::Literal(mut literal) = self.value(&ts.value)? else {
            return Ok(Value::Other);
        };
        let Some(start) = self.typed_string_start(literal.range.start) else {
            return Ok(Value::Other);
        };
        literal.range.start = start;
        literal.cast = Some(ts.data_type.to_string().to_ascii_lowercase());
        Ok(Value::Literal(literal))
    }

    /// `=` and `<>` compare (and may bind); every other operator needs plain operands.
    fn binary_operation(
        &mut self,
        left: &Expr,
        op: &BinaryOperator,
        right: &Expr,
    ) -> Outcome<Value> {
        let l = self.expression(left)?;
        let r = self.expression(right)?;
        match op {
            BinaryOperator::And | BinaryOperator::Or => {
                self.truth(left, &l)?;
                self.truth(right, &r)?;
            }
            BinaryOperator::Eq | BinaryOperator::NotEq => {
                let all = matches!(op, BinaryOperator::NotEq);
                let shape = Shape::Operator {
                    all,
                    right_column: self.column_text(right),
                };
                self.compare_shaped(&l, &r, if all { "<>" } else { "=" }, &shape)?;
            }
            other => {
                let name = other.to_string();
                self.plain_use(&l, &name)?;
                self.plain_use(&r, &name)?;
            }
        }
        Ok(Value::Other)
    }

    /// A value used as a condition (`WHERE v`, `v AND …`, `NOT v`, `CASE WHEN v`). A
    /// deterministic encrypted boolean column, written as a plain reference, is compared
    /// with the ciphertext of true (`flag` → `flag = '\x…'::bytea`, under every key when
    /// several are configured): `=` binds tighter than NOT, AND and OR, and a NULL stays
    /// NULL, so the condition keeps its meaning (ORMs write `filter(flag=True)` this way).
    /// Anything else protected is refused, as its ciphertext has no truth value.
    pub(super) fn truth(&mut self, e: &Expr, v: &Value) -> Outcome<()> {
        let Some(c) = v.protected() else {
            return self.plain_use(v, "use as a boolean");
        };
        let column = self.column(c)?;
        let comparable = column.logical_type == LogicalType::Bool
            && column.mode == EncryptionMode::Deterministic
            && !self.is_plaintext(c);
        let mut reference = e;
        while let Expr::Nested(inner) = reference {
            reference = inner;
        }
        match self.column_text(reference) {
            Some((range, _)) if comparable => {
                let after = range.end..range.end;
                self.conditions.push(c);
                self.rewrites.push((after.clone(), " = ".to_string()));
                self.literals.push(LiteralBinding {
                    byte_range: after,
                    column: c,
                    value: Some("true".to_string()),
                    cast: None,
                    array: false,
                    matching: Some(KeyMatch::Any),
                });
                Ok(())
            }
            _ => self.plain_use(v, "use as a boolean"),
        }
    }

    /// The range and text of a plain column reference (`ssn`, `p.ssn`), which a comparison
    /// with several master keys may move ([`crate::sql::KeyMatch::Swapped`]).
    fn column_text(&self, e: &Expr) -> Option<(Range<usize>, String)> {
        let ids: &[Ident] = match e {
            Expr::Identifier(id) => std::slice::from_ref(id),
            Expr::CompoundIdentifier(ids) => ids,
            _ => return None,
        };
        let first = self.tokens.index_at(ids.first()?.span.start)?;
        let last = self.tokens.index_at(ids.last()?.span.start)?;
        let range = self.tokens.ranges[first].start..self.tokens.ranges[last].end;
        let text = self.sql.get(range.clone())?.to_string();
        Some((range, text))
    }

    /// `x IS [NOT] NULL`: allowed on a protected column (NULL is stored as NULL).
    fn null_test(&mut self, inner: &Expr) -> Outcome<Value> {
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

    /// `x [NOT] IN (a, b, …)`: a comparison with each item.
    fn in_list(&mut self, inner: &Expr, list: &[Expr], negated: bool) -> Outcome<Value> {
        let l = self.expression(inner)?;
        let op = if negated { "NOT IN" } else { "IN" };
        for item in list {
            let r = self.expression(item)?;
            self.compare_shaped(&l, &r, op, &Shape::List)?;
        }
        if list.is_empty() {
            self.plain_use(&l, op)?;
        }
        Ok(Value::Other)
    }

    /// `x [NOT] IN (SELECT …)`: a comparison with the subquery's single output column.
    fn in_subquery(&mut self, inner: &Expr, subquery: &Query, negated: bool) -> Outcome<Value> {
        let l = self.expression(inner)?;
        let op = if negated { "NOT IN" } else { "IN" };
        let outputs = self.subquery(subquery)?;
        match outputs.as_slice() {
            [one] => self.compare(&l, &one.value, op)?,
            _ => {
                self.plain_use(&l, op)?;
                for o in &outputs {
                    self.plain_use(&o.value, op)?;
                }
            }
        }
        Ok(Value::Other)
    }

    /// LIKE / ILIKE / SIMILAR TO: no pattern matching on ciphertext.
    fn pattern_match(&mut self, e: &Expr) -> Outcome<Value> {
        let (op, inner, pattern, escape_char) = match e {
            Expr::Like {
                expr,
                pattern,
                escape_char,
                ..
            } => ("LIKE", expr, pattern, escape_char),
            Expr::ILike {
                expr,
                pattern,
                escape_char,
                ..
            } => ("ILIKE", expr, pattern, escape_char),
            Expr::SimilarTo {
                expr,
                pattern,
                escape_char,
                ..
            } => ("SIMILAR TO", expr, pattern, escape_char),
            _ => return unsupported("pattern match"),
        };
        let operands = [&**inner, &**pattern]
            .into_iter()
            .chain(escape_char.as_deref());
        self.plain_operands(operands, op)
    }

    /// `CASE [operand] WHEN … THEN … ELSE … END`: with an operand, each WHEN is compared
    /// with it; the results must be plain.
    fn case(
        &mut self,
        operand: Option<&Expr>,
        conditions: &[CaseWhen],
        else_result: Option<&Expr>,
    ) -> Outcome<Value> {
        let operand = match operand {
            Some(o) => Some(self.expression(o)?),
            None => None,
        };
        for w in conditions {
            match &operand {
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

    /// `EXISTS (SELECT …)`: the output is never returned; a parameter in it is plain.
    fn exists(&mut self, subquery: &Query) -> Outcome<Value> {
        for o in self.subquery(subquery)? {
            if let Value::Parameter(p) = &o.value {
                self.plain_params.insert(p.number);
            }
        }
        Ok(Value::Other)
    }

    /// `(SELECT x …)`: the value of its single output column (no longer tied to a table
    /// reference, so not usable for subject detection).
    fn scalar_subquery(&mut self, q: &Query) -> Outcome<Value> {
        let outputs = self.subquery(q)?;
        match outputs.as_slice() {
            [one] => Ok(match &one.value {
                Value::Column { protected, .. } => Value::Column {
                    protected: *protected,
                    origin: None,
                },
                other => other.clone(),
            }),
            _ => {
                for o in &outputs {
                    self.plain_use(&o.value, "subquery")?;
                }
                Ok(Value::Other)
            }
        }
    }

    /// A constant: NULL, a `$n` parameter, or a literal with its exact byte range.
    pub(super) fn value(&mut self, v: &ValueWithSpan) -> Outcome<Value> {
        let text = match &v.value {
            SqlValue::Null => return Ok(Value::Null),
            SqlValue::Placeholder(p) => {
                let n = p.strip_prefix('$').and_then(|d| d.parse::<u32>().ok());
                return match n {
                    Some(n) if n > 0 => {
                        let range = self.span_range(v.span)?;
                        Ok(Value::Parameter(Parameter {
                            number: n,
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
            token: range.clone(),
            range,
            value: text,
            cast: None,
        }))
    }
}
