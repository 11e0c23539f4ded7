//! Defense in depth (DESIGN.md): the two rules PostgreSQL itself can enforce, so that a
//! direct connection, dynamic SQL in a function or `DO` block, or a flaw in pgveil's
//! analysis cannot break them.
//!
//! - Only ciphertext is stored: a `CHECK` constraint `pgveil_envelope_<column>` on every
//!   protected column accepts `NULL` or a value with pgveil's envelope (version `0x01`, a
//!   key id pgveil knows, the column's mode, at least the envelope's length).
//! - Denied means denied: a role the policy denies a column loses its table-wide `SELECT`
//!   on the table, replaced by `SELECT` on every column it may read.
//!
//! [`inspect`] reads what the database enforces today; [`Inspection::plan`] turns the gap
//! into SQL (for `pgveil apply`), [`Inspection::warnings`] into the warnings of
//! `check --live`.

use std::collections::{BTreeMap, BTreeSet};

use tokio_postgres::Client;

use super::live::{LiveError, Locator};
use crate::config::{ColumnConfig, Config};
use crate::crypto::constraint::{constraint_name, EnvelopeConstraint};
use crate::policy::{most_permissive, Access};
use crate::schema::TableName;

/// A protected table's oid and kind (only plain and partitioned tables take constraints
/// and privileges the way `apply` writes them).
const SQL_TABLE: &str = "\
SELECT c.oid, c.relkind::text
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')";

/// A table's live columns in order, and whether each is `bytea`.
const SQL_COLUMNS: &str = "\
SELECT a.attname::text, a.atttypid = 'pg_catalog.bytea'::pg_catalog.regtype
  FROM pg_catalog.pg_attribute a
 WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY a.attnum";

/// The check constraint of that name on the table: validated?, its definition.
const SQL_CONSTRAINT: &str = "\
SELECT c.convalidated, pg_catalog.pg_get_constraintdef(c.oid)
  FROM pg_catalog.pg_constraint c
 WHERE c.conrelid = $1 AND c.conname = $2 AND c.contype = 'c'";

/// Table-wide SELECT grants (the owner's implicit ones included): grantee (NULL for
/// PUBLIC), grantable.
const SQL_TABLE_GRANTS: &str = "\
SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_catalog.pg_get_userbyid(a.grantee)::text END,
       a.is_grantable
  FROM pg_catalog.pg_class c,
       pg_catalog.aclexplode(COALESCE(c.relacl, pg_catalog.acldefault('r', c.relowner))) a
 WHERE c.oid = $1 AND a.privilege_type = 'SELECT'";

/// Column SELECT grants: column, grantee (NULL for PUBLIC).
const SQL_COLUMN_GRANTS: &str = "\
SELECT att.attname::text,
       CASE WHEN a.grantee = 0 THEN NULL ELSE pg_catalog.pg_get_userbyid(a.grantee)::text END
  FROM pg_catalog.pg_attribute att, pg_catalog.aclexplode(att.attacl) a
 WHERE att.attrelid = $1 AND att.attnum > 0 AND NOT att.attisdropped
   AND a.privilege_type = 'SELECT'";

/// Every role (predefined `pg_*` roles aside): superuser?, every role it is a member of,
/// directly or through others, itself included (as pgveil resolves a session's roles).
const SQL_ROLES: &str = "\
WITH RECURSIVE m(member, roleid) AS (
    SELECT r.oid, r.oid FROM pg_catalog.pg_roles r
  UNION
    SELECT m.member, a.roleid FROM m JOIN pg_catalog.pg_auth_members a ON a.member = m.roleid
)
SELECT r.rolname::text, r.rolsuper, pg_catalog.array_agg(g.rolname::text)
  FROM m
  JOIN pg_catalog.pg_roles r ON r.oid = m.member
  JOIN pg_catalog.pg_roles g ON g.oid = m.roleid
 WHERE r.rolname !~ '^pg_'
 GROUP BY r.rolname, r.rolsuper";

/// The roles (NULL: PUBLIC) the database lets read a column.
const SQL_READERS: &str = "\
SELECT r.rolname::text
  FROM pg_catalog.pg_roles r
 WHERE r.rolname !~ '^pg_'
   AND pg_catalog.has_column_privilege(r.oid, $1::pg_catalog.oid, $2::text, 'SELECT')
UNION ALL
SELECT NULL
 WHERE pg_catalog.has_column_privilege('public', $1::pg_catalog.oid, $2::text, 'SELECT')";

