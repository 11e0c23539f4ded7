//! Span recovery: exact byte ranges of literals, casts and typed strings in the query
//! string, and the byte offsets where text can be inserted.

use std::ops::Range;

use sqlparser::ast::{CastKind, Select};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Span, Token};

use crate::sql::tokens::Tokens;

use super::{unsupported, Analyzer, Outcome};

/// `U&"…"` among tokens `first..=last` (the parser reads it as `U & "…"`).
pub(super) fn has_unicode_identifier(tokens: &Tokens, first: usize, last: usize) -> bool {
    (first..last.saturating_sub(1)).any(|i| {
        let adjacent = |a: usize, b: usize| tokens.ranges[a].end == tokens.ranges[b].start;
        matches!(tokens.token(i), Some(Token::Word(w)) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case("u"))
            && matches!(tokens.token(i + 1), Some(Token::Ampersand))
            && matches!(tokens.token(i + 2), Some(Token::Word(w)) if w.quote_style == Some('"'))
            && adjacent(i, i + 1)
            && adjacent(i + 1, i + 2)
    })
}

impl Analyzer<'_> {
    /// Index of the token starting at byte `byte`.
    pub(super) fn token_index_at(&self, byte: usize) -> Option<usize> {
        let i = self.tokens.ranges.partition_point(|r| r.start < byte);
        match self.tokens.ranges.get(i) {
            Some(r) if r.start == byte => Some(i),
            _ => None,
        }
    }

    /// Byte range of the token a parser span starts at.
    pub(super) fn span_range(&self, span: Span) -> Outcome<Range<usize>> {
        match self.tokens.index_at(span.start) {
            Some(i) => Ok(self.tokens.ranges[i].clone()),
            None => unsupported("cannot locate literal"),
        }
    }

    /// Index of the (non-whitespace) token ending at byte `byte`.
    pub(super) fn token_index_ending_at(&self, byte: usize) -> Option<usize> {
        let i = self.tokens.ranges.partition_point(|r| r.end < byte);
        match self.tokens.ranges.get(i) {
            Some(r) if r.end == byte && !self.tokens.is_trivia(i) => Some(i),
            _ => None,
        }
    }

    /// Start of the sign token (`-`, `+`) right before the token starting at byte `start`.
    pub(super) fn sign_start(&self, start: usize) -> Option<usize> {
        let prev = self
            .token_index_at(start)
            .and_then(|i| self.tokens.prev_solid(i))?;
        matches!(self.tokens.token(prev), Some(Token::Minus | Token::Plus))
            .then(|| self.tokens.ranges[prev].start)
    }

    /// Extends a literal's range over a following `::type` or an enclosing `CAST(… AS type)`.
    pub(super) fn cast_range(
        &self,
        kind: &CastKind,
        literal: Range<usize>,
    ) -> Option<Range<usize>> {
        let last = self.token_index_ending_at(literal.end)?;
        match kind {
            CastKind::DoubleColon => self
                .double_colon_cast_end(last)
                .map(|end| literal.start..end),
            CastKind::Cast => self.enclosing_cast_range(literal.start, last),
            _ => None,
        }
    }

    /// End of `::type` after token `last`: the type is whatever the parser reads as one.
    fn double_colon_cast_end(&self, last: usize) -> Option<usize> {
        let double_colon = self.tokens.next_solid(last)?;
        if !matches!(self.tokens.token(double_colon), Some(Token::DoubleColon)) {
            return None;
        }
        let type_start = self.tokens.next_solid(double_colon)?;
        let stop = (type_start + 48).min(self.tokens.spanned.len());
        let dialect = PostgreSqlDialect {};
        let mut parser = Parser::new(&dialect)
            .with_tokens_with_locations(self.tokens.spanned[type_start..stop].to_vec());
        if parser.parse_data_type().is_err() {
            return None;
        }
        let end_token = type_start + parser.get_current_index();
        if self.tokens.is_trivia(end_token) {
            return None;
        }
        Some(self.tokens.ranges[end_token].end)
    }

    /// `CAST(` right before the literal starting at byte `literal_start` (whose last token
    /// is `last`), up to the matching `)`.
    fn enclosing_cast_range(&self, literal_start: usize, last: usize) -> Option<Range<usize>> {
        let first = self.token_index_at(literal_start)?;
        let open = self.tokens.prev_solid(first);
        let keyword = open.and_then(|o| self.tokens.prev_solid(o));
        let (Some(open), Some(keyword)) = (open, keyword) else {
            return None;
        };
        if !matches!(self.tokens.token(open), Some(Token::LParen))
            || !self.tokens.is_keyword(keyword, "cast")
        {
            return None;
        }
        let mut depth = 0i32;
        let mut i = last + 1;
        while let Some(t) = self.tokens.token(i) {
            match t {
                Token::LParen => depth += 1,
                Token::RParen if depth == 0 => {
                    return Some(self.tokens.ranges[keyword].start..self.tokens.ranges[i].end)
                }
                Token::RParen => depth -= 1,
                _ => {}
            }
            i += 1;
        }
        None
    }

    /// Start of a typed literal (`DATE '…'`, `timestamp with time zone '…'`): the
    /// farthest-back run of tokens before the string that parses exactly as a type.
    pub(super) fn typed_string_start(&self, literal_start: usize) -> Option<usize> {
        let literal = self.token_index_at(literal_start)?;
        let dialect = PostgreSqlDialect {};
        let mut best = None;
        let mut k = literal;
        for _ in 0..8 {
            let Some(prev) = self.tokens.prev_solid(k) else {
                break;
            };
            if !matches!(
                self.tokens.token(prev),
                Some(Token::Word(_) | Token::LParen | Token::RParen | Token::Number(..))
            ) {
                break;
            }
            k = prev;
            let mut p = Parser::new(&dialect)
                .with_tokens_with_locations(self.tokens.spanned[k..literal].to_vec());
            if p.parse_data_type().is_ok() && p.peek_token().token == Token::EOF {
                best = Some(k);
            }
        }
        best.map(|k| self.tokens.ranges[k].start)
    }

    /// Byte offset right after the last token of the top-level SELECT list (before FROM).
    pub(super) fn projection_end(&self, s: &Select) -> Option<usize> {
        let start = self.tokens.index_at(s.select_token.0.span.start)?;
        let mut depth = 0i32;
        let mut i = start + 1;
        while let Some(t) = self.tokens.token(i) {
            match t {
                Token::LParen | Token::LBracket => depth += 1,
                Token::RParen | Token::RBracket => depth -= 1,
                Token::SemiColon | Token::EOF => return None,
                Token::Word(w)
                    if depth == 0
                        && w.quote_style.is_none()
                        && w.value.eq_ignore_ascii_case("from") =>
                {
                    let prev = self.tokens.prev_solid(i)?;
                    return (prev > start).then(|| self.tokens.ranges[prev].end);
                }
                _ => {}
            }
            if depth < 0 {
                return None;
            }
            i += 1;
        }
        None
    }

    /// The statement's first two keywords (`CREATE TRIGGER`), to name it in a refusal.
    pub(super) fn leading_words(&self, first: usize, last: usize) -> String {
        let mut words = Vec::new();
        let mut i = first;
        while i <= last && words.len() < 2 {
            match self.tokens.token(i) {
                Some(Token::Word(w)) if w.quote_style.is_none() => {
                    words.push(w.value.to_ascii_uppercase())
                }
                Some(Token::Whitespace(_)) => {}
                _ => break,
            }
            i += 1;
        }
        if words.is_empty() {
            "statement".to_string()
        } else {
            words.join(" ")
        }
    }
}
