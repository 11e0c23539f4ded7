//! Signed context tokens: `SET pgveil.context = '<JWT>'` (DESIGN.md "Session context").
//!
//! A token is a compact JWS signed with EdDSA (Ed25519) by the application's key; pgveil
//! holds the public key (`[context] token_public_key_file`). Claims: `sub` (the end user,
//! required), `purpose` (optional), `exp` (required, at most `max_token_lifetime_secs`
//! ahead), `nbf` (checked when present), `break_glass` (optional, a reason). Other claims
//! (`iat`, `iss`, `aud`, `jti`, …) are allowed and ignored: the key is pgveil's alone.
//!
//! The JWS is parsed and checked by `jsonwebtoken` (signature before claims, `exp` required,
//! malformed `exp`/`nbf` refused), with the EdDSA-only provider of [`super::provider`]. A
//! first look at the header only makes the refusal precise (`alg`, `typ`); it grants
//! nothing. No error ever carries the token or any part of it, since serde's messages
//! quote the values they reject.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ed25519_dalek::pkcs8::DecodePublicKey as _;
use ed25519_dalek::VerifyingKey;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use zeroize::Zeroizing;

use super::session::check_value;
use super::{ContextError, Setting};
use crate::config::ContextConfig;

/// Longest token accepted; a real one is a few hundred bytes.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    pub end_user: String,
    pub purpose: Option<String>,
    pub break_glass: Option<String>,
    /// `exp`, seconds since the Unix epoch.
    pub expires_at: u64,
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    purpose: Option<String>,
    break_glass: Option<String>,
    exp: Option<u64>,
}

/// Checks tokens against one public key.
pub struct TokenVerifier {
    key: DecodingKey,
    max_lifetime: Duration,
    validation: Validation,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("max_lifetime", &self.max_lifetime)
            .finish_non_exhaustive()
    }
}

impl TokenVerifier {
    pub fn new(key: &VerifyingKey, max_lifetime: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.leeway = 0;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        // No audience or issuer is configured: the key signs pgveil's context only.
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp"]);
        Self {
            // The provider reads these 32 bytes as the raw Ed25519 key.
            key: DecodingKey::from_ed_der(key.as_bytes()),
            max_lifetime,
            validation,
        }
    }

    /// The verifier `[context]` asks for: `None` when no token key is configured.
    pub fn from_config(config: &ContextConfig) -> Result<Option<Self>, ContextError> {
        config
            .token_public_key_file
            .as_deref()
            .map(|path| Ok(Self::new(&load_token_key(path)?, config.max_token_lifetime)))
            .transpose()
    }

    pub fn max_lifetime(&self) -> Duration {
        self.max_lifetime
    }

    /// Verifies `token` now.
    pub fn verify(&self, token: &str) -> Result<TokenClaims, ContextError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.verify_at(token, now)
    }

    /// Verifies `token`; `now` (Unix seconds) bounds the lifetime. Expiry itself is checked
    /// by `jsonwebtoken` against the system clock.
    fn verify_at(&self, token: &str, now: u64) -> Result<TokenClaims, ContextError> {
        if !super::provider::install() {
            return Err(ContextError::TokenUnavailable);
        }
        let token = token.trim();
        if token.len() > MAX_TOKEN_LEN {
            return Err(ContextError::TokenMalformed);
        }
        precheck_header(token)?;
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| refusal(e.kind()))?;
        let claims = data.claims;
        let expires_at = claims.exp.ok_or(ContextError::TokenNoExpiry)?;
        let max = self.max_lifetime.as_secs();
        if expires_at > now.saturating_add(max) {
            return Err(ContextError::TokenTooLong { max_secs: max });
        }
        let end_user = claims.sub.ok_or(ContextError::TokenClaim("sub"))?;
        check_value(Setting::EndUser, &end_user).map_err(|_| ContextError::TokenClaim("sub"))?;
        if let Some(purpose) = &claims.purpose {
            check_value(Setting::Purpose, purpose)
                .map_err(|_| ContextError::TokenClaim("purpose"))?;
        }
        if let Some(reason) = &claims.break_glass {
            check_value(Setting::BreakGlass, reason)
                .map_err(|_| ContextError::TokenClaim("break_glass"))?;
        }
        Ok(TokenClaims {
            end_user,
            purpose: claims.purpose,
            break_glass: claims.break_glass,
            expires_at,
        })
    }
}

