//! `[upstream] auth = "scram"`: pgveil terminates the login itself (DESIGN.md,
//! "Authentication").
//!
//! The user's verifier comes from `auth_query` over the `auth_user` login (`auth_query`); the
//! client proves its password to pgveil with SCRAM-SHA-256, over TLS bound to pgveil's own
//! certificate (`SCRAM-SHA-256-PLUS`), or with md5 where that is what the database stores
//! (`scram`, `md5`, `verifier`); then pgveil logs in to the database as the same user, over
//! TLS with channel binding, with the ClientKey recovered from the client's proof (`login`).
//! No password is ever seen, stored or logged. Database connections are kept for the next
//! client of the same login (`reuse`), and clients hold cancel keys of pgveil's own
//! (`cancel`).

pub mod auth_query;
pub mod cancel;
mod login;
pub mod md5;
pub mod reuse;
pub mod scram;
pub mod verifier;

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub use login::{AuthError, Terminator};

/// HMAC-SHA-256 of the concatenated `parts`.
pub(crate) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}
