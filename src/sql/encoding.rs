//! Client encodings pgveil cannot analyse.
//!
//! pgveil reads statement text byte by byte, as ASCII with UTF-8 beyond it. In `SJIS`,
//! `BIG5`, `GBK`, `UHC`, `GB18030`, `JOHAB` (and `SHIFT_JIS_2004`) the second byte of a
//! multibyte character can be an ASCII byte such as `\` or `'`, so PostgreSQL would see a
//! string literal end where pgveil sees it go on (CVE-2006-2313/2314). A session never runs
//! in one of them through pgveil: they are refused at login (the server's `client_encoding`
//! report), here in the statements that would select them, and, should one be selected some
//! other way, the session stops analysing (see `session`).

use sqlparser::ast::{
    visit_expressions, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, ObjectName, Set,
    Statement, Value,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::Refusal;
use crate::pgerror::sqlstate;

/// PostgreSQL's names and aliases of the client-only encodings whose multibyte characters
/// may contain ASCII bytes, normalised as PostgreSQL matches them (lower case, letters and
/// digits only).
const REFUSED: [&str; 20] = [
    "sjis",
    "mskanji",
    "shiftjis",
    "win932",
    "windows932",
    "shiftjis2004",
    "big5",
    "win950",
    "windows950",
    "gbk",
    "win936",
    "windows936",
    "cp936",
    "uhc",
    "win949",
    "windows949",
    "cp949",
    "gb18030",
    "johab",
    "cp932",
];

/// Whether `name` (as a client writes it or as the server reports it) is a refused encoding.
pub fn is_refused_encoding(name: &str) -> bool {
    let normal: String = name
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    REFUSED.contains(&normal.as_str())
}

fn refusal_for(encoding: &str) -> Refusal {
    let shown: String = encoding
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .take(32)
        .collect();
    Refusal {
        sqlstate: sqlstate::FEATURE_NOT_SUPPORTED,
        message: format!(
            "pgveil: client encoding {shown} is not supported (its multibyte characters can contain ASCII bytes); use UTF8"
        ),
    }
}

fn unprovable() -> Refusal {
    Refusal {
        sqlstate: sqlstate::FEATURE_NOT_SUPPORTED,
        message: "pgveil: set_config that may set client_encoding to a value that is not a literal is not supported".into(),
    }
}

/// The refusal of a statement in `sql` that would select a refused client encoding:
/// `SET [SESSION | LOCAL] client_encoding`, `SET NAMES`, or `set_config` that may set
/// client_encoding (its name is `client_encoding` or not a literal) to a value pgveil cannot
/// read as a literal. Text that does not parse is left to the rest of
/// the analysis; the session's check of what the server reports still stops it.
pub fn encoding_refusal(sql: &str) -> Option<Refusal> {
    let lower = sql.to_ascii_lowercase();
    // A cheap filter only: each form below needs one of these in its text.
    if !["encoding", "names", "set_config", "u&"]
        .iter()
        .any(|word| lower.contains(word))
    {
        return None;
    }
    let statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    statements.iter().find_map(statement_refusal)
}

fn statement_refusal(statement: &Statement) -> Option<Refusal> {
    if let Statement::Set(set) = statement {
        if let Some(refusal) = set_refusal(set) {
            return Some(refusal);
        }
    }
    let mut found = None;
    let _ = visit_expressions(statement, |expr| {
        if let Some(refusal) = set_config_refusal(expr) {
            found = Some(refusal);
            return std::ops::ControlFlow::Break(());
        }
        std::ops::ControlFlow::Continue(())
    });
    found
}

fn set_refusal(set: &Set) -> Option<Refusal> {
    match set {
        Set::SingleAssignment {
            variable, values, ..
        } => assignment_refusal(variable, values),
        Set::MultipleAssignments { assignments } => assignments
            .iter()
            .find_map(|a| assignment_refusal(&a.name, std::slice::from_ref(&a.value))),
        Set::SetNames { charset_name, .. } => {
            is_refused_encoding(&charset_name.value).then(|| refusal_for(&charset_name.value))
        }
        _ => None,
    }
}

fn last_name(name: &ObjectName) -> String {
    name.0
        .last()
        .and_then(|part| part.as_ident())
        .map(|ident| ident.value.to_ascii_lowercase())
        .unwrap_or_default()
}

fn assignment_refusal(variable: &ObjectName, values: &[Expr]) -> Option<Refusal> {
    if last_name(variable) != "client_encoding" {
        return None;
    }
    values.iter().find_map(|value| {
        let text = match value {
            Expr::Value(v) => literal_text(&v.value)?,
            Expr::Identifier(ident) => ident.value.clone(),
            _ => return Some(unprovable()),
        };
        is_refused_encoding(&text).then(|| refusal_for(&text))
    })
}

fn literal_text(value: &Value) -> Option<String> {
    match value {
        Value::SingleQuotedString(s)
        | Value::EscapedStringLiteral(s)
        | Value::UnicodeStringLiteral(s)
        | Value::DollarQuotedString(sqlparser::ast::DollarQuotedString { value: s, .. }) => {
            Some(s.clone())
        }
        _ => None,
    }
}

/// `set_config(name, value, local)`: refused when it may select a refused encoding.
fn set_config_refusal(expr: &Expr) -> Option<Refusal> {
    let Expr::Function(function) = expr else {
        return None;
    };
    if last_name(&function.name) != "set_config" {
        return None;
    }
    let FunctionArguments::List(list) = &function.args else {
        return Some(unprovable());
    };
    let literal = |index: usize| -> Option<String> {
        match list.args.get(index)? {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Value(v))) => literal_text(&v.value),
            _ => None,
        }
    };
    match literal(0) {
        // A name read at run time (pg_dump: `set_config(name, 'view, foreign-table', false)
        // FROM pg_settings WHERE name = ...`) may be client_encoding; then what it selects is
        // the value, which is enough to judge when it is a literal.
        None => {}
        Some(name) if !name.trim().eq_ignore_ascii_case("client_encoding") => return None,
        Some(_) => {}
    }
    match literal(1) {
        Some(value) if is_refused_encoding(&value) => Some(refusal_for(&value)),
        Some(_) => None,
        None => Some(unprovable()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(sql: &str) -> bool {
        encoding_refusal(sql).is_some()
    }

    #[test]
    fn names_and_aliases() {
        for name in [
            "SJIS",
            "Shift_JIS",
            "mskanji",
            "BIG5",
            "gbk",
            "UHC",
            "GB18030",
            "JOHAB",
        ] {
            assert!(is_refused_encoding(name), "{name}");
        }
        for name in ["UTF8", "utf-8", "LATIN1", "EUC_JP", "SQL_ASCII", "WIN1252"] {
            assert!(!is_refused_encoding(name), "{name}");
        }
    }

    #[test]
    fn statements_that_select_a_refused_encoding() {
        for sql in [
            "SET client_encoding = 'SJIS'",
            "set session CLIENT_ENCODING to big5",
            "SET LOCAL client_encoding = 'gbk'",
            "SET \"client_encoding\" = 'UHC'",
            "SET NAMES 'GB18030'",
            "SELECT set_config('client_encoding', 'JOHAB', false)",
            "SELECT pg_catalog.set_config('CLIENT_ENCODING', 'sjis', true)",
            "SELECT set_config('client_' || 'encoding', 'SJIS', false)",
            "SELECT set_config(name, 'SJIS', false) FROM pg_settings WHERE name = 'client_encoding'",
            "SELECT set_config(name, setting, false) FROM pg_settings",
            "SELECT set_config('client_encoding', lower('SJIS'), false)",
            "SELECT 1; SET client_encoding = 'SJIS'",
            "SELECT * FROM t WHERE x = (SELECT set_config('client_encoding', 'SJIS', false))",
        ] {
            assert!(refused(sql), "{sql}");
        }
    }

    #[test]
    fn statements_that_do_not() {
        for sql in [
            "SET client_encoding = 'UTF8'",
            "SET NAMES 'LATIN1'",
            "RESET client_encoding",
            "SELECT set_config('search_path', 'public', false)",
            // pg_dump's, since 15.8: the name is a column, the value a harmless literal.
            "SELECT pg_catalog.set_config(name, 'view, foreign-table', false) FROM pg_catalog.pg_settings WHERE name = 'restrict_nonsystem_relation_kind'",
            "SELECT 'names and encodings' AS e",
            "SHOW client_encoding",
        ] {
            assert!(!refused(sql), "{sql}");
        }
    }
}
