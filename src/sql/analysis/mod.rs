//! The analysis proper: one pass over each statement's AST with a scope stack.
//!
//! Values flow bottom-up as [`Value`]: a (possibly protected) column, a literal (with its
//! exact byte range), a parameter, NULL/DEFAULT, or anything else. Each consumer decides
//! what is allowed: a comparison binds a literal or parameter to the protected column on
//! the other side, an INSERT binds positionally, a function argument must not be a
//! protected column, and so on. Whatever is not understood is refused when it involves a
//! protected column (fail closed).

mod arrays;
mod comparisons;
mod copy;
mod dml;
mod expressions;
mod functions;
mod migrating;
mod queries;
mod same_query;
mod scopes;
mod spans;
mod statements;
mod subjects;
mod values;

use std::collections::HashSet;
use std::ops::Range;

use sqlparser::ast::Statement;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, TokenWithSpan};

use crate::schema::{ProtectedColumn, TableName};
use crate::sql::catalog::{Catalog, ColumnRef, Protection};
use crate::sql::fast::may_touch_protected;
use crate::sql::tokens::Tokens;
use crate::sql::{AnalyzeError, LiteralBinding, Refusal, StatementKind, StatementPlan};

use scopes::*;
use spans::*;
use statements::*;
use subjects::*;
use values::*;

const NOT_SUPPORTED: &str = "0A000";

enum Halt {
    Refuse(String),
    Error(AnalyzeError),
}

type Outcome<T> = Result<T, Halt>;

fn unsupported<T>(msg: impl Into<String>) -> Outcome<T> {
    Err(Halt::Error(AnalyzeError::Unsupported(msg.into())))
}

fn column_name(protection: &Protection, c: ColumnRef) -> String {
    protection
        .column(c)
        .map_or_else(|| "?".to_string(), ProtectedColumn::qualified_name)
}

struct Analyzer<'a> {
    sql: &'a str,
    tokens: &'a Tokens,
    protection: &'a Protection,
    catalog: &'a dyn Catalog,
    search_path: &'a [String],
    /// Byte offset where the statement's last token ends (for RETURNING injection).
    statement_end: usize,
    scopes: Vec<Vec<Source>>,
    /// CTE name → its columns (`None`: unknown, it reads a relation of unknown columns).
    ctes: Vec<(String, Option<Vec<SourceColumn>>)>,
    tables: Vec<TableName>,
    literals: Vec<LiteralBinding>,
    params: Vec<(u32, ColumnRef)>,
    param_uses: Vec<crate::sql::ParamUse>,
    array_params: Vec<(u32, ColumnRef)>,
    /// Array parameters compared with their column (`col = ANY($n)`).
    array_matches: Vec<u32>,
    plain_params: HashSet<u32>,
    /// Pending values (VALUES / UNNEST columns) used plainly, and those bound to a column.
    plain_pending: HashSet<u32>,
    bound_pending: std::collections::HashMap<u32, ColumnRef>,
    next_pending: u32,
    reads: Vec<ColumnRef>,
    conditions: Vec<ColumnRef>,
    writes: Vec<ColumnRef>,
    rewrites: Vec<(Range<usize>, String)>,
    result_columns: Vec<Option<ColumnRef>>,
    top_outputs: Vec<OutputColumn>,
    top_level: Option<TopLevel>,
    next_reference: std::cell::Cell<u32>,
    /// A COPY whose rows carry protected columns.
    copy_plan: Option<crate::sql::CopyPlan>,
    /// The subjects of a `COPY table TO` (a `COPY (query)` has its query's).
    copy_subjects: Option<crate::sql::SubjectPlan>,
    /// How each protected column met so far is stored (plaintext while being migrated).
    stored: std::collections::HashMap<ColumnRef, migrating::Stored>,
    shadow_writes: Vec<crate::sql::ShadowWrite>,
    /// Literal tokens consumed as opaque plain values ([`Analyzer::opaque_plain`]).
    opaque: Vec<Range<usize>>,
}

/// Analyses a query string: one plan per statement. See the module documentation.
pub fn analyze(
    sql: &str,
    protection: &Protection,
    catalog: &dyn Catalog,
    search_path: &[String],
) -> Result<Vec<StatementPlan>, AnalyzeError> {
    let tokens = Tokens::new(sql).map_err(|e| AnalyzeError::Parse(sanitize(&e)))?;
    let mut plans = Vec::new();
    let mut earlier = same_query::EarlierDdl::default();
    for solid in tokens.statements() {
        let (Some(&first), Some(&last)) = (solid.first(), solid.last()) else {
            continue;
        };
        let range = tokens.ranges[first].start..tokens.ranges[last].end;
        plans.push(analyze_one(
            sql,
            &tokens,
            first,
            last,
            range,
            protection,
            catalog,
            search_path,
            &mut earlier,
        )?);
    }
    Ok(plans)
}

