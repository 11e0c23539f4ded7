//! Keys, the ciphertext envelope and the ciphers: everything that touches key material.
//!
//! Format: every stored value carries a version byte, the id of the key that encrypted it and
//! its mode, so keys can be rotated and formats evolved without guessing. AES-256-GCM-SIV is
//! used because it stays safe when a nonce repeats, which deterministic encryption does by
//! design (the nonce is an HMAC of the plaintext under a separate key, so equal values give
//! equal ciphertexts and nothing else collides).
//!
//! Keys: a key ring of master keys (`keyring`; the current one encrypts, previous ones only
//! decrypt, each with a stable id derived from the key; in a file or in a PKCS#11 token,
//! `hsm`); each column (or shared domain) gets its own encryption and nonce keys by
//! HKDF-SHA256 with the key id and the column scope in the info string, so a leaked column
//! key exposes one column only and values cannot be compared across columns. The associated
//! data binds header, scope and logical type, so a ciphertext copied into another column fails
//! to decrypt instead of being misread.
//!
//! The plaintext is the canonical encoding of the typed value ([`crate::pgtype`]), so equality
//! of ciphertexts is equality of values whatever text or binary form the client used.

pub mod constraint;
pub mod envelope;
pub mod gcm_siv;
pub mod hsm;
pub mod keyring;
pub mod keys;
pub mod rotate;

pub use envelope::{key_id_of, ColumnCipher, CryptoError};
pub use keyring::{KeyRing, MasterSource};
pub use keys::{init_key_dir, load_signing_key, load_verifying_key, KeyError, MasterKey};
