//! Plans shared by statements that differ only in literal values.
//!
//! A [`Shape`] is the query text with every literal token (a string, `E''`, `N''`,
//! dollar-quoted, or a plain number) replaced by a marker of its kind; whitespace, comments,
//! words, operators and `$n` parameters stay as written, so two texts of one shape differ
//! only inside literal tokens. A [`Template`] is the analysis of one text of that shape,
//! made shareable:
//!
//! * A literal is *generalized* only when the analysis proved its text decides nothing:
//!   it is the value of a literal binding (a literal encrypted for a protected column: the
//!   analysis only carries its text to the binding), or the analysis reported it in
//!   [`StatementPlan::opaque_literals`] (consumed only as an opaque plain value: written
//!   into an unprotected column, compared with no protected side, returned as output; the
//!   rule is `Analyzer::opaque_plain`, a positive list). Such a plain literal is passed on
//!   as the client wrote it. Every other literal (`ORDER BY 1`, `LIMIT 10`, a typmod,
//!   `set_config`'s arguments, a SET, COPY options, an array taken apart) is *fixed*:
//!   another text matches the template only when its literal is written the same, byte for
//!   byte. So a template answers exactly what analysing the text would.
//! * Byte offsets in the plans are re-based: each lies outside every generalized literal
//!   (checked when the template is made) and moves by the difference in length of the
//!   generalized literals before it. A binding's value is that of its literal (by ordinal),
//!   negated when the analysis read a minus sign before a number.
//! * No template is made (the caller caches the exact text instead) for a COPY, a statement
//!   on a column being migrated (shadow ciphertexts), an array literal unnested element by
//!   element, a binding whose literal cannot be told apart, a
//!   replacement that covers a generalized literal, or an offset inside one.

use std::ops::Range;

use sqlparser::tokenizer::Token;

use crate::sql::tokens::Tokens;
use crate::sql::{KeyMatch, StatementPlan};

/// One literal token of a query.
#[derive(Debug, Clone)]
struct Literal {
    range: Range<usize>,
    /// Its value as the analysis reads it (unescaped).
    value: String,
    /// A number right after a `-` token (the analysis may read them as one value).
    after_minus: bool,
}

/// A query's literals and the key they leave when taken out.
#[derive(Debug)]
pub struct Shape {
    key: String,
    literals: Vec<Literal>,
}

/// Where a binding's value comes from in a text of the template's shape.
#[derive(Debug, Clone, Copy)]
enum ValueSource {
    /// The binding covers no generalized literal: its value is the template's.
    Fixed,
    /// The value of literal `ordinal`, with a minus sign before it when `negate`.
    Literal { ordinal: usize, negate: bool },
}

/// An analysis that applies to every text of one shape whose fixed literals match.
#[derive(Debug)]
pub struct Template {
    /// Per literal ordinal: `None` when generalized, else its exact text.
    fixed: Vec<Option<String>>,
    /// The generalized literals' ranges in the text the plans were made for, in order.
    origin: Vec<(usize, Range<usize>)>,
    plans: Vec<StatementPlan>,
    /// Per plan, per literal binding.
    values: Vec<Vec<ValueSource>>,
}

/// The marker a literal token leaves in the key, or `None` when it is not one pgveil
/// generalizes (it then stays in the key as written).
fn marker(token: &Token) -> Option<&'static str> {
    match token {
        Token::SingleQuotedString(_) => Some("\0s"),
        Token::EscapedStringLiteral(_) => Some("\0e"),
        Token::DollarQuotedString(_) => Some("\0d"),
        Token::NationalStringLiteral(_) => Some("\0n"),
        // Integers and decimals are told apart: PostgreSQL types them differently.
        Token::Number(n, false) if n.bytes().all(|b| b.is_ascii_digit()) => Some("\0i"),
        Token::Number(n, false)
            if n.bytes()
                .next()
                .is_some_and(|b| b.is_ascii_digit() || b == b'.')
                && n.bytes().all(|b| {
                    b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-')
                }) =>
        {
            Some("\0f")
        }
        _ => None,
    }
}

fn literal_value(token: &Token) -> Option<String> {
    match token {
        Token::SingleQuotedString(s)
        | Token::EscapedStringLiteral(s)
        | Token::NationalStringLiteral(s)
        | Token::Number(s, _) => Some(s.clone()),
        Token::DollarQuotedString(d) => Some(d.value.clone()),
        _ => None,
    }
}

