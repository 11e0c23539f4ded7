//! The analysis proper: one pass over each statement's AST with a scope stack.
//!
//! Values flow bottom-up as [`Val`]: a (possibly protected) column, a literal (with its
//! exact byte range), a parameter, NULL/DEFAULT, or anything else. Each consumer decides
//! what is allowed: a comparison binds a literal or parameter to the protected column on
//! the other side, an INSERT binds positionally, a function argument must not be a
//! protected column, and so on. Whatever is not understood is refused when it involves a
//! protected column (fail closed).

use std::collections::HashSet;
use std::ops::{ControlFlow, Range};

use sqlparser::ast::{
    visit_expressions, visit_relations, BinaryOperator, CastKind, ConflictTarget, CopySource,
    Delete, Distinct, DuplicateTreatment, Expr, FromTable, Function, FunctionArg, FunctionArgExpr,
    FunctionArgumentClause, FunctionArguments, GroupByExpr, Ident, Insert, JoinConstraint,
    JoinOperator, LimitClause, ObjectName, ObjectNamePart, OnConflictAction, OnInsert, OrderBy,
    OrderByKind, Query, Select, SelectItem, SelectItemQualifiedWildcardKind, SetExpr, SetOperator,
    SetQuantifier, Statement, TableFactor, TableObject, TableWithJoins, UnaryOperator, Update,
    UpdateTableFromKind, Value, ValueWithSpan, WindowType,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Span, Token};

use crate::schema::{EncryptionMode, LogicalType, ProtectedColumn, TableName};
use crate::sql::catalog::{Catalog, ColumnRef, Protection};
use crate::sql::fast::may_touch_protected;
use crate::sql::tokens::Tokens;
use crate::sql::{
    AnalyzeError, LiteralBinding, Refusal, StatementKind, StatementPlan, SubjectPlan, SubjectSource,
};

const NOT_SUPPORTED: &str = "0A000";

/// Where a column value comes from (for subject detection): table, column, and which
/// reference to the table (each catalog relation in FROM gets its own number).
type Origin = (TableName, String, u32);

#[derive(Debug, Clone)]
struct Lit {
    range: Range<usize>,
    value: String,
    cast: Option<String>,
}

#[derive(Debug, Clone)]
struct Param {
    n: u32,
    /// The `$n` token.
    range: Range<usize>,
    /// `$n::type`: the range of the whole cast and the type.
    cast: Option<(Range<usize>, String)>,
}

#[derive(Debug, Clone)]
enum Val {
    Col {
        prot: Option<ColumnRef>,
        origin: Option<Origin>,
    },
    Lit(Lit),
    Param(Param),
    Null,
    Default,
    Other,
}

impl Val {
    fn prot(&self) -> Option<ColumnRef> {
        match self {
            Val::Col { prot, .. } => *prot,
            _ => None,
        }
    }
    fn plain() -> Val {
        Val::Col {
            prot: None,
            origin: None,
        }
    }
}

#[derive(Debug, Clone)]
struct OutCol {
    name: String,
    val: Val,
}

#[derive(Debug, Clone)]
struct SrcCol {
    name: String,
    prot: Option<ColumnRef>,
    origin: Option<Origin>,
}

#[derive(Debug, Clone)]
struct Source {
    alias: String,
    table: Option<TableName>,
    /// The reference number in [`Origin`] (catalog relations only).
    ref_id: u32,
    /// `None`: a relation whose columns are unknown (table function, unknown table).
    cols: Option<Vec<SrcCol>>,
}

enum Halt {
    Refuse(String),
    Error(AnalyzeError),
}

type R<T> = Result<T, Halt>;

fn unsupported<T>(msg: impl Into<String>) -> R<T> {
    Err(Halt::Error(AnalyzeError::Unsupported(msg.into())))
}

/// What the top-level SELECT (or RETURNING) allows for subject injection.
struct TopInfo {
    insert_at: Option<usize>,
    blocker: Option<String>,
    /// Catalog relations of the top-level FROM: table, alias, reference number.
    aliases: Vec<(TableName, String, u32)>,
}

/// Normalizes an identifier as PostgreSQL does: unquoted ASCII folds to lower case.
fn norm(id: &Ident) -> String {
    if id.quote_style.is_some() {
        id.value.clone()
    } else {
        id.value.to_ascii_lowercase()
    }
}

fn name_parts(name: &ObjectName) -> R<Vec<String>> {
    name.0
        .iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(id) => Ok(norm(id)),
            ObjectNamePart::Function(_) => unsupported("function in object name"),
        })
        .collect()
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn qname(prot: &Protection, c: ColumnRef) -> String {
    prot.column(c)
        .map_or_else(|| "?".to_string(), ProtectedColumn::qualified_name)
}

const AGGREGATES: &[&str] = &[
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "array_agg",
    "string_agg",
    "bool_and",
    "bool_or",
    "every",
    "json_agg",
    "jsonb_agg",
    "json_object_agg",
    "jsonb_object_agg",
    "bit_and",
    "bit_or",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "variance",
    "var_pop",
    "var_samp",
    "mode",
    "percentile_cont",
    "percentile_disc",
    "xmlagg",
    "range_agg",
    "any_value",
];

