//! What the analysis needs to know: which columns are protected (`Protection`, from the
//! configuration) and which tables and columns exist (`Catalog`, from the database).

use std::collections::{HashMap, HashSet};

use crate::schema::{ProtectedColumn, TableName};

/// Identifies one protected column: an index into [`Protection::columns`]. Cheap to copy,
/// O(1) to look up with [`Protection::column`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ColumnRef(pub usize);

/// The configured protected columns and subject columns, indexed for the analysis.
#[derive(Debug, Clone, Default)]
pub struct Protection {
    columns: Vec<ProtectedColumn>,
    index: HashMap<TableName, HashMap<String, ColumnRef>>,
    subjects: HashMap<TableName, String>,
    /// Lower-case (ASCII) table names, deduplicated, for the fast path.
    needles: Vec<Vec<u8>>,
}

impl Protection {
    pub fn new(columns: Vec<ProtectedColumn>, subjects: HashMap<TableName, String>) -> Self {
        let mut index: HashMap<TableName, HashMap<String, ColumnRef>> = HashMap::new();
        for (i, col) in columns.iter().enumerate() {
            index
                .entry(col.table.clone())
                .or_default()
                .entry(col.column.clone())
                .or_insert(ColumnRef(i));
        }
        let mut seen = HashSet::new();
        let mut needles = Vec::new();
        for table in index.keys() {
            let needle = table.name.to_ascii_lowercase().into_bytes();
            if !needle.is_empty() && seen.insert(needle.clone()) {
                needles.push(needle);
            }
        }
        needles.sort();
        Self {
            columns,
            index,
            subjects,
            needles,
        }
    }

    /// All protected columns; a [`ColumnRef`] indexes this slice.
    pub fn columns(&self) -> &[ProtectedColumn] {
        &self.columns
    }

    /// The protected column behind a reference (`None` only for a reference that came from
    /// another `Protection`).
    pub fn column(&self, c: ColumnRef) -> Option<&ProtectedColumn> {
        self.columns.get(c.0)
    }

    pub fn lookup(&self, table: &TableName, column: &str) -> Option<ColumnRef> {
        self.index.get(table)?.get(column).copied()
    }

    pub fn is_protected_table(&self, table: &TableName) -> bool {
        self.index.contains_key(table)
    }

    pub fn protected_tables(&self) -> impl Iterator<Item = &TableName> {
        self.index.keys()
    }

    /// Protected columns of one table.
    pub fn table_columns(&self, table: &TableName) -> impl Iterator<Item = ColumnRef> + '_ {
        self.index
            .get(table)
            .into_iter()
            .flat_map(|m| m.values().copied())
    }

    /// The subject id column configured for a table.
    pub fn subject_column(&self, table: &TableName) -> Option<&str> {
        self.subjects.get(table).map(String::as_str)
    }

    /// True when some protected table has this (unqualified) name, in any schema.
    pub fn is_protected_name(&self, name: &str) -> bool {
        self.needles.iter().any(|n| n.as_slice() == name.as_bytes())
    }

    /// True when some protected column (of any table) has this name.
    pub fn is_protected_column_name(&self, name: &str) -> bool {
        self.columns.iter().any(|c| c.column == name)
    }

    pub(crate) fn needles(&self) -> &[Vec<u8>] {
        &self.needles
    }
}

/// One column of a relation, as `pg_attribute` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnInfo {
    pub name: String,
    pub attnum: i16,
    pub type_oid: u32,
}

/// One relation, as `pg_class` describes it; `columns` in `attnum` order (no dropped or
/// system columns).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    pub name: TableName,
    pub oid: u32,
    pub columns: Vec<ColumnInfo>,
}

/// Resolves relation names the way PostgreSQL does. Names passed in are already folded
/// (unquoted identifiers lower-cased, quoted ones verbatim).
pub trait Catalog {
    /// `schema` given: that relation or nothing. Otherwise the first schema of
    /// `search_path` (entries as `SHOW search_path` lists them, already unquoted;
    /// `$user` may be left for the implementation to skip or substitute) that has it.
    fn resolve(
        &self,
        schema: Option<&str>,
        name: &str,
        search_path: &[String],
    ) -> Option<TableInfo>;

