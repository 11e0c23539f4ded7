//! Who is reading and why (DESIGN.md "Session context"): signed context tokens
//! ([`token`]), the session context and its rules ([`session`]).
//!
//! - [`TokenVerifier`] checks `SET pgveil.context = '<JWT>'` tokens with the Ed25519 key of
//!   `[context] token_public_key_file` ([`provider`] is the EdDSA-only verifier it uses).
//! - [`SessionContext`] holds `end_user`, `purpose` and `break_glass` and decides
//!   `require_purpose`, break-glass eligibility and how break-glass raises an access.
//!
//! Every refusal is a [`ContextError`] with its SQLSTATE; none carries the token.

mod provider;
pub mod session;
pub mod token;

use std::path::PathBuf;

pub use session::{check_value, SessionContext, Setting};
pub use token::{load_token_key, TokenClaims, TokenVerifier};

use crate::pgerror::sqlstate;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContextError {
    #[error("context token is malformed: expected a compact JWS (three base64url parts) with a JSON header and claims")]
    TokenMalformed,
    #[error("context token must be signed with EdDSA (Ed25519)")]
    TokenAlgorithm,
    #[error("context token header typ must be JWT when present")]
    TokenType,
    #[error("context token signature does not verify with the configured token key")]
    TokenSignature,
    #[error("context token has expired")]
    TokenExpired,
    #[error("context token is not valid yet (nbf)")]
    TokenNotYetValid,
    #[error("context token has no exp claim")]
    TokenNoExpiry,
    #[error(
        "context token expires more than {max_secs} s ahead ([context] max_token_lifetime_secs)"
    )]
    TokenTooLong { max_secs: u64 },
    #[error("context token claim {0} is missing or unusable (a non-empty string without control characters, at most 256 bytes)")]
    TokenClaim(&'static str),
    #[error("context tokens cannot be verified: another JWT crypto provider is installed")]
    TokenUnavailable,
    #[error("{0} can only be set through a signed token here: SET pgveil.context = '<JWT>'")]
    TokenRequired(&'static str),
    #[error("invalid value for parameter \"{setting}\": it {why}")]
    BadValue {
        setting: &'static str,
        why: &'static str,
    },
    #[error("declare a purpose of use (SET pgveil.purpose) before reading protected columns")]
    PurposeRequired,
    #[error("break-glass needs one of the roles in [policy] break_glass_roles")]
    BreakGlassNotAllowed,
    #[error("unrecognized configuration parameter \"{0}\"")]
    UnknownSetting(String),
    #[error("[context] token_public_key_file {}: {reason}", path.display())]
    Key { path: PathBuf, reason: String },
}

impl ContextError {
    /// The SQLSTATE a session answers with.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            Self::BadValue { .. } => sqlstate::INVALID_PARAMETER_VALUE,
            Self::PurposeRequired | Self::BreakGlassNotAllowed => sqlstate::INSUFFICIENT_PRIVILEGE,
            Self::UnknownSetting(_) => sqlstate::UNDEFINED_OBJECT,
            Self::Key { .. } => sqlstate::INTERNAL_ERROR,
            _ => sqlstate::INVALID_AUTHORIZATION,
        }
    }
}
