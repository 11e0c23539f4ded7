//! `pgveil keys rotate --dir DIR`: keep the current `DIR/master.key` as
//! `DIR/master-<key id in hex>.key` and put a new key in `DIR/master.key`.
//!
//! Crash-safe in this order: the kept copy is written and synced first, then the new key goes
//! to a temporary file that is renamed over `master.key` (atomic), then the directory is
//! synced. A run interrupted between the two steps is completed by running it again (the kept
//! copy already holds the same key). No step ever prints or logs key bytes.

use std::fs;
use std::path::{Path, PathBuf};

use super::keyring::key_id;
use super::keys::{io_reason, write_new_file, KeyError, MasterKey, MASTER_KEY_FILE};

/// What a rotation did.
#[derive(Debug)]
pub struct Rotation {
    /// `DIR/master-<id>.key`, the previous current key.
    pub kept: PathBuf,
    pub kept_id: u32,
    pub new_id: u32,
    /// Every `master-<id>.key` in the directory (the kept one included), sorted: the value of
    /// `[keys] previous_master_key_files`.
    pub previous_files: Vec<PathBuf>,
}

/// The name a kept key gets.
pub fn kept_file_name(id: u32) -> String {
    format!("master-{id:08x}.key")
}

/// Whether `name` is `master-<8 hex digits>.key`.
fn is_kept_file_name(name: &str) -> bool {
    name.strip_prefix("master-")
        .and_then(|rest| rest.strip_suffix(".key"))
        .is_some_and(|hex| hex.len() == 8 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

pub fn rotate_key_dir(dir: &Path) -> Result<Rotation, KeyError> {
    let master_path = dir.join(MASTER_KEY_FILE);
    let current = MasterKey::load(Some(&master_path), None)?;
    let kept_id = key_id(&current);
    let kept = dir.join(kept_file_name(kept_id));
    match fs::symlink_metadata(&kept) {
        Err(_) => write_new_file(&kept, current.to_file_content().as_bytes(), 0o600)?,
        // A run that stopped after keeping the key: the copy must hold this very key.
        Ok(_) => {
            let copy = MasterKey::load_previous(&kept)?;
            if key_id(&copy) != kept_id {
                return Err(KeyError::AlreadyExists { path: kept });
            }
        }
    }
    let previous_files = kept_files(dir)?;
    let known: Vec<u32> = previous_files
        .iter()
        .filter_map(|p| MasterKey::load_previous(p).ok())
        .map(|k| key_id(&k))
        .chain([kept_id])
        .collect();
    // A new id must not collide with any key that values may still carry (1 in 2^32).
    let new = loop {
        let candidate = MasterKey::generate();
        if !known.contains(&key_id(&candidate)) {
            break candidate;
        }
    };
    let new_id = key_id(&new);

    let temporary = dir.join(".master.key.new");
    if fs::symlink_metadata(&temporary).is_ok() {
        // Left by an interrupted run; it never became master.key.
        fs::remove_file(&temporary).map_err(|e| KeyError::Create {
            path: temporary.clone(),
            reason: io_reason(&e),
        })?;
    }
    write_new_file(&temporary, new.to_file_content().as_bytes(), 0o600)?;
    fs::rename(&temporary, &master_path).map_err(|e| KeyError::Create {
        path: master_path.clone(),
        reason: io_reason(&e),
    })?;
    if let Ok(handle) = fs::File::open(dir) {
        let _ = handle.sync_all();
    }
    Ok(Rotation {
        kept,
        kept_id,
        new_id,
        previous_files,
    })
}

fn kept_files(dir: &Path) -> Result<Vec<PathBuf>, KeyError> {
    let entries = fs::read_dir(dir).map_err(|e| KeyError::Unreadable {
        what: "key directory",
        path: dir.to_path_buf(),
        reason: io_reason(&e),
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_str().is_some_and(is_kept_file_name))
        .map(|e| dir.join(e.file_name()))
        .collect();
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn rotate_keeps_the_key_under_its_id_and_writes_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        crate::crypto::keys::init_key_dir(dir.path()).unwrap();
        let master = dir.path().join(MASTER_KEY_FILE);
        let before = fs::read_to_string(&master).unwrap();
        let old_id = key_id(&MasterKey::load(Some(&master), None).unwrap());

        let first = rotate_key_dir(dir.path()).unwrap();
        assert_eq!(first.kept_id, old_id);
        assert_eq!(
            first.kept,
            dir.path().join(format!("master-{old_id:08x}.key"))
        );
        assert_eq!(fs::read_to_string(&first.kept).unwrap(), before);
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&first.kept), 0o600);
        assert_eq!(mode(&master), 0o600);
        assert_ne!(fs::read_to_string(&master).unwrap(), before);
        let new_id = key_id(&MasterKey::load(Some(&master), None).unwrap());
        assert_eq!(first.new_id, new_id);
        assert_ne!(new_id, old_id);
        assert_eq!(first.previous_files, vec![first.kept.clone()]);
        assert!(!dir.path().join(".master.key.new").exists());

        // A second rotation keeps both earlier keys listed.
        let second = rotate_key_dir(dir.path()).unwrap();
        assert_eq!(second.kept_id, new_id);
        assert_eq!(second.previous_files.len(), 2);
        assert!(second.previous_files.contains(&first.kept));
    }

    #[test]
    fn an_interrupted_rotation_completes_when_run_again() {
        let dir = tempfile::tempdir().unwrap();
        crate::crypto::keys::init_key_dir(dir.path()).unwrap();
        let master = dir.path().join(MASTER_KEY_FILE);
        let id = key_id(&MasterKey::load(Some(&master), None).unwrap());
        // The kept copy was written, master.key not yet replaced.
        let kept = dir.path().join(kept_file_name(id));
        fs::copy(&master, &kept).unwrap();
        fs::set_permissions(&kept, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(dir.path().join(".master.key.new"), "junk").unwrap();
        let rotation = rotate_key_dir(dir.path()).unwrap();
        assert_eq!(rotation.kept, kept);
        assert_ne!(rotation.new_id, id);
    }

    #[test]
    fn refuses_without_a_readable_key() {
        let dir = tempfile::tempdir().unwrap();
        let err = rotate_key_dir(dir.path()).unwrap_err();
        assert!(matches!(err, KeyError::Missing { .. }), "{err}");
        let master = dir.path().join(MASTER_KEY_FILE);
        fs::write(&master, "AAAA").unwrap();
        fs::set_permissions(&master, fs::Permissions::from_mode(0o644)).unwrap();
        let err = rotate_key_dir(dir.path()).unwrap_err();
        assert!(matches!(err, KeyError::Permissions { .. }), "{err}");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn kept_names() {
        assert!(is_kept_file_name("master-6f1c2a90.key"));
        assert!(!is_kept_file_name("master-6f1c2a9.key"));
        assert!(!is_kept_file_name("master.key"));
        assert!(!is_kept_file_name("master-6f1c2a9z.key"));
    }
}
