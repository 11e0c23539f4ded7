//! Binding values to protected columns: plain uses, comparisons (with how each value is
//! compared, for several master keys: [`KeyMatch`]), writes, accepted casts, and the
//! statement-wide consistency checks on parameters and literal ranges.

use std::ops::Range;

use sqlparser::ast::Expr;

use crate::schema::{EncryptionMode, LogicalType};
use crate::sql::catalog::ColumnRef;
use crate::sql::{KeyMatch, LiteralBinding, ParamUse};

use super::values::*;
use super::{column_name, dedup, unsupported, Analyzer, Halt, Outcome};

/// How a comparison holds its operands: what a literal or parameter compared with a
/// protected column becomes when several master keys are configured ([`KeyMatch`]).
pub(super) enum Shape {
    /// `l = r` (`all`: `l <> r`); `right_column`: r's range and text when it is a plain
    /// column reference (a value on the left then trades places with it).
    Operator {
        all: bool,
        right_column: Option<(Range<usize>, String)>,
    },
    /// `l [NOT] IN (…, r, …)`.
    List,
    /// `l IS [NOT] DISTINCT FROM r`; each side's text when it is a plain column reference.
    Distinct {
        left_column: Option<String>,
        right_column: Option<String>,
    },
    /// Anything else (CASE operand, IN subquery, JOIN USING).
    Other,
}

impl Shape {
    /// The match of a value on the right (`right`) or the left of the comparison.
    fn matching(&self, right: bool, op: &str) -> KeyMatch {
        match (self, right) {
            (Shape::Operator { all, .. }, true) => {
                if *all {
                    KeyMatch::All
                } else {
                    KeyMatch::Any
                }
            }
            (
                Shape::Operator {
                    all,
                    right_column: Some((column, text)),
                    ..
                },
                false,
            ) => KeyMatch::Swapped {
                column: column.clone(),
                text: text.clone(),
                all: *all,
            },
            (Shape::List, true) => KeyMatch::List,
            (
                Shape::Distinct {
                    left_column: Some(text),
                    ..
                },
                true,
            )
            | (
                Shape::Distinct {
                    right_column: Some(text),
                    ..
                },
                false,
            ) => KeyMatch::Distinct { text: text.clone() },
            _ => KeyMatch::Unsupported { op: op.to_string() },
        }
    }
}

/// Is a cast of a literal or parameter to `cast` acceptable for a column of type `ty`?
pub(super) fn cast_accepted(ty: LogicalType, cast: &str) -> bool {
    // An array is never one value of the column.
    if cast.contains('[') || cast.trim_end().ends_with("array") {
        return false;
    }
    let base = cast.split('(').next().unwrap_or(cast).trim();
    if matches!(
        base,
        "text" | "varchar" | "character varying" | "unknown" | "name"
    ) || base.starts_with("char")
        || base == "bpchar"
    {
        return true;
    }
    let Some(target) = LogicalType::from_name(base).or(match base {
        "int" => Some(LogicalType::Int4),
        "float" | "real" | "float4" => Some(LogicalType::Float8),
        "json" => Some(LogicalType::Jsonb),
        _ if base.starts_with("decimal") || base.starts_with("numeric") => {
            Some(LogicalType::Numeric)
        }
        _ => None,
    }) else {
        return false;
    };
    use LogicalType::*;
    let family = |t: LogicalType| match t {
        Int2 | Int4 | Int8 | Numeric | Float8 => 1,
        Date | Timestamp | Timestamptz => 2,
        Text | Varchar => 3,
        Bool => 4,
        Uuid => 5,
        Bytea => 6,
        Jsonb => 7,
    };
    family(target) == family(ty)
}

