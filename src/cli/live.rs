//! `pgveil check --live`: the configuration against the upstream database's catalog.
//!
//! Connects like pgveil does (`[upstream]` host, port and TLS mode) with the login from the
//! libpq variables `PGUSER`, `PGPASSWORD` and `PGDATABASE`, then reports one problem per
//! line: a configured table that does not exist, a configured column that does not exist
//! or is not `bytea`, a `[[table]] subject` column that does not exist, a role named in an
//! `access` rule that does not exist. Each line is located in the file where it can be
//! (`file:line:column: message`).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use tokio_postgres::Client;
use toml_edit::{ImDocument, Item};

use crate::config::{Config, UpstreamConfig};
use crate::net::pgclient;
use crate::schema::TableName;

/// The relation `schema.name` (tables, partitioned tables, views, materialized views,
/// foreign tables). No row: it does not exist.
const SQL_RELATION: &str = "\
SELECT c.oid
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = $1
   AND c.relname = $2
   AND c.relkind IN ('r', 'p', 'v', 'm', 'f')";

/// The live columns of a relation with their types as PostgreSQL prints them.
const SQL_COLUMNS: &str = "\
SELECT a.attname::text,
       pg_catalog.format_type(a.atttypid, a.atttypmod),
       a.atttypid = 'pg_catalog.bytea'::pg_catalog.regtype AS is_bytea
  FROM pg_catalog.pg_attribute a
 WHERE a.attrelid = $1
   AND a.attnum > 0
   AND NOT a.attisdropped";

/// Which of the given role names exist.
const SQL_ROLES: &str = "\
SELECT r.rolname::text
  FROM pg_catalog.pg_roles r
 WHERE r.rolname = ANY ($1::text[])";

/// The login, from the environment as libpq reads it.
#[derive(Clone)]
pub struct Login {
    pub user: String,
    pub password: Option<String>,
    pub database: String,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("database", &self.database)
            .finish()
    }
}

impl Login {
    /// `PGUSER` (default: the operating-system user, as libpq), `PGPASSWORD`,
    /// `PGDATABASE` (default: the user name).
    pub fn from_env() -> Login {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let user = var("PGUSER")
            .or_else(|| var("USER"))
            .or_else(|| var("LOGNAME"))
            .unwrap_or_else(|| "postgres".into());
        let database = var("PGDATABASE").unwrap_or_else(|| user.clone());
        Login {
            password: var("PGPASSWORD"),
            user,
            database,
        }
    }
}

/// Why a live check could not run (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    /// The login failed or the database cannot be reached (one line naming the address).
    #[error("{0}")]
    Connect(String),
    /// A catalog query failed.
    #[error("catalog query failed: {0}")]
    Query(String),
    /// The key files the constraint must name cannot be loaded.
    #[error("{0}")]
    Keys(String),
}

impl From<tokio_postgres::Error> for LiveError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Query(pgclient::error_text(&e))
    }
}

/// What a live check found wrong, one per configured item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProblemKind {
    MissingTable,
    MissingColumn,
    /// The column exists but is not `bytea`: not migrated yet.
    NotBytea,
    MissingSubject,
    MissingRole,
}

/// One problem, located in the configuration file.
#[derive(Debug, Clone)]
pub struct LiveProblem {
    pub kind: ProblemKind,
    /// `file:line:column: message`.
    pub line: String,
}

/// Connects upstream; the error is one line naming the address.
pub async fn connect(
    upstream: &UpstreamConfig,
    login: &Login,
    application: &str,
) -> Result<Client, LiveError> {
    let addr = format!("{}:{}", upstream.host, upstream.port);
    let pg_login = pgclient::Login {
        user: &login.user,
        password: login.password.as_deref(),
        database: &login.database,
        application,
    };
    pgclient::connect(upstream, &pg_login).await.map_err(|e| {
        LiveError::Connect(format!(
            "cannot connect to the database at {addr} as {}: {e}",
            login.user
        ))
    })
}

