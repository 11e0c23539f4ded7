//! The master key in a PKCS#11 token (`[keys] pkcs11`): a non-extractable, sensitive generic
//! secret key that never leaves the token. pgveil asks the token for HMAC-SHA256 of the
//! derivation inputs (key id, column keys); only those derived keys live in pgveil's memory.
//!
//! HMAC-SHA256 under the master key of `info || 0x01` is exactly HKDF-SHA256-Expand with the
//! master key as pseudorandom key, which is how file keys are expanded too (`keyring`): the
//! same key in a file or in a token gives the same key id and the same column keys.
//!
//! The PIN comes from the environment variable the configuration names; it is handed to the
//! token and never printed. Every failure (module, token, PIN, key) is one line naming what
//! to fix.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as Pkcs11Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use zeroize::Zeroizing;

/// `[keys] pkcs11 = { module, token, key_label, pin_env, previous_key_labels }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkcs11Config {
    /// The PKCS#11 library (e.g. `/usr/lib/softhsm/libsofthsm2.so`).
    pub module: PathBuf,
    /// The token's label.
    pub token: String,
    /// The label of the current master key.
    pub key_label: String,
    /// The environment variable that holds the user PIN.
    pub pin_env: String,
    /// Labels of earlier master keys in the same token (decrypt only), after a rotation in
    /// the token.
    pub previous_key_labels: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum HsmError {
    #[error("cannot load PKCS#11 module {}: {reason}", module.display())]
    Module { module: PathBuf, reason: String },
    #[error("PKCS#11 module {}: {what} failed: {reason}", module.display())]
    Call {
        module: PathBuf,
        what: &'static str,
        reason: String,
    },
    #[error("PKCS#11 token \"{token}\": {what} failed: {reason}")]
    TokenCall {
        token: String,
        what: &'static str,
        reason: String,
    },
    #[error("no token labelled \"{token}\" in PKCS#11 module {}", module.display())]
    NoToken { module: PathBuf, token: String },
    #[error("[keys] pkcs11: the environment variable {pin_env} (pin_env) holding the token PIN is not set")]
    NoPin { pin_env: String },
    #[error("login to PKCS#11 token \"{token}\" failed: {reason}")]
    Login { token: String, reason: String },
    #[error("no secret key labelled \"{label}\" in PKCS#11 token \"{token}\"")]
    NoKey { token: String, label: String },
    #[error("{count} secret keys are labelled \"{label}\" in PKCS#11 token \"{token}\"; labels must be unique")]
    AmbiguousKey {
        token: String,
        label: String,
        count: usize,
    },
    #[error("secret key \"{label}\" in PKCS#11 token \"{token}\" {problem}")]
    Unsuitable {
        token: String,
        label: String,
        problem: &'static str,
    },
    #[error("PKCS#11 token \"{token}\": HMAC with key \"{label}\" failed: {reason}")]
    Hmac {
        token: String,
        label: String,
        reason: String,
    },
}

/// One short phrase per PKCS#11 failure (the crate's texts are paragraphs of the standard).
fn reason(e: &Pkcs11Error) -> String {
    match e {
        Pkcs11Error::Pkcs11(rv, _) => match rv {
            RvError::PinIncorrect | RvError::PinInvalid | RvError::PinLenRange => {
                "wrong PIN".into()
            }
            RvError::PinLocked => "the PIN is locked".into(),
            RvError::PinExpired => "the PIN has expired".into(),
            RvError::UserPinNotInitialized => "the token's user PIN is not initialized".into(),
            RvError::TokenNotPresent | RvError::DeviceRemoved => "the token is not present".into(),
            RvError::KeyTypeInconsistent | RvError::KeyFunctionNotPermitted => {
                "the key cannot be used for SHA256-HMAC".into()
            }
            RvError::MechanismInvalid => "the token does not offer CKM_SHA256_HMAC".into(),
            other => format!("{other:?}"),
        },
        Pkcs11Error::LibraryLoading(err) => err.to_string(),
        other => other.to_string(),
    }
}

/// One initialized context per module and process: PKCS#11 allows one `C_Initialize` per
/// process, and finalizing would close every other user's sessions.
fn context(module: &Path) -> Result<Pkcs11, HsmError> {
    static CONTEXTS: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let mut contexts = CONTEXTS
        .get_or_init(|| Mutex::new(HashMap::new()))
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(found) = contexts.get(module) {
        return Ok(found.clone());
    }
    if !module.is_file() {
        return Err(HsmError::Module {
            module: module.to_path_buf(),
            reason: "no such file".into(),
        });
    }
    let pkcs11 = Pkcs11::new(module).map_err(|e| HsmError::Module {
        module: module.to_path_buf(),
        reason: reason(&e),
    })?;
    match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(Pkcs11Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => {
            return Err(HsmError::Call {
                module: module.to_path_buf(),
                what: "C_Initialize",
                reason: reason(&e),
            })
        }
    }
    contexts.insert(module.to_path_buf(), pkcs11.clone());
    Ok(pkcs11)
}

/// A logged-in session with the token, shared by the keys found in it. PKCS#11 sessions are
/// not to be used from two threads at once, hence the mutex.
struct Token {
    label: String,
    session: Mutex<Session>,
}

/// One master key in the token.
pub struct HsmKey {
    token: Arc<Token>,
    label: String,
    handle: ObjectHandle,
}

