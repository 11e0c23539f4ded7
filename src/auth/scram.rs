//! SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL speaks it, both sides, without I/O.
//!
//! The server side authenticates a client against a stored verifier and, in doing so,
//! recovers the client's ClientKey: `ClientKey = ClientProof XOR HMAC(StoredKey, AuthMessage)`,
//! checked by `H(ClientKey) == StoredKey`. The client side then logs in to the database as
//! the same user with that ClientKey, which is all a proof needs; pgveil never sees or keeps
//! the password. Channel binding is `tls-server-end-point` (RFC 5929), the one type
//! PostgreSQL supports.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::{ZeroizeOnDrop, Zeroizing};

use super::hmac_sha256;
use super::verifier::ScramVerifier;

pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
pub const SCRAM_SHA_256_PLUS: &str = "SCRAM-SHA-256-PLUS";
const END_POINT: &str = "tls-server-end-point";
/// Random bytes in a nonce, as PostgreSQL (SCRAM_RAW_NONCE_LEN).
const NONCE_BYTES: usize = 18;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScramError {
    #[error("malformed SCRAM message ({0})")]
    Malformed(&'static str),
    #[error("client selected an invalid SASL authentication mechanism")]
    Mechanism,
    #[error("SCRAM channel binding negotiation error: the client supports channel binding but thinks the server does not, and this server does")]
    Downgrade,
    #[error("the client selected SCRAM-SHA-256-PLUS, but its message does not include channel binding data")]
    MissingBinding,
    #[error("the client selected SCRAM-SHA-256 without channel binding, but its message includes channel binding data")]
    UnexpectedBinding,
    #[error("unsupported SCRAM channel-binding type")]
    BindingType,
    #[error("SCRAM channel binding check failed")]
    BindingMismatch,
    #[error("client uses authorization identity, but it is not supported")]
    AuthorizationIdentity,
    #[error("client requires an unsupported SCRAM extension")]
    Extension,
    #[error("SCRAM nonce does not match")]
    Nonce,
    /// The proof does not match the verifier: a wrong password (or an unknown user).
    #[error("password authentication failed")]
    Rejected,
    #[error("the database's SCRAM salt or iteration count differs from the verifier auth_query returned (the password changed since)")]
    VerifierChanged,
    #[error("the database's SCRAM server signature is wrong")]
    ServerSignature,
    #[error("the database ended the SCRAM exchange with an error ({0})")]
    ServerError(String),
}

impl ScramError {
    /// PostgreSQL's SQLSTATE for the same failure.
    pub fn sqlstate(&self) -> &'static str {
        use crate::pgerror::sqlstate;
        match self {
            Self::Rejected => sqlstate::INVALID_PASSWORD,
            Self::Mechanism | Self::AuthorizationIdentity | Self::Extension => {
                sqlstate::PROTOCOL_VIOLATION
            }
            Self::VerifierChanged | Self::ServerSignature | Self::ServerError(_) => {
                sqlstate::INVALID_AUTHORIZATION
            }
            _ => sqlstate::PROTOCOL_VIOLATION,
        }
    }
}

