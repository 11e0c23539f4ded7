//! Arrays unnested in FROM (`UNNEST($1::text[], ARRAY['a','b']::varchar[])`) and casts of
//! pending values: each argument becomes one column of pending values, so that an INSERT
//! that writes the column into a protected one encrypts the array element by element
//! (array parameters in the session, array literals' elements here), and every other use
//! keeps them plain (text-form array literals, `'{a,b}'::text[]`, are taken apart in the
//! session). What cannot be taken apart element by element is a computed value,
//! refused when it would be written into a protected column. Also the array of
//! `col = ANY(…)` / `col <> ALL(…)` (membership in a list of values), each element bound to
//! the column.

use std::ops::Range;

use sqlparser::ast::{BinaryOperator, CastKind, DataType, Expr, Ident, TableAlias};
use sqlparser::tokenizer::Token;

use super::comparisons::cast_accepted;
use super::scopes::*;
use super::values::*;
use super::{unsupported, Analyzer, Outcome};
use crate::sql::{ColumnRef, KeyMatch, LiteralBinding};

/// The element type of an array type as written (`varchar(20)[]` → `varchar(20)`).
fn element_type(data_type: &DataType) -> Option<String> {
    let ty = data_type.to_string().to_ascii_lowercase();
    ty.strip_suffix("[]")
        .filter(|e| !e.contains('['))
        .map(str::to_string)
}

/// `ARRAY[…]`, possibly in parentheses: its elements.
fn array_elements(e: &Expr) -> Option<&[Expr]> {
    match e {
        Expr::Array(a) => Some(&a.elem),
        Expr::Nested(inner) => array_elements(inner),
        _ => None,
    }
}

