//! What `migrate` needs to know about a column's table from the catalog: its single-column
//! primary key (rows are batched and reported by it), the column's type in the database, and
//! whether an earlier run left a shadow column.

use tokio_postgres::Client;

use super::MigrateError;
use crate::crypto::constraint::{quote_ident, quote_table, truncate_identifier};
use crate::schema::{LogicalType, ProtectedColumn, TableName};

/// `oid`, and the primary key's columns with their types.
const SQL_TABLE: &str = "\
SELECT c.oid,
       array(SELECT a.attname::text FROM pg_catalog.pg_index i
               JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
              WHERE i.indrelid = c.oid AND i.indisprimary ORDER BY a.attnum),
       array(SELECT pg_catalog.format_type(a.atttypid, a.atttypmod) FROM pg_catalog.pg_index i
               JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
              WHERE i.indrelid = c.oid AND i.indisprimary ORDER BY a.attnum)
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')";

/// A live column's type oid and printed type.
const SQL_COLUMN: &str = "\
SELECT a.atttypid::pg_catalog.int8, pg_catalog.format_type(a.atttypid, a.atttypmod)
  FROM pg_catalog.pg_attribute a
 WHERE a.attrelid = $1 AND a.attname = $2 AND a.attnum > 0 AND NOT a.attisdropped";

const BYTEA_OID: i64 = 17;

#[derive(Debug, Clone)]
pub struct TableInfo {
    pub table: TableName,
    /// The configured column's name.
    pub column: String,
    /// `"schema"."table"`.
    pub quoted_table: String,
    /// The primary key column, quoted, and its type as PostgreSQL prints it.
    pub pk: String,
    pub pk_type: String,
    /// The configured column's type oid and printed type in the database.
    pub type_oid: i64,
    pub type_name: String,
    /// The shadow column of a plaintext migration (`<column>__pgveil`), when it exists.
    pub shadow_exists: bool,
}

impl TableInfo {
    pub async fn load(
        client: &Client,
        column: &ProtectedColumn,
    ) -> Result<TableInfo, MigrateError> {
        let table = &column.table;
        let what = format!("catalog query on {table}");
        let row = client
            .query_opt(SQL_TABLE, &[&table.schema, &table.name])
            .await
            .map_err(MigrateError::db(what.clone()))?
            .ok_or_else(|| MigrateError::NoTable(table.clone()))?;
        let oid: u32 = row.try_get(0).map_err(MigrateError::db(what.clone()))?;
        let pk_names: Vec<String> = row.try_get(1).map_err(MigrateError::db(what.clone()))?;
        let pk_types: Vec<String> = row.try_get(2).map_err(MigrateError::db(what.clone()))?;
        let (pk, pk_type) = match (pk_names.as_slice(), pk_types.as_slice()) {
            ([name], [ty]) => (quote_ident(name), ty.clone()),
            ([], _) => {
                return Err(MigrateError::PrimaryKey {
                    table: table.clone(),
                    found: "none".into(),
                })
            }
            (names, _) => {
                return Err(MigrateError::PrimaryKey {
                    table: table.clone(),
                    found: format!("{} columns", names.len()),
                })
            }
        };
        let lookup = |name: String| {
            let what = what.clone();
            async move {
                client
                    .query_opt(SQL_COLUMN, &[&oid, &name])
                    .await
                    .map_err(MigrateError::db(what))
            }
        };
        let found = lookup(column.column.clone())
            .await?
            .ok_or_else(|| MigrateError::NoColumn(column.qualified_name()))?;
        let type_oid: i64 = found.try_get(0).map_err(MigrateError::db(what.clone()))?;
        let type_name: String = found.try_get(1).map_err(MigrateError::db(what.clone()))?;
        let shadow_exists = lookup(shadow_name(&column.column)).await?.is_some();
        let info = TableInfo {
            table: table.clone(),
            column: column.column.clone(),
            quoted_table: quote_table(table),
            pk,
            pk_type,
            type_oid,
            type_name,
            shadow_exists,
        };
        let expected = column.logical_type;
        if type_oid != BYTEA_OID && !info.holds(expected) {
            return Err(MigrateError::WrongType {
                column: column.qualified_name(),
                found: info.type_name,
                expected: expected.name(),
            });
        }
        Ok(info)
    }

    /// Whether the column is still of a plaintext type (anything but `bytea`; a column whose
    /// logical type is `bytea` is taken as encrypted already).
    pub fn is_plaintext(&self) -> bool {
        self.type_oid != BYTEA_OID
    }

    /// Whether the column's database type can hold the logical type `ty`: the type itself,
    /// or text/varchar (values kept as text, e.g. dates; each is parsed as `ty` and one that
    /// does not parse is reported by row).
    fn holds(&self, ty: LogicalType) -> bool {
        self.type_oid == i64::from(ty.oid()) || matches!(self.type_oid, 25 | 1043)
    }

    pub fn quoted_column(&self) -> String {
        quote_ident(&self.column)
    }

    pub fn quoted_shadow(&self) -> String {
        quote_ident(&shadow_name(&self.column))
    }

    /// `$n::text::<pk type>`: primary keys travel as text.
    pub fn pk_param(&self, n: usize) -> String {
        format!("${n}::pg_catalog.text::{}", self.pk_type)
    }
}

/// The shadow column a plaintext migration fills: `<column>__pgveil`.
pub fn shadow_name(column: &str) -> String {
    crate::schema::shadow_column(column)
}

/// The plaintext column kept after the swap until verification: `<column>__pgveil_plain`.
pub fn plain_name(column: &str) -> String {
    truncate_identifier(&format!("{column}__pgveil_plain"))
}
