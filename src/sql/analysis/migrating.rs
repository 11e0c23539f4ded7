//! Protected columns that are still plaintext in the database while `pgveil migrate` runs.
//!
//! The catalog tells: a configured column whose database type is not `bytea` is
//! *plaintext*; with a `<column>__pgveil bytea` column beside it (migrate's shadow) it is
//! *migrating*. Values compared with such a column stay plaintext, cast to the column's
//! logical type so that a statement planned before the swap fails (42883, 42804) instead of
//! comparing plaintext with ciphertext after it. A value written into a migrating column
//! (a literal, a parameter, NULL or DEFAULT in `INSERT … (cols) VALUES` or `SET col = …`)
//! is written as plaintext and its ciphertext into the shadow; a write into a plaintext
//! column migrate has not prepared yet (no shadow) is refused, as is every other write into a
//! plaintext or migrating column (0A000), and COPY of one.

use std::ops::Range;

use sqlparser::ast::{Expr, ObjectName, Spanned};
use sqlparser::tokenizer::{Span, Token};

use crate::pgtype::oid;
use crate::schema::shadow_column;
use crate::sql::catalog::ColumnRef;
use crate::sql::{ShadowValue, ShadowWrite};

use super::comparisons::cast_accepted;
use super::values::*;
use super::{column_name, Analyzer, Halt, Outcome};

/// How a configured column is stored in the database, as the session's catalog shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stored {
    /// `bytea` (or unknown): ciphertext.
    Encrypted,
    /// Its logical type, no shadow column: not being migrated.
    Plaintext,
    /// Its logical type with migrate's shadow column beside it.
    Migrating,
}

/// A double-quoted identifier.
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

