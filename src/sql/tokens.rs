//! The query's tokens with exact byte offsets (sqlparser reports line/column positions,
//! columns counted in characters).

use std::ops::Range;

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer};

/// The whole words of `text`: maximal runs of the bytes an unquoted PostgreSQL identifier
/// may hold (ASCII letters, digits, `_`, `$`, and every non-ASCII byte). A cheap pre-check
/// for keywords, without tokenizing or allocating; it runs on every statement.
pub fn words(text: &str) -> impl Iterator<Item = &[u8]> {
    text.as_bytes()
        .split(|&b| !(b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80))
        .filter(|w| !w.is_empty())
}

pub(crate) struct Tokens {
    pub spanned: Vec<TokenWithSpan>,
    /// Byte range of each token in the query string.
    pub ranges: Vec<Range<usize>>,
}

/// Advances a (line, column, byte) cursor over the query.
struct Cursor<'a> {
    chars: std::str::CharIndices<'a>,
    len: usize,
    line: u64,
    col: u64,
    byte: usize,
}

impl Cursor<'_> {
    /// Moves to `loc` (never backwards); `None` when `loc` is not a character position.
    fn seek(&mut self, loc: Location) -> Option<usize> {
        while (self.line, self.col) < (loc.line, loc.column) {
            let (_, ch) = self.chars.next()?;
            self.byte += ch.len_utf8();
            if ch == '\n' {
                self.line += 1;
                self.col = 1;
            } else {
                self.col += 1;
            }
        }
        ((self.line, self.col) == (loc.line, loc.column) && self.byte <= self.len)
            .then_some(self.byte)
    }
}

impl Tokens {
    pub fn new(sql: &str) -> Result<Self, String> {
        let dialect = PostgreSqlDialect {};
        let spanned = Tokenizer::new(&dialect, sql)
            .with_unescape(true)
            .tokenize_with_location()
            .map_err(|e| e.to_string())?;
        let mut cur = Cursor {
            chars: sql.char_indices(),
            len: sql.len(),
            line: 1,
            col: 1,
            byte: 0,
        };
        let mut ranges = Vec::with_capacity(spanned.len());
        for t in &spanned {
            let start = cur
                .seek(t.span.start)
                .ok_or("token position out of range")?;
            let end = cur.seek(t.span.end).ok_or("token position out of range")?;
            ranges.push(start..end);
        }
        Ok(Self { spanned, ranges })
    }

    /// Index of the token starting at `loc`.
    pub fn index_at(&self, loc: Location) -> Option<usize> {
        let key = (loc.line, loc.column);
        let i = self
            .spanned
            .partition_point(|t| (t.span.start.line, t.span.start.column) < key);
        let t = self.spanned.get(i)?;
        ((t.span.start.line, t.span.start.column) == key).then_some(i)
    }

    pub fn is_trivia(&self, i: usize) -> bool {
        matches!(
            self.spanned.get(i).map(|t| &t.token),
            Some(Token::Whitespace(_)) | Some(Token::EOF)
        )
    }

    /// The nearest non-whitespace token before `i`.
    pub fn prev_solid(&self, i: usize) -> Option<usize> {
        (0..i).rev().find(|&j| !self.is_trivia(j))
    }

    /// The nearest non-whitespace token after `i`.
    pub fn next_solid(&self, i: usize) -> Option<usize> {
        (i + 1..self.spanned.len()).find(|&j| !self.is_trivia(j))
    }

    /// The non-whitespace token indices of each statement, split at semicolons as the
    /// database splits a Query (empty statements left out).
    pub fn statements(&self) -> Vec<Vec<usize>> {
        let mut out = Vec::new();
        let mut start = 0;
        for i in 0..=self.spanned.len() {
            let boundary = match self.token(i) {
                None => true,
                Some(t) => matches!(t, Token::SemiColon | Token::EOF),
            };
            if !boundary {
                continue;
            }
            let solid: Vec<usize> = (start..i).filter(|&j| !self.is_trivia(j)).collect();
            start = i + 1;
            if !solid.is_empty() {
                out.push(solid);
            }
        }
        out
    }

    pub fn token(&self, i: usize) -> Option<&Token> {
        self.spanned.get(i).map(|t| &t.token)
    }

    pub fn is_keyword(&self, i: usize, kw: &str) -> bool {
        matches!(self.token(i), Some(Token::Word(w)) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(kw))
    }
}
