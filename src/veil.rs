//! What every session shares: the protected columns with their ciphers and access rules,
//! the cache of analysed statements, and what pgveil knows of each database (its relations).
//!
//! A `Veil` is immutable apart from its caches; a configuration reload builds a new one and
//! swaps it in, so a session sees one consistent policy per statement.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use crate::config::Config;
use crate::crypto::envelope::ColumnCipher;
use crate::crypto::keyring::KeyRing;
use crate::schema::TableName;
use crate::sql::{self, AnalyzeError, ColumnRef, Protection, StatementPlan, StaticCatalog};

/// Plans cached per database before the cache is cleared and starts over.
const PLAN_CACHE_LIMIT: usize = 10_000;

pub struct Veil {
    pub protection: Protection,
    ciphers: Vec<ColumnCipher>,
    databases: Mutex<HashMap<String, Arc<Database>>>,
}

/// One database's relations, and where protected columns sit in them.
pub struct Database {
    pub tables: StaticCatalog,
    /// (table OID, attribute number) → protected column, as RowDescription reports them.
    pub by_attribute: HashMap<(u32, i16), ColumnRef>,
    plans: Mutex<PlanCache>,
    /// Statement text → its audit fingerprint.
    fingerprints: Mutex<HashMap<String, String>>,
}

/// Analyses by search path, then query text (two levels, so a hit allocates nothing).
type PlanCache = HashMap<Vec<String>, HashMap<String, Arc<Analysis>>>;

/// The analysis of one query string, shared by every session that sends it.
pub type Analysis = Result<Vec<StatementPlan>, AnalyzeError>;

impl Database {
    pub fn new(
        mut tables: StaticCatalog,
        views: &[(TableName, TableName)],
        protection: &Protection,
    ) -> Self {
        let mut reading: HashSet<TableName> = protection.protected_tables().cloned().collect();
        let mut protected_views = Vec::new();
        // Views over views: follow the dependencies until nothing new is found.
        loop {
            let found: Vec<TableName> = views
                .iter()
                .filter(|(view, read)| reading.contains(read) && !reading.contains(view))
                .map(|(view, _)| view.clone())
                .collect();
            if found.is_empty() {
                break;
            }
            for view in found {
                protected_views.push(view.clone());
                reading.insert(view);
            }
        }
        // Views are told by their resolved name, so only the view a statement really
        // reads (in this session's search path) is refused.
        tables.set_protected_views(protected_views);
        let mut by_attribute = HashMap::new();
        for table in tables.tables() {
            for column in &table.columns {
                // A shadow column `pgveil migrate` fills holds its column's ciphertext, and
                // becomes that column at the swap: described so even by a catalog read
                // before the swap.
                let configured = protection.lookup(&table.name, &column.name).or_else(|| {
                    let plain = column.name.strip_suffix("__pgveil")?;
                    protection.lookup(&table.name, plain)
                });
                if let Some(col) = configured {
                    by_attribute.insert((table.oid, column.attnum), col);
                }
            }
        }
        Self {
            tables,
            by_attribute,
            plans: Mutex::new(HashMap::new()),
            fingerprints: Mutex::new(HashMap::new()),
        }
    }

    /// True when `sql` may name a protected table or a view over one, so it must be
    /// analysed: whole words only, as the analysis then resolves each name.
    pub fn may_touch_protected(&self, sql: &str, protection: &Protection) -> bool {
        use sql::Catalog;
        sql::may_touch_protected(sql, protection) || self.tables.mentions_protected_view(sql)
    }

    /// Analyses `sql` once per search path; later calls share the result.
    pub fn analyze(
        &self,
        sql: &str,
        protection: &Protection,
        search_path: &[String],
    ) -> Arc<Analysis> {
        if let Some(found) = lock(&self.plans)
            .get(search_path)
            .and_then(|by_text| by_text.get(sql))
        {
            return found.clone();
        }
        let analysis = Arc::new(sql::analyze(sql, protection, &self.tables, search_path));
        let mut plans = lock(&self.plans);
        if plans.values().map(HashMap::len).sum::<usize>() >= PLAN_CACHE_LIMIT {
            plans.clear();
        }
        plans
            .entry(search_path.to_vec())
            .or_default()
            .insert(sql.to_string(), analysis.clone());
        analysis
    }

    /// The audit fingerprint of a statement's text, computed once.
    pub fn fingerprint(&self, statement: &str) -> String {
        if let Some(found) = lock(&self.fingerprints).get(statement) {
            return found.clone();
        }
        let fingerprint = sql::fingerprint(statement);
        let mut cache = lock(&self.fingerprints);
        if cache.len() >= PLAN_CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(statement.to_string(), fingerprint.clone());
        fingerprint
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Veil {
    /// `None` master key is allowed only when no column is configured.
    pub fn new(config: &Config, master: Option<&KeyRing>) -> Option<Self> {
        let columns = config.protected_columns();
        if !columns.is_empty() && master.is_none() {
            return None;
        }
        let ciphers = match master {
            Some(master) => columns
                .iter()
                .map(|c| master.column_cipher(c).ok())
                .collect::<Option<_>>()?,
            None => Vec::new(),
        };
        Some(Self {
            protection: Protection::new(columns, config.subjects()),
            ciphers,
            databases: Mutex::new(HashMap::new()),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.protection.columns().is_empty()
    }

    pub fn cipher(&self, column: ColumnRef) -> Option<&ColumnCipher> {
        self.ciphers.get(column.0)
    }

    pub fn database(&self, name: &str) -> Option<Arc<Database>> {
        lock(&self.databases).get(name).cloned()
    }

    pub fn install_database(&self, name: &str, database: Database) -> Arc<Database> {
        let database = Arc::new(database);
        lock(&self.databases).insert(name.to_string(), database.clone());
        database
    }
}