fn random_nonce() -> String {
    let mut raw = [0u8; NONCE_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    BASE64.encode(raw)
}

/// `c=` data: the gs2 header followed by the binding data, if any.
fn cbind_input(gs2_header: &str, binding: &[u8]) -> Vec<u8> {
    let mut out = gs2_header.as_bytes().to_vec();
    out.extend_from_slice(binding);
    out
}

fn xor(a: &[u8; 32], b: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    let mut out = Zeroizing::new([0u8; 32]);
    for (o, (x, y)) in out.iter_mut().zip(a.iter().zip(b)) {
        *o = x ^ y;
    }
    out
}

fn auth_message(client_first_bare: &str, server_first: &str, client_final_bare: &str) -> Vec<u8> {
    [client_first_bare, server_first, client_final_bare]
        .join(",")
        .into_bytes()
}

/// A printable nonce as RFC 5802 allows (no comma).
fn valid_nonce(nonce: &str) -> bool {
    !nonce.is_empty()
        && nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// What the client's proof gave back: enough to log in upstream as the same user.
#[derive(ZeroizeOnDrop)]
pub struct Credentials {
    client_key: [u8; 32],
    #[zeroize(skip)]
    verifier: ScramVerifier,
}

impl Credentials {
    pub fn verifier(&self) -> &ScramVerifier {
        &self.verifier
    }
}

/// The server side of one exchange, after the client-first message.
pub struct ServerExchange {
    verifier: ScramVerifier,
    /// The verifier is a stand-in: the exchange must fail whatever the proof.
    mock: bool,
    client_first_bare: String,
    server_first: String,
    nonce: String,
    cbind_input: Vec<u8>,
}

impl ServerExchange {
    /// Checks the mechanism and client-first message and answers with the server-first
    /// message. `binding` is pgveil's certificate hash when `SCRAM-SHA-256-PLUS` was offered
    /// (the client is on TLS); a client that then says it supports channel binding but
    /// believes the server does not (`y`) is refused: that is a downgrade.
    pub fn start(
        mechanism: &[u8],
        client_first: &[u8],
        binding: Option<&[u8]>,
        verifier: ScramVerifier,
        mock: bool,
    ) -> Result<(Self, String), ScramError> {
        Self::begin(
            mechanism,
            client_first,
            binding,
            verifier,
            mock,
            &random_nonce(),
        )
    }

    fn begin(
        mechanism: &[u8],
        client_first: &[u8],
        binding: Option<&[u8]>,
        verifier: ScramVerifier,
        mock: bool,
        server_nonce: &str,
    ) -> Result<(Self, String), ScramError> {
        let plus = match mechanism {
            m if m == SCRAM_SHA_256_PLUS.as_bytes() && binding.is_some() => true,
            m if m == SCRAM_SHA_256.as_bytes() => false,
            _ => return Err(ScramError::Mechanism),
        };
        let text = std::str::from_utf8(client_first)
            .map_err(|_| ScramError::Malformed("client-first-message is not UTF-8"))?;
        let (flag, rest) = text
            .split_once(',')
            .ok_or(ScramError::Malformed("no gs2 header"))?;
        let binding_data: &[u8] = match (flag, plus) {
            ("n", false) => &[],
            ("y", false) if binding.is_some() => return Err(ScramError::Downgrade),
            ("y", false) => &[],
            ("n" | "y", true) => return Err(ScramError::MissingBinding),
            (flag, _) if flag.starts_with("p=") => {
                if !plus {
                    return Err(ScramError::UnexpectedBinding);
                }
                if &flag[2..] != END_POINT {
                    return Err(ScramError::BindingType);
                }
                binding.unwrap_or_default()
            }
            _ => return Err(ScramError::Malformed("gs2 channel binding flag")),
        };
        if rest.starts_with("a=") {
            return Err(ScramError::AuthorizationIdentity);
        }
        let client_first_bare = rest
            .strip_prefix(',')
            .ok_or(ScramError::Malformed("gs2 header"))?;
        let gs2_header = &text[..text.len() - client_first_bare.len()];
        let mut attributes = client_first_bare.split(',');
        match attributes.next() {
            Some(a) if a.starts_with("m=") => return Err(ScramError::Extension),
            Some(a) if a.starts_with("n=") => {}
            _ => {
                return Err(ScramError::Malformed(
                    "client-first-message has no user name",
                ))
            }
        }
        let client_nonce = attributes
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .filter(|n| valid_nonce(n))
            .ok_or(ScramError::Malformed("client-first-message has no nonce"))?;
        let nonce = format!("{client_nonce}{server_nonce}");
        let server_first = format!(
            "r={nonce},s={},i={}",
            BASE64.encode(&verifier.salt),
            verifier.iterations
        );
        let exchange = ServerExchange {
            cbind_input: cbind_input(gs2_header, binding_data),
            client_first_bare: client_first_bare.to_string(),
            server_first: server_first.clone(),
            nonce,
            verifier,
            mock,
        };
        Ok((exchange, server_first))
    }

    /// Checks the client-final message. Ok: the server-final message for the client and the
    /// credentials for the login upstream.
    pub fn finish(self, client_final: &[u8]) -> Result<(String, Credentials), ScramError> {
        let text = std::str::from_utf8(client_final)
            .map_err(|_| ScramError::Malformed("client-final-message is not UTF-8"))?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("client-final-message has no proof"))?;
        let mut attributes = without_proof.split(',');
        let cbind = attributes
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .and_then(|c| BASE64.decode(c).ok())
            .ok_or(ScramError::Malformed(
                "client-final-message has no channel binding",
            ))?;
        if !bool::from(cbind.ct_eq(&self.cbind_input)) {
            return Err(ScramError::BindingMismatch);
        }
        let nonce = attributes
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(ScramError::Malformed("client-final-message has no nonce"))?;
        if nonce != self.nonce {
            return Err(ScramError::Nonce);
        }
        let proof = Zeroizing::new(
            BASE64
                .decode(proof)
                .map_err(|_| ScramError::Malformed("invalid proof"))?,
        );
        let proof: &[u8; 32] = proof[..]
            .try_into()
            .map_err(|_| ScramError::Malformed("invalid proof length"))?;
        let message = auth_message(&self.client_first_bare, &self.server_first, without_proof);
        let signature = Zeroizing::new(hmac_sha256(&self.verifier.stored_key, &[&message]));
        let client_key = xor(proof, &signature);
        let stored_key: [u8; 32] = Sha256::digest(&client_key[..]).into();
        let matches = bool::from(stored_key.ct_eq(&self.verifier.stored_key));
        if !matches || self.mock {
            return Err(ScramError::Rejected);
        }
        let server_signature = hmac_sha256(&self.verifier.server_key, &[&message]);
        let server_final = format!("v={}", BASE64.encode(server_signature));
        Ok((
            server_final,
            Credentials {
                client_key: *client_key,
                verifier: self.verifier.clone(),
            },
        ))
    }
}

/// What pgveil, as the database's client, says about channel binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binding {
    /// No TLS to the database: `n`.
    Unsupported,
    /// TLS, but the database did not offer `SCRAM-SHA-256-PLUS`: `y`.
    NotOffered,
    /// `p=tls-server-end-point` with the database certificate's hash.
    EndPoint(Vec<u8>),
}