impl Shape {
    /// The shape of `sql`; `None` when it has no literal to generalize or does not tokenize.
    pub fn of(sql: &str) -> Option<Shape> {
        let tokens = Tokens::new(sql).ok()?;
        let mut key = String::with_capacity(sql.len());
        let mut literals = Vec::new();
        let mut pos = 0;
        for (i, t) in tokens.spanned.iter().enumerate() {
            let Some(mark) = marker(&t.token) else {
                continue;
            };
            let range = tokens.ranges[i].clone();
            // A number glued to a word or another number (`0x1F`, `1e`) is not a plain
            // number: keep it as written.
            let glued = |j: usize| {
                matches!(tokens.token(j), Some(Token::Word(_) | Token::Number(..)))
                    && (tokens.ranges[j].start == range.end || tokens.ranges[j].end == range.start)
            };
            if matches!(t.token, Token::Number(..)) && (glued(i + 1) || (i > 0 && glued(i - 1))) {
                continue;
            }
            let Some(value) = literal_value(&t.token) else {
                continue;
            };
            let after_minus = matches!(t.token, Token::Number(..))
                && tokens
                    .prev_solid(i)
                    .is_some_and(|p| matches!(tokens.token(p), Some(Token::Minus)));
            key.push_str(sql.get(pos..range.start)?);
            key.push_str(mark);
            pos = range.end;
            literals.push(Literal {
                range,
                value,
                after_minus,
            });
        }
        if literals.is_empty() {
            return None;
        }
        key.push_str(sql.get(pos..)?);
        Some(Shape { key, literals })
    }

    /// The text with its literals replaced by markers (the cache key, with the search path).
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// The ordinals of the literals lying inside `range`, with how they may give `value`.
fn candidates(shape: &Shape, range: &Range<usize>, value: &str) -> Vec<ValueSource> {
    let mut found = Vec::new();
    for (ordinal, lit) in shape.literals.iter().enumerate() {
        if lit.range.start < range.start || lit.range.end > range.end {
            continue;
        }
        if lit.value == value {
            found.push(ValueSource::Literal {
                ordinal,
                negate: false,
            });
        } else if lit.after_minus
            && range.start < lit.range.start
            && value.strip_prefix('-') == Some(lit.value.as_str())
        {
            found.push(ValueSource::Literal {
                ordinal,
                negate: true,
            });
        }
    }
    found
}

fn overlaps(a: &Range<usize>, b: &Range<usize>) -> bool {
    a.start < b.end && b.start < a.end
}

/// Every byte offset a plan holds (statement, bindings, replacements, insertion points).
fn offsets(plan: &StatementPlan) -> Vec<usize> {
    let mut out = vec![plan.byte_range.start, plan.byte_range.end];
    for l in &plan.literals {
        out.extend([l.byte_range.start, l.byte_range.end]);
    }
    for (r, _) in &plan.rewrites {
        out.extend([r.start, r.end]);
    }
    for r in &plan.opaque_literals {
        out.extend([r.start, r.end]);
    }
    for u in &plan.param_uses {
        out.extend([u.byte_range.start, u.byte_range.end]);
    }
    for m in plan.literals.iter().filter_map(|l| l.matching.as_ref()) {
        if let KeyMatch::Swapped { column, .. } = m {
            out.extend([column.start, column.end]);
        }
    }
    for s in &plan.subject.sources {
        if let crate::sql::SubjectSource::Injectable { insert_at, .. } = s {
            out.push(*insert_at);
        }
    }
    out
}

impl Template {
    /// A template from the analysis of `sql` (of shape `shape`); `None` when the plans
    /// cannot be shared (see the module documentation) or nothing would be generalized.
    pub fn new(shape: &Shape, sql: &str, plans: &[StatementPlan]) -> Option<Template> {
        let mut values = Vec::with_capacity(plans.len());
        let mut generalized = vec![false; shape.literals.len()];
        for plan in plans {
            // Migrating columns take plaintext literals and shadow ciphertexts of their
            // values: analysed by exact text while a migration runs.
            if plan.copy.is_some() || !plan.migrating.is_empty() || !plan.shadow_writes.is_empty() {
                return None;
            }
            let mut sources = Vec::with_capacity(plan.literals.len());
            for binding in &plan.literals {
                let value = binding.value.as_deref()?;
                if binding.array {
                    return None;
                }
                let found = candidates(shape, &binding.byte_range, value);
                let source = match found.as_slice() {
                    [] => ValueSource::Fixed,
                    [one] => *one,
                    _ => return None,
                };
                if let ValueSource::Literal { ordinal, .. } = source {
                    generalized[ordinal] = true;
                }
                sources.push(source);
            }
            values.push(sources);
            // A literal the analysis consumed only as an opaque plain value (its token, as
            // the shape found it): passed on as the client wrote it.
            for range in &plan.opaque_literals {
                if let Some(i) = shape.literals.iter().position(|l| l.range == *range) {
                    generalized[i] = true;
                }
            }
        }
        let origin: Vec<(usize, Range<usize>)> = shape
            .literals
            .iter()
            .enumerate()
            .filter(|(i, _)| generalized[*i])
            .map(|(i, l)| (i, l.range.clone()))
            .collect();
        if origin.is_empty() {
            return None;
        }
        for (plan, sources) in plans.iter().zip(&values) {
            // A fixed value must not come from a generalized literal's text.
            for (binding, source) in plan.literals.iter().zip(sources) {
                if matches!(source, ValueSource::Fixed)
                    && origin.iter().any(|(_, r)| overlaps(r, &binding.byte_range))
                {
                    return None;
                }
            }
            // Replacement text is copied as made: it must not stand for a literal.
            if plan
                .rewrites
                .iter()
                .any(|(range, _)| origin.iter().any(|(_, r)| overlaps(r, range)))
            {
                return None;
            }
            if offsets(plan).into_iter().any(|p| inside(&origin, p)) {
                return None;
            }
        }
        let fixed = shape
            .literals
            .iter()
            .zip(&generalized)
            .map(|(l, &g)| (!g).then(|| sql.get(l.range.clone()).map(str::to_string)))
            .map(|f| match f {
                Some(None) => Err(()),
                Some(Some(text)) => Ok(Some(text)),
                None => Ok(None),
            })
            .collect::<Result<Vec<_>, ()>>()
            .ok()?;
        Some(Template {
            fixed,
            origin,
            plans: plans.to_vec(),
            values,
        })
    }