/// Is a cast of a literal or parameter to `cast` acceptable for a column of type `ty`?
fn cast_ok(ty: LogicalType, cast: &str) -> bool {
    let base = cast.split('(').next().unwrap_or(cast).trim();
    if matches!(
        base,
        "text" | "varchar" | "character varying" | "unknown" | "name"
    ) || base.starts_with("char")
        || base == "bpchar"
    {
        return true;
    }
    let Some(target) = LogicalType::from_name(base).or(match base {
        "int" => Some(LogicalType::Int4),
        "float" | "real" | "float4" => Some(LogicalType::Float8),
        "json" => Some(LogicalType::Jsonb),
        _ if base.starts_with("decimal") || base.starts_with("numeric") => {
            Some(LogicalType::Numeric)
        }
        _ => None,
    }) else {
        return false;
    };
    use LogicalType::*;
    let family = |t: LogicalType| match t {
        Int2 | Int4 | Int8 | Numeric | Float8 => 1,
        Date | Timestamp | Timestamptz => 2,
        Text | Varchar => 3,
        Bool => 4,
        Uuid => 5,
        Bytea => 6,
        Jsonb => 7,
    };
    family(target) == family(ty)
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

fn has_unicode_identifier(tk: &Tokens, first: usize, last: usize) -> bool {
    (first..last.saturating_sub(1)).any(|i| {
        let adjacent = |a: usize, b: usize| tk.ranges[a].end == tk.ranges[b].start;
        matches!(tk.token(i), Some(Token::Word(w)) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case("u"))
            && matches!(tk.token(i + 1), Some(Token::Ampersand))
            && matches!(tk.token(i + 2), Some(Token::Word(w)) if w.quote_style == Some('"'))
            && adjacent(i, i + 1)
            && adjacent(i + 1, i + 2)
    })
}

fn statement_kind(st: &Statement) -> StatementKind {
    fn of_query(q: &Query) -> StatementKind {
        let kind = match &*q.body {
            SetExpr::Insert(_) => StatementKind::Insert,
            SetExpr::Update(_) => StatementKind::Update,
            SetExpr::Delete(_) => StatementKind::Delete,
            _ => StatementKind::Select,
        };
        // A SELECT whose CTE modifies data is reported as that modification.
        let ctes = q.with.iter().flat_map(|w| &w.cte_tables);
        match ctes
            .map(|c| of_query(&c.query))
            .find(|k| *k != StatementKind::Select)
        {
            Some(k) if kind == StatementKind::Select => k,
            _ => kind,
        }
    }
    match st {
        Statement::Query(q) => of_query(q),
        Statement::Insert(_) => StatementKind::Insert,
        Statement::Update(_) => StatementKind::Update,
        Statement::Delete(_) => StatementKind::Delete,
        Statement::Declare { .. } => StatementKind::Select,
        Statement::Explain { statement, .. } => statement_kind(statement),
        _ => StatementKind::Other,
    }
}

/// Removes later duplicates, keeping the order of first appearance (linear).
fn dedup<T: std::hash::Hash + Eq + Clone>(v: &mut Vec<T>) {
    let mut seen = HashSet::with_capacity(v.len());
    v.retain(|x| seen.insert(x.clone()));
}

impl Ctx<'_> {
    // ----- results ---------------------------------------------------------------------

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

    fn finish(&mut self) -> R<()> {
        dedup(&mut self.params);
        dedup(&mut self.reads);
        dedup(&mut self.conditions);
        dedup(&mut self.writes);
        dedup(&mut self.tables);
        dedup(&mut self.rewrites);
        // A parameter carries one value: it can be encrypted for one key and type only, and
        // not also be used in plaintext.
        let mut first_binding: std::collections::HashMap<u32, ColumnRef> =
            std::collections::HashMap::with_capacity(self.params.len());
        for &(n, c) in &self.params {
            if self.plain_params.contains(&n) {
                return Err(Halt::Refuse(format!(
                    "pgveil: parameter ${n} is bound to encrypted column {} and also used elsewhere",
                    qname(self.prot, c)
                )));
            }
            let d = *first_binding.entry(n).or_insert(c);
            if d != c {
                let (a, b) = (self.col(c)?, self.col(d)?);
                if a.key_scope() != b.key_scope() || a.logical_type != b.logical_type {
                    return Err(Halt::Refuse(format!(
                        "pgveil: parameter ${n} is bound to encrypted columns {} and {} with different keys",
                        b.qualified_name(),
                        a.qualified_name()
                    )));
                }
            }
        }
        // Literal ranges: sorted, exact duplicates merged, no overlap.
        self.literals.sort_by(|a, b| {
            (a.byte_range.start, a.byte_range.end, a.column).cmp(&(
                b.byte_range.start,
                b.byte_range.end,
                b.column,
            ))
        });
        self.literals.dedup();
        for w in self.literals.windows(2) {
            if w[1].byte_range.start < w[0].byte_range.end {
                if w[1].byte_range == w[0].byte_range {
                    return Err(Halt::Refuse(format!(
                        "pgveil: one literal is compared with encrypted columns {} and {}",
                        qname(self.prot, w[0].column),
                        qname(self.prot, w[1].column)
                    )));
                }
                return unsupported("overlapping literal ranges");
            }
        }
        Ok(())
    }

    fn subjects(&self) -> SubjectPlan {
        let mut tables: Vec<TableName> = Vec::new();
        for &c in &self.reads {
            if let Some(col) = self.prot.column(c) {
                if self.prot.subject_column(&col.table).is_some() && !tables.contains(&col.table) {
                    tables.push(col.table.clone());
                }
            }
        }
        let mut sources = Vec::new();
        for table in tables {
            let Some(subject) = self.prot.subject_column(&table) else {
                continue;
            };
            let unknown = |reason: &str| SubjectSource::Unknown {
                table: table.clone(),
                reason: reason.to_string(),
            };
            // Which references to the table the returned protected values come from.
            let mut refs: Vec<Option<u32>> = Vec::new();
            for o in &self.top_outs {
                if let Val::Col {
                    prot: Some(c),
                    origin,
                } = &o.val
                {
                    if self.prot.column(*c).is_some_and(|col| col.table == table) {
                        let r = origin.as_ref().map(|(_, _, r)| *r);
                        if !refs.contains(&r) {
                            refs.push(r);
                        }
                    }
                }
            }
            let reference = match refs.as_slice() {
                [Some(r)] => *r,
                [None] => {
                    sources.push(unknown(
                        "value passes through an expression or set operation",
                    ));
                    continue;
                }
                _ => {
                    sources.push(unknown("table is read through more than one reference"));
                    continue;
                }
            };
            let selected = self.top_outs.iter().position(|o| match &o.val {
                Val::Col {
                    origin: Some((t, c, r)),
                    ..
                } => *t == table && c == subject && *r == reference,
                _ => false,
            });
            if let Some(output_position) = selected {
                sources.push(SubjectSource::Selected {
                    table,
                    output_position,
                });
                continue;
            }
            let source = match &self.top {
                None => unknown("statement shape does not allow adding the subject column"),
                Some(TopInfo {
                    blocker: Some(b), ..
                }) => unknown(b),
                Some(TopInfo {
                    insert_at: None, ..
                }) => unknown("no place to add the subject column"),
                Some(TopInfo {
                    insert_at: Some(at),
                    aliases,
                    ..
                }) => match aliases.iter().find(|(_, _, r)| *r == reference) {
                    Some((_, alias, _)) => SubjectSource::Injectable {
                        table: table.clone(),
                        insert_at: *at,
                        text: format!(", {}.{}", quote_ident(alias), quote_ident(subject)),
                    },
                    None => unknown("table is read through a subquery or CTE"),
                },
            };
            sources.push(source);
        }
        SubjectPlan { sources }
    }

    // ----- statements ------------------------------------------------------------------

    fn statement(&mut self, st: &Statement, first: usize, last: usize) -> R<()> {
        match st {
            Statement::Query(q) => {
                let outs = self.query(q, true)?;
                self.emit_top(outs)
            }
            Statement::Insert(ins) => {
                let outs = self.insert(ins, true)?;
                self.emit_top(outs)
            }
            Statement::Update(u) => {
                let outs = self.update(u, true)?;
                self.emit_top(outs)
            }
            Statement::Delete(d) => {
                let outs = self.delete(d, true)?;
                self.emit_top(outs)
            }
            Statement::Declare { stmts } => {
                for d in stmts {
                    if let Some(q) = &d.for_query {
                        let outs = self.query(q, true)?;
                        self.emit_top(outs)?;
                    }
                }
                // Rows come later, from FETCH.
                self.top = Some(TopInfo {
                    insert_at: None,
                    blocker: Some("cursor: rows are returned by FETCH".into()),
                    aliases: Vec::new(),
                });
                Ok(())
            }
            Statement::Explain { statement, .. } => {
                // EXPLAIN ANALYZE executes the statement: analyse it fully, but EXPLAIN
                // returns a plan, not rows.
                self.statement(statement, first, last)?;
                self.reads.clear();
                self.result_columns.clear();
                self.top_outs.clear();
                self.top = None;
                Ok(())
            }
            Statement::Copy { source, .. } => match source {
                CopySource::Table {
                    table_name,
                    columns,
                } => {
                    let Some(src) = self.table_source(table_name, None)? else {
                        return Ok(());
                    };
                    let Some(table) = src.table.clone() else {
                        return Ok(());
                    };
                    let protected: Vec<ColumnRef> = if columns.is_empty() {
                        let mut v: Vec<ColumnRef> = self.prot.table_columns(&table).collect();
                        v.sort();
                        v
                    } else {
                        columns
                            .iter()
                            .filter_map(|c| self.prot.lookup(&table, &norm(c)))
                            .collect()
                    };
                    match protected.first() {
                        Some(&c) => self.refuse("COPY", c),
                        None => Ok(()),
                    }
                }
                CopySource::Query(q) => {
                    self.query(q, false)?;
                    if let Some(t) = self.tables.iter().find(|t| self.prot.is_protected_table(t)) {
                        return Err(Halt::Refuse(format!(
                            "pgveil: COPY (query) is not supported on protected table {t}"
                        )));
                    }
                    Ok(())
                }
            },
            Statement::Prepare { statement, .. } => {
                // EXECUTE would carry plaintext values: refuse on protected tables.
                let _ = self.statement(statement, first, last);
                if let Some(t) = self.tables.iter().find(|t| self.prot.is_protected_table(t)) {
                    return Err(Halt::Refuse(format!(
                        "pgveil: PREPARE is not supported on protected table {t}; use the extended protocol"
                    )));
                }
                if may_touch_protected(
                    &self.sql[self.tk.ranges[first].start..self.stmt_end],
                    self.prot,
                ) {
                    return unsupported("PREPARE of a statement that may touch a protected table");
                }
                self.clear_bindings();
                Ok(())
            }
            Statement::CreateView(v) => {
                self.query(&v.query, false)?;
                if !self.literals.is_empty() || !self.params.is_empty() {
                    return Err(Halt::Refuse(
                        "pgveil: CREATE VIEW comparing an encrypted column with a literal is not supported"
                            .into(),
                    ));
                }
                self.clear_bindings();
                Ok(())
            }
            Statement::CreateTable(ct) if ct.query.is_some() => {
                if let Some(q) = &ct.query {
                    let outs = self.query(q, false)?;
                    if let Some(c) = outs.iter().find_map(|o| o.val.prot()) {
                        return self.refuse("CREATE TABLE AS", c);
                    }
                    for o in &outs {
                        self.plain_use(&o.val, "CREATE TABLE AS")?;
                    }
                }
                Ok(())
            }
            other => self.other_statement(other, first, last),
        }
    }

    fn clear_bindings(&mut self) {
        self.literals.clear();
        self.params.clear();
        self.rewrites.clear();
        self.reads.clear();
        self.conditions.clear();
        self.writes.clear();
        self.result_columns.clear();
        self.top_outs.clear();
        self.top = None;
    }

    /// Statements pgveil does not rewrite: allowed unless they mention a protected table in
    /// a way that could carry values.
    fn other_statement(&mut self, st: &Statement, first: usize, last: usize) -> R<()> {
        let text = &self.sql[self.tk.ranges[first].start..self.stmt_end];
        // Tables named by the statement (best effort, for the audit log).
        let mut names: Vec<ObjectName> = Vec::new();
        let _ = visit_relations(st, |r| {
            names.push(r.clone());
            ControlFlow::<()>::Continue(())
        });
        if let Statement::Drop {
            object_type: sqlparser::ast::ObjectType::Table,
            names: dropped,
            ..
        } = st
        {
            names.extend(dropped.iter().cloned());
        }
        let mut protected_tables = Vec::new();
        for n in &names {
            if let Ok(Some(src)) = self.table_source(n, None) {
                if let Some(t) = src.table {
                    if self.prot.is_protected_table(&t) {
                        protected_tables.push(t.clone());
                    }
                    self.tables.push(t);
                }
            }
        }
        if !may_touch_protected(text, self.prot) {
            return Ok(());
        }
        let ddl = matches!(
            st,
            Statement::AlterTable(_)
                | Statement::Truncate(_)
                | Statement::Drop { .. }
                | Statement::CreateIndex(_)
                | Statement::CreateTable(_)
                | Statement::Comment { .. }
                | Statement::Grant(_)
                | Statement::Revoke(_)
                | Statement::Analyze(_)
                | Statement::StartTransaction { .. }
                | Statement::Commit { .. }
                | Statement::Rollback { .. }
                | Statement::Savepoint { .. }
                | Statement::ReleaseSavepoint { .. }
                | Statement::Set(_)
                | Statement::ShowVariable { .. }
                | Statement::Execute { .. }
                | Statement::Deallocate { .. }
                | Statement::Fetch { .. }
                | Statement::Close { .. }
                | Statement::Discard { .. }
        );
        let what = self.leading_words(first, last);
        if !ddl {
            return Err(Halt::Refuse(format!(
                "pgveil: {what} mentioning a protected table cannot be analysed and is not supported"
            )));
        }
        // DDL that embeds a value next to an encrypted column (CHECK, DEFAULT, partial
        // index predicate) would put plaintext into the database.
        let has_literal = (first..=last).any(|i| {
            matches!(
                self.tk.token(i),
                Some(
                    Token::SingleQuotedString(_)
                        | Token::EscapedStringLiteral(_)
                        | Token::DollarQuotedString(_)
                        | Token::NationalStringLiteral(_)
                        | Token::UnicodeStringLiteral(_)
                        | Token::Number(..)
                )
            )
        });
        if has_literal {
            for t in &protected_tables {
                for c in self.prot.table_columns(t) {
                    let name = &self.col(c)?.column;
                    let mentioned = (first..=last).any(|i| {
                        matches!(self.tk.token(i), Some(Token::Word(w)) if (w.quote_style.is_some() && w.value == *name) || (w.quote_style.is_none() && w.value.eq_ignore_ascii_case(name)))
                    });
                    if mentioned {
                        return self.refuse(&format!("{what} with a literal value"), c);
                    }
                }
            }
        }
        Ok(())
    }

    fn leading_words(&self, first: usize, last: usize) -> String {
        let mut words = Vec::new();
        let mut i = first;
        while i <= last && words.len() < 2 {
            match self.tk.token(i) {
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

    /// Records the top-level output: reads and result columns.
    fn emit_top(&mut self, outs: Vec<OutCol>) -> R<()> {
        for o in &outs {
            let prot = o.val.prot();
            if let Some(c) = prot {
                self.reads.push(c);
            } else {
                self.plain_use(&o.val, "output")?;
            }
            self.result_columns.push(prot);
        }
        self.top_outs = outs;
        Ok(())
    }

    // ----- queries ---------------------------------------------------------------------

    fn query(&mut self, q: &Query, top: bool) -> R<Vec<OutCol>> {
        let cte_mark = self.ctes.len();
        if let Some(with) = &q.with {
            for cte in &with.cte_tables {
                let outs = self.query(&cte.query, false)?;
                let mut cols = self.src_cols(&outs)?;
                for (col, def) in cols.iter_mut().zip(&cte.alias.columns) {
                    col.name = norm(&def.name);
                }
                self.ctes.push((norm(&cte.alias.name), cols));
            }
        }
        let outs = self.set_expr(&q.body, top, q.order_by.as_ref())?;
        if let Some(limit) = &q.limit_clause {
            match limit {
                LimitClause::LimitOffset {
                    limit,
                    offset,
                    limit_by,
                } => {
                    for e in limit
                        .iter()
                        .chain(offset.iter().map(|o| &o.value))
                        .chain(limit_by)
                    {
                        let v = self.expr(e)?;
                        self.plain_use(&v, "LIMIT/OFFSET")?;
                    }
                }
                LimitClause::OffsetCommaLimit { offset, limit } => {
                    for e in [offset, limit] {
                        let v = self.expr(e)?;
                        self.plain_use(&v, "LIMIT/OFFSET")?;
                    }
                }
            }
        }
        self.ctes.truncate(cte_mark);
        Ok(outs)
    }

    fn src_cols(&mut self, outs: &[OutCol]) -> R<Vec<SrcCol>> {
        let mut cols = Vec::with_capacity(outs.len());
        for o in outs {
            let (prot, origin) = match &o.val {
                Val::Col { prot, origin } => (*prot, origin.clone()),
                other => {
                    self.plain_use(other, "subquery output")?;
                    (None, None)
                }
            };
            cols.push(SrcCol {
                name: o.name.clone(),
                prot,
                origin,
            });
        }
        Ok(cols)
    }

    fn block_top(&mut self, top: bool, reason: &str) {
        if top {
            self.top = Some(TopInfo {
                insert_at: None,
                blocker: Some(reason.into()),
                aliases: Vec::new(),
            });
        }
    }

    fn set_expr(&mut self, e: &SetExpr, top: bool, order_by: Option<&OrderBy>) -> R<Vec<OutCol>> {
        match e {
            SetExpr::Select(s) => self.select(s, top, order_by),
            SetExpr::Query(q) => {
                let outs = self.query(q, top)?;
                self.order_by_outputs(order_by, &outs)?;
                Ok(outs)
            }
            SetExpr::SetOperation {
                left,
                op,
                set_quantifier,
                right,
            } => {
                let l = self.set_expr(left, false, None)?;
                let r = self.set_expr(right, false, None)?;
                self.block_top(top, "set operation");
                let op_name = match op {
                    SetOperator::Union => "UNION",
                    SetOperator::Except | SetOperator::Minus => "EXCEPT",
                    SetOperator::Intersect => "INTERSECT",
                };
                let dedups = !matches!(set_quantifier, SetQuantifier::All);
                let mut outs = Vec::with_capacity(l.len());
                for (i, lo) in l.iter().enumerate() {
                    let ro = r.get(i).map_or(Val::Other, |o| o.val.clone());
                    let val = match (lo.val.prot(), ro.prot()) {
                        (Some(a), Some(b)) => {
                            let (ca, cb) = (self.col(a)?, self.col(b)?);
                            let same = a == b
                                || (ca.domain.is_some()
                                    && ca.key_scope() == cb.key_scope()
                                    && ca.logical_type == cb.logical_type);
                            if !same {
                                return Err(Halt::Refuse(format!(
                                    "pgveil: {op_name} combining encrypted columns {} and {} is not supported",
                                    ca.qualified_name(),
                                    cb.qualified_name()
                                )));
                            }
                            lo.val.clone()
                        }
                        (Some(a), None) if matches!(ro, Val::Null) => Val::Col {
                            prot: Some(a),
                            origin: None,
                        },
                        (None, Some(b)) if matches!(lo.val, Val::Null) => Val::Col {
                            prot: Some(b),
                            origin: None,
                        },
                        (Some(a), None) | (None, Some(a)) => {
                            return self.refuse(&format!("{op_name} with a different value"), a)
                        }
                        (None, None) => {
                            self.plain_use(&lo.val, op_name)?;
                            self.plain_use(&ro, op_name)?;
                            Val::Other
                        }
                    };
                    if let Some(c) = val.prot() {
                        if dedups {
                            self.require_det(c, op_name)?;
                        }
                    }
                    outs.push(OutCol {
                        name: lo.name.clone(),
                        val,
                    });
                }
                self.order_by_outputs(order_by, &outs)?;
                Ok(outs)
            }
            SetExpr::Values(values) => {
                self.block_top(top, "VALUES");
                self.scopes.push(Vec::new());
                let mut width = 0;
                for row in &values.rows {
                    width = width.max(row.len());
                    for e in row.iter() {
                        let v = self.expr(e)?;
                        self.plain_use(&v, "VALUES")?;
                    }
                }
                self.scopes.pop();
                Ok((1..=width)
                    .map(|i| OutCol {
                        name: format!("column{i}"),
                        val: Val::Other,
                    })
                    .collect())
            }
            SetExpr::Insert(st) | SetExpr::Update(st) | SetExpr::Delete(st) => match st {
                Statement::Insert(i) => self.insert(i, top),
                Statement::Update(u) => self.update(u, top),
                Statement::Delete(d) => self.delete(d, top),
                _ => unsupported("data-modifying statement"),
            },
            SetExpr::Table(t) => {
                let Some(name) = &t.table_name else {
                    return unsupported("TABLE");
                };
                let mut parts = Vec::new();
                if let Some(s) = &t.schema_name {
                    parts.push(Ident::new(s.clone()));
                }
                parts.push(Ident::new(name.clone()));
                let obj = ObjectName::from(parts);
                self.scopes.push(Vec::new());
                self.table_factor_name(&obj, None)?;
                let outs = self.expand_wildcard(None)?;
                self.scopes.pop();
                self.block_top(top, "TABLE statement");
                Ok(outs)
            }
            SetExpr::Merge(_) => unsupported("MERGE"),
        }
    }

    fn select(&mut self, s: &Select, top: bool, order_by: Option<&OrderBy>) -> R<Vec<OutCol>> {
        self.scopes.push(Vec::new());
        let result = self.select_inner(s, top, order_by);
        self.scopes.pop();
        result
    }

    fn select_inner(
        &mut self,
        s: &Select,
        top: bool,
        order_by: Option<&OrderBy>,
    ) -> R<Vec<OutCol>> {
        for twj in &s.from {
            self.table_with_joins(twj)?;
        }
        if let Some(w) = &s.selection {
            self.cond(w)?;
        }
        let outs = self.projection(&s.projection)?;
        let mut grouped = false;
        match &s.group_by {
            GroupByExpr::Expressions(list, _) => {
                for e in list {
                    grouped = true;
                    let v = self.group_item(e, &outs)?;
                    match v.prot() {
                        Some(c) => self.require_det(c, "GROUP BY")?,
                        None => self.plain_use(&v, "GROUP BY")?,
                    }
                }
            }
            GroupByExpr::All(_) => {
                grouped = true;
                for o in &outs {
                    if let Some(c) = o.val.prot() {
                        self.require_det(c, "GROUP BY")?;
                    }
                }
            }
        }
        if let Some(h) = &s.having {
            self.cond(h)?;
        }
        match &s.distinct {
            Some(Distinct::Distinct) => {
                for o in &outs {
                    if let Some(c) = o.val.prot() {
                        self.require_det(c, "DISTINCT")?;
                    }
                }
            }
            Some(Distinct::On(list)) => {
                for e in list {
                    let v = self.group_item(e, &outs)?;
                    match v.prot() {
                        Some(c) => self.require_det(c, "DISTINCT ON")?,
                        None => self.plain_use(&v, "DISTINCT ON")?,
                    }
                }
            }
            Some(Distinct::All) | None => {}
        }
        if let Some(q) = &s.qualify {
            self.cond(q)?;
        }
        if !s.named_window.is_empty() {
            self.opaque_node(&s.named_window, "WINDOW")?;
        }
        if s.into.is_some() {
            if let Some(c) = outs.iter().find_map(|o| o.val.prot()) {
                return self.refuse("SELECT INTO", c);
            }
        }
        if let Some(ob) = order_by {
            if let OrderByKind::Expressions(list) = &ob.kind {
                for item in list {
                    self.order_item(&item.expr, &outs, true)?;
                }
            }
        }
        if top {
            let mut has_agg = false;
            let _ = visit_expressions(&s.projection, |e| {
                if let Expr::Function(f) = e {
                    if f.over.is_none() {
                        let name = f.name.0.last().map(|p| p.to_string().to_ascii_lowercase());
                        if name.is_some_and(|n| AGGREGATES.contains(&n.as_str())) {
                            has_agg = true;
                        }
                    }
                }
                ControlFlow::<()>::Continue(())
            });
            let blocker = if s.distinct.is_some() {
                Some("DISTINCT")
            } else if grouped || s.having.is_some() {
                Some("GROUP BY")
            } else if has_agg {
                Some("aggregate")
            } else if s.into.is_some() {
                Some("SELECT INTO")
            } else {
                None
            };
            let aliases = self
                .scopes
                .last()
                .map(|sc| {
                    sc.iter()
                        .filter_map(|src| {
                            src.table
                                .clone()
                                .map(|t| (t, src.alias.clone(), src.ref_id))
                        })
                        .collect()
                })
                .unwrap_or_default();
            self.top = Some(TopInfo {
                insert_at: self.projection_end(s),
                blocker: blocker.map(str::to_string),
                aliases,
            });
        }
        Ok(outs)
    }

    /// Byte offset right after the last token of the top-level SELECT list (before FROM).
    fn projection_end(&self, s: &Select) -> Option<usize> {
        let start = self.tk.index_at(s.select_token.0.span.start)?;
        let mut depth = 0i32;
        let mut i = start + 1;
        while let Some(t) = self.tk.token(i) {
            match t {
                Token::LParen | Token::LBracket => depth += 1,
                Token::RParen | Token::RBracket => depth -= 1,
                Token::SemiColon | Token::EOF => return None,
                Token::Word(w)
                    if depth == 0
                        && w.quote_style.is_none()
                        && w.value.eq_ignore_ascii_case("from") =>
                {
                    let prev = self.tk.prev_solid(i)?;
                    return (prev > start).then(|| self.tk.ranges[prev].end);
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

    fn projection(&mut self, items: &[SelectItem]) -> R<Vec<OutCol>> {
        let mut outs = Vec::new();
        for item in items {
            match item {
                SelectItem::UnnamedExpr(e) => {
                    let val = self.expr(e)?;
                    outs.push(OutCol {
                        name: expr_name(e),
                        val,
                    });
                }
                SelectItem::ExprWithAlias { expr, alias } => {
                    let val = self.expr(expr)?;
                    outs.push(OutCol {
                        name: norm(alias),
                        val,
                    });
                }
                SelectItem::ExprWithAliases { expr, aliases } => {
                    let val = self.expr(expr)?;
                    let name = aliases.first().map_or_else(|| expr_name(expr), norm);
                    outs.push(OutCol { name, val });
                }
                SelectItem::Wildcard(_) => outs.extend(self.expand_wildcard(None)?),
                SelectItem::QualifiedWildcard(kind, _) => match kind {
                    SelectItemQualifiedWildcardKind::ObjectName(name) => {
                        let parts = name_parts(name)?;
                        outs.extend(self.expand_wildcard(Some(&parts))?);
                    }
                    SelectItemQualifiedWildcardKind::Expr(e) => {
                        let v = self.expr(e)?;
                        if let Some(c) = v.prot() {
                            return self.refuse("(expression).*", c);
                        }
                        return unsupported("(expression).*");
                    }
                },
            }
        }
        Ok(outs)
    }

    fn expand_wildcard(&mut self, qualifier: Option<&[String]>) -> R<Vec<OutCol>> {
        let Some(scope) = self.scopes.last() else {
            return Ok(Vec::new());
        };
        let mut outs = Vec::new();
        let mut matched = false;
        let mut after_unknown = false;
        for src in scope {
            if let Some(q) = qualifier {
                let hit = match q {
                    [a] => src.alias == *a,
                    [.., s, t] => src
                        .table
                        .as_ref()
                        .is_some_and(|tn| tn.schema == *s && tn.name == *t),
                    [] => false,
                };
                if !hit {
                    continue;
                }
            }
            matched = true;
            if after_unknown && src.cols.iter().flatten().any(|c| c.prot.is_some()) {
                // Output positions of the protected columns would be unknown.
                return unsupported(
                    "* over a relation of unknown columns before a protected table",
                );
            }
            after_unknown |= src.cols.is_none();
            match &src.cols {
                Some(cols) => outs.extend(cols.iter().map(|c| OutCol {
                    name: c.name.clone(),
                    val: Val::Col {
                        prot: c.prot,
                        origin: c.origin.clone(),
                    },
                })),
                // Unknown relation: its width is unknown, so are later positions. It holds
                // no protected column (unknown relations never have a protected name).
                None => outs.push(OutCol {
                    name: "?column?".into(),
                    val: Val::Other,
                }),
            }
        }
        if qualifier.is_some() && !matched {
            return unsupported("unknown relation in qualified *");
        }
        Ok(outs)
    }

    /// GROUP BY / DISTINCT ON item: input column first, then output name, or a position.
    fn group_item(&mut self, e: &Expr, outs: &[OutCol]) -> R<Val> {
        if let Some(v) = position_ref(e, outs) {
            return Ok(v);
        }
        if let Expr::Identifier(id) = e {
            if self.lookup_column(std::slice::from_ref(id))?.is_none() {
                let name = norm(id);
                if let Some(o) = outs.iter().find(|o| o.name == name) {
                    return Ok(o.val.clone());
                }
            }
        }
        self.expr(e)
    }

    /// ORDER BY item: output name or position first, then an expression on the inputs.
    fn order_item(&mut self, e: &Expr, outs: &[OutCol], inputs: bool) -> R<()> {
        let mut v = position_ref(e, outs);
        if v.is_none() {
            if let Expr::Identifier(id) = e {
                let name = norm(id);
                v = outs.iter().find(|o| o.name == name).map(|o| o.val.clone());
            }
        }
        let v = match v {
            Some(v) => v,
            None if inputs => self.expr(e)?,
            None => return unsupported("ORDER BY expression on a set operation"),
        };
        match v.prot() {
            Some(c) => self.refuse("ORDER BY", c),
            None => self.plain_use(&v, "ORDER BY"),
        }
    }

    fn order_by_outputs(&mut self, order_by: Option<&OrderBy>, outs: &[OutCol]) -> R<()> {
        if let Some(OrderBy {
            kind: OrderByKind::Expressions(list),
            ..
        }) = order_by
        {
            for item in list {
                self.order_item(&item.expr, outs, false)?;
            }
        }
        Ok(())
    }

    // ----- FROM ------------------------------------------------------------------------

    fn push_source(&mut self, src: Source) {
        if let Some(t) = &src.table {
            self.tables.push(t.clone());
        }
        if let Some(scope) = self.scopes.last_mut() {
            scope.push(src);
        }
    }

    fn table_with_joins(&mut self, twj: &TableWithJoins) -> R<()> {
        self.table_factor(&twj.relation)?;
        for j in &twj.joins {
            let before = self.scopes.last().map_or(0, Vec::len);
            self.table_factor(&j.relation)?;
            let constraint = match &j.join_operator {
                JoinOperator::Join(c)
                | JoinOperator::Inner(c)
                | JoinOperator::Left(c)
                | JoinOperator::LeftOuter(c)
                | JoinOperator::Right(c)
                | JoinOperator::RightOuter(c)
                | JoinOperator::FullOuter(c)
                | JoinOperator::CrossJoin(c)
                | JoinOperator::Semi(c)
                | JoinOperator::LeftSemi(c)
                | JoinOperator::RightSemi(c)
                | JoinOperator::Anti(c)
                | JoinOperator::LeftAnti(c)
                | JoinOperator::RightAnti(c)
                | JoinOperator::StraightJoin(c) => c,
                _ => return unsupported("join kind"),
            };
            match constraint {
                JoinConstraint::On(e) => self.cond(e)?,
                JoinConstraint::Using(cols) => {
                    for c in cols {
                        let name = name_parts(c)?.pop().unwrap_or_default();
                        self.join_using(before, &name)?;
                    }
                }
                JoinConstraint::Natural => {
                    let names: Vec<String> = self
                        .scopes
                        .last()
                        .map(|sc| {
                            sc[before..]
                                .iter()
                                .flat_map(|s| s.cols.iter().flatten().map(|c| c.name.clone()))
                                .collect()
                        })
                        .unwrap_or_default();
                    let unknown = self
                        .scopes
                        .last()
                        .is_some_and(|sc| sc.iter().any(|s| s.cols.is_none()));
                    if unknown {
                        return unsupported("NATURAL JOIN with a relation of unknown columns");
                    }
                    for n in names {
                        self.join_using(before, &n)?;
                    }
                }
                JoinConstraint::None => {}
            }
        }
        Ok(())
    }

    fn join_using(&mut self, split: usize, name: &str) -> R<()> {
        let Some(scope) = self.scopes.last() else {
            return Ok(());
        };
        let find = |srcs: &[Source]| {
            srcs.iter()
                .rev()
                .find_map(|s| s.cols.as_ref()?.iter().find(|c| c.name == name).cloned())
        };
        let (Some(l), Some(r)) = (find(&scope[..split]), find(&scope[split..])) else {
            return Ok(());
        };
        let lv = Val::Col {
            prot: l.prot,
            origin: l.origin,
        };
        let rv = Val::Col {
            prot: r.prot,
            origin: r.origin,
        };
        self.compare(&lv, &rv, "JOIN USING")
    }

    fn table_factor(&mut self, tf: &TableFactor) -> R<()> {
        match tf {
            TableFactor::Table {
                name,
                alias,
                args: None,
                ..
            } => self.table_factor_name(name, alias.as_ref()),
            TableFactor::Derived {
                subquery, alias, ..
            } => {
                let outs = self.query(subquery, false)?;
                let mut cols = self.src_cols(&outs)?;
                let alias_name = alias.as_ref().map(|a| norm(&a.name)).unwrap_or_default();
                if let Some(a) = alias {
                    for (col, def) in cols.iter_mut().zip(&a.columns) {
                        col.name = norm(&def.name);
                    }
                }
                self.push_source(Source {
                    alias: alias_name,
                    table: None,
                    ref_id: 0,
                    cols: Some(cols),
                });
                Ok(())
            }
            TableFactor::NestedJoin {
                table_with_joins,
                alias,
            } => {
                if alias.is_some() {
                    return unsupported("alias on a parenthesized join");
                }
                self.table_with_joins(table_with_joins)
            }
            other => {
                // Table functions and the like: arguments must not involve protected
                // columns; the result has unknown columns.
                self.opaque_node(other, "table function")?;
                let alias = match other {
                    TableFactor::Table { alias, .. }
                    | TableFactor::Function { alias, .. }
                    | TableFactor::TableFunction { alias, .. }
                    | TableFactor::UNNEST { alias, .. } => alias.as_ref().map(|a| norm(&a.name)),
                    _ => None,
                }
                .unwrap_or_default();
                self.push_source(Source {
                    alias,
                    table: None,
                    ref_id: 0,
                    cols: None,
                });
                Ok(())
            }
        }
    }

    /// Resolves a relation name (CTE first, then the catalog) into a source.
    fn table_source(
        &mut self,
        name: &ObjectName,
        alias: Option<&sqlparser::ast::TableAlias>,
    ) -> R<Option<Source>> {
        let parts = name_parts(name)?;
        let alias_name = alias.map(|a| norm(&a.name));
        let cte = match parts.as_slice() {
            [n] => self
                .ctes
                .iter()
                .rev()
                .find(|(c, _)| c == n)
                .map(|(_, cols)| cols.clone()),
            _ => None,
        };
        let mut src = match (parts.as_slice(), cte) {
            ([n], Some(cols)) => Source {
                alias: n.clone(),
                table: None,
                ref_id: 0,
                cols: Some(cols),
            },
            ([n], None) => self.catalog_source(None, n)?,
            ([.., schema, n], _) => self.catalog_source(Some(schema.as_str()), n)?,
            _ => return unsupported("relation name"),
        };
        if let Some(a) = alias {
            if let Some(cols) = &mut src.cols {
                for (col, def) in cols.iter_mut().zip(&a.columns) {
                    col.name = norm(&def.name);
                }
            }
        }
        if let Some(a) = alias_name {
            src.alias = a;
        }
        Ok(Some(src))
    }

    fn catalog_source(&self, schema: Option<&str>, name: &str) -> R<Source> {
        match self.cat.resolve(schema, name, self.sp) {
            Some(info) => {
                let ref_id = self.next_ref.get();
                self.next_ref.set(ref_id.wrapping_add(1));
                for c in self.prot.table_columns(&info.name) {
                    let col = &self.col(c)?.column;
                    if !info.columns.iter().any(|ci| ci.name == *col) {
                        return Err(Halt::Error(AnalyzeError::Resolve(format!(
                            "protected column {} is missing from the catalog",
                            qname(self.prot, c)
                        ))));
                    }
                }
                let cols: Vec<SrcCol> = info
                    .columns
                    .iter()
                    .map(|c| SrcCol {
                        name: c.name.clone(),
                        prot: self.prot.lookup(&info.name, &c.name),
                        origin: Some((info.name.clone(), c.name.clone(), ref_id)),
                    })
                    .collect();
                Ok(Source {
                    alias: info.name.name.clone(),
                    table: Some(info.name),
                    ref_id,
                    cols: Some(cols),
                })
            }
            None => {
                let protected_name = self.prot.is_protected_name(name)
                    || schema
                        .is_some_and(|s| self.prot.is_protected_table(&TableName::new(s, name)));
                if protected_name {
                    return Err(Halt::Error(AnalyzeError::Resolve(format!(
                        "relation {}{name}",
                        schema.map(|s| format!("{s}.")).unwrap_or_default()
                    ))));
                }
                Ok(Source {
                    alias: name.to_string(),
                    table: None,
                    ref_id: 0,
                    cols: None,
                })
            }
        }
    }

    fn table_factor_name(
        &mut self,
        name: &ObjectName,
        alias: Option<&sqlparser::ast::TableAlias>,
    ) -> R<()> {
        if let Some(src) = self.table_source(name, alias)? {
            self.push_source(src);
        }
        Ok(())
    }

    // ----- columns ---------------------------------------------------------------------

    /// Resolves a column reference through the scope stack (innermost first).
    /// `Ok(None)`: no such column anywhere.
    fn lookup_column(&self, idents: &[Ident]) -> R<Option<Val>> {
        let names: Vec<String> = idents.iter().map(norm).collect();
        let Some((col, qual)) = names.split_last() else {
            return Ok(None);
        };
        let val_of = |c: &SrcCol| Val::Col {
            prot: c.prot,
            origin: c.origin.clone(),
        };
        if qual.is_empty() {
            for scope in self.scopes.iter().rev() {
                let mut found: Vec<&SrcCol> = Vec::new();
                let mut unknown = false;
                for src in scope {
                    match &src.cols {
                        Some(cols) => found.extend(cols.iter().filter(|c| c.name == *col)),
                        None => unknown = true,
                    }
                }
                match found.as_slice() {
                    [one] => return Ok(Some(val_of(one))),
                    [] if unknown => {
                        // It may belong to the relation of unknown shape — or to an outer
                        // protected one. Fail closed if it could be protected.
                        if self.prot.is_protected_column_name(col) {
                            return Err(Halt::Error(AnalyzeError::Resolve(format!(
                                "column {col} (ambiguous with a relation of unknown columns)"
                            ))));
                        }
                        return Ok(Some(Val::plain()));
                    }
                    [] => {}
                    many => {
                        // `JOIN … USING (col)` merges same-named columns; when all are
                        // protected with one key and type, the value decrypts the same.
                        if let Some(first) = many[0].prot {
                            let a = self.col(first)?;
                            let mut same = true;
                            for c in &many[1..] {
                                same &= match c.prot {
                                    Some(p) => {
                                        let b = self.col(p)?;
                                        a.key_scope() == b.key_scope()
                                            && a.logical_type == b.logical_type
                                    }
                                    None => false,
                                };
                            }
                            if same {
                                return Ok(Some(Val::Col {
                                    prot: Some(first),
                                    origin: None,
                                }));
                            }
                        }
                        if many.iter().any(|c| c.prot.is_some()) {
                            return Err(Halt::Error(AnalyzeError::Resolve(format!(
                                "ambiguous column {col}"
                            ))));
                        }
                        return Ok(Some(Val::plain()));
                    }
                }
            }
            return Ok(None);
        }
        for scope in self.scopes.iter().rev() {
            for src in scope.iter().rev() {
                let hit = match qual {
                    [a] => src.alias == *a,
                    [.., s, t] => src
                        .table
                        .as_ref()
                        .is_some_and(|tn| tn.schema == *s && tn.name == *t),
                    [] => false,
                };
                if !hit {
                    continue;
                }
                return Ok(Some(match &src.cols {
                    Some(cols) => match cols.iter().find(|c| c.name == *col) {
                        Some(c) => val_of(c),
                        None => Val::plain(),
                    },
                    None => Val::plain(),
                }));
            }
        }
        // `a.b` where `a` is a column (composite field access)?
        if let [first, ..] = idents {
            if let Some(v) = self.lookup_column(std::slice::from_ref(first))? {
                if let Some(c) = v.prot() {
                    return self.refuse("field access", c);
                }
                return Ok(Some(Val::Other));
            }
        }
        if self.prot.is_protected_column_name(col) {
            return Err(Halt::Error(AnalyzeError::Resolve(format!(
                "column {}",
                names.join(".")
            ))));
        }
        Ok(None)
    }

    // ----- expressions -----------------------------------------------------------------

    /// Records a plain (non-encrypted) use of a value; refuses a protected column.
    fn plain_use(&mut self, v: &Val, op: &str) -> R<()> {
        match v {
            Val::Col { prot: Some(c), .. } => self.refuse(op, *c),
            Val::Param(p) => {
                self.plain_params.insert(p.n);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn require_det(&mut self, c: ColumnRef, op: &str) -> R<()> {
        if self.col(c)?.mode != EncryptionMode::Deterministic {
            return Err(Halt::Refuse(format!(
                "pgveil: {op} is not supported on randomized encrypted column {}",
                qname(self.prot, c)
            )));
        }
        self.conditions.push(c);
        Ok(())
    }

    fn cond(&mut self, e: &Expr) -> R<()> {
        let v = self.expr(e)?;
        self.plain_use(&v, "use as a boolean")
    }

    /// Binds a literal or parameter to a protected column.
    fn bind(&mut self, c: ColumnRef, v: &Val) -> R<bool> {
        let ty = self.col(c)?.logical_type;
        match v {
            Val::Lit(l) => {
                if let Some(cast) = &l.cast {
                    if !cast_ok(ty, cast) {
                        return self.refuse(&format!("a cast to {cast}"), c);
                    }
                }
                self.literals.push(LiteralBinding {
                    byte_range: l.range.clone(),
                    column: c,
                    value: Some(l.value.clone()),
                    cast: l.cast.clone(),
                });
                Ok(true)
            }
            Val::Param(p) => {
                if let Some((range, cast)) = &p.cast {
                    if !cast_ok(ty, cast) {
                        return self.refuse(&format!("a cast to {cast}"), c);
                    }
                    self.rewrites
                        .push((range.clone(), format!("${}::bytea", p.n)));
                }
                self.params.push((p.n, c));
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn compare(&mut self, l: &Val, r: &Val, op: &str) -> R<()> {
        match (l.prot(), r.prot()) {
            (Some(a), Some(b)) => {
                let (ca, cb) = (self.col(a)?, self.col(b)?);
                if ca.key_scope() != cb.key_scope() || ca.logical_type != cb.logical_type {
                    return Err(Halt::Refuse(format!(
                        "pgveil: comparing encrypted columns {} and {} ({op}) is not supported: they use different keys",
                        ca.qualified_name(),
                        cb.qualified_name()
                    )));
                }
                self.require_det(a, op)?;
                self.require_det(b, op)
            }
            (Some(a), None) => self.compare_value(a, r, op),
            (None, Some(b)) => self.compare_value(b, l, op),
            (None, None) => {
                self.plain_use(l, op)?;
                self.plain_use(r, op)
            }
        }
    }

    fn compare_value(&mut self, c: ColumnRef, other: &Val, op: &str) -> R<()> {
        self.require_det(c, op)?;
        match other {
            Val::Lit(_) | Val::Param(_) => self.bind(c, other).map(|_| ()),
            Val::Null => Ok(()),
            Val::Col { prot: None, .. } => {
                self.refuse(&format!("{op} with an unencrypted column"), c)
            }
            _ => self.refuse(&format!("{op} with a computed value"), c),
        }
    }

    /// A value written into a column (INSERT, UPDATE SET, ON CONFLICT DO UPDATE).
    fn write(&mut self, target: Option<ColumnRef>, v: &Val) -> R<()> {
        let Some(c) = target else {
            if let Some(src) = v.prot() {
                return self.refuse("copying into an unencrypted column", src);
            }
            return self.plain_use(v, "write");
        };
        self.writes.push(c);
        match v {
            Val::Lit(_) | Val::Param(_) => self.bind(c, v).map(|_| ()),
            Val::Null | Val::Default => Ok(()),
            Val::Col {
                prot: Some(src), ..
            } => {
                let (a, b) = (self.col(c)?, self.col(*src)?);
                if a.key_scope() == b.key_scope() && a.logical_type == b.logical_type {
                    Ok(())
                } else {
                    Err(Halt::Refuse(format!(
                        "pgveil: copying encrypted column {} into encrypted column {} is not supported: they use different keys",
                        b.qualified_name(),
                        a.qualified_name()
                    )))
                }
            }
            Val::Col { prot: None, .. } => self.refuse("writing an unencrypted column's value", c),
            Val::Other => self.refuse("writing a computed value", c),
        }
    }

    fn expr(&mut self, e: &Expr) -> R<Val> {
        match e {
            Expr::Identifier(id) => {
                if id.quote_style.is_none() && id.value.eq_ignore_ascii_case("default") {
                    return Ok(Val::Default);
                }
                match self.lookup_column(std::slice::from_ref(id))? {
                    Some(v) => Ok(v),
                    None => {
                        self.no_whole_row(std::slice::from_ref(id), "a whole-row reference")?;
                        Ok(Val::Other)
                    }
                }
            }
            Expr::CompoundIdentifier(ids) => match self.lookup_column(ids)? {
                Some(v) => Ok(v),
                None => {
                    self.no_whole_row(ids, "a whole-row reference")?;
                    Ok(Val::Other)
                }
            },
            Expr::Value(v) => self.value(v),
            Expr::UnaryOp {
                op: op @ (UnaryOperator::Minus | UnaryOperator::Plus),
                expr: inner,
            } if is_number(inner)
                || matches!(&**inner, Expr::Cast { expr: e, kind: CastKind::DoubleColon, .. } if is_number(e)) =>
            {
                let Val::Lit(mut lit) = self.expr(inner)? else {
                    return Ok(Val::Other);
                };
                // Not locatable: not bindable (refused if compared with a protected column).
                let prev = self
                    .token_index_at(lit.range.start)
                    .and_then(|i| self.tk.prev_solid(i));
                let Some(prev) =
                    prev.filter(|&p| matches!(self.tk.token(p), Some(Token::Minus | Token::Plus)))
                else {
                    return Ok(Val::Other);
                };
                lit.range.start = self.tk.ranges[prev].start;
                if matches!(op, UnaryOperator::Minus) {
                    lit.value = format!("-{}", lit.value);
                }
                Ok(Val::Lit(lit))
            }
            Expr::UnaryOp { op, expr: inner } => {
                let v = self.expr(inner)?;
                self.plain_use(&v, &format!("operator {op}"))?;
                Ok(Val::Other)
            }
            Expr::Nested(inner) => {
                let v = self.expr(inner)?;
                // A parenthesized literal cannot be extended by a cast; keep it bindable
                // only on its own.
                Ok(v)
            }
            Expr::Cast {
                kind,
                expr: inner,
                data_type,
                format,
            } => {
                let v = self.expr(inner)?;
                let ty = data_type.to_string().to_ascii_lowercase();
                if let Some(c) = v.prot() {
                    return self.refuse(&format!("a cast to {ty}"), c);
                }
                if format.is_some() || matches!(&**inner, Expr::Nested(_)) {
                    self.plain_use(&v, "cast")?;
                    return Ok(Val::Other);
                }
                match v {
                    Val::Lit(mut lit) => {
                        let Some(range) = self.cast_range(kind, lit.range.clone()) else {
                            return Ok(Val::Other);
                        };
                        lit.range = range;
                        lit.cast = Some(ty);
                        Ok(Val::Lit(lit))
                    }
                    Val::Param(mut p) => {
                        if p.cast.is_some() {
                            return unsupported("double cast of a parameter");
                        }
                        let Some(range) = self.cast_range(kind, p.range.clone()) else {
                            self.plain_params.insert(p.n);
                            return Ok(Val::Other);
                        };
                        p.cast = Some((range, ty));
                        Ok(Val::Param(p))
                    }
                    Val::Null => Ok(Val::Null),
                    other => {
                        self.plain_use(&other, "cast")?;
                        Ok(Val::Other)
                    }
                }
            }
            Expr::TypedString(ts) => {
                if ts.uses_odbc_syntax {
                    return unsupported("ODBC literal");
                }
                let Val::Lit(mut lit) = self.value(&ts.value)? else {
                    return Ok(Val::Other);
                };
                let Some(start) = self.typed_string_start(lit.range.start) else {
                    return Ok(Val::Other);
                };
                lit.range.start = start;
                lit.cast = Some(ts.data_type.to_string().to_ascii_lowercase());
                Ok(Val::Lit(lit))
            }
            Expr::BinaryOp { left, op, right } => {
                let l = self.expr(left)?;
                let r = self.expr(right)?;
                match op {
                    BinaryOperator::And | BinaryOperator::Or => {
                        self.plain_use(&l, "use as a boolean")?;
                        self.plain_use(&r, "use as a boolean")?;
                    }
                    BinaryOperator::Eq => self.compare(&l, &r, "=")?,
                    BinaryOperator::NotEq => self.compare(&l, &r, "<>")?,
                    other => {
                        let name = other.to_string();
                        self.plain_use(&l, &name)?;
                        self.plain_use(&r, &name)?;
                    }
                }
                Ok(Val::Other)
            }
            Expr::IsNull(inner) | Expr::IsNotNull(inner) => {
                let v = self.expr(inner)?;
                match v.prot() {
                    Some(c) => self.conditions.push(c),
                    // `$1 IS NULL` holds for the ciphertext exactly when it holds for the
                    // plaintext: not a plaintext use of the parameter.
                    None if matches!(v, Val::Param(_)) => {}
                    None => self.plain_use(&v, "IS NULL")?,
                }
                Ok(Val::Other)
            }
            Expr::IsDistinctFrom(l, r) | Expr::IsNotDistinctFrom(l, r) => {
                let (lv, rv) = (self.expr(l)?, self.expr(r)?);
                self.compare(&lv, &rv, "IS DISTINCT FROM")?;
                Ok(Val::Other)
            }
            Expr::InList {
                expr: inner,
                list,
                negated,
            } => {
                let l = self.expr(inner)?;
                let op = if *negated { "NOT IN" } else { "IN" };
                for item in list {
                    let r = self.expr(item)?;
                    self.compare(&l, &r, op)?;
                }
                if list.is_empty() {
                    self.plain_use(&l, op)?;
                }
                Ok(Val::Other)
            }
            Expr::InSubquery {
                expr: inner,
                subquery,
                negated,
            } => {
                let l = self.expr(inner)?;
                let op = if *negated { "NOT IN" } else { "IN" };
                self.scopes.push(Vec::new());
                let outs = self.query(subquery, false);
                self.scopes.pop();
                let outs = outs?;
                match outs.as_slice() {
                    [one] => self.compare(&l, &one.val, op)?,
                    _ => {
                        self.plain_use(&l, op)?;
                        for o in &outs {
                            self.plain_use(&o.val, op)?;
                        }
                    }
                }
                Ok(Val::Other)
            }
            Expr::Between {
                expr: inner,
                low,
                high,
                negated,
            } => {
                let op = if *negated { "NOT BETWEEN" } else { "BETWEEN" };
                for x in [inner, low, high] {
                    let v = self.expr(x)?;
                    self.plain_use(&v, op)?;
                }
                Ok(Val::Other)
            }
            Expr::Like {
                expr: inner,
                pattern,
                escape_char,
                ..
            } => self.pattern_op("LIKE", inner, pattern, escape_char.as_deref()),
            Expr::ILike {
                expr: inner,
                pattern,
                escape_char,
                ..
            } => self.pattern_op("ILIKE", inner, pattern, escape_char.as_deref()),
            Expr::SimilarTo {
                expr: inner,
                pattern,
                escape_char,
                ..
            } => self.pattern_op("SIMILAR TO", inner, pattern, escape_char.as_deref()),
            Expr::Function(f) => self.function(f),
            Expr::Case {
                operand,
                conditions,
                else_result,
                ..
            } => {
                let op_val = match operand {
                    Some(o) => Some(self.expr(o)?),
                    None => None,
                };
                for w in conditions {
                    match &op_val {
                        Some(ov) => {
                            let wv = self.expr(&w.condition)?;
                            self.compare(ov, &wv, "CASE")?;
                        }
                        None => self.cond(&w.condition)?,
                    }
                    let rv = self.expr(&w.result)?;
                    self.plain_use(&rv, "CASE")?;
                }
                if let Some(e) = else_result {
                    let v = self.expr(e)?;
                    self.plain_use(&v, "CASE")?;
                }
                Ok(Val::Other)
            }
            Expr::Exists { subquery, .. } => {
                self.scopes.push(Vec::new());
                let r = self.query(subquery, false);
                self.scopes.pop();
                for o in r? {
                    if let Val::Param(p) = &o.val {
                        self.plain_params.insert(p.n);
                    }
                }
                Ok(Val::Other)
            }
            Expr::Subquery(q) => {
                self.scopes.push(Vec::new());
                let r = self.query(q, false);
                self.scopes.pop();
                let outs = r?;
                match outs.as_slice() {
                    [one] => Ok(match &one.val {
                        Val::Col { prot, .. } => Val::Col {
                            prot: *prot,
                            origin: None,
                        },
                        other => other.clone(),
                    }),
                    _ => {
                        for o in &outs {
                            self.plain_use(&o.val, "subquery")?;
                        }
                        Ok(Val::Other)
                    }
                }
            }
            Expr::Tuple(items) => {
                for x in items {
                    let v = self.expr(x)?;
                    self.plain_use(&v, "row constructor")?;
                }
                Ok(Val::Other)
            }
            Expr::AnyOp { left, right, .. } | Expr::AllOp { left, right, .. } => {
                for x in [left, right] {
                    let v = self.expr(x)?;
                    self.plain_use(&v, "ANY/ALL")?;
                }
                Ok(Val::Other)
            }
            Expr::Collate { expr: inner, .. } => {
                let v = self.expr(inner)?;
                self.plain_use(&v, "COLLATE")?;
                Ok(Val::Other)
            }
            Expr::IsTrue(inner)
            | Expr::IsFalse(inner)
            | Expr::IsNotTrue(inner)
            | Expr::IsNotFalse(inner)
            | Expr::IsUnknown(inner)
            | Expr::IsNotUnknown(inner) => {
                let v = self.expr(inner)?;
                self.plain_use(&v, "IS TRUE/FALSE")?;
                Ok(Val::Other)
            }
            other => {
                self.opaque_node(other, "this expression")?;
                Ok(Val::Other)
            }
        }
    }

    fn pattern_op(&mut self, op: &str, l: &Expr, r: &Expr, esc: Option<&Expr>) -> R<Val> {
        let lv = self.expr(l)?;
        self.plain_use(&lv, op)?;
        let rv = self.expr(r)?;
        self.plain_use(&rv, op)?;
        if let Some(e) = esc {
            let v = self.expr(e)?;
            self.plain_use(&v, op)?;
        }
        Ok(Val::Other)
    }

    fn function(&mut self, f: &Function) -> R<Val> {
        let name = f
            .name
            .0
            .last()
            .map(|p| p.to_string().to_ascii_lowercase())
            .unwrap_or_default();
        let label = format!("function {name}()");
        if let Some(filter) = &f.filter {
            self.cond(filter)?;
        }
        for o in &f.within_group {
            let v = self.expr(&o.expr)?;
            self.plain_use(&v, "WITHIN GROUP (ORDER BY)")?;
        }
        if let Some(WindowType::WindowSpec(spec)) = &f.over {
            for e in &spec.partition_by {
                let v = self.expr(e)?;
                match v.prot() {
                    Some(c) => self.require_det(c, "PARTITION BY")?,
                    None => self.plain_use(&v, "PARTITION BY")?,
                }
            }
            for o in &spec.order_by {
                let v = self.expr(&o.expr)?;
                self.plain_use(&v, "ORDER BY")?;
            }
        }
        match &f.parameters {
            FunctionArguments::None => {}
            _ => self.opaque_node(&f.parameters, &label)?,
        }
        match &f.args {
            FunctionArguments::None => {}
            FunctionArguments::Subquery(q) => {
                self.scopes.push(Vec::new());
                let r = self.query(q, false);
                self.scopes.pop();
                for o in r? {
                    self.plain_use(&o.val, &label)?;
                }
            }
            FunctionArguments::List(list) => {
                let distinct =
                    matches!(list.duplicate_treatment, Some(DuplicateTreatment::Distinct));
                let count = name == "count" && f.name.0.len() <= 2 && list.args.len() == 1;
                for arg in &list.args {
                    let e = match arg {
                        FunctionArg::Unnamed(a)
                        | FunctionArg::Named { arg: a, .. }
                        | FunctionArg::ExprNamed { arg: a, .. } => a,
                    };
                    let FunctionArgExpr::Expr(e) = e else {
                        if !count {
                            self.no_wildcard_arg(e, &label)?;
                        }
                        continue;
                    };
                    let v = self.expr(e)?;
                    match v.prot() {
                        Some(c) if count => {
                            if distinct {
                                self.require_det(c, "count(DISTINCT)")?;
                            } else {
                                self.conditions.push(c);
                            }
                        }
                        _ => self.plain_use(&v, &label)?,
                    }
                }
                for clause in &list.clauses {
                    match clause {
                        FunctionArgumentClause::OrderBy(items) => {
                            for o in items {
                                let v = self.expr(&o.expr)?;
                                self.plain_use(&v, "ORDER BY")?;
                            }
                        }
                        other => self.opaque_node(other, &label)?,
                    }
                }
            }
        }
        Ok(Val::Other)
    }

    /// Something not analysed in detail: refuse when it involves a protected column (or
    /// could: a name of one that does not resolve here); analyse nested queries for their
    /// own bindings and tables.
    fn opaque_node<V: sqlparser::ast::Visit>(&mut self, node: &V, what: &str) -> R<()> {
        let mut idents: Vec<Vec<Ident>> = Vec::new();
        let mut queries: Vec<Query> = Vec::new();
        let _ = visit_expressions(node, |e| {
            match e {
                Expr::Identifier(id) => idents.push(vec![id.clone()]),
                Expr::CompoundIdentifier(ids) => idents.push(ids.clone()),
                Expr::Subquery(q)
                | Expr::Exists { subquery: q, .. }
                | Expr::InSubquery { subquery: q, .. } => queries.push((**q).clone()),
                _ => {}
            }
            ControlFlow::<()>::Continue(())
        });
        for ids in &idents {
            match self.lookup_column(ids)? {
                Some(v) => {
                    if let Some(c) = v.prot() {
                        return self.refuse(what, c);
                    }
                }
                None => {
                    self.no_whole_row(ids, what)?;
                    let last = ids.last().map(norm).unwrap_or_default();
                    if self.prot.is_protected_column_name(&last) {
                        return Err(Halt::Refuse(format!(
                            "pgveil: {what} is not supported near encrypted column {last}"
                        )));
                    }
                }
            }
        }
        for q in &queries {
            self.scopes.push(Vec::new());
            let r = self.query(q, false);
            self.scopes.pop();
            for o in r? {
                self.plain_use(&o.val, what)?;
            }
        }
        Ok(())
    }

    /// A name that is not a column may be a whole-row reference to a relation (`p`,
    /// `ssn(p)`, `(p).ssn`, `row_to_json(p)`): refused when that row holds protected columns.
    fn no_whole_row(&self, ids: &[Ident], what: &str) -> R<()> {
        let names: Vec<String> = ids.iter().map(norm).collect();
        for scope in self.scopes.iter().rev() {
            for src in scope.iter().rev() {
                let hit = match names.as_slice() {
                    [a] => src.alias == *a,
                    [.., s, t] => src
                        .table
                        .as_ref()
                        .is_some_and(|tn| tn.schema == *s && tn.name == *t),
                    [] => false,
                };
                if hit {
                    if let Some(c) = src.cols.iter().flatten().find_map(|c| c.prot) {
                        return self.refuse(what, c);
                    }
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// `f(p.*)` / `f(*)` (other than `count(*)`): the whole rows of the relations.
    fn no_wildcard_arg(&self, arg: &FunctionArgExpr, what: &str) -> R<()> {
        match arg {
            FunctionArgExpr::Expr(_) => Ok(()),
            FunctionArgExpr::QualifiedWildcard(name) => {
                let ids: Vec<Ident> = name
                    .0
                    .iter()
                    .filter_map(|p| match p {
                        ObjectNamePart::Identifier(id) => Some(id.clone()),
                        ObjectNamePart::Function(_) => None,
                    })
                    .collect();
                self.no_whole_row(&ids, what)
            }
            FunctionArgExpr::Wildcard | FunctionArgExpr::WildcardWithOptions(_) => {
                if let Some(scope) = self.scopes.last() {
                    if let Some(c) = scope
                        .iter()
                        .flat_map(|s| s.cols.iter().flatten())
                        .find_map(|c| c.prot)
                    {
                        return self.refuse(what, c);
                    }
                }
                Ok(())
            }
        }
    }

    // ----- literals --------------------------------------------------------------------

    fn token_index_at(&self, byte: usize) -> Option<usize> {
        let i = self.tk.ranges.partition_point(|r| r.start < byte);
        match self.tk.ranges.get(i) {
            Some(r) if r.start == byte => Some(i),
            _ => None,
        }
    }

    fn span_range(&self, span: Span) -> R<Range<usize>> {
        match self.tk.index_at(span.start) {
            Some(i) => Ok(self.tk.ranges[i].clone()),
            None => unsupported("cannot locate literal"),
        }
    }

    fn value(&mut self, v: &ValueWithSpan) -> R<Val> {
        let text = match &v.value {
            Value::Null => return Ok(Val::Null),
            Value::Placeholder(p) => {
                let n = p.strip_prefix('$').and_then(|d| d.parse::<u32>().ok());
                return match n {
                    Some(n) if n > 0 => {
                        let range = self.span_range(v.span)?;
                        Ok(Val::Param(Param {
                            n,
                            range,
                            cast: None,
                        }))
                    }
                    _ => unsupported("placeholder"),
                };
            }
            Value::Number(s, _) => s.clone(),
            Value::Boolean(b) => b.to_string(),
            Value::SingleQuotedString(s)
            | Value::EscapedStringLiteral(s)
            | Value::NationalStringLiteral(s)
            | Value::UnicodeStringLiteral(s) => s.clone(),
            Value::DollarQuotedString(d) => d.value.clone(),
            _ => return Ok(Val::Other),
        };
        let range = self.span_range(v.span)?;
        Ok(Val::Lit(Lit {
            range,
            value: text,
            cast: None,
        }))
    }

    /// Extends a literal's range over a following `::type` or an enclosing `CAST(… AS type)`.
    fn cast_range(&self, kind: &CastKind, lit: Range<usize>) -> Option<Range<usize>> {
        let last = self.token_index_ending_at(lit.end)?;
        match kind {
            CastKind::DoubleColon => {
                let dc = self.tk.next_solid(last)?;
                if !matches!(self.tk.token(dc), Some(Token::DoubleColon)) {
                    return None;
                }
                let ty_start = self.tk.next_solid(dc)?;
                let stop = (ty_start + 48).min(self.tk.toks.len());
                let dialect = PostgreSqlDialect {};
                let mut p = Parser::new(&dialect)
                    .with_tokens_with_locations(self.tk.toks[ty_start..stop].to_vec());
                if p.parse_data_type().is_err() {
                    return None;
                }
                let end_tok = ty_start + p.get_current_index();
                if self.tk.is_trivia(end_tok) {
                    return None;
                }
                Some(lit.start..self.tk.ranges[end_tok].end)
            }
            CastKind::Cast => {
                let first = self.token_index_at(lit.start)?;
                let open = self.tk.prev_solid(first);
                let kw = open.and_then(|o| self.tk.prev_solid(o));
                let (Some(open), Some(kw)) = (open, kw) else {
                    return None;
                };
                if !matches!(self.tk.token(open), Some(Token::LParen))
                    || !self.tk.is_keyword(kw, "cast")
                {
                    return None;
                }
                let mut depth = 0i32;
                let mut i = last + 1;
                while let Some(t) = self.tk.token(i) {
                    match t {
                        Token::LParen => depth += 1,
                        Token::RParen if depth == 0 => {
                            return Some(self.tk.ranges[kw].start..self.tk.ranges[i].end)
                        }
                        Token::RParen => depth -= 1,
                        _ => {}
                    }
                    i += 1;
                }
                None
            }
            _ => None,
        }
    }

    fn token_index_ending_at(&self, byte: usize) -> Option<usize> {
        let i = self.tk.ranges.partition_point(|r| r.end < byte);
        match self.tk.ranges.get(i) {
            Some(r) if r.end == byte && !self.tk.is_trivia(i) => Some(i),
            _ => None,
        }
    }

    /// Start of a typed literal (`DATE '…'`, `timestamp with time zone '…'`): the
    /// farthest-back run of tokens before the string that parses exactly as a type.
    fn typed_string_start(&self, lit_start: usize) -> Option<usize> {
        let lit = self.token_index_at(lit_start)?;
        let dialect = PostgreSqlDialect {};
        let mut best = None;
        let mut k = lit;
        for _ in 0..8 {
            let Some(prev) = self.tk.prev_solid(k) else {
                break;
            };
            if !matches!(
                self.tk.token(prev),
                Some(Token::Word(_) | Token::LParen | Token::RParen | Token::Number(..))
            ) {
                break;
            }
            k = prev;
            let mut p =
                Parser::new(&dialect).with_tokens_with_locations(self.tk.toks[k..lit].to_vec());
            if p.parse_data_type().is_ok() && p.peek_token().token == Token::EOF {
                best = Some(k);
            }
        }
        best.map(|k| self.tk.ranges[k].start)
    }

    // ----- DML -------------------------------------------------------------------------

    fn target_source(&mut self, name: &ObjectName, alias: Option<&Ident>) -> R<Source> {
        let mut src = match self.table_source(name, None)? {
            Some(s) => s,
            None => return unsupported("target relation"),
        };
        if let Some(a) = alias {
            src.alias = norm(a);
        }
        Ok(src)
    }

    fn returning(&mut self, items: Option<&Vec<SelectItem>>, top: bool) -> R<Vec<OutCol>> {
        let Some(items) = items else {
            self.block_top(top, "no RETURNING");
            return Ok(Vec::new());
        };
        let outs = self.projection(items)?;
        if top {
            let aliases = self
                .scopes
                .last()
                .map(|sc| {
                    sc.iter()
                        .filter_map(|s| s.table.clone().map(|t| (t, s.alias.clone(), s.ref_id)))
                        .collect()
                })
                .unwrap_or_default();
            self.top = Some(TopInfo {
                insert_at: Some(self.stmt_end),
                blocker: None,
                aliases,
            });
        }
        Ok(outs)
    }

    fn insert(&mut self, ins: &Insert, top: bool) -> R<Vec<OutCol>> {
        let TableObject::TableName(name) = &ins.table else {
            return unsupported("INSERT INTO function");
        };
        let target = self.target_source(name, ins.table_alias.as_ref().map(|a| &a.alias))?;
        if let Some(t) = &target.table {
            self.tables.push(t.clone());
        }
        let table = target.table.clone();
        let targets: Vec<Option<ColumnRef>> = match (&table, &target.cols) {
            (Some(t), _) if !ins.columns.is_empty() => ins
                .columns
                .iter()
                .map(|c| Ok(name_parts(c)?.first().and_then(|n| self.prot.lookup(t, n))))
                .collect::<R<_>>()?,
            (Some(_), Some(cols)) => cols.iter().map(|c| c.prot).collect(),
            _ => Vec::new(),
        };
        let target_at = |i: usize| targets.get(i).copied().flatten();
        if !ins.assignments.is_empty() {
            return unsupported("INSERT … SET");
        }
        self.scopes.push(Vec::new());
        let result = (|| -> R<()> {
            if let Some(q) = &ins.source {
                match &*q.body {
                    SetExpr::Values(values) if q.with.is_none() => {
                        for row in &values.rows {
                            for (i, e) in row.iter().enumerate() {
                                let v = self.expr(e)?;
                                self.write(target_at(i), &v)?;
                            }
                        }
                        if let Some(ob) = &q.order_by {
                            self.opaque_node(ob, "ORDER BY")?;
                        }
                    }
                    _ => {
                        let outs = self.query(q, false)?;
                        for (i, o) in outs.iter().enumerate() {
                            self.write(target_at(i), &o.val)?;
                        }
                    }
                }
            }
            Ok(())
        })();
        self.scopes.pop();
        result?;
        self.scopes.push(vec![target.clone()]);
        let result = (|| -> R<Vec<OutCol>> {
            if let Some(OnInsert::OnConflict(oc)) = &ins.on {
                if let Some(ConflictTarget::Columns(cols)) = &oc.conflict_target {
                    for c in cols {
                        if let (Some(t), n) = (&table, norm(c)) {
                            if let Some(cr) = self.prot.lookup(t, &n) {
                                self.require_det(cr, "ON CONFLICT")?;
                            }
                        }
                    }
                }
                if let OnConflictAction::DoUpdate(du) = &oc.action {
                    let mut excluded = target.clone();
                    excluded.alias = "excluded".into();
                    excluded.table = None;
                    if let Some(scope) = self.scopes.last_mut() {
                        scope.push(excluded);
                    }
                    for a in &du.assignments {
                        self.assignment(&table, a)?;
                    }
                    if let Some(w) = &du.selection {
                        self.cond(w)?;
                    }
                    if let Some(scope) = self.scopes.last_mut() {
                        scope.pop();
                    }
                }
            } else if ins.on.is_some() {
                return unsupported("ON DUPLICATE KEY");
            }
            self.returning(ins.returning.as_ref(), top)
        })();
        self.scopes.pop();
        result
    }

    fn assignment(&mut self, table: &Option<TableName>, a: &sqlparser::ast::Assignment) -> R<()> {
        use sqlparser::ast::AssignmentTarget;
        let target_of = |this: &Self, name: &ObjectName| -> R<Option<ColumnRef>> {
            let parts = name_parts(name)?;
            Ok(match (table, parts.last()) {
                (Some(t), Some(c)) => this.prot.lookup(t, c),
                _ => None,
            })
        };
        match &a.target {
            AssignmentTarget::ColumnName(name) => {
                let target = target_of(self, name)?;
                let v = self.expr(&a.value)?;
                self.write(target, &v)
            }
            AssignmentTarget::Tuple(names) => {
                let targets: Vec<Option<ColumnRef>> =
                    names.iter().map(|n| target_of(self, n)).collect::<R<_>>()?;
                match &a.value {
                    Expr::Tuple(values) if values.len() == targets.len() => {
                        for (t, e) in targets.iter().zip(values) {
                            let v = self.expr(e)?;
                            self.write(*t, &v)?;
                        }
                        Ok(())
                    }
                    other => {
                        if let Some(c) = targets.iter().flatten().next() {
                            return self.refuse("multi-column assignment from a subquery", *c);
                        }
                        let v = self.expr(other)?;
                        self.plain_use(&v, "assignment")
                    }
                }
            }
        }
    }

    fn update(&mut self, u: &Update, top: bool) -> R<Vec<OutCol>> {
        self.scopes.push(Vec::new());
        let result = (|| -> R<Vec<OutCol>> {
            self.table_with_joins(&u.table)?;
            let table = self
                .scopes
                .last()
                .and_then(|sc| sc.first())
                .and_then(|s| s.table.clone());
            if let Some(UpdateTableFromKind::BeforeSet(f) | UpdateTableFromKind::AfterSet(f)) =
                &u.from
            {
                for twj in f {
                    self.table_with_joins(twj)?;
                }
            }
            for a in &u.assignments {
                self.assignment(&table, a)?;
            }
            if let Some(w) = &u.selection {
                self.cond(w)?;
            }
            self.returning(u.returning.as_ref(), top)
        })();
        self.scopes.pop();
        result
    }

    fn delete(&mut self, d: &Delete, top: bool) -> R<Vec<OutCol>> {
        self.scopes.push(Vec::new());
        let result = (|| -> R<Vec<OutCol>> {
            let (FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from)) = &d.from;
            for twj in from {
                self.table_with_joins(twj)?;
            }
            if let Some(using) = &d.using {
                for twj in using {
                    self.table_with_joins(twj)?;
                }
            }
            if let Some(w) = &d.selection {
                self.cond(w)?;
            }
            self.returning(d.returning.as_ref(), top)
        })();
        self.scopes.pop();
        result
    }
}

fn is_number(e: &Expr) -> bool {
    matches!(
        e,
        Expr::Value(ValueWithSpan {
            value: Value::Number(..),
            ..
        })
    )
}

fn position_ref(e: &Expr, outs: &[OutCol]) -> Option<Val> {
    if let Expr::Value(ValueWithSpan {
        value: Value::Number(n, _),
        ..
    }) = e
    {
        let i: usize = n.parse().ok()?;
        return outs.get(i.checked_sub(1)?).map(|o| o.val.clone());
    }
    None
}

fn expr_name(e: &Expr) -> String {
    match e {
        Expr::Identifier(id) => norm(id),
        Expr::CompoundIdentifier(ids) => ids.last().map(norm).unwrap_or_default(),
        Expr::Function(f) => f
            .name
            .0
            .last()
            .map(|p| p.to_string().to_ascii_lowercase())
            .unwrap_or_default(),
        Expr::Cast { expr, .. } | Expr::Nested(expr) => expr_name(expr),
        _ => "?column?".to_string(),
    }
}