impl Analyzer<'_> {
    /// Records a plain (non-encrypted) use of a value; refuses a protected column.
    pub(super) fn plain_use(&mut self, v: &Value, op: &str) -> Outcome<()> {
        match v {
            Value::Column {
                protected: Some(c), ..
            } => self.refuse(op, *c),
            Value::Parameter(p) => {
                self.plain_params.insert(p.number);
                Ok(())
            }
            Value::Pending(pending) => {
                self.plain_pending.insert(pending.id);
                for p in &pending.arrays {
                    self.plain_params.insert(p.number);
                }
                for item in &pending.items {
                    self.plain_use(item, op)?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Records a literal consumed as an opaque plain value: its text goes to the database
    /// as the client wrote it and decides nothing in the analysis, so a shared plan may take
    /// it from another text of the same shape (`sql::template`). This is the one rule, and
    /// it is a positive list: it is called only where the consumer is known to be opaque (a
    /// write into an unprotected column, a comparison with no protected side, a top-level
    /// output, a subquery's or CTE's output column). Every other consumer (function
    /// arguments such as `set_config`'s, LIMIT, ORDER BY / GROUP BY positions, casts, SET,
    /// COPY options, arrays taken apart, migrating columns) leaves the literal fixed. Only the
    /// literal token is reported, never a cast's typmod or a sign. The statement-level
    /// conditions under which the reports are kept are in `analyze_one`.
    pub(super) fn opaque_plain(&mut self, v: &Value) {
        if let Value::Literal(l) = v {
            self.opaque.push(l.token.clone());
        }
    }

    /// Pending values written into protected column `c`: each value is written into it,
    /// each array parameter's elements are encrypted for it, each cast becomes bytea.
    fn write_pending(&mut self, c: ColumnRef, pending: &Pending) -> Outcome<()> {
        let ty = self.column(c)?.logical_type;
        if let Some(&other) = self.bound_pending.get(&pending.id) {
            if other != c {
                return self.refuse("one VALUES or UNNEST column written into two columns", c);
            }
        }
        self.bound_pending.insert(pending.id, c);
        for cast in &pending.casts {
            if !cast_accepted(ty, &cast.ty) {
                return self.refuse(&format!("a cast to {}", cast.ty), c);
            }
            self.rewrites
                .push((cast.range.clone(), cast.replacement.to_string()));
        }
        for item in &pending.items {
            self.write(Some(c), item)?;
        }
        for p in &pending.arrays {
            if let Some((range, cast)) = &p.cast {
                let element = cast.strip_suffix("[]").unwrap_or("");
                if element.is_empty() || !cast_accepted(ty, element) {
                    return self.refuse(&format!("a cast to {cast}"), c);
                }
                self.rewrites
                    .push((range.clone(), format!("${}::bytea[]", p.number)));
            }
            self.array_params.push((p.number, c));
        }
        for l in &pending.array_literals {
            let cast = l.cast.as_deref().unwrap_or("");
            let element = cast.strip_suffix("[]").unwrap_or("");
            if element.is_empty() || !cast_accepted(ty, element) {
                return self.refuse(&format!("a cast to {cast}"), c);
            }
            self.literals.push(LiteralBinding {
                byte_range: l.range.clone(),
                column: c,
                value: Some(l.value.clone()),
                cast: l.cast.clone(),
                array: true,
                matching: None,
            });
        }
        Ok(())
    }

    pub(super) fn require_deterministic(&mut self, c: ColumnRef, op: &str) -> Outcome<()> {
        if self.column(c)?.mode != EncryptionMode::Deterministic {
            return Err(Halt::Refuse(format!(
                "pgveil: {op} is not supported on randomized encrypted column {}",
                column_name(self.protection, c)
            )));
        }
        self.conditions.push(c);
        Ok(())
    }

    pub(super) fn condition(&mut self, e: &Expr) -> Outcome<()> {
        let v = self.expression(e)?;
        self.truth(e, &v)
    }

    /// Binds a literal or parameter to a protected column; `matching` when it is compared
    /// with it.
    pub(super) fn bind(
        &mut self,
        c: ColumnRef,
        v: &Value,
        matching: Option<KeyMatch>,
    ) -> Outcome<bool> {
        if self.is_plaintext(c) {
            return self.bind_plaintext(c, v);
        }
        let ty = self.column(c)?.logical_type;
        match v {
            Value::Literal(l) => {
                if let Some(cast) = &l.cast {
                    if !cast_accepted(ty, cast) {
                        return self.refuse(&format!("a cast to {cast}"), c);
                    }
                }
                self.literals.push(LiteralBinding {
                    byte_range: l.range.clone(),
                    column: c,
                    value: Some(l.value.clone()),
                    cast: l.cast.clone(),
                    array: false,
                    matching,
                });
                Ok(true)
            }
            Value::Parameter(p) => {
                if let Some((range, cast)) = &p.cast {
                    if !cast_accepted(ty, cast) {
                        return self.refuse(&format!("a cast to {cast}"), c);
                    }
                    self.rewrites
                        .push((range.clone(), format!("${}::bytea", p.number)));
                }
                self.params.push((p.number, c));
                self.param_uses.push(ParamUse {
                    number: p.number,
                    byte_range: p.cast.as_ref().map_or(p.range.clone(), |(r, _)| r.clone()),
                    matching,
                });
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    pub(super) fn compare(&mut self, l: &Value, r: &Value, op: &str) -> Outcome<()> {
        self.compare_shaped(l, r, op, &Shape::Other)
    }

    /// [`Self::compare`], knowing how the comparison holds its operands.
    pub(super) fn compare_shaped(
        &mut self,
        l: &Value,
        r: &Value,
        op: &str,
        shape: &Shape,
    ) -> Outcome<()> {
        match (l.protected(), r.protected()) {
            (Some(a), Some(b)) => {
                let (ca, cb) = (self.column(a)?, self.column(b)?);
                if ca.key_scope() != cb.key_scope() || ca.logical_type != cb.logical_type {
                    return Err(Halt::Refuse(format!(
                        "pgveil: comparing encrypted columns {} and {} ({op}) is not supported: they use different keys",
                        ca.qualified_name(),
                        cb.qualified_name()
                    )));
                }
                self.require_deterministic(a, op)?;
                self.require_deterministic(b, op)
            }
            (Some(a), None) => self.compare_value(a, r, op, shape.matching(true, op)),
            (None, Some(b)) => self.compare_value(b, l, op, shape.matching(false, op)),
            (None, None) => {
                self.plain_use(l, op)?;
                self.plain_use(r, op)?;
                self.opaque_plain(l);
                self.opaque_plain(r);
                Ok(())
            }
        }
    }

    pub(super) fn compare_value(
        &mut self,
        c: ColumnRef,
        other: &Value,
        op: &str,
        matching: KeyMatch,
    ) -> Outcome<()> {
        self.require_deterministic(c, op)?;
        match other {
            Value::Literal(_) | Value::Parameter(_) => {
                self.bind(c, other, Some(matching)).map(|_| ())
            }
            Value::Null => Ok(()),
            Value::Column {
                protected: None, ..
            } => self.refuse(&format!("{op} with an unencrypted column"), c),
            _ => self.refuse(&format!("{op} with a computed value"), c),
        }
    }

    /// A value written into a column (INSERT, UPDATE SET, ON CONFLICT DO UPDATE).
    pub(super) fn write(&mut self, target: Option<ColumnRef>, v: &Value) -> Outcome<()> {
        let Some(c) = target else {
            if let Some(src) = v.protected() {
                return self.refuse("copying into an unencrypted column", src);
            }
            self.plain_use(v, "write")?;
            self.opaque_plain(v);
            return Ok(());
        };
        if self.is_plaintext(c) {
            return self.refuse_migrating(c, "this form of write");
        }
        self.writes.push(c);
        match v {
            Value::Literal(_) | Value::Parameter(_) => self.bind(c, v, None).map(|_| ()),
            Value::Null | Value::Default => Ok(()),
            Value::Column {
                protected: Some(src),
                ..
            } => {
                let (a, b) = (self.column(c)?, self.column(*src)?);
                if a.key_scope() == b.key_scope() && a.logical_type == b.logical_type {
                    Ok(())
                } else {
                    Err(Halt::Refuse(format!(
                        "pgveil: copying encrypted column {} into encrypted column {} is not supported: they use different keys",
                        b.qualified_name(),
                        a.qualified_name()
                    )))
                }
            }
            Value::Column {
                protected: None, ..
            } => self.refuse("writing an unencrypted column's value", c),
            Value::Pending(pending) => self.write_pending(c, pending),
            Value::Spread => self.refuse(
                "writing a relation of unknown columns (a set-returning function)",
                c,
            ),
            Value::Other => self.refuse("writing a computed value", c),
        }
    }

    pub(super) fn finish(&mut self) -> Outcome<()> {
        dedup(&mut self.params);
        dedup(&mut self.reads);
        dedup(&mut self.conditions);
        dedup(&mut self.writes);
        dedup(&mut self.tables);
        dedup(&mut self.rewrites);
        // A parameter carries one value: it can be encrypted for one key and type only, and
        // not also be used in plaintext.
        let mut first_binding: std::collections::HashMap<u32, ColumnRef> =
            std::collections::HashMap::with_capacity(self.params.len());
        for &(n, c) in &self.params {
            if self.plain_params.contains(&n) {
                return Err(Halt::Refuse(format!(
                    "pgveil: parameter ${n} is bound to encrypted column {} and also used elsewhere",
                    column_name(self.protection, c)
                )));
            }
            let d = *first_binding.entry(n).or_insert(c);
            if d != c {
                let (a, b) = (self.column(c)?, self.column(d)?);
                if a.key_scope() != b.key_scope() || a.logical_type != b.logical_type {
                    return Err(Halt::Refuse(format!(
                        "pgveil: parameter ${n} is bound to encrypted columns {} and {} with different keys",
                        b.qualified_name(),
                        a.qualified_name()
                    )));
                }
            }
        }
        self.check_pending()?;
        // Literal ranges: sorted, exact duplicates merged, no overlap.
        self.literals.sort_by(|a, b| {
            (a.byte_range.start, a.byte_range.end, a.column).cmp(&(
                b.byte_range.start,
                b.byte_range.end,
                b.column,
            ))
        });
        self.literals.dedup();
        merge_matchings(
            &mut self.literals,
            |l| (l.byte_range.clone(), l.column),
            |l| &mut l.matching,
        );
        self.param_uses
            .sort_by_key(|u| (u.byte_range.start, u.byte_range.end));
        self.param_uses.dedup();
        merge_matchings(
            &mut self.param_uses,
            |u| u.byte_range.clone(),
            |u| &mut u.matching,
        );
        for w in self.literals.windows(2) {
            if w[1].byte_range.start < w[0].byte_range.end {
                if w[1].byte_range == w[0].byte_range {
                    return Err(Halt::Refuse(format!(
                        "pgveil: one literal is compared with encrypted columns {} and {}",
                        column_name(self.protection, w[0].column),
                        column_name(self.protection, w[1].column)
                    )));
                }
                return unsupported("overlapping literal ranges");
            }
        }
        Ok(())
    }

    /// Array parameters carry values for one column only, and pending values bound to a
    /// protected column are used nowhere else (that use would see plaintext, or ciphertext
    /// where plaintext was meant).
    fn check_pending(&mut self) -> Outcome<()> {
        // An array compared with a column (`= ANY($n)`) is encrypted under every key when
        // several are configured: it cannot also be unnested into a column.
        for &n in &self.array_matches {
            let used = self.array_params.iter().filter(|&&(m, _)| m == n).count();
            let compared = self.array_matches.iter().filter(|&&m| m == n).count();
            if used > compared {
                return Err(Halt::Refuse(format!(
                    "pgveil: array parameter ${n} is compared with an encrypted column and also unnested into one"
                )));
            }
        }
        dedup(&mut self.array_params);
        dedup(&mut self.array_matches);
        for &(n, c) in &self.array_params {
            let scalar = self.params.iter().any(|&(m, _)| m == n);
            let twice = self.array_params.iter().any(|&(m, d)| m == n && d != c);
            if scalar || twice || self.plain_params.contains(&n) {
                return Err(Halt::Refuse(format!(
                    "pgveil: array parameter ${n} is unnested into encrypted column {} and also used elsewhere",
                    column_name(self.protection, c)
                )));
            }
        }
        for (id, &c) in &self.bound_pending {
            if self.plain_pending.contains(id) {
                return Err(Halt::Refuse(format!(
                    "pgveil: values written into encrypted column {} are also used elsewhere in the statement",
                    column_name(self.protection, c)
                )));
            }
        }
        Ok(())
    }
}

/// One value bound twice at the same place with different matchings (`'x' IN (a, a)`)
/// keeps one binding, whose matching cannot serve both: unsupported with several keys.
fn merge_matchings<T, K: PartialEq>(
    items: &mut Vec<T>,
    key: impl Fn(&T) -> K,
    matching: impl Fn(&mut T) -> &mut Option<KeyMatch>,
) {
    let mut i = 1;
    while i < items.len() {
        if key(&items[i]) == key(&items[i - 1]) {
            let mut removed = items.remove(i);
            let theirs = matching(&mut removed).clone();
            let ours = matching(&mut items[i - 1]);
            if *ours != theirs {
                *ours = Some(KeyMatch::Unsupported {
                    op: "a value compared twice".into(),
                });
            }
        } else {
            i += 1;
        }
    }
}
