//! Statements that set, reset or show pgveil's session settings (`pgveil.end_user`,
//! `pgveil.purpose`, `pgveil.break_glass`, `pgveil.context`), and the transaction statements
//! that decide how long such a setting lasts. Recognised from tokens alone, so texts on the
//! fast path (never parsed) are recognised too; statements are split exactly as
//! [`super::cursor_statements`] splits them, so the n-th entry is the n-th statement the
//! database runs.
//!
//! Forms recognised: `SET [SESSION | LOCAL] name {= | TO} value | DEFAULT`, `RESET name`,
//! `RESET ALL`, `DISCARD ALL`, `SHOW name` (pgveil answers it), `SELECT
//! [pg_catalog.]set_config('name', 'value', true | false)` as a whole statement, and `BEGIN`, `START TRANSACTION`, `COMMIT`, `END`,
//! `ROLLBACK`, `ABORT` (with `AND [NO] CHAIN`), `SAVEPOINT`, `RELEASE`, `ROLLBACK TO`,
//! `PREPARE TRANSACTION`. Any other statement that might set a `pgveil.` setting
//! (`set_config` with a name pgveil cannot read, a pgveil name in any other form, a
//! dollar-quoted body that calls `set_config` on one) is [`SettingOp::Unprovable`]:
//! the session refuses it (fail closed).

use std::ops::Range;

use sqlparser::tokenizer::Token;

use super::tokens::Tokens;
use crate::context::{ContextError, Setting};

/// What one statement does to pgveil's settings or to the transaction they live in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettingOp {
    /// `SET`, `RESET name`, `SET … = DEFAULT` (`value: None`), `set_config`.
    Set {
        setting: Setting,
        local: bool,
        value: Option<String>,
        /// The value's literal in the text (replaced before a token goes upstream).
        literal: Option<Range<usize>>,
    },
    /// `RESET ALL`, `DISCARD ALL`.
    ResetAll,
    Begin,
    Commit {
        chain: bool,
    },
    Rollback {
        chain: bool,
    },
    Savepoint,
    RollbackTo,
    Release,
    /// `PREPARE TRANSACTION`: ends the transaction like a commit, as far as settings go.
    Prepare,
    /// A `pgveil.` name PostgreSQL would treat as a new placeholder.
    Unknown(ContextError),
    /// A statement that may change a pgveil setting in a way pgveil cannot follow.
    Unprovable(&'static str),
    /// `SHOW pgveil.name`: pgveil answers it from its own copy of the context.
    Show(Setting),
    /// Anything else.
    Other,
}

/// One statement of a query text and its [`SettingOp`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingStatement {
    pub byte_range: Range<usize>,
    pub op: SettingOp,
}

/// Whether `text` may hold a statement [`setting_statements`] gives an op other than
/// `Other`: one pass over its words (ASCII case ignored, no allocation: it runs on every
/// text). A keyword cannot be quoted or escaped, so a text without one of these words holds
/// no such statement.
pub fn mentions_setting(text: &str) -> bool {
    const WORDS: [&str; 13] = [
        "pgveil",
        "begin",
        "start",
        "commit",
        "end",
        "rollback",
        "abort",
        "savepoint",
        "release",
        "prepare",
        "reset",
        "discard",
        "set_config",
    ];
    super::tokens::words(text).any(|word| {
        (3..=10).contains(&word.len())
            && WORDS
                .iter()
                .any(|w| w.as_bytes().eq_ignore_ascii_case(word))
    })
}

/// Every statement of `sql` with its op; `None` when the text cannot be split into tokens
/// (the database will reject it too). `standard_strings`: the session's
/// standard_conforming_strings (off: a backslash in a value cannot be read as the database
/// reads it).
pub fn setting_statements(sql: &str, standard_strings: bool) -> Option<Vec<SettingStatement>> {
    let tokens = Tokens::new(sql).ok()?;
    let mut out = Vec::new();
    for solid in tokens.statements() {
        let (Some(&first), Some(&last)) = (solid.first(), solid.last()) else {
            continue;
        };
        let statement = Statement {
            tokens: &tokens,
            solid: &solid,
            sql,
            standard_strings,
        };
        out.push(SettingStatement {
            byte_range: tokens.ranges[first].start..tokens.ranges[last].end,
            op: statement.op(),
        });
    }
    Some(out)
}

