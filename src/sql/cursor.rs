//! Statements that open, read or close a cursor by name (`DECLARE`, `FETCH`, `MOVE`,
//! `CLOSE`, `DISCARD ALL`), recognised from their tokens alone so that texts on the fast
//! path (which are never parsed) are recognised too: a `FETCH` names no table, yet returns
//! whatever its cursor's query selected. Statements are split exactly as [`super::analyze`]
//! splits them, so the n-th entry here is the n-th statement there and in the database.

use std::ops::Range;

use sqlparser::tokenizer::Token;

use super::tokens::Tokens;

/// What one statement does to the session's cursors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CursorOp {
    /// `DECLARE name … CURSOR [WITH HOLD] FOR query`.
    Declare { name: String, holdable: bool },
    /// `FETCH … name`: returns rows of the cursor.
    Fetch { name: String },
    /// `MOVE … name`: moves the cursor and returns a count, never values.
    Move,
    /// `CLOSE name`.
    Close { name: String },
    /// `CLOSE ALL`, `DISCARD ALL`.
    CloseAll,
    /// A cursor statement pgveil cannot read (no name where one must be).
    Unreadable,
    /// Anything else.
    Other,
}

/// One statement of a query text and what it does to cursors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorStatement {
    pub byte_range: Range<usize>,
    pub op: CursorOp,
}

/// Whether `text` may hold a statement that changes or reads cursors by name (a whole-word
/// scan, ASCII case ignored, no allocation: it runs on every statement). A keyword cannot be
/// quoted or escaped, so a text without one of these words holds no such statement.
pub fn mentions_cursor(text: &str) -> bool {
    super::tokens::words(text).any(|w| {
        ["fetch", "declare", "close", "discard"]
            .iter()
            .any(|k| w.eq_ignore_ascii_case(k.as_bytes()))
    })
}

/// Every statement of `sql` with its cursor operation; `None` when the text cannot be split
/// into tokens (the database will reject it too).
pub fn cursor_statements(sql: &str) -> Option<Vec<CursorStatement>> {
    let tokens = Tokens::new(sql).ok()?;
    let mut out = Vec::new();
    for solid in tokens.statements() {
        let (Some(&first), Some(&last)) = (solid.first(), solid.last()) else {
            continue;
        };
        out.push(CursorStatement {
            byte_range: tokens.ranges[first].start..tokens.ranges[last].end,
            op: op_of(&tokens, &solid),
        });
    }
    Some(out)
}

/// An identifier as the database names it: unquoted ones are folded to lower case.
fn identifier(tokens: &Tokens, i: usize) -> Option<String> {
    match tokens.token(i)? {
        Token::Word(w) if w.quote_style == Some('"') => Some(w.value.clone()),
        Token::Word(w) if w.quote_style.is_none() => Some(w.value.to_ascii_lowercase()),
        _ => None,
    }
}

fn op_of(tokens: &Tokens, solid: &[usize]) -> CursorOp {
    let keyword = |at: usize, kw: &str| solid.get(at).is_some_and(|&i| tokens.is_keyword(i, kw));
    let last = solid.last().copied();
    if keyword(0, "fetch") {
        // The cursor's name is always the last token: `FETCH [direction] [FROM | IN] name`.
        return match last
            .filter(|_| solid.len() > 1)
            .and_then(|i| identifier(tokens, i))
        {
            Some(name) => CursorOp::Fetch { name },
            None => CursorOp::Unreadable,
        };
    }
    if keyword(0, "move") {
        return CursorOp::Move;
    }
    if keyword(0, "close") {
        return match (solid.len(), solid.get(1)) {
            (2, Some(&i)) if tokens.is_keyword(i, "all") => CursorOp::CloseAll,
            (2, Some(&i)) => {
                identifier(tokens, i).map_or(CursorOp::Unreadable, |name| CursorOp::Close { name })
            }
            _ => CursorOp::Unreadable,
        };
    }
    if keyword(0, "discard") && keyword(1, "all") {
        return CursorOp::CloseAll;
    }
    if keyword(0, "declare") {
        let Some(name) = solid.get(1).and_then(|&i| identifier(tokens, i)) else {
            return CursorOp::Unreadable;
        };
        // Options sit between the name and FOR; `WITH HOLD` makes it outlive its transaction.
        let options_end = (2..solid.len())
            .find(|&k| keyword(k, "for"))
            .unwrap_or(solid.len());
        let holdable = (2..options_end).any(|k| keyword(k, "with") && keyword(k + 1, "hold"));
        return CursorOp::Declare { name, holdable };
    }
    CursorOp::Other
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(sql: &str) -> Vec<CursorOp> {
        cursor_statements(sql)
            .unwrap()
            .into_iter()
            .map(|s| s.op)
            .collect()
    }

    #[test]
    fn recognises_every_form() {
        assert_eq!(
            ops("BEGIN; DECLARE C1 SCROLL CURSOR WITH HOLD FOR SELECT 1;; FETCH ALL FROM c1"),
            vec![
                CursorOp::Other,
                CursorOp::Declare {
                    name: "c1".into(),
                    holdable: true
                },
                CursorOp::Fetch { name: "c1".into() },
            ]
        );
        for sql in [
            "FETCH \"Cur\"",
            "fetch next from \"Cur\"",
            "FETCH BACKWARD 2 IN \"Cur\"",
            "FETCH ABSOLUTE -1 \"Cur\"",
            "FETCH FORWARD ALL FROM \"Cur\"",
            "/* x */ FETCH 3 \"Cur\"",
        ] {
            assert_eq!(
                ops(sql),
                vec![CursorOp::Fetch { name: "Cur".into() }],
                "{sql}"
            );
        }
        assert_eq!(ops("MOVE LAST IN c"), vec![CursorOp::Move]);
        assert_eq!(ops("CLOSE ALL; DISCARD ALL"), vec![CursorOp::CloseAll; 2]);
        assert_eq!(ops("CLOSE Cx"), vec![CursorOp::Close { name: "cx".into() }]);
        assert_eq!(ops("FETCH"), vec![CursorOp::Unreadable]);
        assert_eq!(
            ops("DECLARE c NO SCROLL CURSOR WITHOUT HOLD FOR SELECT 'with hold'"),
            vec![CursorOp::Declare {
                name: "c".into(),
                holdable: false
            }]
        );
    }

    #[test]
    fn keyword_scan_is_whole_word() {
        assert!(mentions_cursor("select 1; fetch all from c"));
        assert!(!mentions_cursor("SELECT prefetch, closed FROM t"));
        assert!(mentions_cursor("/**/FETCH c"));
    }
}
