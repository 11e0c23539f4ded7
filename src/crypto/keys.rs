//! Key files: the master key (column keys are derived from it) and the audit signing key pair.
//!
//! Every error names the file and the reason; none ever contains key bytes.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{SigningKey, VerifyingKey};
use rand::rngs::OsRng;
use rand::RngCore;
use zeroize::Zeroizing;

/// Length in bytes of the master key and of Ed25519 seeds and public keys.
pub const KEY_LEN: usize = 32;

/// File names written by [`init_key_dir`].
pub const MASTER_KEY_FILE: &str = "master.key";
pub const AUDIT_KEY_FILE: &str = "audit.key";
pub const AUDIT_PUB_FILE: &str = "audit.pub";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "no master key: set [keys] master_key_file or the environment variable PGVEIL_MASTER_KEY"
    )]
    NoMasterKey,
    #[error("{what} {} does not exist", path.display())]
    Missing { what: &'static str, path: PathBuf },
    #[error("{what} {} cannot be read: {reason}", path.display())]
    Unreadable {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{what} {} is accessible by group or others (mode {mode:04o}); chmod 600 it", path.display())]
    Permissions {
        what: &'static str,
        path: PathBuf,
        mode: u32,
    },
    /// `source` is a file path or the environment variable's name.
    #[error("{source_name} is not valid base64")]
    NotBase64 { source_name: String },
    #[error("{source_name} must hold exactly {expected} bytes (base64), it holds {actual}")]
    WrongLength {
        source_name: String,
        expected: usize,
        actual: usize,
    },
    #[error("{what} {} is not a valid Ed25519 public key", path.display())]
    InvalidPublicKey { what: &'static str, path: PathBuf },
    #[error("{} already exists; refusing to overwrite key files", path.display())]
    AlreadyExists { path: PathBuf },
    #[error("cannot create {}: {reason}", path.display())]
    Create { path: PathBuf, reason: String },
    #[error("{second} has key id {id:08x}, like {first}: list each master key once")]
    DuplicateKeyId {
        id: u32,
        first: String,
        second: String,
    },
    #[error("{0}")]
    Hsm(#[from] super::hsm::HsmError),
}

/// The 32-byte master key. Zeroized on drop; never printed.
pub struct MasterKey(Zeroizing<[u8; KEY_LEN]>);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    /// Wraps raw key bytes (tests, tooling).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// Loads the master key: from `file` when given (which must not be readable by group or
    /// others), otherwise from `env_value` (the content of `PGVEIL_MASTER_KEY`). Either holds
    /// the base64 of exactly 32 bytes; surrounding whitespace is ignored.
    pub fn load(file: Option<&Path>, env_value: Option<&str>) -> Result<MasterKey, KeyError> {
        let bytes = match (file, env_value) {
            (Some(path), _) => {
                let text = read_secret_file("master key file", path)?;
                decode_key(&text, &format!("master key file {}", path.display()))?
            }
            (None, Some(value)) => decode_key(value, "PGVEIL_MASTER_KEY")?,
            (None, None) => return Err(KeyError::NoMasterKey),
        };
        Ok(Self(bytes))
    }

    /// Loads a key of `[keys] previous_master_key_files` (same rules as the master key file).
    pub fn load_previous(path: &Path) -> Result<MasterKey, KeyError> {
        const WHAT: &str = "previous master key file";
        let text = read_secret_file(WHAT, path)?;
        Ok(Self(decode_key(
            &text,
            &format!("{WHAT} {}", path.display()),
        )?))
    }

    /// 32 fresh random bytes from the operating system.
    pub fn generate() -> MasterKey {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        OsRng.fill_bytes(&mut bytes[..]);
        Self(bytes)
    }

    /// The key file's content: base64 and a newline.
    pub(crate) fn to_file_content(&self) -> Zeroizing<String> {
        Zeroizing::new(B64.encode(&self.0[..]) + "\n")
    }

    pub(crate) fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

pub(crate) fn io_reason(err: &io::Error) -> String {
    // io::Error's Display holds the OS reason only, never file content.
    match err.kind() {
        io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        _ => err.to_string(),
    }
}

/// Opens `path`, checks that no group/other permission bit is set, and reads it.
pub(crate) fn read_secret_file(
    what: &'static str,
    path: &Path,
) -> Result<Zeroizing<String>, KeyError> {
    let mut file = open_for_read(what, path)?;
    let meta = file.metadata().map_err(|e| KeyError::Unreadable {
        what,
        path: path.to_path_buf(),
        reason: io_reason(&e),
    })?;
    if !meta.is_file() {
        return Err(KeyError::Unreadable {
            what,
            path: path.to_path_buf(),
            reason: "not a regular file".to_string(),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions {
            what,
            path: path.to_path_buf(),
            mode,
        });
    }
    read_all(what, path, &mut file)
}

fn open_for_read(what: &'static str, path: &Path) -> Result<File, KeyError> {
    File::open(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            KeyError::Missing {
                what,
                path: path.to_path_buf(),
            }
        } else {
            KeyError::Unreadable {
                what,
                path: path.to_path_buf(),
                reason: io_reason(&e),
            }
        }
    })
}

fn read_all(
    what: &'static str,
    path: &Path,
    file: &mut File,
) -> Result<Zeroizing<String>, KeyError> {
    let mut raw = Zeroizing::new(Vec::new());
    // A key file is a few dozen bytes; refuse to slurp something huge.
    file.take(64 * 1024)
        .read_to_end(&mut raw)
        .map_err(|e| KeyError::Unreadable {
            what,
            path: path.to_path_buf(),
            reason: io_reason(&e),
        })?;
    match std::str::from_utf8(&raw) {
        Ok(s) => Ok(Zeroizing::new(s.to_string())),
        Err(_) => Err(KeyError::NotBase64 {
            source_name: format!("{what} {}", path.display()),
        }),
    }
}

fn decode_key(text: &str, source_name: &str) -> Result<Zeroizing<[u8; KEY_LEN]>, KeyError> {
    let decoded =
        Zeroizing::new(
            B64.decode(text.trim().as_bytes())
                .map_err(|_| KeyError::NotBase64 {
                    source_name: source_name.to_string(),
                })?,
        );
    if decoded.len() != KEY_LEN {
        return Err(KeyError::WrongLength {
            source_name: source_name.to_string(),
            expected: KEY_LEN,
            actual: decoded.len(),
        });
    }
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    out.copy_from_slice(&decoded);
    Ok(out)
}

/// Loads the audit signing key (base64 Ed25519 seed); same permission rule as the master key.
pub fn load_signing_key(path: &Path) -> Result<SigningKey, KeyError> {
    const WHAT: &str = "audit signing key file";
    let text = read_secret_file(WHAT, path)?;
    let seed = decode_key(&text, &format!("{WHAT} {}", path.display()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Loads the audit public key (base64 of 32 bytes). Public: no permission check.
pub fn load_verifying_key(path: &Path) -> Result<VerifyingKey, KeyError> {
    const WHAT: &str = "audit public key file";
    let mut file = open_for_read(WHAT, path)?;
    let text = read_all(WHAT, path, &mut file)?;
    let bytes = decode_key(&text, &format!("{WHAT} {}", path.display()))?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::InvalidPublicKey {
        what: WHAT,
        path: path.to_path_buf(),
    })
}

/// Creates `dir` (mode 0700) if missing and writes `master.key` (0600), `audit.key` (0600)
/// and `audit.pub` (0644). Refuses, creating nothing, when any of the three exists.
/// Returns the paths written.
pub fn init_key_dir(dir: &Path) -> Result<Vec<PathBuf>, KeyError> {
    let master_path = dir.join(MASTER_KEY_FILE);
    let audit_path = dir.join(AUDIT_KEY_FILE);
    let pub_path = dir.join(AUDIT_PUB_FILE);
    for path in [&master_path, &audit_path, &pub_path] {
        if fs::symlink_metadata(path).is_ok() {
            return Err(KeyError::AlreadyExists { path: path.clone() });
        }
    }
    if !dir.is_dir() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| KeyError::Create {
                path: dir.to_path_buf(),
                reason: io_reason(&e),
            })?;
    }

    let mut master = Zeroizing::new([0u8; KEY_LEN]);
    OsRng.fill_bytes(&mut master[..]);
    let signing = SigningKey::generate(&mut OsRng);
    let seed = Zeroizing::new(signing.to_bytes());
    let public = signing.verifying_key().to_bytes();

    let files: [(&PathBuf, Zeroizing<String>, u32); 3] = [
        (
            &master_path,
            Zeroizing::new(B64.encode(&master[..]) + "\n"),
            0o600,
        ),
        (
            &audit_path,
            Zeroizing::new(B64.encode(&seed[..]) + "\n"),
            0o600,
        ),
        (&pub_path, Zeroizing::new(B64.encode(public) + "\n"), 0o644),
    ];
    let mut written: Vec<PathBuf> = Vec::new();
    for (path, content, mode) in &files {
        if let Err(err) = write_new_file(path, content.as_bytes(), *mode) {
            // Leave nothing half-initialised behind.
            for done in &written {
                let _ = fs::remove_file(done);
            }
            return Err(err);
        }
        written.push((*path).clone());
    }
    Ok(written)
}

pub(crate) fn write_new_file(path: &Path, content: &[u8], mode: u32) -> Result<(), KeyError> {
    let create_err = |e: io::Error| {
        if e.kind() == io::ErrorKind::AlreadyExists {
            KeyError::AlreadyExists {
                path: path.to_path_buf(),
            }
        } else {
            KeyError::Create {
                path: path.to_path_buf(),
                reason: io_reason(&e),
            }
        }
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(create_err)?;
    // The umask may have removed bits from `mode`; set it exactly.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(create_err)?;
    file.write_all(content).map_err(create_err)?;
    file.sync_all().map_err(create_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, Verifier};

    fn tmp() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    fn write_mode(path: &Path, content: &str, mode: u32) {
        fs::write(path, content).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn init_then_load_everything() {
        let dir = tmp();
        let keys = dir.path().join("keys");
        let written = init_key_dir(&keys).unwrap();
        assert_eq!(written.len(), 3);
        let mode = |p: &str| fs::metadata(keys.join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            fs::metadata(&keys).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert_eq!(mode(MASTER_KEY_FILE), 0o600);
        assert_eq!(mode(AUDIT_KEY_FILE), 0o600);
        assert_eq!(mode(AUDIT_PUB_FILE), 0o644);
        let text = fs::read_to_string(keys.join(MASTER_KEY_FILE)).unwrap();
        assert!(text.ends_with('\n'));
        let master = MasterKey::load(Some(&keys.join(MASTER_KEY_FILE)), None).unwrap();
        assert_ne!(master.expose(), &[0u8; 32]);
        let sk = load_signing_key(&keys.join(AUDIT_KEY_FILE)).unwrap();
        let vk = load_verifying_key(&keys.join(AUDIT_PUB_FILE)).unwrap();
        let sig = sk.sign(b"checkpoint");
        vk.verify(b"checkpoint", &sig).unwrap();
    }

    #[test]
    fn init_refuses_to_overwrite_and_creates_nothing() {
        let dir = tmp();
        fs::write(dir.path().join(AUDIT_PUB_FILE), "x").unwrap();
        let err = init_key_dir(dir.path()).unwrap_err();
        assert!(matches!(err, KeyError::AlreadyExists { .. }), "{err}");
        assert!(!dir.path().join(MASTER_KEY_FILE).exists());
        assert!(!dir.path().join(AUDIT_KEY_FILE).exists());
    }

    #[test]
    fn master_key_from_env_and_file_wins() {
        let dir = tmp();
        let file = dir.path().join("m.key");
        write_mode(&file, &format!("  {}\n\n", B64.encode([7u8; 32])), 0o600);
        let env = B64.encode([9u8; 32]);
        let k = MasterKey::load(Some(&file), Some(&env)).unwrap();
        assert_eq!(k.expose(), &[7u8; 32]);
        let k = MasterKey::load(None, Some(&format!("{env}\n"))).unwrap();
        assert_eq!(k.expose(), &[9u8; 32]);
        assert!(matches!(
            MasterKey::load(None, None),
            Err(KeyError::NoMasterKey)
        ));
        assert_eq!(format!("{k:?}"), "MasterKey(<redacted>)");
    }

    #[test]
    fn master_key_refusals_name_the_path_not_the_key() {
        let dir = tmp();
        let file = dir.path().join("master.key");
        let secret = B64.encode([0xABu8; 32]);

        let err = MasterKey::load(Some(&file), None).unwrap_err();
        assert!(matches!(err, KeyError::Missing { .. }));
        assert!(err.to_string().contains("master.key"), "{err}");

        write_mode(&file, &secret, 0o644);
        let err = MasterKey::load(Some(&file), None).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("accessible by group or others (mode 0644); chmod 600 it"),
            "{msg}"
        );
        assert!(msg.contains("master.key"));
        assert!(!msg.contains(&secret));

        fs::remove_file(&file).unwrap();
        write_mode(&file, "not base64!!", 0o600);
        let err = MasterKey::load(Some(&file), None).unwrap_err();
        assert!(matches!(err, KeyError::NotBase64 { .. }), "{err}");
        assert!(!err.to_string().contains("not base64!!"));

        fs::remove_file(&file).unwrap();
        write_mode(&file, &B64.encode([1u8; 16]), 0o600);
        let err = MasterKey::load(Some(&file), None).unwrap_err();
        assert!(
            matches!(err, KeyError::WrongLength { actual: 16, .. }),
            "{err}"
        );

        let err = MasterKey::load(None, Some("%%%")).unwrap_err();
        assert_eq!(err.to_string(), "PGVEIL_MASTER_KEY is not valid base64");

        // A directory cannot be read as a key.
        let err = MasterKey::load(Some(dir.path()), None).unwrap_err();
        assert!(
            matches!(
                err,
                KeyError::Unreadable { .. } | KeyError::Permissions { .. }
            ),
            "{err}"
        );
    }

    #[test]
    fn signing_key_permissions_checked_public_key_validated() {
        let dir = tmp();
        let sk_path = dir.path().join("audit.key");
        write_mode(&sk_path, &B64.encode([3u8; 32]), 0o640);
        assert!(matches!(
            load_signing_key(&sk_path),
            Err(KeyError::Permissions { mode: 0o640, .. })
        ));
        let pk_path = dir.path().join("audit.pub");
        write_mode(&pk_path, &B64.encode([5u8; 31]), 0o644);
        assert!(matches!(
            load_verifying_key(&pk_path),
            Err(KeyError::WrongLength { .. })
        ));
    }
}
