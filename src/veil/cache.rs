//! One database's caches of analyses and audit fingerprints, bounded by least-recent use.
//!
//! Analyses are keyed by search path and text. A text whose literals bound for protected
//! columns or consumed as opaque plain values (see `sql::template`) are all that differs
//! from an earlier one shares that one's analysis through a
//! [`sql::Template`] (keyed by search path and [`sql::Shape`]); texts that cannot share
//! (see `sql::template`) are cached by their exact text. Hits and misses are counted in
//! Prometheus metrics, which never carry SQL.

use std::fmt::Write as _;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use lru::LruCache;

use crate::sql::{self, Catalog, Protection, StaticCatalog};

use super::Analysis;

/// Entries per cache and database (each of: exact texts, templates, fingerprints).
const CACHE_CAPACITY: NonZeroUsize = match NonZeroUsize::new(10_000) {
    Some(n) => n,
    None => panic!("cache capacity must not be zero"),
};

pub(super) struct Caches {
    plans: Mutex<Plans>,
    fingerprints: Mutex<LruCache<String, String>>,
}

struct Plans {
    exact: LruCache<String, Arc<Analysis>>,
    templates: LruCache<String, Arc<sql::Template>>,
}

/// The key of `text` under `search_path`: the path's names length-prefixed, so no two
/// (path, text) pairs share a key.
fn key(search_path: &[String], text: &str) -> String {
    let mut key = String::with_capacity(text.len() + 16 * search_path.len() + 8);
    let _ = write!(key, "{}", search_path.len());
    for schema in search_path {
        let _ = write!(key, ":{}:{schema}", schema.len());
    }
    key.push('|');
    key.push_str(text);
    key
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Caches {
    pub(super) fn new() -> Self {
        Self::with_capacity(CACHE_CAPACITY)
    }

    fn with_capacity(capacity: NonZeroUsize) -> Self {
        Self {
            plans: Mutex::new(Plans {
                exact: LruCache::new(capacity),
                templates: LruCache::new(capacity),
            }),
            fingerprints: Mutex::new(LruCache::new(capacity)),
        }
    }

    /// The analysis of `text` under `search_path`, from a cache or made and cached.
    pub(super) fn analyze(
        &self,
        text: &str,
        protection: &Protection,
        tables: &StaticCatalog,
        search_path: &[String],
    ) -> Arc<Analysis> {
        let exact_key = key(search_path, text);
        if let Some(found) = lock(&self.plans).exact.get(&exact_key) {
            crate::metrics::get().plan_cache_hits_exact.increment(1);
            return found.clone();
        }
        let shape = sql::Shape::of(text);
        let shape_key = shape.as_ref().map(|s| key(search_path, s.key()));
        let template = shape_key
            .as_ref()
            .and_then(|k| lock(&self.plans).templates.get(k).cloned());
        if let (Some(template), Some(shape)) = (&template, &shape) {
            if let Some(plans) = template.apply(shape, text) {
                crate::metrics::get().plan_cache_hits_shape.increment(1);
                return Arc::new(Ok(plans));
            }
        }
        crate::metrics::get().plan_cache_misses.increment(1);
        let analysis = sql::analyze(text, protection, tables as &dyn Catalog, search_path);
        let made = match (&analysis, &shape, &template) {
            // A template of this shape whose fixed literals differ stays: this text is
            // cached by itself.
            (Ok(plans), Some(shape), None) => sql::Template::new(shape, text, plans),
            _ => None,
        };
        let analysis = Arc::new(analysis);
        let mut plans = lock(&self.plans);
        match (made, shape_key) {
            (Some(template), Some(k)) => {
                plans.templates.put(k, Arc::new(template));
            }
            _ => {
                plans.exact.put(exact_key, analysis.clone());
            }
        }
        analysis
    }

    /// The audit fingerprint of a statement's text, computed once.
    pub(super) fn fingerprint(&self, statement: &str) -> String {
        if let Some(found) = lock(&self.fingerprints).get(statement) {
            crate::metrics::get().fingerprint_cache_hits.increment(1);
            return found.clone();
        }
        crate::metrics::get().fingerprint_cache_misses.increment(1);
        let fingerprint = sql::fingerprint(statement);
        lock(&self.fingerprints).put(statement.to_string(), fingerprint.clone());
        fingerprint
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::schema::{EncryptionMode, LogicalType, ProtectedColumn, TableName};

    fn setup() -> (Protection, StaticCatalog) {
        let column = ProtectedColumn {
            table: TableName::new("public", "p"),
            column: "ssn".into(),
            logical_type: LogicalType::Text,
            mode: EncryptionMode::Deterministic,
            domain: None,
        };
        let mut tables = StaticCatalog::new();
        tables.add_table("public", "p", 1, &["id", "ssn"]);
        tables.add_table("other", "p", 2, &["id", "ssn"]);
        (Protection::new(vec![column], HashMap::new()), tables)
    }

    fn sizes(c: &Caches) -> (usize, usize) {
        let plans = lock(&c.plans);
        (plans.exact.len(), plans.templates.len())
    }

    #[test]
    fn shapes_share_exact_texts_repeat_and_paths_stay_apart() {
        let (protection, tables) = setup();
        let caches = Caches::with_capacity(NonZeroUsize::new(4).unwrap());
        let public = vec!["public".to_string()];
        let other = vec!["other".to_string()];
        let run = |sql: &str, path: &[String]| {
            let a = caches.analyze(sql, &protection, &tables, path);
            assert_eq!(*a, sql::analyze(sql, &protection, &tables, path), "{sql}");
            a
        };
        let first = run("SELECT id FROM p WHERE ssn = 'a'", &public);
        assert_eq!(sizes(&caches), (0, 1));
        let second = run("SELECT id FROM p WHERE ssn = 'bcd'", &public);
        assert_eq!(sizes(&caches), (0, 1));
        let (Ok(first), Ok(second)) = (&*first, &*second) else {
            panic!("not analysed")
        };
        assert_eq!(first[0].literals[0].value.as_deref(), Some("a"));
        assert_eq!(second[0].literals[0].value.as_deref(), Some("bcd"));
        // Another search path resolves p elsewhere (unprotected): a template of its own,
        // whose literal is plain (compared with an unprotected column).
        let elsewhere = run("SELECT id FROM p WHERE ssn = 'a'", &other);
        assert_eq!(sizes(&caches), (0, 2));
        run("SELECT id FROM p WHERE ssn = 'b'", &other);
        assert_eq!(sizes(&caches), (0, 2));
        let Ok(elsewhere) = &*elsewhere else {
            panic!("not analysed")
        };
        assert_eq!(elsewhere[0].tables, vec![TableName::new("other", "p")]);
        assert!(elsewhere[0].literals.is_empty());
        // Nothing to generalize: by exact text (also with a LIMIT, which is read).
        run("SELECT id FROM p WHERE ssn = $1", &public);
        run("SELECT id FROM p WHERE ssn = $1", &public);
        assert_eq!(sizes(&caches), (1, 2));
        // Bounded: the least recently used entries go first.
        for i in 0..10 {
            run(
                &format!("SELECT id FROM p WHERE ssn = $1 LIMIT {i}"),
                &public,
            );
        }
        assert_eq!(sizes(&caches), (4, 2));
        assert!(lock(&caches.plans)
            .exact
            .peek(&key(&public, "SELECT id FROM p WHERE ssn = $1 LIMIT 9"))
            .is_some());
        assert!(lock(&caches.plans)
            .exact
            .peek(&key(&public, "SELECT id FROM p WHERE ssn = $1"))
            .is_none());
    }

    #[test]
    fn keys_do_not_collide_across_search_paths() {
        let a = key(&["a:1".to_string()], "x");
        let b = key(&["a".to_string(), "1".to_string()], "x");
        assert_ne!(a, b);
        assert_ne!(key(&[], "1:a|x"), key(&["a".to_string()], "x"));
    }
}
