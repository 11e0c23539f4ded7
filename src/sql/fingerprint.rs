//! Statement fingerprints for the audit log: literals replaced by `?`, comments dropped,
//! whitespace collapsed. Never contains a literal value, even for SQL that does not parse.

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Token, Tokenizer};

/// The statement with every literal replaced by `?` and whitespace (and comments)
/// collapsed to single spaces; `$n` parameters stay.
pub fn fingerprint(sql: &str) -> String {
    let dialect = PostgreSqlDialect {};
    match Tokenizer::new(&dialect, sql)
        .with_unescape(false)
        .tokenize()
    {
        Ok(tokens) => from_tokens(&tokens),
        Err(_) => hand_scan(sql),
    }
}

fn is_param(p: &str) -> bool {
    p.strip_prefix('$')
        .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
}

struct Out {
    s: String,
    space: bool,
}

impl Out {
    fn push(&mut self, piece: &str) {
        if self.space && !self.s.is_empty() {
            self.s.push(' ');
        }
        self.space = false;
        self.s.push_str(piece);
    }
}

fn from_tokens(tokens: &[Token]) -> String {
    let mut out = Out {
        s: String::new(),
        space: false,
    };
    for t in tokens {
        match t {
            Token::EOF => {}
            Token::Whitespace(_) => out.space = true,
            Token::Word(w) => out.push(&w.to_string()),
            Token::Placeholder(p) if is_param(p) => out.push(p),
            Token::Number(..)
            | Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::TripleSingleQuotedString(_)
            | Token::TripleDoubleQuotedString(_)
            | Token::DollarQuotedString(_)
            | Token::SingleQuotedByteStringLiteral(_)
            | Token::DoubleQuotedByteStringLiteral(_)
            | Token::TripleSingleQuotedByteStringLiteral(_)
            | Token::TripleDoubleQuotedByteStringLiteral(_)
            | Token::SingleQuotedRawStringLiteral(_)
            | Token::DoubleQuotedRawStringLiteral(_)
            | Token::TripleSingleQuotedRawStringLiteral(_)
            | Token::TripleDoubleQuotedRawStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::QuoteDelimitedStringLiteral(_)
            | Token::NationalQuoteDelimitedStringLiteral(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::HexStringLiteral(_) => out.push("?"),
            other => {
                // Operators and punctuation print as themselves; anything else that could
                // carry text becomes `?`.
                let text = other.to_string();
                if !text.is_empty()
                    && text
                        .bytes()
                        .all(|b| b.is_ascii_punctuation() && b != b'\'' && b != b'"' && b != b'$')
                {
                    out.push(&text);
                } else {
                    out.push("?");
                }
            }
        }
    }
    out.s
}

/// Fallback when the tokenizer fails (unterminated string or comment, stray bytes): a
/// conservative scan that drops comments and replaces anything quoted or numeric by `?`.
fn hand_scan(sql: &str) -> String {
    let b = sql.as_bytes();
    let mut out = Out {
        s: String::new(),
        space: false,
    };
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            out.space = true;
            i += 1;
        } else if c == b'-' && b.get(i + 1) == Some(&b'-') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            out.space = true;
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            let mut depth = 0usize;
            while i < b.len() {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.space = true;
        } else if c == b'\'' {
            // String (E'' strings may escape quotes with a backslash).
            let escapes = i > 0 && matches!(b[i - 1], b'e' | b'E');
            i += 1;
            while i < b.len() {
                if escapes && b[i] == b'\\' {
                    i += 2;
                } else if b[i] == b'\'' {
                    if b.get(i + 1) == Some(&b'\'') {
                        i += 2;
                    } else {
                        i += 1;
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            // A prefix letter (E, B, X, N, U&) was already copied as part of a word; that is
            // no value.
            out.push("?");
        } else if c == b'"' {
            let start = i;
            i += 1;
            while i < b.len() {
                if b[i] == b'"' {
                    if b.get(i + 1) == Some(&b'"') {
                        i += 2;
                    } else {
                        i += 1;
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(&String::from_utf8_lossy(&b[start..i.min(b.len())]));
        } else if c == b'$' {
            let j = i + 1;
            let mut k = j;
            while k < b.len() && b[k].is_ascii_digit() {
                k += 1;
            }
            if k > j {
                out.push(&sql[i..k]);
                i = k;
                continue;
            }
            // Dollar quote: $tag$ … $tag$ (an unterminated one swallows the rest).
            let mut k = j;
            while k < b.len() && (b[k].is_ascii_alphanumeric() || b[k] == b'_' || b[k] >= 0x80) {
                k += 1;
            }
            if b.get(k) == Some(&b'$') {
                let tag = &b[i..=k];
                let body = k + 1;
                let end = b[body..]
                    .windows(tag.len())
                    .position(|w| w == tag)
                    .map_or(b.len(), |p| body + p + tag.len());
                out.push("?");
                i = end;
            } else {
                out.push("$");
                i += 1;
            }
        } else if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit))
        {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'_') {
                i += 1;
            }
            out.push("?");
        } else if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
            let start = i;
            while i < b.len()
                && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'$' || b[i] >= 0x80)
            {
                i += 1;
            }
            // The slice ends on an ASCII byte or the end, so it is valid UTF-8.
            out.push(&String::from_utf8_lossy(&b[start..i]));
        } else {
            out.push(&sql[i..i + 1]);
            i += 1;
        }
    }
    out.s
}