/// PostgreSQL's reserved key words (and those that cannot name a column unquoted): an
/// identifier spelled like one is quoted.
const RESERVED: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "authorization",
    "binary",
    "both",
    "case",
    "cast",
    "check",
    "collate",
    "collation",
    "column",
    "concurrently",
    "constraint",
    "create",
    "cross",
    "current_catalog",
    "current_date",
    "current_role",
    "current_schema",
    "current_time",
    "current_timestamp",
    "current_user",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "false",
    "fetch",
    "for",
    "foreign",
    "freeze",
    "from",
    "full",
    "grant",
    "group",
    "having",
    "ilike",
    "in",
    "initially",
    "inner",
    "intersect",
    "into",
    "is",
    "isnull",
    "join",
    "lateral",
    "leading",
    "left",
    "like",
    "limit",
    "localtime",
    "localtimestamp",
    "natural",
    "not",
    "notnull",
    "null",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "outer",
    "overlaps",
    "placing",
    "primary",
    "references",
    "returning",
    "right",
    "select",
    "session_user",
    "similar",
    "some",
    "symmetric",
    "system_user",
    "table",
    "tablesample",
    "then",
    "to",
    "trailing",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "variadic",
    "verbose",
    "when",
    "where",
    "window",
    "with",
];

/// Why a column's constraint is skipped when its values are not all enveloped.
const PLAINTEXT: &str =
    "holds values without pgveil's envelope (not migrated, or under a key pgveil does not know)";

/// An identifier as SQL: bare when PostgreSQL would read it back unchanged, else quoted.
pub fn ident(name: &str) -> String {
    let simple = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$')
        && !RESERVED.contains(&name);
    if simple {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

fn table_sql(table: &TableName) -> String {
    format!("{}.{}", ident(&table.schema), ident(&table.name))
}

/// A grantee as SQL: a role, or `PUBLIC`.
fn grantee_sql(grantee: &Grantee) -> String {
    match grantee {
        Grantee::Public => "PUBLIC".to_string(),
        Grantee::Role(r) => ident(r),
    }
}

/// A grantee of a privilege: a role or PUBLIC.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Grantee {
    Public,
    Role(String),
}

impl Grantee {
    fn from_db(name: Option<String>) -> Grantee {
        name.map_or(Grantee::Public, Grantee::Role)
    }

    fn describe(&self) -> String {
        match self {
            Grantee::Public => "PUBLIC (every role)".to_string(),
            Grantee::Role(r) => format!("role \"{r}\""),
        }
    }
}

/// Where a protected column's envelope constraint stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConstraintState {
    /// Present, validated, for the current key ids and mode.
    InPlace,
    /// Present for the current key ids, not validated yet.
    NotValidated,
    /// Missing, or written for other key ids or another mode.
    Missing { outdated: bool },
    /// Not `bytea` yet: not migrated (`check --live` reports it).
    NotBytea,
    /// Holding values without pgveil's envelope: not migrated, or under an unknown key.
    Plaintext,
    /// The table or column does not exist (`check --live` reports it).
    Absent,
}

/// One protected column as the database holds it.
#[derive(Debug, Clone)]
pub struct ColumnState {
    pub table: TableName,
    pub column: String,
    pub constraint: ConstraintState,
    /// The condition `apply` writes.
    check: String,
    /// The roles (or PUBLIC) the database lets read the column although the policy denies it.
    pub denied_readers: Vec<Grantee>,
}

/// One protected table's columns and SELECT grants.
#[derive(Debug, Clone)]
struct TableState {
    name: TableName,
    columns: Vec<String>,
    /// The columns that are `bytea`.
    bytea: BTreeSet<String>,
    /// Table-wide SELECT: grantee → grantable.
    table_grants: BTreeMap<Grantee, bool>,
    /// Column SELECT grants: column → grantees.
    column_grants: BTreeMap<String, BTreeSet<Grantee>>,
}

#[derive(Debug, Clone)]
struct Role {
    superuser: bool,
    /// Itself and every role it is a member of.
    member_of: Vec<String>,
}

/// What the database enforces today, for the configured columns.
#[derive(Debug, Clone)]
pub struct Inspection {
    pub columns: Vec<ColumnState>,
    tables: Vec<TableState>,
    roles: BTreeMap<String, Role>,
    /// `schema.table.column` → its rules (for the policy of a role).
    rules: BTreeMap<String, ColumnConfig>,
    default_access: Access,
}