impl Analyzer<'_> {
    /// `x op ANY(array)` / `x op ALL(array)`. With a protected column on the left only
    /// membership is offered, `= ANY` and `<> ALL`: each element of the array is bound to
    /// the column (with several master keys, compared under every key).
    pub(super) fn quantified(
        &mut self,
        left: &Expr,
        op: &BinaryOperator,
        right: &Expr,
        all: bool,
    ) -> Outcome<Value> {
        let l = self.expression(left)?;
        let Some(c) = l.protected() else {
            self.plain_use(&l, "ANY/ALL")?;
            let r = self.expression(right)?;
            self.plain_use(&r, "ANY/ALL")?;
            return Ok(Value::Other);
        };
        let name = format!("{op} {}(…)", if all { "ALL" } else { "ANY" });
        let membership = matches!(
            (op, all),
            (BinaryOperator::Eq, false) | (BinaryOperator::NotEq, true)
        );
        if !membership {
            return self.refuse(&name, c);
        }
        self.require_deterministic(c, &name)?;
        self.compared_array(c, right, &name)?;
        Ok(Value::Other)
    }

    /// The array of `col = ANY(…)`: an `ARRAY[…]` of literals and parameters (each bound as
    /// one value), a text-form array literal (`'{a,b}'::text[]`, taken apart in the
    /// session) or an array parameter (encrypted element by element in Bind).
    fn compared_array(&mut self, c: ColumnRef, right: &Expr, name: &str) -> Outcome<()> {
        let ty = self.column(c)?.logical_type;
        let (inner, cast) = match right {
            Expr::Cast {
                kind: CastKind::DoubleColon,
                expr,
                data_type,
                format: None,
            } => (&**expr, Some(data_type)),
            other => (other, None),
        };
        if let Some(elements) = array_elements(inner) {
            if let Some(data_type) = cast {
                let element = element_type(data_type).unwrap_or_default();
                if element.is_empty() || !cast_accepted(ty, &element) {
                    return self.refuse(&format!("{name} with a cast to {data_type}"), c);
                }
                let Some(range) = self.array_cast_suffix(inner) else {
                    return unsupported("cannot locate the array's cast");
                };
                self.rewrites.push((range, "::bytea[]".into()));
            }
            for element in elements {
                let v = self.expression(element)?;
                if !matches!(v, Value::Null) && !self.bind(c, &v, Some(KeyMatch::List))? {
                    return self.refuse(&format!("{name} with a computed element"), c);
                }
            }
            return Ok(());
        }
        match self.expression(right)? {
            Value::Parameter(p) => {
                if let Some((range, cast)) = &p.cast {
                    let element = cast.strip_suffix("[]").unwrap_or("");
                    if element.is_empty() || !cast_accepted(ty, element) {
                        return self.refuse(&format!("{name} with a cast to {cast}"), c);
                    }
                    self.rewrites
                        .push((range.clone(), format!("${}::bytea[]", p.number)));
                }
                self.array_params.push((p.number, c));
                self.array_matches.push(p.number);
                Ok(())
            }
            Value::Literal(l) => {
                if let Some(cast) = &l.cast {
                    let element = cast.strip_suffix("[]").unwrap_or("");
                    if element.is_empty() || !cast_accepted(ty, element) {
                        return self.refuse(&format!("{name} with a cast to {cast}"), c);
                    }
                }
                self.literals.push(LiteralBinding {
                    byte_range: l.range,
                    column: c,
                    value: Some(l.value),
                    cast: l.cast,
                    array: true,
                    matching: Some(KeyMatch::List),
                });
                Ok(())
            }
            Value::Null => Ok(()),
            _ => self.refuse(&format!("{name} with a computed array"), c),
        }
    }

    /// `UNNEST(a, b, …) [WITH ORDINALITY] [AS u(x, y, …)]`: one pending column per array.
    pub(super) fn unnest(
        &mut self,
        array_exprs: &[Expr],
        alias: Option<&TableAlias>,
        with_ordinality: bool,
        with_offset: bool,
    ) -> Outcome<()> {
        if with_offset {
            return unsupported("UNNEST WITH OFFSET");
        }
        let mut columns = Vec::with_capacity(array_exprs.len() + 1);
        for e in array_exprs {
            let value = self.unnest_argument(e)?;
            let Value::Pending(pending) = value else {
                return unsupported("UNNEST argument");
            };
            columns.push(SourceColumn {
                name: "unnest".into(),
                protected: None,
                origin: None,
                pending: Some(pending),
            });
        }
        if with_ordinality {
            columns.push(SourceColumn {
                name: "ordinality".into(),
                protected: None,
                origin: None,
                pending: None,
            });
        }
        let alias_name = alias.map(|a| normalize(&a.name)).unwrap_or_default();
        if let Some(a) = alias {
            if a.columns.is_empty() && array_exprs.len() == 1 {
                if let Some(first) = columns.first_mut() {
                    first.name = alias_name.clone();
                }
            }
            for (col, def) in columns.iter_mut().zip(&a.columns) {
                col.name = normalize(&def.name);
            }
        }
        self.push_source(Source {
            alias: if alias_name.is_empty() {
                "unnest".into()
            } else {
                alias_name
            },
            table: None,
            reference: 0,
            columns: Some(columns),
        });
        Ok(())
    }

    /// One array: a parameter (its elements are bound in the session), an `ARRAY[…]` of
    /// literals (each element bound here), or anything else (a computed value).
    fn unnest_argument(&mut self, e: &Expr) -> Outcome<Value> {
        let (inner, cast) = match e {
            Expr::Cast {
                kind: CastKind::DoubleColon,
                expr,
                data_type,
                format: None,
            } => (&**expr, Some(data_type)),
            other => (other, None),
        };
        let element = cast.map(element_type);
        if let Some(elements) = array_elements(inner) {
            let mut items = Vec::with_capacity(elements.len());
            for element in elements {
                let v = self.expression(element)?;
                if v.protected().is_some() {
                    self.plain_use(&v, "ARRAY[…]")?;
                }
                items.push(v);
            }
            let mut casts = Vec::new();
            match (cast, element) {
                (None, _) => {}
                (Some(_), Some(Some(ty))) => match self.array_cast_suffix(inner) {
                    Some(range) => casts.push(PendingCast {
                        range,
                        ty,
                        replacement: "::bytea[]",
                    }),
                    None => items.push(Value::Other),
                },
                // A cast to something that is not an array of single values.
                (Some(_), _) => items.push(Value::Other),
            }
            return Ok(self.pending(items, Vec::new(), casts));
        }
        if let (Some(Some(ty)), Expr::Nested(_)) = (&element, inner) {
            if let Some(value) = self.nested_text_array(inner, ty)? {
                return Ok(value);
            }
        }
        let v = self.expression(e)?;
        match v {
            Value::Parameter(p) if p.cast.as_ref().is_none_or(|(_, t)| t.ends_with("[]")) => {
                Ok(self.pending(Vec::new(), vec![p], Vec::new()))
            }
            // `'{a,b}'::text[]`: its elements are encrypted in the session.
            Value::Literal(l) if l.cast.as_deref().is_some_and(|t| t.ends_with("[]")) => {
                let value = self.pending(Vec::new(), Vec::new(), Vec::new());
                Ok(match value {
                    Value::Pending(mut pending) => {
                        pending.array_literals.push(l);
                        Value::Pending(pending)
                    }
                    other => other,
                })
            }
            other => {
                self.plain_use(&other, "UNNEST")?;
                Ok(self.pending(vec![Value::Other], Vec::new(), Vec::new()))
            }
        }
    }

    /// `('{a,b}')::text[]`, as psycopg 3 binds a list on the client (Django's bulk_create):
    /// the literal's elements are encrypted in the session and the cast after the
    /// parentheses becomes `::bytea[]`. `None` when `inner` is not a parenthesized string.
    fn nested_text_array(&mut self, inner: &Expr, ty: &str) -> Outcome<Option<Value>> {
        let mut innermost = inner;
        while let Expr::Nested(e) = innermost {
            innermost = e;
        }
        if !matches!(innermost, Expr::Value(_)) {
            return Ok(None);
        }
        let Value::Literal(mut literal) = self.expression(innermost)? else {
            return Ok(None);
        };
        if literal.cast.is_some() {
            return Ok(None);
        }
        let last = self
            .tokens
            .ranges
            .iter()
            .position(|r| r.end == literal.range.end);
        let Some(range) = last.and_then(|last| self.cast_after(last)) else {
            return Ok(None);
        };
        literal.cast = Some(format!("{ty}[]"));
        let cast = PendingCast {
            range,
            ty: ty.to_string(),
            replacement: "::bytea[]",
        };
        Ok(Some(
            match self.pending(Vec::new(), Vec::new(), vec![cast]) {
                Value::Pending(mut pending) => {
                    pending.array_literals.push(literal);
                    Value::Pending(pending)
                }
                other => other,
            },
        ))
    }

    /// The `::type` after the token `last`, past the closing parentheses between them.
    fn cast_after(&self, mut last: usize) -> Option<Range<usize>> {
        loop {
            let next = self.tokens.next_solid(last)?;
            match self.tokens.token(next)? {
                Token::RParen => last = next,
                Token::DoubleColon => {
                    let cast =
                        self.cast_range(&CastKind::DoubleColon, self.tokens.ranges[last].clone())?;
                    return Some(self.tokens.ranges[next].start..cast.end);
                }
                _ => return None,
            }
        }
    }

    /// The `::type` after `ARRAY[…]` (or `(ARRAY[…])`) whose elements are `inner`'s: found
    /// from the `ARRAY` keyword by matching brackets, so the cast can become `::bytea[]`.
    fn array_cast_suffix(&self, inner: &Expr) -> Option<Range<usize>> {
        let keyword = self.array_keyword(inner)?;
        let open = self.tokens.next_solid(keyword)?;
        if !matches!(self.tokens.token(open), Some(Token::LBracket)) {
            return None;
        }
        let mut depth = 0i32;
        let mut close = open;
        loop {
            match self.tokens.token(close)? {
                Token::LBracket | Token::LParen => depth += 1,
                Token::RBracket | Token::RParen => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                _ => {}
            }
            close += 1;
        }
        // The parentheses of `(ARRAY[…])` (what `Expr::Nested` held), then `::`.
        self.cast_after(close)
    }

    /// The `ARRAY` keyword of an array constructor, found from its first element (an
    /// array's span starts there).
    fn array_keyword(&self, inner: &Expr) -> Option<usize> {
        use sqlparser::ast::Spanned;
        let first = array_elements(inner)?.first()?;
        let element = self.tokens.index_at(first.span().start)?;
        let open = self.tokens.prev_solid(element)?;
        let keyword = self.tokens.prev_solid(open)?;
        (matches!(self.tokens.token(open), Some(Token::LBracket))
            && self.tokens.is_keyword(keyword, "array"))
        .then_some(keyword)
    }

    /// `x::type` where `x` holds pending values: the cast applies to each value, checked and
    /// rewritten to bytea when they are written into a protected column.
    pub(super) fn pending_cast(
        &mut self,
        mut pending: Box<Pending>,
        inner: &Expr,
        kind: &CastKind,
        ty: String,
    ) -> Outcome<Value> {
        let ids: &[Ident] = match inner {
            Expr::Identifier(id) => std::slice::from_ref(id),
            Expr::CompoundIdentifier(ids) => ids,
            _ => &[],
        };
        let located = match (kind, ids.first(), ids.last()) {
            (CastKind::DoubleColon, Some(first), Some(last)) => {
                let start = self.tokens.index_at(first.span.start);
                let end = self.tokens.index_at(last.span.start);
                match (start, end) {
                    (Some(s), Some(e)) => {
                        let range = self.tokens.ranges[s].start..self.tokens.ranges[e].end;
                        self.cast_range(kind, range.clone())
                            .map(|cast| range.end..cast.end)
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        let Some(range) = located else {
            let v = Value::Pending(pending);
            self.plain_use(&v, "cast")?;
            return Ok(Value::Other);
        };
        pending.casts.push(PendingCast {
            range,
            ty,
            replacement: "::bytea",
        });
        Ok(Value::Pending(pending))
    }
}
