//! The stored ciphertext format (DESIGN.md "Ciphertext format"):
//!
//! `0x01 | key id u32 BE | mode 'D'/'R' | nonce 12 | AES-256-GCM-SIV ciphertext | tag 16`

use aes_gcm_siv::aead::{AeadInPlace, KeyInit};
use aes_gcm_siv::{Aes256GcmSiv, Nonce, Tag};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::keys::MasterKey;
use crate::schema::{EncryptionMode, LogicalType, ProtectedColumn};

pub const VERSION: u8 = 0x01;
pub const HEADER_LEN: usize = 1 + 4 + 1;
pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;
/// Size of the envelope around the plaintext.
pub const OVERHEAD: usize = HEADER_LEN + NONCE_LEN + TAG_LEN;

const HKDF_SALT: &[u8] = b"pgveil/v1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("malformed ciphertext")]
    Malformed,
    #[error("unknown ciphertext version")]
    UnknownVersion,
    #[error("ciphertext uses an unknown key id")]
    UnknownKeyId,
    #[error("ciphertext encryption mode does not match the column")]
    ModeMismatch,
    #[error("ciphertext does not authenticate for this column")]
    Authentication,
}

/// The type family bound into the associated data: `varchar` and `text` are one family, so a
/// text and a varchar column that share a domain compare and decrypt each other's values.
pub fn type_family(ty: LogicalType) -> &'static str {
    match ty {
        LogicalType::Varchar => LogicalType::Text.name(),
        other => other.name(),
    }
}

/// Reads the key id of a stored value without decrypting it (for key rotation).
pub fn key_id_of(stored: &[u8]) -> Option<u32> {
    if stored.len() < OVERHEAD || stored[0] != VERSION {
        return None;
    }
    Some(u32::from_be_bytes([
        stored[1], stored[2], stored[3], stored[4],
    ]))
}

/// Encrypts and decrypts the values of one protected column (or domain) under one key id.
/// Cheap to use per row: the AES key schedule, the HMAC state and the associated data are
/// computed once here.
pub struct ColumnCipher {
    aead: Aes256GcmSiv,
    nonce_mac: Hmac<Sha256>,
    header: [u8; HEADER_LEN],
    mode: EncryptionMode,
    /// header | u32 BE length of scope | scope | type family
    associated_data: Box<[u8]>,
}

impl std::fmt::Debug for ColumnCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ColumnCipher")
            .field("key_id", &self.key_id())
            .field("mode", &self.mode)
            .field("keys", &"<redacted>")
            .finish()
    }
}

fn derive(hk: &Hkdf<Sha256>, info: &str) -> Zeroizing<[u8; 32]> {
    let mut okm = Zeroizing::new([0u8; 32]);
    // HKDF-SHA256 can expand up to 255 * 32 bytes; 32 never fails.
    let expanded = hk.expand(info.as_bytes(), &mut okm[..]);
    debug_assert!(expanded.is_ok());
    okm
}

impl ColumnCipher {
    pub fn new(master: &MasterKey, key_id: u32, column: &ProtectedColumn) -> ColumnCipher {
        let scope = column.key_scope();
        let hk = Hkdf::<Sha256>::new(Some(HKDF_SALT), master.expose());
        let enc_key = derive(&hk, &format!("pgveil/v1/enc/{key_id}/{scope}"));
        let nonce_key = derive(&hk, &format!("pgveil/v1/nonce/{key_id}/{scope}"));
        let aead = Aes256GcmSiv::new_from_slice(&enc_key[..]);
        let nonce_mac = <Hmac<Sha256> as Mac>::new_from_slice(&nonce_key[..]);
        // Both accept a 32-byte key; the match keeps this free of unwrap.
        let (aead, nonce_mac) = match (aead, nonce_mac) {
            (Ok(a), Ok(m)) => (a, m),
            _ => unreachable!("32-byte keys are valid for AES-256 and HMAC"),
        };

        let mut header = [0u8; HEADER_LEN];
        header[0] = VERSION;
        header[1..5].copy_from_slice(&key_id.to_be_bytes());
        header[5] = column.mode.tag();

        let family = type_family(column.logical_type);
        let mut ad = Vec::with_capacity(HEADER_LEN + 4 + scope.len() + family.len());
        ad.extend_from_slice(&header);
        ad.extend_from_slice(&(scope.len() as u32).to_be_bytes());
        ad.extend_from_slice(scope.as_bytes());
        ad.extend_from_slice(family.as_bytes());

        ColumnCipher {
            aead,
            nonce_mac,
            header,
            mode: column.mode,
            associated_data: ad.into_boxed_slice(),
        }
    }

    pub fn key_id(&self) -> u32 {
        u32::from_be_bytes([
            self.header[1],
            self.header[2],
            self.header[3],
            self.header[4],
        ])
    }