/// The tokens of a statement as the parser reads them: all of them, less an `ONLY` right
/// after FROM or JOIN (`SELECT ... FROM ONLY t`, pg_dump's form), which the parser does not
/// know. ONLY leaves out the rows of t's child tables; it changes nothing pgveil decides,
/// as the columns are t's either way. Every other token keeps its place in the text.
fn parser_tokens(tokens: &Tokens, first: usize, last: usize) -> Vec<TokenWithSpan> {
    (first..=last)
        .filter(|&i| {
            !(tokens.is_keyword(i, "only")
                && tokens.prev_solid(i).is_some_and(|p| {
                    p >= first && (tokens.is_keyword(p, "from") || tokens.is_keyword(p, "join"))
                }))
        })
        .map(|i| tokens.spanned[i].clone())
        .collect()
}

/// `CREATE [TEMP | TEMPORARY | UNLOGGED] SEQUENCE ...` or `ALTER SEQUENCE ...` without any
/// string literal (so without a subquery's text or a value hiding in one).
fn is_sequence_ddl(tokens: &Tokens, first: usize) -> bool {
    let verb = tokens.is_keyword(first, "create") || tokens.is_keyword(first, "alter");
    let mut next = tokens.next_solid(first);
    while let Some(i) = next.filter(|&i| {
        ["temp", "temporary", "unlogged"]
            .iter()
            .any(|w| tokens.is_keyword(i, w))
    }) {
        next = tokens.next_solid(i);
    }
    let end = tokens
        .spanned
        .iter()
        .skip(first)
        .position(|t| matches!(t.token, Token::SemiColon | Token::EOF))
        .map_or(tokens.spanned.len(), |n| first + n);
    verb && next.is_some_and(|i| tokens.is_keyword(i, "sequence"))
        && (first..end).all(|i| {
            !matches!(
                tokens.token(i),
                Some(
                    Token::SingleQuotedString(_)
                        | Token::EscapedStringLiteral(_)
                        | Token::DollarQuotedString(_)
                        | Token::NationalStringLiteral(_)
                        | Token::UnicodeStringLiteral(_)
                        | Token::LParen
                )
            )
        })
}