struct Statement<'a> {
    tokens: &'a Tokens,
    solid: &'a [usize],
    sql: &'a str,
    standard_strings: bool,
}

impl Statement<'_> {
    fn token(&self, at: usize) -> Option<&Token> {
        self.tokens.token(*self.solid.get(at)?)
    }

    fn keyword(&self, at: usize, kw: &str) -> bool {
        self.solid
            .get(at)
            .is_some_and(|&i| self.tokens.is_keyword(i, kw))
    }

    fn op(&self) -> SettingOp {
        let chain = || {
            self.solid
                .iter()
                .enumerate()
                .any(|(k, _)| k > 0 && self.keyword(k, "chain") && !self.keyword(k - 1, "no"))
        };
        if self.keyword(0, "set") {
            return self.set();
        }
        if self.keyword(0, "reset") {
            if self.keyword(1, "all") && self.solid.len() == 2 {
                return SettingOp::ResetAll;
            }
            return match self.name(1) {
                Some((name, next)) if next == self.solid.len() => {
                    self.setting_op(&name, false, None, None)
                }
                _ => self.other(),
            };
        }
        if self.keyword(0, "discard") && self.keyword(1, "all") {
            return SettingOp::ResetAll;
        }
        if self.keyword(0, "show") {
            return match self.name(1) {
                Some((name, next)) => match Setting::parse(&name) {
                    Err(e) => SettingOp::Unknown(e),
                    Ok(Some(setting)) if next == self.solid.len() => SettingOp::Show(setting),
                    Ok(_) => SettingOp::Other,
                },
                None => SettingOp::Other,
            };
        }
        if self.keyword(0, "begin") || (self.keyword(0, "start") && self.keyword(1, "transaction"))
        {
            return SettingOp::Begin;
        }
        if self.keyword(0, "commit") || self.keyword(0, "end") {
            if self.keyword(1, "prepared") {
                return SettingOp::Other;
            }
            return SettingOp::Commit { chain: chain() };
        }
        if self.keyword(0, "rollback") || self.keyword(0, "abort") {
            if self.keyword(1, "prepared") {
                return SettingOp::Other;
            }
            if (1..self.solid.len()).any(|k| self.keyword(k, "to")) {
                return SettingOp::RollbackTo;
            }
            return SettingOp::Rollback { chain: chain() };
        }
        if self.keyword(0, "savepoint") {
            return SettingOp::Savepoint;
        }
        if self.keyword(0, "release") {
            return SettingOp::Release;
        }
        if self.keyword(0, "prepare") && self.keyword(1, "transaction") {
            return SettingOp::Prepare;
        }
        if self.keyword(0, "select") {
            if let Some(op) = self.set_config() {
                return op;
            }
        }
        self.other()
    }

    /// `SET [SESSION | LOCAL] name {= | TO} value | DEFAULT`.
    fn set(&self) -> SettingOp {
        let mut at = 1;
        let mut local = false;
        if self.keyword(at, "session") && !self.keyword(at + 1, "characteristics") {
            at += 1;
        } else if self.keyword(at, "local") {
            local = true;
            at += 1;
        }
        let Some((name, next)) = self.name(at) else {
            return self.other();
        };
        let Some(setting) = (match Setting::parse(&name) {
            Ok(s) => s,
            Err(e) => return SettingOp::Unknown(e),
        }) else {
            return SettingOp::Other;
        };
        let assigns = matches!(self.token(next), Some(Token::Eq)) || self.keyword(next, "to");
        if !assigns || self.solid.len() != next + 2 {
            return SettingOp::Unprovable(
                "pgveil settings take one value: SET pgveil.name = 'value'",
            );
        }
        if self.keyword(next + 1, "default") {
            return SettingOp::Set {
                setting,
                local,
                value: None,
                literal: None,
            };
        }
        match self.value(next + 1) {
            Some((value, range)) => SettingOp::Set {
                setting,
                local,
                value: Some(value),
                literal: Some(range),
            },
            None => SettingOp::Unprovable(
                "the value of a pgveil setting must be a string literal or a plain word",
            ),
        }
    }

    fn setting_op(
        &self,
        name: &str,
        local: bool,
        value: Option<String>,
        literal: Option<Range<usize>>,
    ) -> SettingOp {
        match Setting::parse(name) {
            Err(e) => SettingOp::Unknown(e),
            Ok(None) => SettingOp::Other,
            Ok(Some(setting)) => SettingOp::Set {
                setting,
                local,
                value,
                literal,
            },
        }
    }

    /// A parameter name from token `at`: words and dots (`pgveil.end_user`, also quoted
    /// parts), ending before `=`, `TO` or the end. Returns the name and the next position.
    fn name(&self, at: usize) -> Option<(String, usize)> {
        let mut name = String::new();
        let mut k = at;
        let mut want_word = true;
        while let Some(token) = self.token(k) {
            match token {
                Token::Word(w) if want_word => {
                    if w.quote_style.is_none()
                        && !name.is_empty()
                        && w.value.eq_ignore_ascii_case("to")
                    {
                        break;
                    }
                    name.push_str(&w.value);
                    want_word = false;
                }
                Token::Period if !want_word => {
                    name.push('.');
                    want_word = true;
                }
                _ => break,
            }
            k += 1;
        }
        (!name.is_empty() && !want_word).then_some((name, k))
    }

    /// A setting's value: a string literal or a plain word (as PostgreSQL reads it).
    fn value(&self, at: usize) -> Option<(String, Range<usize>)> {
        let index = *self.solid.get(at)?;
        let range = self.tokens.ranges.get(index)?.clone();
        let raw = self.sql.get(range.clone())?;
        let value = match self.tokens.token(index)? {
            Token::SingleQuotedString(s) if raw.starts_with('\'') => {
                if !self.standard_strings && raw.contains('\\') {
                    return None;
                }
                s.clone()
            }
            Token::Word(w) if w.quote_style.is_none() => w.value.to_ascii_lowercase(),
            Token::Word(w) if w.quote_style == Some('"') => w.value.clone(),
            Token::Number(n, _) => n.clone(),
            _ => return None,
        };
        Some((value, range))
    }

    /// `SELECT [pg_catalog.]set_config('name', 'value', true | false)`, exactly.
    fn set_config(&self) -> Option<SettingOp> {
        let mut at = 1;
        if self.keyword(1, "pg_catalog") && matches!(self.token(2), Some(Token::Period)) {
            at = 3;
        }
        if !self.keyword(at, "set_config") || !matches!(self.token(at + 1), Some(Token::LParen)) {
            return None;
        }
        let name = match self.token(at + 2)? {
            Token::SingleQuotedString(s) => s.clone(),
            _ => return None,
        };
        let commas = matches!(self.token(at + 3), Some(Token::Comma))
            && matches!(self.token(at + 5), Some(Token::Comma));
        let closed =
            matches!(self.token(at + 7), Some(Token::RParen)) && self.solid.len() == at + 8;
        if !commas || !closed {
            return None;
        }
        let local = if self.keyword(at + 6, "true") {
            true
        } else if self.keyword(at + 6, "false") {
            false
        } else {
            return None;
        };
        let (value, range) = match self.token(at + 4)? {
            Token::SingleQuotedString(_) => self.value(at + 4)?,
            _ => return None,
        };
        Some(self.setting_op(&name, local, Some(value), Some(range)))
    }

    /// A statement pgveil does not follow: refused when it may set a pgveil setting.
    fn other(&self) -> SettingOp {
        const REFUSED: &str = "pgveil settings are set only by SET, RESET or SELECT set_config('pgveil.name', 'value', is_local) as a statement of its own";
        let mut reads_settings_by_name = false;
        for (k, &i) in self.solid.iter().enumerate() {
            match self.tokens.token(i) {
                // `ALTER ROLE | DATABASE … SET pgveil.x`: a default pgveil never sees.
                Some(Token::Word(w))
                    if w.value.eq_ignore_ascii_case("pgveil")
                        && matches!(self.token(k + 1), Some(Token::Period))
                        && self.keyword(0, "alter")
                        && (1..k).any(|j| self.keyword(j, "set")) =>
                {
                    return SettingOp::Unprovable(REFUSED);
                }
                Some(Token::Word(w)) if w.value.eq_ignore_ascii_case("pg_settings") => {
                    reads_settings_by_name = true;
                }
                // A function or DO body that names a pgveil setting (`set_config`, or a
                // dynamic `SET` that could carry a token upstream).
                Some(Token::DollarQuotedString(s))
                    if s.value.to_ascii_lowercase().contains("pgveil.") =>
                {
                    return SettingOp::Unprovable(REFUSED);
                }
                _ => {}
            }
        }
        for (k, _) in self.solid.iter().enumerate() {
            if !self.keyword(k, "set_config") || !matches!(self.token(k + 1), Some(Token::LParen)) {
                continue;
            }
            match self.token(k + 2) {
                Some(Token::SingleQuotedString(name)) => {
                    if Setting::parse(name).map_or(true, |s| s.is_some()) {
                        return SettingOp::Unprovable(REFUSED);
                    }
                }
                // A name read at run time (pg_dump: `set_config(name, …) FROM pg_settings
                // WHERE name = '…'`): allowed only when that name is a literal not of pgveil.
                _ if reads_settings_by_name && self.names_other_setting() => {}
                _ => {
                    return SettingOp::Unprovable(
                        "set_config with a setting name that is not a literal is not supported",
                    )
                }
            }
        }
        SettingOp::Other
    }

    /// `name = '<literal>'` with a literal outside `pgveil.`.
    fn names_other_setting(&self) -> bool {
        (0..self.solid.len()).any(|k| {
            self.keyword(k, "name")
                && matches!(self.token(k + 1), Some(Token::Eq))
                && matches!(self.token(k + 2), Some(Token::SingleQuotedString(s))
                    if Setting::parse(s).is_ok_and(|s| s.is_none()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(sql: &str) -> Vec<SettingOp> {
        setting_statements(sql, true)
            .unwrap()
            .into_iter()
            .map(|s| s.op)
            .collect()
    }

    fn set(setting: Setting, local: bool, value: Option<&str>) -> SettingOp {
        SettingOp::Set {
            setting,
            local,
            value: value.map(str::to_string),
            literal: None,
        }
    }

    fn without_ranges(ops: Vec<SettingOp>) -> Vec<SettingOp> {
        ops.into_iter()
            .map(|op| match op {
                SettingOp::Set {
                    setting,
                    local,
                    value,
                    ..
                } => SettingOp::Set {
                    setting,
                    local,
                    value,
                    literal: None,
                },
                op => op,
            })
            .collect()
    }

    #[test]
    fn set_forms() {
        assert_eq!(
            without_ranges(ops(
                "SET pgveil.end_user = 'dr.alice'; set local PGVEIL.purpose to treatment; \
                 SET SESSION pgveil.break_glass TO 'code blue'; SET pgveil.end_user = DEFAULT; \
                 RESET pgveil.purpose; RESET ALL; DISCARD ALL; SHOW pgveil.end_user"
            )),
            vec![
                set(Setting::EndUser, false, Some("dr.alice")),
                set(Setting::Purpose, true, Some("treatment")),
                set(Setting::BreakGlass, false, Some("code blue")),
                set(Setting::EndUser, false, None),
                set(Setting::Purpose, false, None),
                SettingOp::ResetAll,
                SettingOp::ResetAll,
                SettingOp::Show(Setting::EndUser),
            ]
        );
        let text = "SET LOCAL pgveil.context = 'a.b.c'";
        let statements = setting_statements(text, true).unwrap();
        let [SettingStatement {
            op:
                SettingOp::Set {
                    literal: Some(range),
                    ..
                },
            ..
        }] = statements.as_slice()
        else {
            panic!("not recognised");
        };
        assert_eq!(&text[range.clone()], "'a.b.c'");
        assert_eq!(
            without_ranges(ops("SELECT set_config('pgveil.purpose', 'research', true)")),
            vec![set(Setting::Purpose, true, Some("research"))]
        );
        assert_eq!(
            ops("show PGVEIL.Context; SHOW pgveil.purpose; SHOW search_path"),
            vec![
                SettingOp::Show(Setting::Context),
                SettingOp::Show(Setting::Purpose),
                SettingOp::Other
            ]
        );
        assert_eq!(
            ops("SET search_path = app; SELECT set_config('search_path', '', false)"),
            vec![SettingOp::Other, SettingOp::Other]
        );
    }

    #[test]
    fn unknown_and_unprovable() {
        assert!(matches!(
            ops("SET pgveil.enduser = 'x'")[0],
            SettingOp::Unknown(_)
        ));
        assert!(matches!(ops("SHOW pgveil.nope")[0], SettingOp::Unknown(_)));
        for sql in [
            "SET pgveil.end_user = 'a', 'b'",
            "SET pgveil.end_user = E'a'",
            "SELECT set_config('pgveil.end_user', $1, false)",
            "SELECT set_config('pgveil.end_user', 'x', false), 1",
            "SELECT set_config(n, 'x', false) FROM t",
            "ALTER ROLE app SET pgveil.end_user = 'x'",
            "DO $$BEGIN PERFORM set_config('pgveil.context', 'x', false); END$$",
            "DO $$BEGIN EXECUTE 'SET pgveil.context = ''t'''; END$$",
        ] {
            assert!(
                matches!(ops(sql)[0], SettingOp::Unprovable(_)),
                "{sql}: {:?}",
                ops(sql)
            );
        }
        assert_eq!(
            ops("SELECT set_config(name, 'view', false) FROM pg_settings WHERE name = 'restrict_nonsystem_relation_kind'"),
            vec![SettingOp::Other]
        );
        assert_eq!(
            ops("SELECT current_setting('pgveil.end_user', true), current_setting('x')"),
            vec![SettingOp::Other]
        );
        let backslash = "SET pgveil.end_user = 'a\\b'";
        assert!(matches!(
            setting_statements(backslash, false).unwrap()[0].op,
            SettingOp::Unprovable(_)
        ));
    }

    #[test]
    fn transactions() {
        assert_eq!(
            ops(
                "BEGIN; START TRANSACTION ISOLATION LEVEL SERIALIZABLE; SAVEPOINT s; RELEASE s; \
                 ROLLBACK TO SAVEPOINT s; rollback work to s; COMMIT AND CHAIN; END; ABORT; \
                 ROLLBACK AND NO CHAIN; PREPARE TRANSACTION 'x'; COMMIT PREPARED 'x'"
            ),
            vec![
                SettingOp::Begin,
                SettingOp::Begin,
                SettingOp::Savepoint,
                SettingOp::Release,
                SettingOp::RollbackTo,
                SettingOp::RollbackTo,
                SettingOp::Commit { chain: true },
                SettingOp::Commit { chain: false },
                SettingOp::Rollback { chain: false },
                SettingOp::Rollback { chain: false },
                SettingOp::Prepare,
                SettingOp::Other,
            ]
        );
        assert!(mentions_setting("end"));
        assert!(mentions_setting("x;SET pgveil.end_user='a'"));
        assert!(mentions_setting("/**/COMMIT"));
        assert!(!mentions_setting("SELECT ending, pgveil_x, $begin FROM t"));
    }
}