/// The SQL that closes the gap, and what it cannot close.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Run in one transaction: constraints added `NOT VALID` (which checks every new row at
    /// once) and privileges replaced, all or nothing.
    pub transaction: Vec<String>,
    /// Run after it, each on its own: `VALIDATE CONSTRAINT` scans the table under a lock
    /// that lets reads and writes go on (in the transaction above, the `ADD`'s exclusive
    /// lock would be held for the whole scan).
    pub validate: Vec<String>,
    /// Columns skipped and roles that `apply` cannot stop, one line each.
    pub warnings: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.transaction.is_empty() && self.validate.is_empty()
    }

    /// Every statement in the order it runs, `BEGIN`/`COMMIT` around the transaction.
    pub fn script(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if !self.transaction.is_empty() {
            lines.push("BEGIN;".to_string());
            lines.push(LOCK_TIMEOUT.to_string());
            lines.extend(self.transaction.iter().map(|s| format!("{s};")));
            lines.push("COMMIT;".to_string());
        }
        lines.extend(self.validate.iter().map(|s| format!("{s};")));
        lines
    }
}

/// `apply` does not queue behind a long transaction (and everyone behind `apply`): a lock it
/// cannot take soon fails the run, which changes nothing and can be repeated.
pub const LOCK_TIMEOUT: &str = "SET LOCAL lock_timeout = '10s';";

/// The key ids pgveil knows (current and previous master keys): values under any other id
/// cannot be decrypted, so the envelope constraint accepts these only.
pub fn known_key_ids(config: &Config) -> Result<Vec<u32>, LiveError> {
    match crate::server::load_key_ring(config) {
        Ok(Some(ring)) => Ok(ring.key_ids()),
        Ok(None) => Ok(Vec::new()),
        Err(e) => Err(LiveError::Keys(format!("[keys] {e}"))),
    }
}

/// Whether the policy denies a column to a session with `roles` (the most permissive rule
/// among the roles the column names; `default_access` when it names none).
fn denies(column: &ColumnConfig, roles: &[String], default_access: Access) -> bool {
    most_permissive(roles.iter().filter_map(|r| column.access.get(r).copied()))
        .unwrap_or(default_access)
        == Access::Deny
}

/// Reads the state of every configured column, its table's grants and the roles.
pub async fn inspect(client: &Client, config: &Config) -> Result<Inspection, LiveError> {
    let key_ids = known_key_ids(config)?;
    let mut inspection = Inspection {
        columns: Vec::new(),
        tables: Vec::new(),
        roles: read_roles(client).await?,
        rules: config
            .columns
            .iter()
            .map(|c| (c.column.qualified_name(), c.clone()))
            .collect(),
        default_access: config.policy.default_access,
    };
    let mut by_table: BTreeMap<&TableName, Vec<&ColumnConfig>> = BTreeMap::new();
    for c in &config.columns {
        by_table.entry(&c.column.table).or_default().push(c);
    }
    for (table, protected) in by_table {
        let rows = client
            .query(SQL_TABLE, &[&table.schema, &table.name])
            .await?;
        let Some(row) = rows.first() else {
            for c in protected {
                inspection.columns.push(ColumnState {
                    table: table.clone(),
                    column: c.column.column.clone(),
                    constraint: ConstraintState::Absent,
                    check: String::new(),
                    denied_readers: Vec::new(),
                });
            }
            continue;
        };
        let oid: u32 = row.try_get(0)?;
        let state = read_table(client, table, oid).await?;
        for c in protected {
            let envelope = EnvelopeConstraint::new(
                table,
                &c.column.column,
                &c.column.column,
                c.column.mode,
                &key_ids,
            );
            let check = envelope.expression();
            let constraint =
                column_constraint(client, table, oid, &state, &envelope, &check).await?;
            let denied_readers = if constraint == ConstraintState::Absent {
                Vec::new()
            } else {
                inspection.denied_readers(client, oid, c).await?
            };
            inspection.columns.push(ColumnState {
                table: table.clone(),
                column: c.column.column.clone(),
                constraint,
                check,
                denied_readers,
            });
        }
        inspection.tables.push(state);
    }
    Ok(inspection)
}

