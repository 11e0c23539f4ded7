//! The stored ciphertext format (DESIGN.md "Ciphertext format"):
//!
//! `0x01 | key id u32 BE | mode 'D'/'R' | nonce 12 | AES-256-GCM-SIV ciphertext | tag 16`

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::gcm_siv::GcmSiv;
use crate::schema::{EncryptionMode, LogicalType, ProtectedColumn};

pub const VERSION: u8 = 0x01;
pub const HEADER_LEN: usize = 1 + 4 + 1;
pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;
/// Size of the envelope around the plaintext.
pub const OVERHEAD: usize = HEADER_LEN + NONCE_LEN + TAG_LEN;

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

/// The two keys of one column (or domain) under one master key, derived by the key ring.
/// Zeroized on drop.
pub struct ColumnKeys {
    pub encryption: Zeroizing<[u8; 32]>,
    pub nonce: Zeroizing<[u8; 32]>,
}

/// Encrypts and decrypts the values of one protected column (or domain) under one key id.
/// Cheap to use per row: the AES key schedule, the HMAC state and the associated data are
/// computed once here.
pub struct KeyCipher {
    aead: GcmSiv,
    nonce_mac: Hmac<Sha256>,
    header: [u8; HEADER_LEN],
    mode: EncryptionMode,
    /// header | u32 BE length of scope | scope | type family
    associated_data: Box<[u8]>,
}

impl std::fmt::Debug for KeyCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCipher")
            .field("key_id", &self.key_id())
            .field("mode", &self.mode)
            .field("keys", &"<redacted>")
            .finish()
    }
}

impl KeyCipher {
    pub fn new(key_id: u32, keys: &ColumnKeys, column: &ProtectedColumn) -> KeyCipher {
        let scope = column.key_scope();
        let aead = GcmSiv::new(&keys.encryption);
        let nonce_mac = match <Hmac<Sha256> as Mac>::new_from_slice(&keys.nonce[..]) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC accepts a key of any length"),
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

        KeyCipher {
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
            // A CSPRNG seeded, and reseeded every 64 KiB, from the OS: the nonce must be
            // unpredictable and unique, not drawn by a syscall of its own (one getrandom per
            // value was 3% of a bulk COPY's CPU). Keys still come from the OS directly.
            EncryptionMode::Randomized => rand::thread_rng().fill_bytes(&mut nonce),
        }
        let body_start = HEADER_LEN + NONCE_LEN;
        let mut out = Vec::with_capacity(OVERHEAD + canonical_plaintext.len());
        out.extend_from_slice(&self.header);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(canonical_plaintext);
        // RFC 8452 limits plaintexts to 2^36 bytes, far beyond a PostgreSQL value (1 GB).
        let tag = self
            .aead
            .encrypt_in_place(&nonce, &self.associated_data, &mut out[body_start..]);
        out.extend_from_slice(&tag);
        out
    }

    /// Checks and decrypts a stored value of this column.
    pub fn decrypt(&self, stored: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut out = Vec::new();
        self.decrypt_into(stored, &mut out)?;
        Ok(out)
    }

    /// [`Self::decrypt`] into `out` (cleared first), so a bulk read reuses one buffer. On
    /// error `out` holds no plaintext.
    pub fn decrypt_into(&self, stored: &[u8], out: &mut Vec<u8>) -> Result<(), CryptoError> {
        out.clear();
        check_header(stored)?;
        if stored[1..5] != self.header[1..5] {
            return Err(CryptoError::UnknownKeyId);
        }
        if stored[5] != self.header[5] {
            return Err(CryptoError::ModeMismatch);
        }
        let tag_at = stored.len() - TAG_LEN;
        let (Ok(nonce), Ok(tag)) = (
            <&[u8; NONCE_LEN]>::try_from(&stored[HEADER_LEN..HEADER_LEN + NONCE_LEN]),
            <&[u8; TAG_LEN]>::try_from(&stored[tag_at..]),
        ) else {
            return Err(CryptoError::Malformed);
        };
        out.extend_from_slice(&stored[HEADER_LEN + NONCE_LEN..tag_at]);
        let result = self
            .aead
            .decrypt_in_place(nonce, &self.associated_data, out, tag);
        if result.is_err() {
            out.clear();
            return Err(CryptoError::Authentication);
        }
        Ok(())
    }
}

/// Length, version and mode byte: what can be checked without a key.
fn check_header(stored: &[u8]) -> Result<(), CryptoError> {
    if stored.len() < OVERHEAD {
        return Err(CryptoError::Malformed);
    }
    if stored[0] != VERSION {
        return Err(CryptoError::UnknownVersion);
    }
    match stored[5] {
        b'D' | b'R' => Ok(()),
        _ => Err(CryptoError::Malformed),
    }
}

/// The ciphers of one protected column (or domain) under every configured master key: new
/// values are encrypted under the current key, stored values are decrypted with the key
/// whose id their envelope names. Built by [`super::keyring::KeyRing`].
pub struct ColumnCipher {
    current: KeyCipher,
    previous: Vec<KeyCipher>,
}

impl std::fmt::Debug for ColumnCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ColumnCipher")
            .field("current", &self.current)
            .field("previous", &self.previous)
            .finish()
    }
}

impl ColumnCipher {
    /// `previous` must hold ciphers of the same column under other key ids (the key ring
    /// guarantees distinct ids).
    pub fn new(current: KeyCipher, previous: Vec<KeyCipher>) -> ColumnCipher {
        ColumnCipher { current, previous }
    }

    /// The id new values are written with.
    pub fn key_id(&self) -> u32 {
        self.current.key_id()
    }

    /// Every key id this column's values may carry, the current one first.
    pub fn key_ids(&self) -> Vec<u32> {
        self.all().map(KeyCipher::key_id).collect()
    }