/// Names the refusal for a header pgveil would never accept, before any verification.
fn precheck_header(token: &str) -> Result<(), ContextError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_claims), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ContextError::TokenMalformed);
    };
    if signature.is_empty() {
        // `alg: none` tokens end with an empty signature.
        return Err(ContextError::TokenAlgorithm);
    }
    let raw = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| ContextError::TokenMalformed)?;
    let header: serde_json::Value =
        serde_json::from_slice(&raw).map_err(|_| ContextError::TokenMalformed)?;
    let header = header.as_object().ok_or(ContextError::TokenMalformed)?;
    if header.get("alg").and_then(serde_json::Value::as_str) != Some("EdDSA") {
        return Err(ContextError::TokenAlgorithm);
    }
    match header.get("typ") {
        None => Ok(()),
        // Media type names compare case-insensitively (RFC 7515 section 4.1.9).
        Some(serde_json::Value::String(t)) if t.eq_ignore_ascii_case("JWT") => Ok(()),
        Some(_) => Err(ContextError::TokenType),
    }
}

/// The refusal for a `jsonwebtoken` error, in words that quote nothing of the token.
fn refusal(kind: &ErrorKind) -> ContextError {
    match kind {
        ErrorKind::InvalidSignature | ErrorKind::InvalidEddsaKey => ContextError::TokenSignature,
        ErrorKind::ExpiredSignature => ContextError::TokenExpired,
        ErrorKind::ImmatureSignature => ContextError::TokenNotYetValid,
        ErrorKind::MissingRequiredClaim(claim) if claim == "exp" => ContextError::TokenNoExpiry,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::UnsupportedAlgorithm
        | ErrorKind::InvalidAlgorithmName => ContextError::TokenAlgorithm,
        _ => ContextError::TokenMalformed,
    }
}