async fn read_roles(client: &Client) -> Result<BTreeMap<String, Role>, LiveError> {
    let mut roles = BTreeMap::new();
    for row in client.query(SQL_ROLES, &[]).await? {
        let name: String = row.try_get(0)?;
        let superuser: bool = row.try_get(1)?;
        let member_of: Vec<String> = row.try_get(2)?;
        roles.insert(
            name,
            Role {
                superuser,
                member_of,
            },
        );
    }
    Ok(roles)
}

async fn read_table(client: &Client, table: &TableName, oid: u32) -> Result<TableState, LiveError> {
    let mut state = TableState {
        name: table.clone(),
        columns: Vec::new(),
        bytea: BTreeSet::new(),
        table_grants: BTreeMap::new(),
        column_grants: BTreeMap::new(),
    };
    for row in client.query(SQL_COLUMNS, &[&oid]).await? {
        let name: String = row.try_get(0)?;
        if row.try_get::<_, bool>(1)? {
            state.bytea.insert(name.clone());
        }
        state.columns.push(name);
    }
    for row in client.query(SQL_TABLE_GRANTS, &[&oid]).await? {
        let grantee = Grantee::from_db(row.try_get(0)?);
        let grantable: bool = row.try_get(1)?;
        let entry = state.table_grants.entry(grantee).or_insert(false);
        *entry |= grantable;
    }
    for row in client.query(SQL_COLUMN_GRANTS, &[&oid]).await? {
        let column: String = row.try_get(0)?;
        let grantee = Grantee::from_db(row.try_get(1)?);
        state
            .column_grants
            .entry(column)
            .or_default()
            .insert(grantee);
    }
    Ok(state)
}

/// Where one column's constraint stands; a column without it is probed for values that
/// have no envelope (a full read of the table, under the lightest lock).
async fn column_constraint(
    client: &Client,
    table: &TableName,
    oid: u32,
    state: &TableState,
    envelope: &EnvelopeConstraint,
    check: &str,
) -> Result<ConstraintState, LiveError> {
    let column = envelope.column.as_str();
    if !state.columns.iter().any(|c| c == column) {
        return Ok(ConstraintState::Absent);
    }
    if !state.bytea.contains(column) {
        return Ok(ConstraintState::NotBytea);
    }
    let rows = client
        .query(SQL_CONSTRAINT, &[&oid, &envelope.name])
        .await?;
    let existing = match rows.first() {
        Some(row) => Some((row.try_get::<_, bool>(0)?, row.try_get::<_, String>(1)?)),
        None => None,
    };
    let outdated = match &existing {
        Some((validated, definition)) if envelope.matches_definition(definition) => {
            if *validated {
                return Ok(ConstraintState::InPlace);
            }
            false
        }
        Some(_) => true,
        None => false,
    };
    // Child tables too: the constraint is inherited by them.
    let probe = format!(
        "SELECT EXISTS (SELECT 1 FROM {} WHERE NOT ({check}))",
        table_sql(table)
    );
    let plaintext: bool = client.query_one(probe.as_str(), &[]).await?.try_get(0)?;
    if plaintext {
        return Ok(ConstraintState::Plaintext);
    }
    Ok(match existing {
        Some((false, _)) if !outdated => ConstraintState::NotValidated,
        _ => ConstraintState::Missing { outdated },
    })
}

impl Inspection {
    fn rule(&self, table: &TableName, column: &str) -> Option<&ColumnConfig> {
        self.rules.get(&format!("{table}.{column}"))
    }

    /// A grantee's roles as pgveil resolves them (PUBLIC: none, so `default_access`).
    fn roles_of(&self, grantee: &Grantee) -> Vec<String> {
        match grantee {
            Grantee::Public => Vec::new(),
            Grantee::Role(r) => self
                .roles
                .get(r)
                .map_or_else(|| vec![r.clone()], |role| role.member_of.clone()),
        }
    }

    fn grantee_denied(&self, grantee: &Grantee, column: &ColumnConfig) -> bool {
        denies(column, &self.roles_of(grantee), self.default_access)
    }

    async fn denied_readers(
        &self,
        client: &Client,
        oid: u32,
        column: &ColumnConfig,
    ) -> Result<Vec<Grantee>, LiveError> {
        let mut readers = Vec::new();
        for row in client
            .query(SQL_READERS, &[&oid, &column.column.column])
            .await?
        {
            let grantee = Grantee::from_db(row.try_get(0)?);
            if self.grantee_denied(&grantee, column) {
                readers.push(grantee);
            }
        }
        Ok(readers)
    }

