//! What `auth_query` returns for a login, as PostgreSQL stores it in `pg_authid.rolpassword`:
//! a SCRAM verifier `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (RFC 5803) or
//! an md5 hash `md5<32 hex digits>`. Neither is the password; both are secrets (an md5 hash
//! logs in as the user), so they are wiped from memory when dropped and never printed.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::hmac_sha256;

/// PostgreSQL's default iteration count (scram_iterations), also used for mock verifiers.
pub const DEFAULT_ITERATIONS: u32 = 4096;
/// Length of a mock verifier's salt: PostgreSQL's SCRAM_DEFAULT_SALT_LEN.
const MOCK_SALT_LEN: usize = 16;

/// A login's stored secret.
#[derive(Clone)]
pub enum Verifier {
    Scram(ScramVerifier),
    Md5(Md5Hash),
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Scram(_) => "Verifier::Scram(<secret>)",
            Self::Md5(_) => "Verifier::Md5(<secret>)",
        })
    }
}

#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct ScramVerifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

/// The 32 lowercase hex digits of `md5(password || user)`, without the `md5` prefix.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Md5Hash(pub [u8; 32]);

impl Verifier {
    /// `None` for anything else (an empty or unrecognised value): such a login cannot be
    /// authenticated by pgveil.
    pub fn parse(text: &str) -> Option<Verifier> {
        if let Some(hex) = text.strip_prefix("md5") {
            let digits: [u8; 32] = hex.as_bytes().try_into().ok()?;
            if !digits.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            return Some(Verifier::Md5(Md5Hash(
                digits.map(|d| d.to_ascii_lowercase()),
            )));
        }
        let rest = text.strip_prefix("SCRAM-SHA-256$")?;
        let (params, keys) = rest.split_once('$')?;
        let (iterations, salt) = params.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        let iterations: u32 = iterations.parse().ok().filter(|i| *i > 0)?;
        let salt = BASE64.decode(salt).ok().filter(|s| !s.is_empty())?;
        let stored_key = decode_key(stored)?;
        let server_key = decode_key(server)?;
        Some(Verifier::Scram(ScramVerifier {
            iterations,
            salt,
            stored_key: *stored_key,
            server_key: *server_key,
        }))
    }
}

fn decode_key(text: &str) -> Option<Zeroizing<[u8; 32]>> {
    let bytes = Zeroizing::new(BASE64.decode(text).ok()?);
    let mut key = Zeroizing::new([0u8; 32]);
    if bytes.len() != key.len() {
        return None;
    }
    key.copy_from_slice(&bytes);
    Some(key)
}

impl ScramVerifier {
    /// The verifier pgveil answers with for a login that does not exist or has no usable
    /// password, so that the exchange looks the same as for a real one (as PostgreSQL's mock
    /// authentication does): its salt is stable for a user name, derived with a secret that
    /// lives only in this process, and no proof can match it (the exchange refuses it before
    /// comparing anyway).
    pub fn mock(secret: &[u8; 32], user: &str) -> ScramVerifier {
        let derive = |label: &[u8]| hmac_sha256(secret, &[label, user.as_bytes()]);
        ScramVerifier {
            iterations: DEFAULT_ITERATIONS,
            salt: derive(b"pgveil mock salt\0")[..MOCK_SALT_LEN].to_vec(),
            stored_key: derive(b"pgveil mock stored key\0"),
            server_key: derive(b"pgveil mock server key\0"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_postgresql_verifiers() {
        let text = "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=";
        let Some(Verifier::Scram(v)) = Verifier::parse(text) else {
            panic!("not parsed")
        };
        assert_eq!(v.iterations, 4096);
        assert_eq!(v.salt.len(), 16);
        assert_eq!(v.stored_key[0], 0x58);
        let md5 = Verifier::parse("md5AC4BBE016B808C3C0B816981F240DCAE").unwrap();
        let Verifier::Md5(hash) = md5 else { panic!() };
        assert_eq!(&hash.0, b"ac4bbe016b808c3c0b816981f240dcae");
    }

    #[test]
    fn refuses_what_is_not_a_verifier() {
        for text in [
            "",
            "secret",
            "md5short",
            "md5zz4bbe016b808c3c0b816981f240dcae",
            "SCRAM-SHA-256$0:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=",
            "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$AAAA:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=",
            "SCRAM-SHA-1$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=",
        ] {
            assert!(Verifier::parse(text).is_none(), "{text}");
        }
    }

    #[test]
    fn mock_verifiers_are_stable_per_user_and_secret() {
        let secret = [7u8; 32];
        let a = ScramVerifier::mock(&secret, "alice");
        assert_eq!(a.salt, ScramVerifier::mock(&secret, "alice").salt);
        assert_ne!(a.salt, ScramVerifier::mock(&secret, "bob").salt);
        assert_ne!(a.salt, ScramVerifier::mock(&[8u8; 32], "alice").salt);
        assert_eq!(a.salt.len(), MOCK_SALT_LEN);
        assert_eq!(a.iterations, DEFAULT_ITERATIONS);
    }
}