/// Reads an Ed25519 public key: base64 of its 32 bytes (as `audit.pub`) or a PEM
/// `PUBLIC KEY` (SubjectPublicKeyInfo). A public key: no permission check.
pub fn load_token_key(path: &Path) -> Result<VerifyingKey, ContextError> {
    use std::io::Read as _;
    let bad = |reason: String| ContextError::Key {
        path: path.to_path_buf(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| {
        bad(match e.kind() {
            std::io::ErrorKind::NotFound => "does not exist".to_string(),
            _ => format!("cannot be read: {e}"),
        })
    })?;
    let mut raw = Zeroizing::new(Vec::new());
    file.take(64 * 1024)
        .read_to_end(&mut raw)
        .map_err(|e| bad(format!("cannot be read: {e}")))?;
    let text = std::str::from_utf8(&raw)
        .map_err(|_| bad("is neither base64 nor PEM".into()))?
        .trim();
    if text.starts_with("-----BEGIN") {
        return VerifyingKey::from_public_key_pem(text)
            .map_err(|_| bad("is not a PEM PUBLIC KEY holding an Ed25519 key".into()));
    }
    let bytes = STANDARD
        .decode(text)
        .map_err(|_| bad("is neither base64 nor PEM".into()))?;
    let bytes: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
        bad(format!(
            "must hold the 32 bytes of an Ed25519 public key (base64), it holds {}",
            bytes.len()
        ))
    })?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| bad("is not a valid Ed25519 public key".into()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ed25519_dalek::{Signer as _, SigningKey};
    use hmac::Mac as _;
    use serde_json::json;

    pub(crate) fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// A compact JWS over `header` and `claims`, Ed25519-signed by `key`.
    pub(crate) fn sign(
        header: &serde_json::Value,
        claims: &serde_json::Value,
        key: &SigningKey,
    ) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let signature = key.sign(input.as_bytes());
        format!("{input}.{}", b64(&signature.to_bytes()))
    }

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[42u8; 32])
    }

    fn verifier() -> TokenVerifier {
        TokenVerifier::new(&key().verifying_key(), Duration::from_secs(900))
    }

    fn header() -> serde_json::Value {
        json!({"alg": "EdDSA", "typ": "JWT"})
    }

    fn claims(exp: u64) -> serde_json::Value {
        json!({"sub": "dr.alice", "purpose": "treatment", "exp": exp})
    }

    #[test]
    fn a_good_token_gives_its_claims() {
        let exp = now() + 300;
        let token = sign(&header(), &claims(exp), &key());
        let got = verifier().verify(&token).unwrap();
        assert_eq!(
            got,
            TokenClaims {
                end_user: "dr.alice".into(),
                purpose: Some("treatment".into()),
                break_glass: None,
                expires_at: exp,
            }
        );
        // typ may be absent or any case of JWT; break_glass is carried.
        let token = sign(
            &json!({"alg": "EdDSA"}),
            &json!({"sub": "dr.bob", "exp": exp, "break_glass": "cardiac arrest, bed 4", "iat": now()}),
            &key(),
        );
        let got = verifier().verify(&token).unwrap();
        assert_eq!(got.break_glass.as_deref(), Some("cardiac arrest, bed 4"));
        assert_eq!(got.purpose, None);
        let token = sign(&json!({"alg": "EdDSA", "typ": "jwt"}), &claims(exp), &key());
        assert!(verifier().verify(&token).is_ok());
    }

    fn refused(token: &str) -> ContextError {
        let e = verifier().verify(token).unwrap_err();
        assert_eq!(e.sqlstate(), "28000", "{e}");
        // Nothing of the token in the message: no part of it, no claim value.
        let message = e.to_string();
        for part in token.split('.').filter(|p| p.len() > 3) {
            assert!(!message.contains(part), "{message}");
        }
        for value in ["dr.alice", "treatment", "mallory"] {
            assert!(!message.contains(value), "{message}");
        }
        e
    }

    #[test]
    fn every_bad_token_is_refused_with_28000() {
        let exp = now() + 300;
        let good = sign(&header(), &claims(exp), &key());
        // Bad signature: one signature byte changed; claims edited after signing.
        let mut bytes = URL_SAFE_NO_PAD
            .decode(good.rsplit('.').next().unwrap())
            .unwrap();
        bytes[0] ^= 1;
        let (input, _) = good.rsplit_once('.').unwrap();
        let tampered = format!("{input}.{}", b64(&bytes));
        assert!(matches!(refused(&tampered), ContextError::TokenSignature));
        let (h, _) = input.split_once('.').unwrap();
        let swapped = format!(
            "{h}.{}.{}",
            b64(json!({"sub": "mallory", "exp": exp}).to_string().as_bytes()),
            good.rsplit('.').next().unwrap()
        );
        assert!(matches!(refused(&swapped), ContextError::TokenSignature));
        // Wrong key.
        let other = SigningKey::from_bytes(&[7u8; 32]);
        assert!(matches!(
            refused(&sign(&header(), &claims(exp), &other)),
            ContextError::TokenSignature
        ));
        // Expired; no exp; exp too far ahead; exp of the wrong type; nbf in the future.
        assert!(matches!(
            refused(&sign(&header(), &claims(now() - 5), &key())),
            ContextError::TokenExpired
        ));
        assert!(matches!(
            refused(&sign(&header(), &json!({"sub": "dr.alice"}), &key())),
            ContextError::TokenNoExpiry
        ));
        assert!(matches!(
            refused(&sign(&header(), &claims(now() + 901 + 60), &key())),
            ContextError::TokenTooLong { max_secs: 900 }
        ));
        assert!(matches!(
            refused(&sign(
                &header(),
                &json!({"sub": "dr.alice", "exp": "never"}),
                &key()
            )),
            ContextError::TokenMalformed
        ));
        assert!(matches!(
            refused(&sign(
                &header(),
                &json!({"sub": "dr.alice", "exp": exp, "nbf": now() + 120}),
                &key()
            )),
            ContextError::TokenNotYetValid
        ));
        // Missing or unusable claims.
        assert!(matches!(
            refused(&sign(
                &header(),
                &json!({"purpose": "treatment", "exp": exp}),
                &key()
            )),
            ContextError::TokenClaim("sub")
        ));
        assert!(matches!(
            refused(&sign(&header(), &json!({"sub": "", "exp": exp}), &key())),
            ContextError::TokenClaim("sub")
        ));
        assert!(matches!(
            refused(&sign(
                &header(),
                &json!({"sub": "a\nb", "exp": exp}),
                &key()
            )),
            ContextError::TokenClaim("sub")
        ));
        assert!(matches!(
            refused(&sign(
                &header(),
                &json!({"sub": "dr.alice", "purpose": 3, "exp": exp}),
                &key()
            )),
            ContextError::TokenMalformed
        ));
        // Wrong typ.
        assert!(matches!(
            refused(&sign(
                &json!({"alg": "EdDSA", "typ": "at+jwt"}),
                &claims(exp),
                &key()
            )),
            ContextError::TokenType
        ));
    }

    #[test]
    fn other_algorithms_are_refused() {
        let exp = now() + 300;
        let payload = b64(claims(exp).to_string().as_bytes());
        // alg none, with and without a signature part.
        let none = b64(json!({"alg": "none", "typ": "JWT"}).to_string().as_bytes());
        assert!(matches!(
            refused(&format!("{none}.{payload}.")),
            ContextError::TokenAlgorithm
        ));
        assert!(matches!(
            refused(&format!("{none}.{payload}.AAAA")),
            ContextError::TokenAlgorithm
        ));
        // HS256 "signed" with the public key as the HMAC secret: raw bytes and file text.
        let public = key().verifying_key();
        let file_text = format!("{}\n", STANDARD.encode(public.as_bytes()));
        for secret in [public.as_bytes().to_vec(), file_text.into_bytes()] {
            let head = b64(json!({"alg": "HS256", "typ": "JWT"}).to_string().as_bytes());
            let input = format!("{head}.{payload}");
            let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&secret).unwrap();
            mac.update(input.as_bytes());
            let token = format!("{input}.{}", b64(&mac.finalize().into_bytes()));
            assert!(matches!(refused(&token), ContextError::TokenAlgorithm));
        }
        // Other asymmetric algorithms by name, and the EdDSA header with an ES256 body.
        for alg in ["ES256", "RS256", "PS256", "Ed25519", "eddsa"] {
            let token = sign(&json!({"alg": alg}), &claims(exp), &key());
            assert!(
                matches!(refused(&token), ContextError::TokenAlgorithm),
                "{alg}"
            );
        }
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let exp = now() + 300;
        let good = sign(&header(), &claims(exp), &key());
        let parts: Vec<&str> = good.split('.').collect();
        for bad in [
            String::new(),
            "not a token".to_string(),
            format!("{}.{}", parts[0], parts[1]),
            format!("{good}.{}", parts[2]),
            format!("{}!.{}.{}", parts[0], parts[1], parts[2]),
            format!("{}.{}*.{}", parts[0], parts[1], parts[2]),
            format!("{}.{}.{}", b64(b"{not json"), parts[1], parts[2]),
            format!("{}.{}.{}", parts[0], b64(b"[1,2]"), parts[2]),
            format!("{}.{}.{}", b64(b"\"EdDSA\""), parts[1], parts[2]),
            "a".repeat(MAX_TOKEN_LEN + 1),
        ] {
            let e = verifier().verify(&bad).unwrap_err();
            assert_eq!(e.sqlstate(), "28000", "{bad}: {e}");
        }
        // Padded base64 is not base64url without padding.
        let padded = format!("{}==.{}.{}", parts[0], parts[1], parts[2]);
        assert!(verifier().verify(&padded).is_err());
    }

    #[test]
    fn key_files_base64_or_pem() {
        let dir = tempfile::tempdir().unwrap();
        let public = key().verifying_key();
        let raw = dir.path().join("raw.pub");
        std::fs::write(&raw, format!("{}\n", STANDARD.encode(public.as_bytes()))).unwrap();
        assert_eq!(load_token_key(&raw).unwrap(), public);
        // PEM SubjectPublicKeyInfo, as `openssl pkey -pubout` writes it.
        let mut der = hex::decode("302a300506032b6570032100").unwrap();
        der.extend_from_slice(public.as_bytes());
        let pem = dir.path().join("key.pem");
        std::fs::write(
            &pem,
            format!(
                "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
                STANDARD.encode(&der)
            ),
        )
        .unwrap();
        assert_eq!(load_token_key(&pem).unwrap(), public);
        for (name, content) in [
            ("short", STANDARD.encode([1u8; 16])),
            ("junk", "not base64!".to_string()),
            (
                "rsa",
                "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".to_string(),
            ),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, content).unwrap();
            let e = load_token_key(&path).unwrap_err().to_string();
            assert!(e.contains(&path.display().to_string()), "{e}");
        }
        let e = load_token_key(&dir.path().join("absent"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
    }
}
