//! The analysis proper: one pass over each statement's AST with a scope stack.
//!
//! Values flow bottom-up as [`Val`]: a (possibly protected) column, a literal (with its
//! exact byte range), a parameter, NULL/DEFAULT, or anything else. Each consumer decides
//! what is allowed: a comparison binds a literal or parameter to the protected column on
//! the other side, an INSERT binds positionally, a function argument must not be a
//! protected column, and so on. Whatever is not understood is refused when it involves a
//! protected column (fail closed).

mod comparisons;
mod dml;
mod expressions;
mod functions;
mod queries;
mod scopes;
mod spans;
mod statements;
mod subjects;
mod values;

use std::collections::HashSet;
use std::ops::Range;

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::Token;

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

type R<T> = Result<T, Halt>;

fn unsupported<T>(msg: impl Into<String>) -> R<T> {
    Err(Halt::Error(AnalyzeError::Unsupported(msg.into())))
}

fn qname(prot: &Protection, c: ColumnRef) -> String {
    prot.column(c)
        .map_or_else(|| "?".to_string(), ProtectedColumn::qualified_name)
}

struct Ctx<'a> {
    sql: &'a str,
    tk: &'a Tokens,
    prot: &'a Protection,
    cat: &'a dyn Catalog,
    sp: &'a [String],
    /// Byte offset where the statement's last token ends (for RETURNING injection).
    stmt_end: usize,
    scopes: Vec<Vec<Source>>,
    ctes: Vec<(String, Vec<SrcCol>)>,
    tables: Vec<TableName>,
    literals: Vec<LiteralBinding>,
    params: Vec<(u32, ColumnRef)>,
    plain_params: HashSet<u32>,
    reads: Vec<ColumnRef>,
    conditions: Vec<ColumnRef>,
    writes: Vec<ColumnRef>,
    rewrites: Vec<(Range<usize>, String)>,
    result_columns: Vec<Option<ColumnRef>>,
    top_outs: Vec<OutCol>,
    top: Option<TopInfo>,
    next_ref: std::cell::Cell<u32>,
}

/// Analyses a query string: one plan per statement. See the module documentation.
pub fn analyze(
    sql: &str,
    protection: &Protection,
    catalog: &dyn Catalog,
    search_path: &[String],
) -> Result<Vec<StatementPlan>, AnalyzeError> {
    let tk = Tokens::new(sql).map_err(|e| AnalyzeError::Parse(sanitize(&e)))?;
    let mut plans = Vec::new();
    let mut seg_start = 0;
    for i in 0..=tk.toks.len() {
        let boundary = match tk.token(i) {
            None => true,
            Some(t) => matches!(t, Token::SemiColon | Token::EOF),
        };
        if !boundary {
            continue;
        }
        let solid: Vec<usize> = (seg_start..i).filter(|&j| !tk.is_trivia(j)).collect();
        seg_start = i + 1;
        let (Some(&first), Some(&last)) = (solid.first(), solid.last()) else {
            continue;
        };
        let range = tk.ranges[first].start..tk.ranges[last].end;
        plans.push(analyze_one(
            sql,
            &tk,
            first,
            last,
            range,
            protection,
            catalog,
            search_path,
        )?);
    }
    Ok(plans)
}

#[allow(clippy::too_many_arguments)]
fn analyze_one(
    sql: &str,
    tk: &Tokens,
    first: usize,
    last: usize,
    range: Range<usize>,
    prot: &Protection,
    cat: &dyn Catalog,
    sp: &[String],
) -> Result<StatementPlan, AnalyzeError> {
    let text = &sql[range.clone()];
    let touches = may_touch_protected(text, prot);
    // `U&"…"` identifiers are not understood by the parser (it reads `U & "…"`), so a
    // protected table or column could hide behind one: fail closed.
    if touches && has_unicode_identifier(tk, first, last) {
        return Err(AnalyzeError::Unsupported(
            "Unicode-escaped identifiers (U&\"…\")".into(),
        ));
    }
    let dialect = PostgreSqlDialect {};
    let mut parser =
        Parser::new(&dialect).with_tokens_with_locations(tk.toks[first..=last].to_vec());
    let parsed = match parser.parse_statement() {
        Ok(st) if parser.peek_token().token == Token::EOF => Ok(st),
        Ok(_) => Err("unexpected text after the statement".to_string()),
        Err(e) => Err(e.to_string()),
    };
    let stmt = match parsed {
        Ok(st) => st,
        // Anonymous code blocks cannot be analysed: refuse them by name.
        Err(_) if touches && tk.is_keyword(first, "do") => {
            let mut plan = StatementPlan::empty(StatementKind::Other, range);
            plan.refusal = Some(Refusal {
                sqlstate: NOT_SUPPORTED,
                message: "pgveil: DO blocks mentioning a protected table are not supported".into(),
            });
            return Ok(plan);
        }
        Err(e) if touches => return Err(AnalyzeError::Parse(sanitize(&e))),
        // Nothing protected can be involved: forward untouched.
        Err(_) => return Ok(StatementPlan::empty(StatementKind::Other, range)),
    };
    let mut cx = Ctx {
        sql,
        tk,
        prot,
        cat,
        sp,
        stmt_end: range.end,
        scopes: Vec::new(),
        ctes: Vec::new(),
        tables: Vec::new(),
        literals: Vec::new(),
        params: Vec::new(),
        plain_params: HashSet::new(),
        reads: Vec::new(),
        conditions: Vec::new(),
        writes: Vec::new(),
        rewrites: Vec::new(),
        result_columns: Vec::new(),
        top_outs: Vec::new(),
        top: None,
        next_ref: std::cell::Cell::new(1),
    };
    let kind = statement_kind(&stmt);
    let mut plan = StatementPlan::empty(kind, range.clone());
    let outcome = cx.statement(&stmt, first, last).and_then(|()| cx.finish());
    match outcome {
        Ok(()) => {
            plan.subject = cx.subjects();
            plan.tables = cx.tables;
            plan.literals = cx.literals;
            plan.params = cx.params;
            plan.reads = cx.reads;
            plan.conditions = cx.conditions;
            plan.writes = cx.writes;
            plan.rewrites = cx.rewrites;
            plan.result_columns = cx.result_columns;
        }
        Err(Halt::Refuse(message)) => {
            plan.tables = cx.tables;
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

impl Ctx<'_> {
    fn col(&self, c: ColumnRef) -> R<&ProtectedColumn> {
        match self.prot.column(c) {
            Some(col) => Ok(col),
            None => unsupported("dangling column reference"),
        }
    }

    fn refuse<T>(&self, op: &str, c: ColumnRef) -> R<T> {
        Err(Halt::Refuse(format!(
            "pgveil: {op} is not supported on encrypted column {}",
            qname(self.prot, c)
        )))
    }
}