    pub fn mode(&self) -> EncryptionMode {
        self.mode
    }

    /// Encrypts a canonical plaintext (see `pgtype`). Deterministic mode: equal
    /// plaintexts give equal outputs.
    pub fn encrypt(&self, canonical_plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        match self.mode {
            EncryptionMode::Deterministic => {
                let mut mac = self.nonce_mac.clone();
                mac.update(canonical_plaintext);
                let digest = mac.finalize().into_bytes();
                nonce.copy_from_slice(&digest[..NONCE_LEN]);
            }
            EncryptionMode::Randomized => OsRng.fill_bytes(&mut nonce),
        }
        let body_start = HEADER_LEN + NONCE_LEN;
        let mut out = Vec::with_capacity(OVERHEAD + canonical_plaintext.len());
        out.extend_from_slice(&self.header);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(canonical_plaintext);
        let tag = self.aead.encrypt_in_place_detached(
            Nonce::from_slice(&nonce),
            &self.associated_data,
            &mut out[body_start..],
        );
        match tag {
            Ok(tag) => out.extend_from_slice(&tag),
            // Only fails for plaintexts over 2^36 bytes, far beyond a PostgreSQL value (1 GB).
            Err(_) => unreachable!("AES-GCM-SIV plaintext length limit exceeded"),
        }
        out
    }