impl std::fmt::Debug for HsmKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HsmKey")
            .field("token", &self.token.label)
            .field("label", &self.label)
            .finish()
    }
}

impl HsmKey {
    /// Where the key is, for messages: `token "T" key "L"`.
    pub fn origin(&self) -> String {
        format!(
            "PKCS#11 token \"{}\" key \"{}\"",
            self.token.label, self.label
        )
    }

    /// HMAC-SHA256 of `data` under this key, computed in the token.
    pub fn hmac_sha256(&self, data: &[u8]) -> Result<Zeroizing<[u8; 32]>, HsmError> {
        let failed = |reason: String| HsmError::Hmac {
            token: self.token.label.clone(),
            label: self.label.clone(),
            reason,
        };
        let session = self
            .token
            .session
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mac = Zeroizing::new(
            session
                .sign(&Mechanism::Sha256Hmac, self.handle, data)
                .map_err(|e| failed(reason(&e)))?,
        );
        let mut out = Zeroizing::new([0u8; 32]);
        if mac.len() != out.len() {
            return Err(failed(format!("the token returned {} bytes", mac.len())));
        }
        out.copy_from_slice(&mac);
        Ok(out)
    }
}

/// Opens the token, logs in with the PIN from `pin_env`, and finds the current key and the
/// previous ones (in that order).
pub fn open(config: &Pkcs11Config) -> Result<Vec<HsmKey>, HsmError> {
    let pin = std::env::var(&config.pin_env)
        .ok()
        .filter(|p| !p.is_empty())
        .map(|p| AuthPin::new(p.into_boxed_str()))
        .ok_or_else(|| HsmError::NoPin {
            pin_env: config.pin_env.clone(),
        })?;
    let pkcs11 = context(&config.module)?;
    let call_failed = |what: &'static str| {
        let module = config.module.clone();
        move |e: Pkcs11Error| HsmError::Call {
            module,
            what,
            reason: reason(&e),
        }
    };
    let slots = pkcs11
        .get_slots_with_token()
        .map_err(call_failed("C_GetSlotList"))?;
    let mut slot = None;
    for candidate in slots {
        let info = pkcs11
            .get_token_info(candidate)
            .map_err(call_failed("C_GetTokenInfo"))?;
        if info.label().trim_end() == config.token {
            slot = Some(candidate);
            break;
        }
    }
    let slot = slot.ok_or_else(|| HsmError::NoToken {
        module: config.module.clone(),
        token: config.token.clone(),
    })?;
    let session = pkcs11
        .open_ro_session(slot)
        .map_err(call_failed("C_OpenSession"))?;
    match session.login(UserType::User, Some(&pin)) {
        Ok(()) | Err(Pkcs11Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => {
            return Err(HsmError::Login {
                token: config.token.clone(),
                reason: reason(&e),
            })
        }
    }
    drop(pin);
    let mut found = Vec::new();
    for label in std::iter::once(&config.key_label).chain(&config.previous_key_labels) {
        let handle = find_key(&session, &config.token, label)?;
        found.push((label.clone(), handle));
    }
    let token = Arc::new(Token {
        label: config.token.clone(),
        session: Mutex::new(session),
    });
    Ok(found
        .into_iter()
        .map(|(label, handle)| HsmKey {
            token: token.clone(),
            label,
            handle,
        })
        .collect())
}

/// The one secret key labelled `label`, checked to be a key the token will not give away
/// (sensitive, not extractable) and that it may use for HMAC.
fn find_key(session: &Session, token: &str, label: &str) -> Result<ObjectHandle, HsmError> {
    let handles = session
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .map_err(|e| HsmError::TokenCall {
            token: token.to_string(),
            what: "C_FindObjects",
            reason: reason(&e),
        })?;
    let handle = match handles.as_slice() {
        [] => {
            return Err(HsmError::NoKey {
                token: token.to_string(),
                label: label.to_string(),
            })
        }
        [one] => *one,
        many => {
            return Err(HsmError::AmbiguousKey {
                token: token.to_string(),
                label: label.to_string(),
                count: many.len(),
            })
        }
    };
    let unsuitable = |problem: &'static str| HsmError::Unsuitable {
        token: token.to_string(),
        label: label.to_string(),
        problem,
    };
    let attributes = session
        .get_attributes(
            handle,
            &[
                AttributeType::KeyType,
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::Sign,
            ],
        )
        .map_err(|_| unsuitable("does not show its attributes"))?;
    let mut key_type = None;
    let (mut sensitive, mut extractable, mut sign) = (false, true, false);
    for attribute in attributes {
        match attribute {
            Attribute::KeyType(t) => key_type = Some(t),
            Attribute::Sensitive(v) => sensitive = v,
            Attribute::Extractable(v) => extractable = v,
            Attribute::Sign(v) => sign = v,
            _ => {}
        }
    }
    if !matches!(key_type, Some(t) if t == KeyType::GENERIC_SECRET || t == KeyType::SHA256_HMAC) {
        return Err(unsuitable(
            "is not a generic secret (CKK_GENERIC_SECRET) or SHA256-HMAC key",
        ));
    }
    if extractable || !sensitive {
        return Err(unsuitable(
            "could leave the token (it must have CKA_SENSITIVE true and CKA_EXTRACTABLE false)",
        ));
    }
    if !sign {
        return Err(unsuitable(
            "may not be used for HMAC (it must have CKA_SIGN true)",
        ));
    }
    Ok(handle)
}