    /// The SQL that makes the database enforce what it can, and what it cannot.
    pub fn plan(&self) -> Plan {
        let mut plan = Plan::default();
        for c in &self.columns {
            let name = ident(&constraint_name(&c.column));
            let alter = format!("ALTER TABLE {}", table_sql(&c.table));
            match &c.constraint {
                ConstraintState::InPlace | ConstraintState::Absent => {}
                ConstraintState::NotValidated => {
                    plan.validate
                        .push(format!("{alter} VALIDATE CONSTRAINT {name}"));
                }
                ConstraintState::Missing { outdated } => {
                    if *outdated {
                        plan.transaction
                            .push(format!("{alter} DROP CONSTRAINT {name}"));
                    }
                    plan.transaction.push(format!(
                        "{alter} ADD CONSTRAINT {name} CHECK ({}) NOT VALID",
                        c.check
                    ));
                    plan.validate
                        .push(format!("{alter} VALIDATE CONSTRAINT {name}"));
                }
                ConstraintState::NotBytea => plan.warnings.push(format!(
                    "column {}.{} is not bytea yet (not migrated): its envelope constraint is skipped",
                    c.table, c.column
                )),
                ConstraintState::Plaintext => plan.warnings.push(format!(
                    "column {}.{} {PLAINTEXT}: its envelope constraint is skipped",
                    c.table, c.column
                )),
            }
        }
        for table in &self.tables {
            self.plan_privileges(table, &mut plan);
        }
        plan.warnings.extend(self.unstoppable());
        plan
    }