    /// Checks and decrypts a stored value of this column.
    pub fn decrypt(&self, stored: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if stored.len() < OVERHEAD {
            return Err(CryptoError::Malformed);
        }
        if stored[0] != VERSION {
            return Err(CryptoError::UnknownVersion);
        }
        if stored[1..5] != self.header[1..5] {
            return Err(CryptoError::UnknownKeyId);
        }
        match stored[5] {
            b'D' | b'R' if stored[5] == self.header[5] => {}
            b'D' | b'R' => return Err(CryptoError::ModeMismatch),
            _ => return Err(CryptoError::Malformed),
        }
        let nonce = Nonce::from_slice(&stored[HEADER_LEN..HEADER_LEN + NONCE_LEN]);
        let tag_at = stored.len() - TAG_LEN;
        let tag = Tag::from_slice(&stored[tag_at..]);
        let mut out = stored[HEADER_LEN + NONCE_LEN..tag_at].to_vec();
        self.aead
            .decrypt_in_place_detached(nonce, &self.associated_data, &mut out, tag)
            .map_err(|_| CryptoError::Authentication)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::TableName;

    fn col(
        name: &str,
        ty: LogicalType,
        mode: EncryptionMode,
        domain: Option<&str>,
    ) -> ProtectedColumn {
        ProtectedColumn {
            table: TableName::new("public", "patients"),
            column: name.into(),
            logical_type: ty,
            mode,
            domain: domain.map(str::to_string),
        }
    }

    fn master() -> MasterKey {
        MasterKey::from_bytes([42u8; 32])
    }

    #[test]
    fn deterministic_round_trip_and_equality() {
        let c = ColumnCipher::new(
            &master(),
            1,
            &col(
                "ssn",
                LogicalType::Text,
                EncryptionMode::Deterministic,
                None,
            ),
        );
        let a = c.encrypt(b"123-45-6789");
        let b = c.encrypt(b"123-45-6789");
        assert_eq!(a, b);
        assert_ne!(a, c.encrypt(b"123-45-6780"));
        assert_eq!(a.len(), OVERHEAD + 11);
        assert_eq!(&a[..6], &[1, 0, 0, 0, 1, b'D']);
        assert_eq!(c.decrypt(&a).unwrap(), b"123-45-6789");
        assert_eq!(key_id_of(&a), Some(1));
        // Empty plaintext is a value too.
        assert_eq!(c.decrypt(&c.encrypt(b"")).unwrap(), b"");
    }

    #[test]
    fn randomized_differs_each_time() {
        let c = ColumnCipher::new(
            &master(),
            7,
            &col("dob", LogicalType::Date, EncryptionMode::Randomized, None),
        );
        let a = c.encrypt(&[0, 0, 1, 2]);
        let b = c.encrypt(&[0, 0, 1, 2]);
        assert_ne!(a, b);
        assert_eq!(a[5], b'R');
        assert_eq!(c.decrypt(&a).unwrap(), [0, 0, 1, 2]);
        assert_eq!(c.decrypt(&b).unwrap(), [0, 0, 1, 2]);
    }

    #[test]
    fn header_checks() {
        let c = ColumnCipher::new(
            &master(),
            1,
            &col(
                "ssn",
                LogicalType::Text,
                EncryptionMode::Deterministic,
                None,
            ),
        );
        let ct = c.encrypt(b"x");
        assert_eq!(c.decrypt(&ct[..OVERHEAD - 1]), Err(CryptoError::Malformed));
        assert_eq!(c.decrypt(b""), Err(CryptoError::Malformed));
        let mut v = ct.clone();
        v[0] = 2;
        assert_eq!(c.decrypt(&v), Err(CryptoError::UnknownVersion));
        let mut k = ct.clone();
        k[4] = 2;
        assert_eq!(c.decrypt(&k), Err(CryptoError::UnknownKeyId));
        let mut m = ct.clone();
        m[5] = b'R';
        assert_eq!(c.decrypt(&m), Err(CryptoError::ModeMismatch));
        m[5] = b'X';
        assert_eq!(c.decrypt(&m), Err(CryptoError::Malformed));
        for i in HEADER_LEN..ct.len() {
            let mut t = ct.clone();
            t[i] ^= 0x01;
            assert_eq!(c.decrypt(&t), Err(CryptoError::Authentication), "byte {i}");
        }
    }

    #[test]
    fn ciphertext_bound_to_column_type_and_key_id() {
        let m = master();
        let ssn = ColumnCipher::new(
            &m,
            1,
            &col(
                "ssn",
                LogicalType::Text,
                EncryptionMode::Deterministic,
                None,
            ),
        );
        let mrn = ColumnCipher::new(
            &m,
            1,
            &col(
                "mrn",
                LogicalType::Text,
                EncryptionMode::Deterministic,
                None,
            ),
        );
        let ct = ssn.encrypt(b"123");
        assert_ne!(ct, mrn.encrypt(b"123"));
        assert_eq!(mrn.decrypt(&ct), Err(CryptoError::Authentication));

        // Same domain, same type family: comparable and mutually decryptable.
        let a = ColumnCipher::new(
            &m,
            1,
            &col(
                "a",
                LogicalType::Text,
                EncryptionMode::Deterministic,
                Some("id"),
            ),
        );
        let b = ColumnCipher::new(
            &m,
            1,
            &col(
                "b",
                LogicalType::Varchar,
                EncryptionMode::Deterministic,
                Some("id"),
            ),
        );
        assert_eq!(a.encrypt(b"x"), b.encrypt(b"x"));
        assert_eq!(b.decrypt(&a.encrypt(b"x")).unwrap(), b"x");

        // Same domain, different type: same nonce and key, but the AD differs.
        let i = ColumnCipher::new(
            &m,
            1,
            &col(
                "c",
                LogicalType::Int8,
                EncryptionMode::Deterministic,
                Some("id"),
            ),
        );
        assert_eq!(
            i.decrypt(&a.encrypt(b"x")),
            Err(CryptoError::Authentication)
        );

        // Another key id derives another key.
        let a2 = ColumnCipher::new(
            &m,
            2,
            &col(
                "a",
                LogicalType::Text,
                EncryptionMode::Deterministic,
                Some("id"),
            ),
        );
        assert_ne!(a.encrypt(b"x")[6..], a2.encrypt(b"x")[6..]);
        let mut forged = a.encrypt(b"x");
        forged[4] = 2;
        assert_eq!(a2.decrypt(&forged), Err(CryptoError::Authentication));

        // Another master key.
        let other = ColumnCipher::new(
            &MasterKey::from_bytes([1u8; 32]),
            1,
            &col(
                "ssn",
                LogicalType::Text,
                EncryptionMode::Deterministic,
                None,
            ),
        );
        assert_eq!(other.decrypt(&ct), Err(CryptoError::Authentication));
    }

    #[test]
    fn cipher_is_shareable_across_tasks() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<ColumnCipher>();
    }

    #[test]
    fn debug_is_redacted() {
        let c = ColumnCipher::new(
            &master(),
            3,
            &col(
                "ssn",
                LogicalType::Text,
                EncryptionMode::Deterministic,
                None,
            ),
        );
        let s = format!("{c:?}");
        assert!(s.contains("<redacted>") && s.contains("key_id: 3"), "{s}");
    }

    #[test]
    fn known_answer_is_stable() {
        // Guards the on-disk format: changing derivation or AD breaks stored data.
        let c = ColumnCipher::new(
            &master(),
            1,
            &col(
                "ssn",
                LogicalType::Text,
                EncryptionMode::Deterministic,
                None,
            ),
        );
        let ct = c.encrypt(b"123-45-6789");
        let again = ColumnCipher::new(
            &master(),
            1,
            &col(
                "ssn",
                LogicalType::Text,
                EncryptionMode::Deterministic,
                None,
            ),
        );
        assert_eq!(again.decrypt(&ct).unwrap(), b"123-45-6789");
        assert_eq!(hex::encode(&ct), KNOWN_CT);
    }

    const KNOWN_CT: &str = "010000000144e13ddc4f4246ca39d7ee3a0b8dc7fb504a24b86f9f72d9840401bb651d81cdaf95e77d4fed9de0";
}
