//! The key ring: the current master key (new values are encrypted under it) and the previous
//! ones (`[keys] previous_master_key_files`, or earlier labels in the token), which only
//! decrypt, so values written before a rotation stay readable until `pgveil migrate` has
//! re-encrypted them.
//!
//! Key ids: a master key's id is the first four bytes (big-endian) of
//! HKDF-SHA256-Expand(master key, `pgveil/v1/key-id`). It is a function of the key alone, so it
//! stays the same across restarts, machines and a move from file to token, and `keys rotate`
//! names the kept file by it. Column keys: HKDF-SHA256-Expand(master key,
//! `pgveil/v1/enc/<id>/<scope>`) and (`…/nonce/…`), with the master key used directly as the
//! pseudorandom key (it is 32 uniformly random bytes, RFC 5869 §3.3), because that is the one
//! HKDF step a PKCS#11 token can compute (an HMAC under the key it holds).

use std::path::{Path, PathBuf};

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::envelope::{ColumnCipher, ColumnKeys, KeyCipher};
use super::hsm::{self, HsmKey, Pkcs11Config};
use super::keys::{KeyError, MasterKey};
use crate::schema::ProtectedColumn;

const KEY_ID_INFO: &[u8] = b"pgveil/v1/key-id";

/// Where the current master key comes from.
#[derive(Debug, Clone, Copy)]
pub enum MasterSource<'a> {
    File(&'a Path),
    /// The content of `PGVEIL_MASTER_KEY` (base64).
    Environment(&'a str),
    Pkcs11(&'a Pkcs11Config),
}

/// A master key, in memory or in a token.
enum Secret {
    Memory(MasterKey),
    Token(HsmKey),
}

impl Secret {
    /// HKDF-SHA256-Expand(master, info) to 32 bytes, which is HMAC-SHA256(master, info || 1).
    fn expand(&self, info: &[u8]) -> Result<Zeroizing<[u8; 32]>, KeyError> {
        match self {
            Secret::Memory(master) => Ok(expand_in_memory(master, info)),
            Secret::Token(key) => {
                let mut message = Vec::with_capacity(info.len() + 1);
                message.extend_from_slice(info);
                message.push(1);
                Ok(key.hmac_sha256(&message)?)
            }
        }
    }
}

fn expand_in_memory(master: &MasterKey, info: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut okm = Zeroizing::new([0u8; 32]);
    // A 32-byte pseudorandom key is valid for HKDF-SHA256 and 32 bytes of output never
    // exceed its limit; the match keeps this free of unwrap.
    match Hkdf::<Sha256>::from_prk(master.expose()) {
        Ok(hk) => {
            let expanded = hk.expand(info, &mut okm[..]);
            debug_assert!(expanded.is_ok());
        }
        Err(_) => unreachable!("a 32-byte key is a valid HKDF-SHA256 pseudorandom key"),
    }
    okm
}

fn id_from(okm: &[u8; 32]) -> u32 {
    u32::from_be_bytes([okm[0], okm[1], okm[2], okm[3]])
}

/// The stable id of a master key held in memory (what `keys rotate` names files by).
pub fn key_id(master: &MasterKey) -> u32 {
    id_from(&expand_in_memory(master, KEY_ID_INFO))
}

struct RingKey {
    id: u32,
    /// The file, `PGVEIL_MASTER_KEY` or the token key, for messages.
    origin: String,
    secret: Secret,
}

/// The configured master keys, the current one first. Holds no column key: those are
/// derived per column by [`KeyRing::column_cipher`].
pub struct KeyRing {
    keys: Vec<RingKey>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<String> = self
            .keys
            .iter()
            .map(|k| format!("{:08x} ({})", k.id, k.origin))
            .collect();
        f.debug_struct("KeyRing").field("keys", &keys).finish()
    }
}

impl KeyRing {
    /// Loads the current key from `current` and every previous key file (each checked like
    /// the master key file: present, owner-only, 32 bytes of base64). With a token, its
    /// `previous_key_labels` come after the current key and before the files.
    pub fn open(
        current: MasterSource<'_>,
        previous_files: &[PathBuf],
    ) -> Result<KeyRing, KeyError> {
        let mut secrets: Vec<(String, Secret)> = Vec::new();
        match current {
            MasterSource::File(path) => secrets.push((
                format!("master key file {}", path.display()),
                Secret::Memory(MasterKey::load(Some(path), None)?),
            )),
            MasterSource::Environment(value) => secrets.push((
                "PGVEIL_MASTER_KEY".to_string(),
                Secret::Memory(MasterKey::load(None, Some(value))?),
            )),
            MasterSource::Pkcs11(config) => {
                for key in hsm::open(config)? {
                    secrets.push((key.origin(), Secret::Token(key)));
                }
            }
        }
        for path in previous_files {
            let key = MasterKey::load_previous(path)?;
            secrets.push((
                format!("previous master key file {}", path.display()),
                Secret::Memory(key),
            ));
        }
        Self::from_secrets(secrets)
    }

    /// A ring of in-memory keys (tests, tooling).
    pub fn from_master_keys(
        current: MasterKey,
        previous: Vec<MasterKey>,
    ) -> Result<KeyRing, KeyError> {
        let secrets = std::iter::once(current)
            .chain(previous)
            .enumerate()
            .map(|(i, key)| (format!("key #{}", i + 1), Secret::Memory(key)))
            .collect();
        Self::from_secrets(secrets)
    }

    fn from_secrets(secrets: Vec<(String, Secret)>) -> Result<KeyRing, KeyError> {
        let mut keys: Vec<RingKey> = Vec::with_capacity(secrets.len());
        for (origin, secret) in secrets {
            let id = id_from(&*secret.expand(KEY_ID_INFO)?);
            if let Some(earlier) = keys.iter().find(|k| k.id == id) {
                return Err(KeyError::DuplicateKeyId {
                    id,
                    first: earlier.origin.clone(),
                    second: origin,
                });
            }
            keys.push(RingKey { id, origin, secret });
        }
        if keys.is_empty() {
            return Err(KeyError::NoMasterKey);
        }
        Ok(KeyRing { keys })
    }

    /// The id of the key new values are encrypted under.
    pub fn current_key_id(&self) -> u32 {
        self.keys[0].id
    }

    /// Every configured key id, the current one first.
    pub fn key_ids(&self) -> Vec<u32> {
        self.keys.iter().map(|k| k.id).collect()
    }

    /// The cipher of one column under every configured key. Fails only when a token cannot
    /// compute the derivation.
    pub fn column_cipher(&self, column: &ProtectedColumn) -> Result<ColumnCipher, KeyError> {
        let scope = column.key_scope();
        let mut ciphers = Vec::with_capacity(self.keys.len());
        for key in &self.keys {
            let keys = ColumnKeys {
                encryption: key
                    .secret
                    .expand(format!("pgveil/v1/enc/{:08x}/{scope}", key.id).as_bytes())?,
                nonce: key
                    .secret
                    .expand(format!("pgveil/v1/nonce/{:08x}/{scope}", key.id).as_bytes())?,
            };
            ciphers.push(KeyCipher::new(key.id, &keys, column));
        }
        let current = ciphers.remove(0);
        Ok(ColumnCipher::new(current, ciphers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::envelope::CryptoError;
    use crate::schema::{EncryptionMode, LogicalType, TableName};
    use hmac::{Hmac, Mac};

    fn column(name: &str, mode: EncryptionMode) -> ProtectedColumn {
        ProtectedColumn {
            table: TableName::new("public", "patients"),
            column: name.into(),
            logical_type: LogicalType::Text,
            mode,
            domain: None,
        }
    }

    fn key(byte: u8) -> MasterKey {
        MasterKey::from_bytes([byte; 32])
    }

    #[test]
    fn key_id_is_a_function_of_the_key() {
        assert_eq!(key_id(&key(1)), key_id(&key(1)));
        assert_ne!(key_id(&key(1)), key_id(&key(2)));
        let ring = KeyRing::from_master_keys(key(1), vec![key(2)]).unwrap();
        assert_eq!(ring.current_key_id(), key_id(&key(1)));
        assert_eq!(ring.key_ids(), vec![key_id(&key(1)), key_id(&key(2))]);
        // Not the constant every value carried before ids were derived.
        assert_ne!(key_id(&key(1)), 1);
    }

    #[test]
    fn expansion_is_one_hmac_so_a_token_computes_the_same() {
        // What an HSM computes with CKM_SHA256_HMAC over info || 0x01.
        let master = key(7);
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&[7u8; 32]).unwrap();
        mac.update(b"pgveil/v1/key-id\x01");
        let by_hmac = mac.finalize().into_bytes();
        assert_eq!(&expand_in_memory(&master, KEY_ID_INFO)[..], &by_hmac[..]);
    }

    #[test]
    fn rotation_encrypts_with_the_new_key_and_decrypts_with_every_key() {
        let col = column("ssn", EncryptionMode::Deterministic);
        let old = KeyRing::from_master_keys(key(1), vec![]).unwrap();
        let rotated = KeyRing::from_master_keys(key(2), vec![key(1)]).unwrap();
        let old_cipher = old.column_cipher(&col).unwrap();
        let new_cipher = rotated.column_cipher(&col).unwrap();

        let before = old_cipher.encrypt(b"123-45-6789");
        let after = new_cipher.encrypt(b"123-45-6789");
        assert_eq!(crate::crypto::key_id_of(&before), Some(key_id(&key(1))));
        assert_eq!(crate::crypto::key_id_of(&after), Some(key_id(&key(2))));
        assert_eq!(new_cipher.decrypt(&before).unwrap(), b"123-45-6789");
        assert_eq!(new_cipher.decrypt(&after).unwrap(), b"123-45-6789");
        assert!(!new_cipher.is_current(&before) && new_cipher.is_current(&after));
        // The old ring does not know the new key.
        assert_eq!(old_cipher.decrypt(&after), Err(CryptoError::UnknownKeyId));

        // Equality across versions: the value's ciphertexts under every key.
        let every = new_cipher.ciphertexts_under_every_key(b"123-45-6789");
        assert_eq!(every, vec![after.clone(), before.clone()]);

        // Tampering and an unknown id are refused.
        let mut tampered = before.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(
            new_cipher.decrypt(&tampered),
            Err(CryptoError::Authentication)
        );
        let mut unknown = after.clone();
        unknown[1..5].copy_from_slice(&key_id(&key(3)).to_be_bytes());
        assert_eq!(new_cipher.decrypt(&unknown), Err(CryptoError::UnknownKeyId));
        // Relabelling an old value with the current id does not make it decrypt.
        let mut relabelled = before;
        relabelled[1..5].copy_from_slice(&key_id(&key(2)).to_be_bytes());
        assert_eq!(
            new_cipher.decrypt(&relabelled),
            Err(CryptoError::Authentication)
        );
    }

    #[test]
    fn the_same_key_twice_is_refused() {
        let err = KeyRing::from_master_keys(key(1), vec![key(2), key(1)]).unwrap_err();
        assert!(matches!(err, KeyError::DuplicateKeyId { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains("key #1") && text.contains("key #3"), "{text}");
    }

    #[test]
    fn debug_shows_ids_not_keys() {
        let ring = KeyRing::from_master_keys(key(1), vec![]).unwrap();
        let text = format!("{ring:?}");
        assert!(text.contains(&format!("{:08x}", key_id(&key(1)))), "{text}");
        assert!(!text.contains("[1, 1"), "{text}");
    }
}
