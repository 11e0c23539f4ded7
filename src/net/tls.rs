//! TLS for both sides: terminating clients' TLS, and connecting upstream.

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls::{self, pki_types};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} holds no {what}")]
    Empty { path: String, what: &'static str },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("upstream TLS: invalid server name {0}")]
    ServerName(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn certs(path: &Path) -> Result<Vec<pki_types::CertificateDer<'static>>, TlsError> {
    let pem = read_pem(path)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Read {
            path: path.display().to_string(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            path: path.display().to_string(),
            what: "certificate",
        });
    }
    Ok(certs)
}

/// The server side: what clients see when they send SSLRequest.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    ServerTls::load(cert, key).map(|tls| tls.config)
}

/// The client-facing TLS configuration with what SCRAM channel binding needs of it.
pub struct ServerTls {
    pub config: Arc<rustls::ServerConfig>,
    /// `tls-server-end-point` data for pgveil's own certificate; `None` when its signature
    /// algorithm names no hash RFC 5929 can use (then `SCRAM-SHA-256-PLUS` is not offered).
    pub end_point: Option<Arc<[u8]>>,
}

impl ServerTls {
    /// Reads and checks the pair: a key that does not match the certificate is refused.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let (config, leaf) = load_server_config(cert, key)?;
        Ok(Self {
            config,
            end_point: end_point_hash(&leaf).map(Arc::from),
        })
    }
}

/// RFC 5929 `tls-server-end-point`: the certificate hashed with the hash of its signature
/// algorithm, MD5 and SHA-1 replaced by SHA-256. `None` for algorithms that name no hash
/// (Ed25519, RSA-PSS), for which PostgreSQL and libpq refuse channel binding too.
pub fn end_point_hash(cert_der: &[u8]) -> Option<Vec<u8>> {
    use sha2::Digest;
    use x509_cert::der::{oid::ObjectIdentifier, Decode};
    const SHA256: [&str; 7] = [
        "1.2.840.113549.1.1.4",   // md5WithRSAEncryption
        "1.2.840.113549.1.1.5",   // sha1WithRSAEncryption
        "1.2.840.10045.4.1",      // ecdsa-with-SHA1
        "1.2.840.10040.4.3",      // dsa-with-sha1
        "1.2.840.113549.1.1.11",  // sha256WithRSAEncryption
        "1.2.840.10045.4.3.2",    // ecdsa-with-SHA256
        "2.16.840.1.101.3.4.3.2", // dsa-with-sha256
    ];
    const SHA384: [&str; 2] = ["1.2.840.113549.1.1.12", "1.2.840.10045.4.3.3"];
    const SHA512: [&str; 2] = ["1.2.840.113549.1.1.13", "1.2.840.10045.4.3.4"];
    let cert = x509_cert::Certificate::from_der(cert_der).ok()?;
    let oid = cert.signature_algorithm.oid;
    let named = |list: &[&str]| {
        list.iter()
            .any(|text| ObjectIdentifier::new(text).is_ok_and(|known| known == oid))
    };
    if named(&SHA256) {
        Some(sha2::Sha256::digest(cert_der).to_vec())
    } else if named(&SHA384) {
        Some(sha2::Sha384::digest(cert_der).to_vec())
    } else if named(&SHA512) {
        Some(sha2::Sha512::digest(cert_der).to_vec())
    } else {
        None
    }
}

fn load_server_config(
    cert: &Path,
    key: &Path,
) -> Result<
    (
        Arc<rustls::ServerConfig>,
        pki_types::CertificateDer<'static>,
    ),
    TlsError,
> {
    let chain = certs(cert)?;
    let leaf = chain[0].clone();
    let pem = read_pem(key)?;
    let key_der = rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|source| TlsError::Read {
            path: key.display().to_string(),
            source,
        })?
        .ok_or_else(|| TlsError::Empty {
            path: key.display().to_string(),
            what: "private key",
        })?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)?;
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok((Arc::new(config), leaf))
}

/// The client side towards the database. `ca_file` given: the chain and host name are
/// verified (`verify-full`); otherwise the connection is encrypted but unauthenticated, as
/// libpq's `sslmode=require` is.
pub fn upstream_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?;
    let config = match ca_file {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certs(path)? {
                roots.add(cert)?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider())))
            .with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

pub fn server_name(host: &str) -> Result<pki_types::ServerName<'static>, TlsError> {
    pki_types::ServerName::try_from(host.to_string())
        .map_err(|_| TlsError::ServerName(host.to_string()))
}

/// Accepts any certificate but still checks handshake signatures: `tls = "require"`.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &pki_types::CertificateDer<'_>,
        _intermediates: &[pki_types::CertificateDer<'_>],
        _server_name: &pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