    /// True when `table` is a view that reads a protected table (directly or through other
    /// views): pgveil cannot see through it, so a statement that reads it is refused.
    fn is_protected_view(&self, _table: &TableName) -> bool {
        false
    }

    /// True when `sql` may name such a view (its name as a whole word, as the fast path
    /// looks for protected tables), so the statement must be analysed.
    fn mentions_protected_view(&self, _sql: &str) -> bool {
        false
    }
}

/// A simple in-memory catalog: for tests, and for the session to fill from `pg_class`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StaticCatalog {
    tables: HashMap<TableName, TableInfo>,
    protected_views: HashSet<TableName>,
    /// Lower-case (ASCII) names of `protected_views`, for [`Catalog::mentions_protected_view`].
    view_needles: Vec<Vec<u8>>,
}

impl StaticCatalog {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, table: TableInfo) {
        self.tables.insert(table.name.clone(), table);
    }

    /// Convenience for tests: a table whose columns (in `attnum` order) all have type
    /// `bytea` (OID 17).
    pub fn add_table(&mut self, schema: &str, name: &str, oid: u32, columns: &[&str]) {
        let columns = columns
            .iter()
            .enumerate()
            .map(|(i, c)| ColumnInfo {
                name: (*c).to_string(),
                attnum: i16::try_from(i + 1).unwrap_or(i16::MAX),
                type_oid: 17,
            })
            .collect();
        self.insert(TableInfo {
            name: TableName::new(schema, name),
            oid,
            columns,
        });
    }

    pub fn tables(&self) -> impl Iterator<Item = &TableInfo> {
        self.tables.values()
    }

    /// Marks views that read a protected table.
    pub fn set_protected_views(&mut self, views: impl IntoIterator<Item = TableName>) {
        self.protected_views = views.into_iter().collect();
        let mut needles: Vec<Vec<u8>> = self
            .protected_views
            .iter()
            .map(|v| v.name.to_ascii_lowercase().into_bytes())
            .filter(|n| !n.is_empty())
            .collect();
        needles.sort();
        needles.dedup();
        self.view_needles = needles;
    }
}

/// The session's own temporary schema (`pg_temp_N`) in its search path, where
/// `current_schemas(true)` lists it once it exists.
fn own_temp_schema(search_path: &[String]) -> Option<&str> {
    search_path
        .iter()
        .map(String::as_str)
        .find(|s| s.starts_with("pg_temp_"))
}

impl Catalog for StaticCatalog {
    fn resolve(
        &self,
        schema: Option<&str>,
        name: &str,
        search_path: &[String],
    ) -> Option<TableInfo> {
        match schema {
            // `pg_temp` is this session's temporary schema, never another session's.
            Some("pg_temp") => own_temp_schema(search_path)
                .and_then(|s| self.tables.get(&TableName::new(s, name)))
                .cloned(),
            Some(s) => self.tables.get(&TableName::new(s, name)).cloned(),
            None => {
                // PostgreSQL looks in pg_catalog first unless the path names it.
                let implicit = (!search_path.iter().any(|s| s == "pg_catalog"))
                    .then(|| "pg_catalog".to_string());
                implicit
                    .iter()
                    .chain(search_path.iter())
                    .filter(|s| s.as_str() != "$user")
                    .find_map(|s| self.tables.get(&TableName::new(s.as_str(), name)))
                    .cloned()
            }
        }
    }

    fn is_protected_view(&self, table: &TableName) -> bool {
        self.protected_views.contains(table)
    }

    fn mentions_protected_view(&self, sql: &str) -> bool {
        self.view_needles
            .iter()
            .any(|n| super::fast::contains_word(sql.as_bytes(), n))
    }
}