/// Runs the catalog checks; returns the problems (empty: valid).
pub async fn check(
    client: &Client,
    config: &Config,
    locator: &Locator,
) -> Result<Vec<LiveProblem>, LiveError> {
    // Every table the configuration names, with the columns that must be bytea and the
    // subject column.
    let mut tables: BTreeMap<&TableName, (Vec<&str>, Option<&str>)> = BTreeMap::new();
    for t in &config.tables {
        tables.entry(&t.name).or_default().1 = t.subject.as_deref();
    }
    for c in &config.columns {
        tables
            .entry(&c.column.table)
            .or_default()
            .0
            .push(&c.column.column);
    }

    let mut problems = Vec::new();
    let relation = client.prepare(SQL_RELATION).await?;
    let columns = client.prepare(SQL_COLUMNS).await?;
    for (table, (protected, subject)) in &tables {
        let rows = client
            .query(&relation, &[&table.schema, &table.name])
            .await?;
        let Some(row) = rows.first() else {
            problems.push(problem(
                ProblemKind::MissingTable,
                locator.at(
                    locator.table(table),
                    format!("table {table} does not exist in the database"),
                ),
            ));
            continue;
        };
        let oid: u32 = row.try_get(0)?;
        let mut existing: BTreeMap<String, (String, bool)> = BTreeMap::new();
        for row in client.query(&columns, &[&oid]).await? {
            let name: String = row.try_get(0)?;
            let ty: String = row.try_get(1)?;
            let is_bytea: bool = row.try_get(2)?;
            existing.insert(name, (ty, is_bytea));
        }
        for column in protected {
            match existing.get(*column) {
                None => problems.push(problem(ProblemKind::MissingColumn, locator.at(
                    locator.column(table, column),
                    format!("column {table}.{column} does not exist in the database"),
                ))),
                Some((ty, false)) => problems.push(problem(ProblemKind::NotBytea, locator.at(
                    locator.column(table, column),
                    format!(
                        "column {table}.{column} is {ty} in the database; an encrypted column must be bytea"
                    ),
                ))),
                Some((_, true)) => {}
            }
        }
        if let Some(subject) = subject {
            if !existing.contains_key(*subject) {
                problems.push(problem(
                    ProblemKind::MissingSubject,
                    locator.at(
                        locator.subject(table),
                        format!("subject column {table}.{subject} does not exist in the database"),
                    ),
                ));
            }
        }
    }

    let named: BTreeSet<&str> = config
        .columns
        .iter()
        .flat_map(|c| c.access.keys().map(String::as_str))
        .collect();
    if !named.is_empty() {
        let wanted: Vec<&str> = named.iter().copied().collect();
        let found: BTreeSet<String> = client
            .query(SQL_ROLES, &[&wanted])
            .await?
            .iter()
            .map(|row| row.try_get::<_, String>(0))
            .collect::<Result<_, _>>()?;
        for role in named {
            if !found.contains(role) {
                problems.push(problem(
                    ProblemKind::MissingRole,
                    locator.at(
                        locator.role(role),
                        format!(
                        "role \"{role}\" named in an access rule does not exist in the database"
                    ),
                    ),
                ));
            }
        }
    }
    Ok(problems)
}

fn problem(kind: ProblemKind, line: String) -> LiveProblem {
    LiveProblem { kind, line }
}

/// Finds where in the configuration file a table, column, subject or role is written, so
/// live problems carry `file:line:column` like the static ones.
pub struct Locator {
    origin: String,
    text: String,
}

impl Locator {
    pub fn new(origin: &str, text: &str) -> Locator {
        Locator {
            origin: origin.to_string(),
            text: text.to_string(),
        }
    }

    pub(super) fn at(&self, span: Option<Range<usize>>, message: String) -> String {
        match span {
            Some(span) => {
                let before = &self.text[..span.start.min(self.text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                format!("{}:{line}:{column}: {message}", self.origin)
            }
            None => format!("{}: {message}", self.origin),
        }
    }

    /// Calls `f` with each table of the array `key` (`table` or `column`) until it answers.
    fn find<T>(&self, key: &str, f: impl FnMut(&toml_edit::Table) -> Option<T>) -> Option<T> {
        let doc = ImDocument::parse(self.text.as_str()).ok()?;
        let array = doc.as_table().get(key)?.as_array_of_tables()?;
        let found = array.iter().find_map(f);
        found
    }

    fn str_of<'t>(t: &'t toml_edit::Table, key: &str) -> Option<&'t str> {
        t.get(key).and_then(Item::as_str)
    }

    fn names(t: &toml_edit::Table, key: &str, table: &TableName) -> bool {
        Self::str_of(t, key).and_then(TableName::parse).as_ref() == Some(table)
    }

    fn table(&self, table: &TableName) -> Option<Range<usize>> {
        self.find("table", |t| {
            Self::names(t, "name", table).then(|| t.get("name").and_then(Item::span))?
        })
        .or_else(|| {
            self.find("column", |t| {
                Self::names(t, "table", table).then(|| t.get("table").and_then(Item::span))?
            })
        })
    }

    pub(super) fn column(&self, table: &TableName, column: &str) -> Option<Range<usize>> {
        self.find("column", |t| {
            (Self::names(t, "table", table) && Self::str_of(t, "column") == Some(column))
                .then(|| t.get("column").and_then(Item::span))?
        })
    }

    fn subject(&self, table: &TableName) -> Option<Range<usize>> {
        self.find("table", |t| {
            Self::names(t, "name", table).then(|| t.get("subject").and_then(Item::span))?
        })
    }

    fn role(&self, role: &str) -> Option<Range<usize>> {
        self.find("column", |t| {
            let access = t.get("access")?.as_table_like()?;
            let (key, _) = access.get_key_value(role)?;
            key.span()
        })
    }
}