impl Analyzer<'_> {
    /// How `c` is stored (looked up once per statement).
    pub(super) fn stored(&mut self, c: ColumnRef) -> Stored {
        if let Some(&s) = self.stored.get(&c) {
            return s;
        }
        let found = self.protection.column(c).and_then(|spec| {
            let table = self.catalog.resolve(
                Some(&spec.table.schema),
                &spec.table.name,
                self.search_path,
            )?;
            let column = table.columns.iter().find(|x| x.name == spec.column)?;
            if column.type_oid == oid::BYTEA {
                return None;
            }
            let shadow = shadow_column(&spec.column);
            Some(
                if table
                    .columns
                    .iter()
                    .any(|x| x.name == shadow && x.type_oid == oid::BYTEA)
                {
                    Stored::Migrating
                } else {
                    Stored::Plaintext
                },
            )
        });
        let s = found.unwrap_or(Stored::Encrypted);
        self.stored.insert(c, s);
        s
    }

    /// True when `c` is plaintext in the database (migrating or not).
    pub(super) fn is_plaintext(&mut self, c: ColumnRef) -> bool {
        self.stored(c) != Stored::Encrypted
    }

    /// The refusal for a write into (or COPY of) a plaintext column pgveil cannot do.
    pub(super) fn refuse_migrating<T>(&mut self, c: ColumnRef, what: &str) -> Outcome<T> {
        let name = column_name(self.protection, c);
        let message = match self.stored(c) {
            Stored::Plaintext => format!(
                "pgveil: column {name} is stored as plaintext in the database (not yet migrated); {what} is refused until `pgveil migrate` has prepared it"
            ),
            _ => format!(
                "pgveil: column {name} is being migrated; {what} is refused until it is encrypted (write it with INSERT … (columns) VALUES or UPDATE … SET column = value, with literals, parameters, NULL or DEFAULT)"
            ),
        };
        Err(Halt::Refuse(message))
    }

    /// A literal or parameter compared with or written into a plaintext column: it stays
    /// plaintext, cast to the column's logical type.
    pub(super) fn bind_plaintext(&mut self, c: ColumnRef, v: &Value) -> Outcome<bool> {
        let ty = self.column(c)?.logical_type;
        match v {
            Value::Literal(l) => {
                if let Some(cast) = &l.cast {
                    if !cast_accepted(ty, cast) {
                        return self.refuse(&format!("a cast to {cast}"), c);
                    }
                }
                let text = &self.sql[l.range.clone()];
                let replacement = format!("({text})::pg_catalog.{}", ty.name());
                self.rewrites.push((l.range.clone(), replacement));
                Ok(true)
            }
            Value::Parameter(p) => {
                match &p.cast {
                    Some((_, cast)) if !cast_accepted(ty, cast) => {
                        return self.refuse(&format!("a cast to {cast}"), c);
                    }
                    Some(_) => {}
                    None => self.rewrites.push((
                        p.range.clone(),
                        format!("${}::pg_catalog.{}", p.number, ty.name()),
                    )),
                }
                self.plain_params.insert(p.number);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// The byte where expression `e` ends.
    fn expression_end(&self, span: Span) -> Outcome<usize> {
        let start = self.tokens.index_at(span.start);
        let found = start.and_then(|first| {
            (first..self.tokens.spanned.len())
                .find(|&i| self.tokens.spanned[i].span.end == span.end)
        });
        match found {
            Some(i) => Ok(self.tokens.ranges[i].end),
            None => super::unsupported("cannot locate a value"),
        }
    }

    /// A value written into migrating column `c` by expression `e` (`v` its analysis):
    /// plaintext into the column, and `prefix` then its ciphertext inserted after it.
    pub(super) fn write_migrating(
        &mut self,
        c: ColumnRef,
        e: &Expr,
        v: &Value,
        prefix: String,
    ) -> Outcome<()> {
        self.writes.push(c);
        if matches!(e, Expr::Nested(_)) {
            // Its span leaves the parentheses out: nowhere to put the shadow value.
            return self.refuse_migrating(c, "writing a parenthesized value into it");
        }
        let shadow = self.stored(c) == Stored::Migrating;
        let end = self.expression_end(e.span())?;
        let value = match v {
            Value::Literal(l) if l.range.end == end => ShadowValue::Literal(l.value.clone()),
            Value::Parameter(p) if p.cast.as_ref().map_or(&p.range, |c| &c.0).end == end => {
                ShadowValue::Param(p.number)
            }
            Value::Null | Value::Default => {
                if shadow {
                    self.rewrites.push((end..end, format!("{prefix}NULL")));
                }
                return Ok(());
            }
            _ => return self.refuse_migrating(c, "writing a computed value into it"),
        };
        if !shadow {
            // No shadow to hold the ciphertext yet: a value written into a configured
            // column is refused (an application's own schema that made the column text
            // instead of bytea must fail loudly, not store plaintext). NULL and DEFAULT
            // carry no value and went above.
            return self.refuse_migrating(c, "writing a value into it");
        }
        self.bind_plaintext(c, v)?;
        self.shadow_writes.push(ShadowWrite {
            insert_at: end,
            column: c,
            prefix,
            value,
        });
        Ok(())
    }

    /// `, "<col>__pgveil"` after a migrating column named in an INSERT's column list.
    pub(super) fn shadow_target(&mut self, c: ColumnRef, name: &ObjectName) -> Outcome<()> {
        if self.stored(c) != Stored::Migrating {
            return Ok(());
        }
        let end = self.expression_end(name.span())?;
        let shadow = shadow_column(&self.column(c)?.column);
        self.rewrites
            .push((end..end, format!(", {}", quote(&shadow))));
        Ok(())
    }

    /// The prefix of a shadow assignment in a SET list.
    pub(super) fn shadow_assignment(&self, c: ColumnRef) -> Outcome<String> {
        Ok(format!(
            ", {} = ",
            quote(&shadow_column(&self.column(c)?.column))
        ))
    }

    /// The protected columns the statement uses that are plaintext in the database.
    pub(super) fn plaintext_columns(&mut self) -> Vec<ColumnRef> {
        let used: Vec<ColumnRef> = self
            .reads
            .iter()
            .chain(&self.conditions)
            .chain(&self.writes)
            .chain(self.result_columns.iter().flatten())
            .copied()
            .collect();
        let mut out: Vec<ColumnRef> = used.into_iter().filter(|&c| self.is_plaintext(c)).collect();
        out.sort();
        out.dedup();
        out
    }
}

/// The highest `$n` among the tokens in `range` (0: none).
pub(super) fn max_param(tokens: &crate::sql::tokens::Tokens, range: Range<usize>) -> u32 {
    range
        .filter_map(|i| match tokens.token(i) {
            Some(Token::Placeholder(p)) => p.strip_prefix('$')?.parse::<u32>().ok(),
            _ => None,
        })
        .max()
        .unwrap_or(0)
}
