//! What every session shares: the protected columns with their ciphers and access rules,
//! the cache of analysed statements, and each database's catalog.
//!
//! A `Veil` is immutable apart from its caches; a configuration reload builds a new one and
//! swaps it in, so a session sees one consistent policy per statement.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use crate::config::{Access, Config};
use crate::crypto::envelope::ColumnCipher;
use crate::crypto::keys::MasterKey;
use crate::sql::{self, AnalyzeError, ColumnRef, Protection, StatementPlan, StaticCatalog};

/// The key id new ciphertexts are written with.
pub const CURRENT_KEY_ID: u32 = 1;
/// Plans cached per database before the cache is cleared and starts over.
const PLAN_CACHE_LIMIT: usize = 10_000;

pub struct Veil {
    pub protection: Protection,
    ciphers: Vec<ColumnCipher>,
    catalogs: Mutex<HashMap<String, Arc<DbCatalog>>>,
}

/// Who may see what: the part of the configuration that a reload changes in open sessions.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// `schema.table.column` → role → access.
    rules: HashMap<String, BTreeMap<String, Access>>,
    default_access: Access,
}

impl Policy {
    pub fn from_config(config: &Config) -> Self {
        Self {
            rules: config
                .columns
                .iter()
                .map(|c| (c.column.qualified_name(), c.access.clone()))
                .collect(),
            default_access: config.policy.default_access,
        }
    }

    /// The access a session with `roles` has to each column of `protection`: the most
    /// permissive rule among its roles, a role no rule names counting as `default_access`.
    pub fn access_for(&self, protection: &Protection, roles: &[String]) -> Vec<Access> {
        protection
            .columns()
            .iter()
            .map(|column| {
                let rules = self.rules.get(&column.qualified_name());
                roles
                    .iter()
                    .map(|role| {
                        rules
                            .and_then(|r| r.get(role))
                            .copied()
                            .unwrap_or(self.default_access)
                    })
                    .max_by_key(|a| a.permissiveness())
                    .unwrap_or(self.default_access)
            })
            .collect()
    }
}

/// One database's relations, and where protected columns sit in them.
pub struct DbCatalog {
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

impl DbCatalog {
    pub fn new(tables: StaticCatalog, protection: &Protection) -> Self {
        let mut by_attribute = HashMap::new();
        for table in tables.tables() {
            for column in &table.columns {
                if let Some(col) = protection.lookup(&table.name, &column.name) {
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
    pub fn new(config: &Config, master: Option<&MasterKey>) -> Option<Self> {
        let columns = config.protected_columns();
        if !columns.is_empty() && master.is_none() {
            return None;
        }
        let ciphers = match master {
            Some(master) => columns
                .iter()
                .map(|c| ColumnCipher::new(master, CURRENT_KEY_ID, c))
                .collect(),
            None => Vec::new(),
        };
        Some(Self {
            protection: Protection::new(columns, config.subjects()),
            ciphers,
            catalogs: Mutex::new(HashMap::new()),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.protection.columns().is_empty()
    }

    pub fn cipher(&self, column: ColumnRef) -> Option<&ColumnCipher> {
        self.ciphers.get(column.0)
    }

    pub fn catalog(&self, database: &str) -> Option<Arc<DbCatalog>> {
        lock(&self.catalogs).get(database).cloned()
    }

    pub fn install_catalog(&self, database: &str, catalog: DbCatalog) -> Arc<DbCatalog> {
        let catalog = Arc::new(catalog);
        lock(&self.catalogs).insert(database.to_string(), catalog.clone());
        catalog
    }
}