    /// The plans for `sql` (of the same shape key), or `None` when one of its fixed literals
    /// is written differently (then it must be analysed itself).
    pub fn apply(&self, shape: &Shape, sql: &str) -> Option<Vec<StatementPlan>> {
        if shape.literals.len() != self.fixed.len() {
            return None;
        }
        for (lit, fixed) in shape.literals.iter().zip(&self.fixed) {
            if let Some(text) = fixed {
                if sql.get(lit.range.clone())? != text.as_str() {
                    return None;
                }
            }
        }
        let now: Vec<Range<usize>> = self
            .origin
            .iter()
            .map(|(i, _)| shape.literals[*i].range.clone())
            .collect();
        let at = |p: usize| rebase(&self.origin, &now, p);
        let mut plans = self.plans.clone();
        for (plan, sources) in plans.iter_mut().zip(&self.values) {
            plan.byte_range = at(plan.byte_range.start)?..at(plan.byte_range.end)?;
            for (binding, source) in plan.literals.iter_mut().zip(sources) {
                binding.byte_range = at(binding.byte_range.start)?..at(binding.byte_range.end)?;
                if let Some(KeyMatch::Swapped { column, .. }) = &mut binding.matching {
                    *column = at(column.start)?..at(column.end)?;
                }
                if let ValueSource::Literal { ordinal, negate } = *source {
                    let value = &shape.literals.get(ordinal)?.value;
                    binding.value = Some(if negate {
                        format!("-{value}")
                    } else {
                        value.clone()
                    });
                }
            }
            for (range, _) in &mut plan.rewrites {
                *range = at(range.start)?..at(range.end)?;
            }
            for u in &mut plan.param_uses {
                u.byte_range = at(u.byte_range.start)?..at(u.byte_range.end)?;
            }
            for r in &mut plan.opaque_literals {
                *r = at(r.start)?..at(r.end)?;
            }
            for source in &mut plan.subject.sources {
                if let crate::sql::SubjectSource::Injectable { insert_at, .. } = source {
                    *insert_at = at(*insert_at)?;
                }
            }
        }
        Some(plans)
    }
}

/// True when byte `p` lies strictly inside one of the generalized literals.
fn inside(origin: &[(usize, Range<usize>)], p: usize) -> bool {
    origin.iter().any(|(_, r)| r.start < p && p < r.end)
}

/// Offset `p` of the template's text, in a text whose generalized literals lie at `now`.
fn rebase(origin: &[(usize, Range<usize>)], now: &[Range<usize>], p: usize) -> Option<usize> {
    let before = origin.partition_point(|(_, r)| r.end <= p);
    if origin.get(before).is_some_and(|(_, r)| r.start < p) {
        return None;
    }
    match before.checked_sub(1) {
        None => Some(p),
        Some(last) => Some(p - origin[last].1.end + now.get(last)?.end),
    }
}