    /// The protected columns of `table` the policy denies `grantee`.
    fn denied_columns<'t>(&self, table: &'t TableState, grantee: &Grantee) -> BTreeSet<&'t str> {
        table
            .columns
            .iter()
            .filter(|col| {
                self.rule(&table.name, col)
                    .is_some_and(|rule| self.grantee_denied(grantee, rule))
            })
            .map(String::as_str)
            .collect()
    }

    fn is_superuser(&self, grantee: &Grantee) -> bool {
        matches!(grantee, Grantee::Role(r) if self.roles.get(r).is_some_and(|x| x.superuser))
    }

    fn plan_privileges(&self, table: &TableState, plan: &mut Plan) {
        let t = table_sql(&table.name);
        let mut replaced = BTreeSet::new();
        for (grantee, grantable) in &table.table_grants {
            let denied = self.denied_columns(table, grantee);
            // A superuser reads whatever its privileges say; revoking changes nothing.
            if denied.is_empty() || self.is_superuser(grantee) {
                continue;
            }
            let g = grantee_sql(grantee);
            plan.transaction
                .push(format!("REVOKE SELECT ON {t} FROM {g}"));
            let readable: Vec<String> = table
                .columns
                .iter()
                .filter(|c| !denied.contains(c.as_str()))
                .map(|c| ident(c))
                .collect();
            if !readable.is_empty() {
                let option = if *grantable { " WITH GRANT OPTION" } else { "" };
                plan.transaction.push(format!(
                    "GRANT SELECT ({}) ON {t} TO {g}{option}",
                    readable.join(", ")
                ));
            }
            replaced.insert(grantee.clone());
        }
        for (column, grantees) in &table.column_grants {
            let Some(rule) = self.rule(&table.name, column) else {
                continue;
            };
            for grantee in grantees {
                if replaced.contains(grantee)
                    || self.is_superuser(grantee)
                    || !self.grantee_denied(grantee, rule)
                {
                    continue;
                }
                plan.transaction.push(format!(
                    "REVOKE SELECT ({}) ON {t} FROM {}",
                    ident(column),
                    grantee_sql(grantee)
                ));
            }
        }
    }

    /// Roles that can read a column the policy denies them, and will still after `apply`:
    /// superusers, and roles that read through a role (or PUBLIC) the policy lets read it,
    /// or through a predefined role such as `pg_read_all_data`.
    fn unstoppable(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for c in &self.columns {
            let (Some(rule), Some(table)) = (
                self.rule(&c.table, &c.column),
                self.tables.iter().find(|t| t.name == c.table),
            ) else {
                continue;
            };
            for reader in &c.denied_readers {
                let what = format!(
                    "{} can read {}.{} in the database though the policy denies it",
                    reader.describe(),
                    c.table,
                    c.column
                );
                if self.is_superuser(reader) {
                    lines.push(format!(
                        "{what}: a superuser is not bound by privileges; apply cannot change that"
                    ));
                    continue;
                }
                // Who holds the privilege the reader reads through.
                let mut sources: Vec<Grantee> = self
                    .roles_of(reader)
                    .into_iter()
                    .map(Grantee::Role)
                    .collect();
                sources.push(Grantee::Public);
                let holders: Vec<&Grantee> = sources
                    .iter()
                    .filter(|s| {
                        table.table_grants.contains_key(s)
                            || table
                                .column_grants
                                .get(&c.column)
                                .is_some_and(|g| g.contains(s))
                    })
                    .collect();
                if let Some(allowed) = holders.iter().find(|h| !self.grantee_denied(h, rule)) {
                    lines.push(format!(
                        "{what}: it reads through {}, which the policy lets read it; apply cannot deny one without the other",
                        allowed.describe()
                    ));
                } else if holders.is_empty() {
                    lines.push(format!(
                        "{what}: through a predefined role (such as pg_read_all_data) that apply does not change"
                    ));
                }
            }
        }
        lines
    }

    /// `check --live`: each column whose constraint is missing (or not validated) and each
    /// role the database lets read a column the policy denies, located in the file.
    pub fn warnings(&self, locator: &Locator) -> Vec<String> {
        let mut lines = Vec::new();
        for c in &self.columns {
            let at = locator.column(&c.table, &c.column);
            let name = constraint_name(&c.column);
            let what = match &c.constraint {
                ConstraintState::InPlace | ConstraintState::Absent | ConstraintState::NotBytea => {
                    None
                }
                ConstraintState::NotValidated => Some(format!(
                    "column {}.{} has its constraint {name} not validated yet (pgveil apply validates it)",
                    c.table, c.column
                )),
                ConstraintState::Missing { outdated: false } => Some(format!(
                    "column {}.{} has no constraint {name}: the database would store plaintext written around pgveil (pgveil apply adds it)",
                    c.table, c.column
                )),
                ConstraintState::Missing { outdated: true } => Some(format!(
                    "column {}.{}: constraint {name} does not accept the current key ids (pgveil apply replaces it)",
                    c.table, c.column
                )),
                ConstraintState::Plaintext => Some(format!(
                    "column {}.{} {PLAINTEXT}, so it has no constraint {name}",
                    c.table, c.column
                )),
            };
            if let Some(what) = what {
                lines.push(locator.at(at.clone(), format!("warning: {what}")));
            }
            for reader in &c.denied_readers {
                let mut line = format!(
                    "warning: {} can read {}.{} in the database though the policy denies it",
                    reader.describe(),
                    c.table,
                    c.column
                );
                line.push_str(if self.is_superuser(reader) {
                    " (a superuser)"
                } else {
                    " (pgveil apply revokes what it can)"
                });
                lines.push(locator.at(at.clone(), line));
            }
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_only_when_needed() {
        assert_eq!(ident("patients"), "patients");
        assert_eq!(ident("birth_date2"), "birth_date2");
        assert_eq!(ident("Cli Billing"), "\"Cli Billing\"");
        assert_eq!(ident("user"), "\"user\"");
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(ident("9lives"), "\"9lives\"");
        assert_eq!(ident(""), "\"\"");
    }

    #[test]
    fn deny_follows_the_most_permissive_named_role() {
        let column = ColumnConfig {
            column: crate::schema::ProtectedColumn {
                table: TableName::new("public", "patients"),
                column: "ssn".into(),
                logical_type: crate::schema::LogicalType::Text,
                mode: crate::schema::EncryptionMode::Deterministic,
                domain: None,
            },
            access: [
                ("clinician".to_string(), Access::Plaintext),
                ("temp".to_string(), Access::Deny),
            ]
            .into(),
        };
        let roles = |r: &[&str]| r.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(!denies(
            &column,
            &roles(&["alice", "clinician"]),
            Access::Deny
        ));
        assert!(denies(&column, &roles(&["guest"]), Access::Deny));
        assert!(!denies(&column, &roles(&["guest"]), Access::Plaintext));
        // A named deny wins over a permissive default.
        assert!(denies(&column, &roles(&["temp"]), Access::Plaintext));
        assert!(!denies(
            &column,
            &roles(&["temp", "clinician"]),
            Access::Deny
        ));
        assert!(denies(&column, &[], Access::Deny));
    }
}
