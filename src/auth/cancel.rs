//! Cancel keys with `auth = "scram"`: a client never sees its database connection's real
//! BackendKeyData, since with server reuse that connection later serves other clients of the
//! same login, whose queries a former client could then cancel. Each client gets a key of
//! pgveil's own (random process id and secret) mapped to the connection's real key for as
//! long as the client is connected; a CancelRequest is forwarded only when its secret matches
//! (compared in constant time).
//!
//! The race with reuse: a cancel matched just before the client left may still be on its way
//! to the database when the connection is reset for the next client. [`Registration::retire`]
//! removes the mapping and then waits for every forward in flight to finish (the database has
//! signalled its backend by the time it closes the cancel connection); a late signal then
//! lands on the reset (which fails, and the connection is closed) or on an idle backend (which
//! PostgreSQL ignores), never on the next client's query.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rand::{Rng, RngCore};
use subtle::ConstantTimeEq;
use tokio::sync::{OwnedRwLockReadGuard, RwLock};

/// A database backend's key, as its BackendKeyData gave it.
#[derive(Clone)]
pub struct BackendKey {
    pub pid: u32,
    pub secret: Vec<u8>,
}

struct Target {
    secret: Vec<u8>,
    backend: BackendKey,
    /// Held (read) by each forward in flight; taken (write) once the mapping is removed.
    inflight: Arc<RwLock<()>>,
}

/// The mapping from the keys clients hold to the keys of the backends they use.
#[derive(Default)]
pub struct CancelKeys {
    map: Mutex<HashMap<u32, Arc<Target>>>,
}

/// A cancel request that matched: the backend to signal, and the guard that keeps its
/// connection from being reset until the request has been delivered.
pub struct Matched {
    pub backend: BackendKey,
    _inflight: OwnedRwLockReadGuard<()>,
}

impl CancelKeys {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Arc<Target>>> {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A fresh client key for `backend` (a secret of the same length), registered until the
    /// registration is dropped or retired.
    pub fn register(self: &Arc<Self>, backend: BackendKey) -> Registration {
        let mut secret = vec![0u8; backend.secret.len()];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        let target = Arc::new(Target {
            secret,
            backend,
            inflight: Arc::new(RwLock::new(())),
        });
        let mut map = self.lock();
        let pid = loop {
            // Positive as a signed 32-bit integer, which is how clients hold it.
            let pid = rand::rngs::OsRng.gen_range(1..=i32::MAX as u32);
            if !map.contains_key(&pid) {
                break pid;
            }
        };
        map.insert(pid, target.clone());
        Registration {
            keys: self.clone(),
            pid,
            target,
        }
    }

    /// The backend a client's cancel request names, if its secret matches.
    pub fn matching(&self, pid: u32, secret: &[u8]) -> Option<Matched> {
        let map = self.lock();
        let target = map.get(&pid)?;
        if !bool::from(target.secret.as_slice().ct_eq(secret)) {
            return None;
        }
        // Under the map's lock: retiring removes the entry under it before waiting.
        let guard = target.inflight.clone().try_read_owned().ok()?;
        Some(Matched {
            backend: target.backend.clone(),
            _inflight: guard,
        })
    }

    /// Mappings currently registered.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One client's key; dropping it removes the mapping.
pub struct Registration {
    keys: Arc<CancelKeys>,
    pid: u32,
    target: Arc<Target>,
}

impl Registration {
    /// The key the client is given.
    pub fn client_key(&self) -> (u32, &[u8]) {
        (self.pid, &self.target.secret)
    }

    /// The real key of the backend.
    pub fn backend(&self) -> &BackendKey {
        &self.target.backend
    }

    /// Removes the mapping, then waits until no forward of a cancel request to the backend is
    /// in flight.
    pub async fn retire(self) {
        self.remove();
        let _quiet = self.target.inflight.write().await;
    }

    fn remove(&self) {
        let mut map = self.keys.lock();
        if map
            .get(&self.pid)
            .is_some_and(|t| Arc::ptr_eq(t, &self.target))
        {
            map.remove(&self.pid);
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend() -> BackendKey {
        BackendKey {
            pid: 4242,
            secret: vec![1, 2, 3, 4],
        }
    }

    #[test]
    fn only_the_client_key_matches_and_only_while_registered() {
        let keys = Arc::new(CancelKeys::default());
        let registration = keys.register(backend());
        let (pid, secret) = registration.client_key();
        let (pid, secret) = (pid, secret.to_vec());
        assert_ne!(
            secret,
            backend().secret,
            "the client never holds the real secret"
        );
        assert!(keys.matching(4242, &[1, 2, 3, 4]).is_none());
        let mut wrong = secret.clone();
        wrong[0] ^= 1;
        assert!(keys.matching(pid, &wrong).is_none());
        let matched = keys.matching(pid, &secret).map(|m| m.backend.pid);
        assert_eq!(matched, Some(4242));
        drop(registration);
        assert!(keys.matching(pid, &secret).is_none());
        assert!(keys.is_empty());
    }

    #[tokio::test]
    async fn retire_waits_for_a_forward_in_flight() {
        let keys = Arc::new(CancelKeys::default());
        let registration = keys.register(backend());
        let (pid, secret) = registration.client_key();
        let matched = keys.matching(pid, secret);
        assert!(matched.is_some());
        let retire = tokio::spawn(registration.retire());
        // The mapping goes first; then retiring waits.
        while !keys.is_empty() {
            tokio::task::yield_now().await;
        }
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(
            !retire.is_finished(),
            "retired while a cancel was in flight"
        );
        drop(matched);
        assert!(retire.await.is_ok());
    }
}
