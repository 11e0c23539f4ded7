//! PostgreSQL's md5 password method: the client answers a 4-byte salt with
//! `"md5" || hex(md5(hex(md5(password || user)) || salt))`. pgveil checks that answer against
//! the stored hash and answers the database's own salt with the same hash, as PgBouncer does.
//! The stored hash is therefore password-equivalent; that is how md5 works, and why SCRAM
//! is preferred.

use md5::{Digest, Md5};
use rand::RngCore;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::verifier::Md5Hash;

/// A fresh salt for one client.
pub fn salt() -> [u8; 4] {
    let mut salt = [0u8; 4];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    salt
}

/// The answer to `salt` made from the stored hash: `md5` and 32 hex digits.
pub fn response(stored: &Md5Hash, salt: &[u8; 4]) -> Zeroizing<Vec<u8>> {
    let mut hasher = Md5::new();
    hasher.update(stored.0);
    hasher.update(salt);
    let digest = hasher.finalize();
    let mut out = Zeroizing::new(Vec::with_capacity(35));
    out.extend_from_slice(b"md5");
    out.extend_from_slice(hex::encode(digest.as_slice()).as_bytes());
    out
}

/// Whether the client's answer to `salt` proves it knows the password, compared in
/// constant time.
pub fn check(stored: &Md5Hash, salt: &[u8; 4], answer: &[u8]) -> bool {
    let expected = response(stored, salt);
    answer.len() == expected.len() && bool::from(answer.ct_eq(&expected[..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(password: &str, user: &str) -> Md5Hash {
        let digest = Md5::digest(format!("{password}{user}").as_bytes());
        let mut hash = [0u8; 32];
        hash.copy_from_slice(hex::encode(digest.as_slice()).as_bytes());
        Md5Hash(hash)
    }

    #[test]
    fn postgresql_md5_hash_and_answer() {
        // SELECT md5('secret' || 'alice'), and the answer to salt 01020304 (Python's hashlib).
        let hash = stored("secret", "alice");
        assert_eq!(&hash.0, b"4a0a68b43b6cd5cf266fa02f196e2371");
        let salt = [1, 2, 3, 4];
        let answer = response(&hash, &salt);
        assert_eq!(&answer[..], b"md598a0412b9c31436fc53776e863350083");
        assert!(check(&hash, &salt, &answer));
        assert!(!check(&hash, &[1, 2, 3, 5], &answer));
        assert!(!check(&stored("other", "alice"), &salt, &answer));
        assert!(!check(&hash, &salt, b"md5"));
    }
}
