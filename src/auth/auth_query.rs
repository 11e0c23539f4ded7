//! Where verifiers come from with `auth = "scram"`: `auth_query` run over pgveil's own
//! `auth_user` login (PgBouncer's model), one connection per database it runs in, kept open
//! and re-opened when it breaks. Answers are cached briefly (`auth_cache_secs`); a login that
//! fails drops its entry, so a changed password is seen on the next attempt.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_postgres::{Client, Statement};
use zeroize::Zeroizing;

use super::verifier::Verifier;
use crate::config::UpstreamConfig;
use crate::net::pgclient;

/// Entries kept at most; past it, expired ones are dropped and new answers go uncached.
const MAX_CACHED: usize = 10_000;

/// What the database says about a login.
#[derive(Debug)]
pub enum Lookup {
    Found(Verifier),
    /// The role exists but has no password pgveil can check (NULL, or not a SCRAM or md5
    /// verifier): the database authenticates it some other way (trust, cert, ...).
    NoPassword,
    /// No such role.
    Unknown,
}

#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("cannot log in as auth_user \"{user}\" to database \"{database}\": {reason}")]
    Login {
        user: String,
        database: String,
        reason: String,
    },
    #[error("auth_query failed: {0}")]
    Query(String),
    #[error("auth_query must take one parameter ($1, the user name) and return the user name and the password verifier; it takes {params} and returns {columns} column(s)")]
    Shape { params: usize, columns: usize },
    #[error("auth_query did not answer within {0:?}")]
    Timeout(Duration),
}

impl LookupError {
    /// The `auth_user` login itself failed (as opposed to the query).
    pub fn is_login(&self) -> bool {
        matches!(self, Self::Login { .. } | Self::Timeout(_))
    }
}

/// Cached answers by (database the query runs in, user), with when they were fetched.
type Cache = HashMap<(String, String), (Instant, Arc<Lookup>)>;

struct AuthConnection {
    client: Client,
    statement: Statement,
}

pub struct VerifierSource {
    upstream: UpstreamConfig,
    user: String,
    password: Option<Zeroizing<String>>,
    query: String,
    /// `auth_dbname`: where the query runs; `None`: in the database the client asks for.
    database: Option<String>,
    ttl: Duration,
    connections: tokio::sync::Mutex<HashMap<String, Arc<AuthConnection>>>,
    cache: Mutex<Cache>,
}

impl VerifierSource {
    pub fn new(
        upstream: &UpstreamConfig,
        user: String,
        password: Option<Zeroizing<String>>,
    ) -> Self {
        Self {
            upstream: upstream.clone(),
            user,
            password,
            query: upstream.auth_query.clone(),
            database: upstream.auth_dbname.clone(),
            ttl: upstream.auth_cache_ttl,
            connections: tokio::sync::Mutex::new(HashMap::new()),
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn key(&self, database: &str, user: &str) -> (String, String) {
        (
            self.database.as_deref().unwrap_or(database).to_string(),
            user.to_string(),
        )
    }

    /// The login's verifier, from the cache while it is fresh unless `fresh` (a login that
    /// will get a kept database connection is checked against the database's current answer,
    /// since no database login follows that would refuse an outdated one).
    pub async fn lookup(
        &self,
        database: &str,
        user: &str,
        fresh: bool,
    ) -> Result<Arc<Lookup>, LookupError> {
        let key = self.key(database, user);
        if let Some(hit) = self.cached(&key).filter(|_| !fresh) {
            return Ok(hit);
        }
        let timeout = self.upstream.connect_timeout;
        let answer = tokio::time::timeout(timeout, self.query(&key.0, user))
            .await
            .map_err(|_| LookupError::Timeout(timeout))??;
        let answer = Arc::new(answer);
        self.remember(key, answer.clone());
        Ok(answer)
    }

    /// Drops the cached answer for a login, after a failure.
    pub fn forget(&self, database: &str, user: &str) {
        let key = self.key(database, user);
        self.lock_cache().remove(&key);
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn cached(&self, key: &(String, String)) -> Option<Arc<Lookup>> {
        let cache = self.lock_cache();
        let (at, answer) = cache.get(key)?;
        (at.elapsed() < self.ttl).then(|| answer.clone())
    }

    fn remember(&self, key: (String, String), answer: Arc<Lookup>) {
        if self.ttl.is_zero() {
            return;
        }
        let mut cache = self.lock_cache();
        if cache.len() >= MAX_CACHED {
            let ttl = self.ttl;
            cache.retain(|_, (at, _)| at.elapsed() < ttl);
        }
        if cache.len() < MAX_CACHED {
            cache.insert(key, (Instant::now(), answer));
        }
    }

    async fn query(&self, database: &str, user: &str) -> Result<Lookup, LookupError> {
        // A connection the database closed (restart, idle timeout) is opened again once.
        for _ in 0..2 {
            let connection = self.connection(database).await?;
            match connection
                .client
                .query(&connection.statement, &[&user])
                .await
            {
                Ok(rows) => return read_rows(&rows),
                Err(_) if connection.client.is_closed() => {
                    self.connections.lock().await.remove(database);
                }
                Err(e) => return Err(LookupError::Query(pgclient::error_text(&e))),
            }
        }
        Err(LookupError::Query(
            "the auth_user connection closed twice in a row".into(),
        ))
    }

    async fn connection(&self, database: &str) -> Result<Arc<AuthConnection>, LookupError> {
        let mut connections = self.connections.lock().await;
        if let Some(connection) = connections.get(database) {
            if !connection.client.is_closed() {
                return Ok(connection.clone());
            }
        }
        let login = pgclient::Login {
            user: &self.user,
            password: self.password.as_ref().map(|p| p.as_str()),
            database,
            application: "pgveil auth_query",
        };
        let client = pgclient::connect(&self.upstream, &login)
            .await
            .map_err(|reason| LookupError::Login {
                user: self.user.clone(),
                database: database.to_string(),
                reason,
            })?;
        let statement = client
            .prepare(&self.query)
            .await
            .map_err(|e| LookupError::Query(pgclient::error_text(&e)))?;
        let (params, columns) = (statement.params().len(), statement.columns().len());
        if params != 1 || columns < 2 {
            return Err(LookupError::Shape { params, columns });
        }
        let connection = Arc::new(AuthConnection { client, statement });
        connections.insert(database.to_string(), connection.clone());
        Ok(connection)
    }
}

fn read_rows(rows: &[tokio_postgres::Row]) -> Result<Lookup, LookupError> {
    let Some(row) = rows.first() else {
        return Ok(Lookup::Unknown);
    };
    let password: Option<String> = row
        .try_get(1)
        .map_err(|e| LookupError::Query(format!("the verifier column: {e}")))?;
    let password = password.map(Zeroizing::new);
    Ok(match password.as_deref().and_then(|p| Verifier::parse(p)) {
        Some(verifier) => Lookup::Found(verifier),
        None => Lookup::NoPassword,
    })
}