/// The client side of one exchange with the database.
pub struct ClientExchange {
    gs2_header: String,
    binding_data: Vec<u8>,
    client_first_bare: String,
    nonce: String,
}

impl ClientExchange {
    /// The mechanism to choose and the client-first message.
    pub fn start(binding: Binding) -> (Self, &'static str, String) {
        Self::begin(binding, "", &random_nonce())
    }

    fn begin(binding: Binding, user: &str, nonce: &str) -> (Self, &'static str, String) {
        let (gs2_header, mechanism, binding_data) = match binding {
            Binding::Unsupported => ("n,,".to_string(), SCRAM_SHA_256, Vec::new()),
            Binding::NotOffered => ("y,,".to_string(), SCRAM_SHA_256, Vec::new()),
            Binding::EndPoint(hash) => (format!("p={END_POINT},,"), SCRAM_SHA_256_PLUS, hash),
        };
        let client_first_bare = format!("n={user},r={nonce}");
        let client_first = format!("{gs2_header}{client_first_bare}");
        let exchange = ClientExchange {
            gs2_header,
            binding_data,
            client_first_bare,
            nonce: nonce.to_string(),
        };
        (exchange, mechanism, client_first)
    }

    /// Answers the server-first message with a proof made from `credentials`. Ok: the
    /// client-final message and the server signature to expect.
    pub fn respond(
        &self,
        server_first: &[u8],
        credentials: &Credentials,
    ) -> Result<(String, [u8; 32]), ScramError> {
        let text = std::str::from_utf8(server_first)
            .map_err(|_| ScramError::Malformed("server-first-message is not UTF-8"))?;
        let mut attributes = text.split(',');
        let nonce = match attributes.next() {
            Some(a) if a.starts_with("m=") => return Err(ScramError::Extension),
            Some(a) => a
                .strip_prefix("r=")
                .ok_or(ScramError::Malformed("server-first-message has no nonce"))?,
            None => return Err(ScramError::Malformed("empty server-first-message")),
        };
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() || !valid_nonce(nonce)
        {
            return Err(ScramError::Nonce);
        }
        let salt = attributes
            .next()
            .and_then(|a| a.strip_prefix("s="))
            .and_then(|s| BASE64.decode(s).ok())
            .ok_or(ScramError::Malformed("server-first-message has no salt"))?;
        let iterations: u32 = attributes
            .next()
            .and_then(|a| a.strip_prefix("i="))
            .and_then(|i| i.parse().ok())
            .ok_or(ScramError::Malformed(
                "server-first-message has no iteration count",
            ))?;
        let verifier = &credentials.verifier;
        if salt != verifier.salt || iterations != verifier.iterations {
            return Err(ScramError::VerifierChanged);
        }
        let without_proof = format!(
            "c={},r={nonce}",
            BASE64.encode(cbind_input(&self.gs2_header, &self.binding_data))
        );
        let message = auth_message(&self.client_first_bare, text, &without_proof);
        let signature = Zeroizing::new(hmac_sha256(&verifier.stored_key, &[&message]));
        let proof = xor(&credentials.client_key, &signature);
        let expected = hmac_sha256(&verifier.server_key, &[&message]);
        Ok((
            format!("{without_proof},p={}", BASE64.encode(&proof[..])),
            expected,
        ))
    }

