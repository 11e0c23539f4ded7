//! The one algorithm pgveil accepts for context tokens, as a `jsonwebtoken` crypto provider:
//! Ed25519 through `ed25519-dalek` (already pgveil's signature library for the audit log).
//!
//! `jsonwebtoken` needs a provider for signature checks. Its bundled ones bring RSA, ECDSA
//! and HMAC code pgveil must never run on a context token; this one knows EdDSA only, so
//! an `HS256` token "signed" with the public key as an HMAC secret, or any other algorithm,
//! cannot even reach a verifier. Verification is strict (`verify_strict`: no small-order
//! keys, no malleable signatures).

use std::sync::OnceLock;

use ed25519_dalek::{Signature, VerifyingKey};
use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier};
use jsonwebtoken::errors::{new_error, ErrorKind};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};

static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: no_signer,
    verifier_factory: eddsa_verifier,
    key_utils: jsonwebtoken::crypto::KeyUtils::new_unimplemented(),
};

/// pgveil verifies tokens; the application signs them.
fn no_signer(
    _algorithm: &Algorithm,
    _key: &EncodingKey,
) -> jsonwebtoken::errors::Result<Box<dyn JwtSigner>> {
    Err(new_error(ErrorKind::UnsupportedAlgorithm))
}

fn eddsa_verifier(
    algorithm: &Algorithm,
    key: &DecodingKey,
) -> jsonwebtoken::errors::Result<Box<dyn JwtVerifier>> {
    if *algorithm != Algorithm::EdDSA {
        return Err(new_error(ErrorKind::InvalidAlgorithm));
    }
    // `DecodingKey::from_ed_der` keeps the 32 raw public key bytes (see token.rs).
    let raw: &[u8; 32] = key
        .try_get_as_bytes()?
        .try_into()
        .map_err(|_| new_error(ErrorKind::InvalidEddsaKey))?;
    let key = VerifyingKey::from_bytes(raw).map_err(|_| new_error(ErrorKind::InvalidEddsaKey))?;
    Ok(Box::new(Ed25519Verifier(key)))
}

struct Ed25519Verifier(VerifyingKey);

impl signature::Verifier<Vec<u8>> for Ed25519Verifier {
    fn verify(&self, message: &[u8], signature: &Vec<u8>) -> Result<(), signature::Error> {
        let signature = Signature::from_slice(signature).map_err(|_| signature::Error::new())?;
        self.0
            .verify_strict(message, &signature)
            .map_err(|_| signature::Error::new())
    }
}

impl JwtVerifier for Ed25519Verifier {
    fn algorithm(&self) -> Algorithm {
        Algorithm::EdDSA
    }
}

/// Installs the provider for the process (once). `false` when another provider was
/// installed first: then no token is accepted, since pgveil cannot know what it verifies.
pub(crate) fn install() -> bool {
    static INSTALLED: OnceLock<bool> = OnceLock::new();
    *INSTALLED.get_or_init(|| match PROVIDER.install_default() {
        Ok(()) => true,
        Err(other) => std::ptr::eq(other, &PROVIDER),
    })
}