#[allow(clippy::too_many_arguments)]
fn analyze_one(
    sql: &str,
    tokens: &Tokens,
    first: usize,
    last: usize,
    range: Range<usize>,
    protection: &Protection,
    catalog: &dyn Catalog,
    search_path: &[String],
    earlier: &mut same_query::EarlierDdl,
) -> Result<StatementPlan, AnalyzeError> {
    let text = &sql[range.clone()];
    let touches = may_touch_protected(text, protection) || catalog.mentions_protected_view(text);
    // `U&"…"` identifiers are not understood by the parser (it reads `U & "…"`), so a
    // protected table or column could hide behind one: fail closed.
    if touches && has_unicode_identifier(tokens, first, last) {
        return Err(AnalyzeError::Unsupported(
            "Unicode-escaped identifiers (U&\"…\")".into(),
        ));
    }
    let dialect = PostgreSqlDialect {};
    let mut parser =
        Parser::new(&dialect).with_tokens_with_locations(parser_tokens(tokens, first, last));
    let parsed = match parser.parse_statement() {
        Ok(statement) if parser.peek_token().token == Token::EOF => Ok(statement),
        Ok(_) => Err("unexpected text after the statement".to_string()),
        Err(e) => Err(e.to_string()),
    };
    if parsed.is_err() {
        let first_word = match tokens.token(first) {
            Some(Token::Word(w)) => w.value.as_str(),
            _ => "",
        };
        earlier.note_unparsed(first_word);
    }
    let stmt = match parsed {
        Ok(statement) => statement,
        // Anonymous code blocks cannot be analysed: refuse them by name.
        Err(_) if touches && tokens.is_keyword(first, "do") => {
            let mut plan = StatementPlan::empty(StatementKind::Other, range);
            plan.refusal = Some(Refusal {
                sqlstate: NOT_SUPPORTED,
                message: "pgveil: DO blocks mentioning a protected table are not supported".into(),
            });
            return Ok(plan);
        }
        // Sequence DDL the parser does not know (`CREATE SEQUENCE ... AS integer`, `ALTER
        // SEQUENCE ... OWNED BY t.id`, as pg_dump writes them) names a table at most as the
        // owner of a sequence; its options are numbers about the sequence, never values.
        Err(_) if is_sequence_ddl(tokens, first) => {
            return Ok(StatementPlan::empty(StatementKind::Other, range))
        }
        Err(e) if touches => return Err(AnalyzeError::Parse(sanitize(&e))),
        // Nothing protected can be involved: forward untouched.
        Err(_) => return Ok(StatementPlan::empty(StatementKind::Other, range)),
    };
    let mut analyzer = Analyzer {
        sql,
        tokens,
        protection,
        catalog,
        search_path,
        statement_end: range.end,
        scopes: Vec::new(),
        ctes: Vec::new(),
        tables: Vec::new(),
        literals: Vec::new(),
        params: Vec::new(),
        param_uses: Vec::new(),
        array_params: Vec::new(),
        array_matches: Vec::new(),
        plain_params: HashSet::new(),
        plain_pending: HashSet::new(),
        bound_pending: std::collections::HashMap::new(),
        next_pending: 0,
        reads: Vec::new(),
        conditions: Vec::new(),
        writes: Vec::new(),
        rewrites: Vec::new(),
        result_columns: Vec::new(),
        top_outputs: Vec::new(),
        top_level: None,
        next_reference: std::cell::Cell::new(1),
        copy_plan: None,
        copy_subjects: None,
        stored: std::collections::HashMap::new(),
        shadow_writes: Vec::new(),
        opaque: Vec::new(),
    };
    let kind = statement_kind(&stmt);
    let mut plan = StatementPlan::empty(kind, range.clone());
    plan.max_param = migrating::max_param(tokens, first..last + 1);
    let keeps_opaque = keeps_opaque_literals(&stmt, earlier);
    let conflict = touches && earlier.conflicts(&stmt);
    earlier.note(&stmt);
    if conflict {
        plan.refusal = Some(Refusal {
            sqlstate: NOT_SUPPORTED,
            message: same_query::SEND_SEPARATELY.into(),
        });
        return Ok(plan);
    }
    let outcome = analyzer
        .statement(&stmt, first, last)
        .and_then(|()| analyzer.finish());
    match outcome {
        Ok(()) => {
            plan.subject = match analyzer.copy_subjects.take() {
                Some(subject) => subject,
                None => {
                    let subject = analyzer.subjects();
                    if let Some(copy) = analyzer.copy_plan.as_mut() {
                        copy::subject_types(copy, &subject, protection, catalog, search_path);
                    }
                    subject
                }
            };
            plan.copy = analyzer.copy_plan.take();
            plan.migrating = analyzer.plaintext_columns();
            plan.shadow_writes = std::mem::take(&mut analyzer.shadow_writes);
            plan.tables = analyzer.tables;
            plan.literals = analyzer.literals;
            plan.params = analyzer.params;
            plan.param_uses = analyzer.param_uses;
            plan.array_params = analyzer.array_params;
            plan.array_matches = analyzer.array_matches;
            plan.reads = analyzer.reads;
            plan.conditions = analyzer.conditions;
            plan.writes = analyzer.writes;
            plan.rewrites = analyzer.rewrites;
            plan.result_columns = analyzer.result_columns;
            if keeps_opaque {
                let mut opaque = analyzer.opaque;
                opaque.sort_by_key(|r| (r.start, r.end));
                opaque.dedup();
                plan.opaque_literals = opaque;
            }
        }
        Err(Halt::Refuse(message)) => {
            // A refusal because a column is not migrated yet must still make the session
            // look at the catalog again, or it would refuse it after migrate prepared it.
            plan.migrating = analyzer.plaintext_columns();
            plan.tables = analyzer.tables;
            plan.refusal = Some(Refusal {
                sqlstate: NOT_SUPPORTED,
                message,
            });
        }
        Err(Halt::Error(e)) if touches => return Err(e),
        Err(Halt::Error(_)) => {}
    }
    Ok(plan)
}

/// Whether the opaque plain literals [`Analyzer::opaque_plain`] reports for `statement` may
/// be generalized: only for a query, INSERT, UPDATE or DELETE (what `EarlierDdl::note`
/// ignores, so no later statement depends on their text) that no earlier DDL of the same
/// Query conflicts with. Then the statement's text, which the literals are part of, decides
/// nothing else: whether it may touch a protected table (`touches`) matters only for such a
/// conflict or for an error, and a refused or failed statement reports no literal.
fn keeps_opaque_literals(statement: &Statement, earlier: &same_query::EarlierDdl) -> bool {
    matches!(
        statement,
        Statement::Query(_) | Statement::Insert(_) | Statement::Update(_) | Statement::Delete(_)
    ) && !earlier.conflicts(statement)
}

/// Parser messages quote the offending token, which may be a value: keep only where.
fn sanitize(message: &str) -> String {
    match message.find("at Line:") {
        Some(i) => format!("syntax not understood {}", &message[i..]),
        None => "syntax not understood".to_string(),
    }
}

/// Removes later duplicates, keeping the order of first appearance (linear).
fn dedup<T: std::hash::Hash + Eq + Clone>(v: &mut Vec<T>) {
    let mut seen = HashSet::with_capacity(v.len());
    v.retain(|x| seen.insert(x.clone()));
}

impl Analyzer<'_> {
    fn column(&self, c: ColumnRef) -> Outcome<&ProtectedColumn> {
        match self.protection.column(c) {
            Some(col) => Ok(col),
            None => unsupported("dangling column reference"),
        }
    }

    fn refuse<T>(&self, op: &str, c: ColumnRef) -> Outcome<T> {
        Err(Halt::Refuse(format!(
            "pgveil: {op} is not supported on encrypted column {}",
            column_name(self.protection, c)
        )))
    }
}