    /// Checks the server-final message against the signature [`Self::respond`] expects.
    pub fn verify_final(server_final: &[u8], expected: &[u8; 32]) -> Result<(), ScramError> {
        let text = std::str::from_utf8(server_final)
            .map_err(|_| ScramError::Malformed("server-final-message is not UTF-8"))?;
        if let Some(error) = text.strip_prefix("e=") {
            return Err(ScramError::ServerError(error.chars().take(100).collect()));
        }
        let signature = text
            .split(',')
            .next()
            .and_then(|a| a.strip_prefix("v="))
            .and_then(|v| BASE64.decode(v).ok())
            .ok_or(ScramError::Malformed(
                "server-final-message has no signature",
            ))?;
        if bool::from(signature.ct_eq(&expected[..])) {
            Ok(())
        } else {
            Err(ScramError::ServerSignature)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 5802 Hi() (PBKDF2 with HMAC-SHA-256): only the tests need the password.
    fn salted_password(password: &str, salt: &[u8], iterations: u32) -> [u8; 32] {
        let mut u = hmac_sha256(password.as_bytes(), &[salt, &[0, 0, 0, 1]]);
        let mut out = u;
        for _ in 1..iterations {
            u = hmac_sha256(password.as_bytes(), &[&u]);
            for (o, x) in out.iter_mut().zip(u) {
                *o ^= x;
            }
        }
        out
    }

    fn verifier_for(password: &str, salt: &[u8], iterations: u32) -> (ScramVerifier, [u8; 32]) {
        let salted = salted_password(password, salt, iterations);
        let client_key = hmac_sha256(&salted, &[b"Client Key"]);
        let verifier = ScramVerifier {
            iterations,
            salt: salt.to_vec(),
            stored_key: Sha256::digest(client_key).into(),
            server_key: hmac_sha256(&salted, &[b"Server Key"]),
        };
        (verifier, client_key)
    }

    /// A client that knows the password, as libpq computes it.
    fn client_final(client: &ClientExchange, server_first: &str, password: &str) -> String {
        let mut parts = server_first.split(',');
        let _nonce = parts.next();
        let salt = BASE64
            .decode(parts.next().unwrap().strip_prefix("s=").unwrap())
            .unwrap();
        let iterations: u32 = parts.next().unwrap()[2..].parse().unwrap();
        let (verifier, client_key) = verifier_for(password, &salt, iterations);
        let credentials = Credentials {
            client_key,
            verifier,
        };
        client
            .respond(server_first.as_bytes(), &credentials)
            .unwrap()
            .0
    }

    const RFC_SALT: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";

    #[test]
    fn rfc7677_example_server_side() {
        let salt = BASE64.decode(RFC_SALT).unwrap();
        let (verifier, client_key) = verifier_for("pencil", &salt, 4096);
        let (exchange, server_first) = ServerExchange::begin(
            b"SCRAM-SHA-256",
            b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
            None,
            verifier,
            false,
            "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
        )
        .unwrap();
        assert_eq!(
            server_first,
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        let (server_final, credentials) = exchange
            .finish(b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
            .unwrap();
        assert_eq!(
            server_final,
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        assert_eq!(credentials.client_key, client_key);
    }

    #[test]
    fn rfc7677_example_client_side_from_the_recovered_key() {
        let salt = BASE64.decode(RFC_SALT).unwrap();
        let (verifier, client_key) = verifier_for("pencil", &salt, 4096);
        let credentials = Credentials {
            client_key,
            verifier,
        };
        let (client, mechanism, first) =
            ClientExchange::begin(Binding::Unsupported, "user", "rOprNGfwEbeRWgbNEkqO");
        assert_eq!(mechanism, SCRAM_SHA_256);
        assert_eq!(first, "n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let (final_message, expected) = client
            .respond(
                b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
                &credentials,
            )
            .unwrap();
        assert_eq!(final_message, "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=");
        ClientExchange::verify_final(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=", &expected)
            .unwrap();
        assert_eq!(
            ClientExchange::verify_final(
                b"v=AAAATRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
                &expected
            ),
            Err(ScramError::ServerSignature)
        );
    }

    /// A client on TLS through pgveil, and pgveil's login upstream with the key recovered
    /// from that client's proof, each checked by an independent server exchange.
    #[test]
    fn channel_bound_login_and_key_reuse() {
        let (verifier, _) = verifier_for("s3cret", b"0123456789abcdef", 4096);
        let ours = vec![0xaa; 32];
        let (client, mechanism, first) = ClientExchange::start(Binding::EndPoint(ours.clone()));
        assert_eq!(mechanism, SCRAM_SHA_256_PLUS);
        let (exchange, server_first) = ServerExchange::start(
            mechanism.as_bytes(),
            first.as_bytes(),
            Some(&ours),
            verifier.clone(),
            false,
        )
        .unwrap();
        let final_message = client_final(&client, &server_first, "s3cret");
        let (_, credentials) = exchange.finish(final_message.as_bytes()).unwrap();

        // Upstream: the database has its own certificate and its own nonce.
        let theirs = vec![0xbb; 32];
        let (upstream, mechanism, first) = ClientExchange::start(Binding::EndPoint(theirs.clone()));
        let (database, server_first) = ServerExchange::start(
            mechanism.as_bytes(),
            first.as_bytes(),
            Some(&theirs),
            verifier,
            false,
        )
        .unwrap();
        let (final_message, expected) = upstream
            .respond(server_first.as_bytes(), &credentials)
            .unwrap();
        let (server_final, _) = database.finish(final_message.as_bytes()).unwrap();
        ClientExchange::verify_final(server_final.as_bytes(), &expected).unwrap();
    }

    #[test]
    fn wrong_password_and_mock_verifiers_are_rejected() {
        let (verifier, _) = verifier_for("right", b"0123456789abcdef", 4096);
        for (password, mock) in [("wrong", false), ("right", true)] {
            let (client, mechanism, first) = ClientExchange::start(Binding::Unsupported);
            let (exchange, server_first) = ServerExchange::start(
                mechanism.as_bytes(),
                first.as_bytes(),
                None,
                verifier.clone(),
                mock,
            )
            .unwrap();
            let final_message = client_final(&client, &server_first, password);
            assert_eq!(
                exchange.finish(final_message.as_bytes()).err(),
                Some(ScramError::Rejected)
            );
        }
    }

    #[test]
    fn channel_binding_rules() {
        let (verifier, _) = verifier_for("pw", b"0123456789abcdef", 4096);
        let ours = [1u8; 32];
        let start = |mechanism: &str, first: &str, binding: Option<&[u8]>| {
            ServerExchange::start(
                mechanism.as_bytes(),
                first.as_bytes(),
                binding,
                verifier.clone(),
                false,
            )
            .map(|_| ())
        };
        // Downgrade: PLUS was offered, the client claims the server does not support it.
        assert_eq!(
            start(SCRAM_SHA_256, "y,,n=,r=abc", Some(&ours)),
            Err(ScramError::Downgrade)
        );
        // Without TLS nothing was offered, so `y` is honest.
        assert_eq!(start(SCRAM_SHA_256, "y,,n=,r=abc", None), Ok(()));
        assert_eq!(start(SCRAM_SHA_256, "n,,n=,r=abc", Some(&ours)), Ok(()));
        assert_eq!(
            start(SCRAM_SHA_256_PLUS, "n,,n=,r=abc", Some(&ours)),
            Err(ScramError::MissingBinding)
        );
        assert_eq!(
            start(SCRAM_SHA_256_PLUS, "p=tls-server-end-point,,n=,r=abc", None),
            Err(ScramError::Mechanism)
        );
        assert_eq!(
            start(
                SCRAM_SHA_256,
                "p=tls-server-end-point,,n=,r=abc",
                Some(&ours)
            ),
            Err(ScramError::UnexpectedBinding)
        );
        assert_eq!(
            start(SCRAM_SHA_256_PLUS, "p=tls-unique,,n=,r=abc", Some(&ours)),
            Err(ScramError::BindingType)
        );
        assert_eq!(
            start("SCRAM-SHA-1", "n,,n=,r=abc", None),
            Err(ScramError::Mechanism)
        );

        // A client bound to another certificate (a man in the middle) fails the check.
        let (client, mechanism, first) = ClientExchange::start(Binding::EndPoint(vec![2u8; 32]));
        let (exchange, server_first) = ServerExchange::start(
            mechanism.as_bytes(),
            first.as_bytes(),
            Some(&ours),
            verifier.clone(),
            false,
        )
        .unwrap();
        let final_message = client_final(&client, &server_first, "pw");
        assert_eq!(
            exchange.finish(final_message.as_bytes()).err(),
            Some(ScramError::BindingMismatch)
        );
    }

    #[test]
    fn malformed_messages_are_refused() {
        let (verifier, _) = verifier_for("pw", b"0123456789abcdef", 4096);
        let start = |first: &[u8]| {
            ServerExchange::start(b"SCRAM-SHA-256", first, None, verifier.clone(), false)
                .map(|_| ())
        };
        assert_eq!(
            start(b"n,a=admin,n=,r=abc"),
            Err(ScramError::AuthorizationIdentity)
        );
        assert_eq!(start(b"n,,m=ext,n=,r=abc"), Err(ScramError::Extension));
        assert!(matches!(start(b"n,,n=,r="), Err(ScramError::Malformed(_))));
        assert!(matches!(start(b"n,,n=,r=a,b"), Ok(())));
        assert!(matches!(
            start(b"\xff,,n=,r=abc"),
            Err(ScramError::Malformed(_))
        ));
        assert!(matches!(
            start(b"x,,n=,r=abc"),
            Err(ScramError::Malformed(_))
        ));
        assert!(matches!(start(b""), Err(ScramError::Malformed(_))));

        let (exchange, server_first) = ServerExchange::start(
            b"SCRAM-SHA-256",
            b"n,,n=,r=abc",
            None,
            verifier.clone(),
            false,
        )
        .unwrap();
        let nonce = &server_first[2..server_first.find(',').unwrap()];
        assert!(matches!(
            exchange
                .finish(format!("c=biws,r={nonce}").as_bytes())
                .err(),
            Some(ScramError::Malformed(_))
        ));
        let (exchange, _) = ServerExchange::start(
            b"SCRAM-SHA-256",
            b"n,,n=,r=abc",
            None,
            verifier.clone(),
            false,
        )
        .unwrap();
        assert_eq!(
            exchange
                .finish(b"c=biws,r=abcOTHER,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
                .err(),
            Some(ScramError::Nonce)
        );
        let (exchange, server_first) =
            ServerExchange::start(b"SCRAM-SHA-256", b"n,,n=,r=abc", None, verifier, false).unwrap();
        let nonce = &server_first[2..server_first.find(',').unwrap()];
        assert_eq!(
            exchange
                .finish(
                    format!("c=eSws,r={nonce},p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
                        .as_bytes()
                )
                .err(),
            Some(ScramError::BindingMismatch)
        );
    }

    #[test]
    fn upstream_refuses_a_changed_verifier_or_a_foreign_nonce() {
        let (verifier, client_key) = verifier_for("pw", b"0123456789abcdef", 4096);
        let credentials = Credentials {
            client_key,
            verifier,
        };
        let (client, _, _) = ClientExchange::begin(Binding::Unsupported, "", "abc");
        assert_eq!(
            client
                .respond(b"r=abcdef,s=AAAAAAAAAAAAAAAAAAAAAA==,i=4096", &credentials)
                .err(),
            Some(ScramError::VerifierChanged)
        );
        assert_eq!(
            client
                .respond(b"r=xyzdef,s=MDEyMzQ1Njc4OWFiY2RlZg==,i=4096", &credentials)
                .err(),
            Some(ScramError::Nonce)
        );
        assert_eq!(
            client
                .respond(b"r=abc,s=MDEyMzQ1Njc4OWFiY2RlZg==,i=4096", &credentials)
                .err(),
            Some(ScramError::Nonce)
        );
        assert!(client
            .respond(b"r=abcdef,s=MDEyMzQ1Njc4OWFiY2RlZg==,i=4096", &credentials)
            .is_ok());
        assert!(matches!(
            ClientExchange::verify_final(b"e=invalid-proof", &[0; 32]),
            Err(ScramError::ServerError(_))
        ));
    }
}