    /// How many master keys this column's values may be under (1 until a key rotation).
    pub fn key_count(&self) -> usize {
        1 + self.previous.len()
    }

    pub fn mode(&self) -> EncryptionMode {
        self.current.mode()
    }

    fn all(&self) -> impl Iterator<Item = &KeyCipher> {
        std::iter::once(&self.current).chain(self.previous.iter())
    }

    /// Encrypts a canonical plaintext under the current key.
    pub fn encrypt(&self, canonical_plaintext: &[u8]) -> Vec<u8> {
        self.current.encrypt(canonical_plaintext)
    }

    /// Decrypts a stored value with the key its envelope names; a key id that no configured
    /// key has is [`CryptoError::UnknownKeyId`], which callers report like a tampered value.
    pub fn decrypt(&self, stored: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut out = Vec::new();
        self.decrypt_into(stored, &mut out)?;
        Ok(out)
    }

    /// [`Self::decrypt`] into `out` (cleared first; no plaintext left in it on error).
    pub fn decrypt_into(&self, stored: &[u8], out: &mut Vec<u8>) -> Result<(), CryptoError> {
        out.clear();
        check_header(stored)?;
        let id = u32::from_be_bytes([stored[1], stored[2], stored[3], stored[4]]);
        match self.all().find(|c| c.key_id() == id) {
            Some(cipher) => cipher.decrypt_into(stored, out),
            None => Err(CryptoError::UnknownKeyId),
        }
    }

    /// Whether a stored value is under a key other than the current one (what `migrate`
    /// re-encrypts). Malformed values count as not current.
    pub fn is_current(&self, stored: &[u8]) -> bool {
        key_id_of(stored) == Some(self.key_id())
    }

    /// The ciphertexts of one value under every configured key, the current one first: on a
    /// deterministic column, a value equals a stored one exactly when one of these does, so
    /// equality conditions find values written before a key rotation. (On a randomized column
    /// each call draws new nonces; equality is not offered there.)
    pub fn ciphertexts_under_every_key(&self, canonical_plaintext: &[u8]) -> Vec<Vec<u8>> {
        self.all().map(|c| c.encrypt(canonical_plaintext)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::keyring::KeyRing;
    use crate::crypto::keys::MasterKey;
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

    /// The cipher of `column` under the master key of 32 `seed` bytes, built as the server
    /// builds it (through the key ring).
    fn cipher(seed: u8, column: &ProtectedColumn) -> ColumnCipher {
        let ring = KeyRing::from_master_keys(MasterKey::from_bytes([seed; 32]), vec![]).unwrap();
        ring.column_cipher(column).unwrap()
    }

    fn id(seed: u8) -> u32 {
        crate::crypto::keyring::key_id(&MasterKey::from_bytes([seed; 32]))
    }

    #[test]
    fn deterministic_round_trip_and_equality() {
        let c = cipher(
            42,
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
        let mut header = vec![1u8];
        header.extend_from_slice(&id(42).to_be_bytes());
        header.push(b'D');
        assert_eq!(&a[..6], &header[..]);
        assert_eq!(c.decrypt(&a).unwrap(), b"123-45-6789");
        assert_eq!(key_id_of(&a), Some(id(42)));
        // Empty plaintext is a value too.
        assert_eq!(c.decrypt(&c.encrypt(b"")).unwrap(), b"");
    }

    #[test]
    fn randomized_differs_each_time() {
        let c = cipher(
            42,
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
        let c = cipher(
            42,
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
        k[4] ^= 1;
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
        let ssn = cipher(
            42,
            &col(
                "ssn",
                LogicalType::Text,
                EncryptionMode::Deterministic,
                None,
            ),
        );
        let mrn = cipher(
            42,
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
        let a = cipher(
            42,
            &col(
                "a",
                LogicalType::Text,
                EncryptionMode::Deterministic,
                Some("id"),
            ),
        );
        let b = cipher(
            42,
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
        let i = cipher(
            42,
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

        // Another master key: another id, and a relabelled ciphertext does not decrypt.
        let a2 = cipher(
            43,
            &col(
                "a",
                LogicalType::Text,
                EncryptionMode::Deterministic,
                Some("id"),
            ),
        );
        assert_ne!(a.encrypt(b"x")[6..], a2.encrypt(b"x")[6..]);
        let mut forged = a.encrypt(b"x");
        forged[1..5].copy_from_slice(&id(43).to_be_bytes());
        assert_eq!(a2.decrypt(&forged), Err(CryptoError::Authentication));
        assert_eq!(a2.decrypt(&a.encrypt(b"x")), Err(CryptoError::UnknownKeyId));
    }

    #[test]
    fn cipher_is_shareable_across_tasks() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<ColumnCipher>();
    }

    #[test]
    fn debug_is_redacted() {
        let c = cipher(
            42,
            &col(
                "ssn",
                LogicalType::Text,
                EncryptionMode::Deterministic,
                None,
            ),
        );
        let s = format!("{c:?}");
        assert!(
            s.contains("<redacted>") && s.contains(&format!("key_id: {}", id(42))),
            "{s}"
        );
    }

    #[test]
    fn known_answer_is_stable() {
        // Guards the on-disk format: changing derivation or AD breaks stored data.
        let c = cipher(
            42,
            &col(
                "ssn",
                LogicalType::Text,
                EncryptionMode::Deterministic,
                None,
            ),
        );
        let ct = c.encrypt(b"123-45-6789");
        let again = cipher(
            42,
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

    const KNOWN_CT: &str = "01f4289c2f44a11e2cc182b15650cd23386cdb150f1b37f981df5b1745f961aa2a7b9de9cfed16456bae017fe8";
}
