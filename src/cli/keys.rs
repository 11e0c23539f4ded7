//! `pgveil keys init --dir DIR`: the master key and the audit signing key pair.
//! `pgveil keys rotate --dir DIR`: keeps the current master key under its id, writes a new
//! one, and prints the `previous_master_key_files` line the configuration needs. Never a key.

use std::path::Path;

use super::CliError;
use crate::crypto::keys::KeyError;

/// Prints each file created, one a line. Key files already there are an invalid input
/// (exit 1: nothing is overwritten); a directory that cannot be written, a failure to run.
pub fn keys_init(dir: &Path) -> Result<(), CliError> {
    match crate::crypto::keys::init_key_dir(dir) {
        Ok(paths) => {
            for path in paths {
                println!("created {}", path.display());
            }
            Ok(())
        }
        Err(e @ KeyError::AlreadyExists { .. }) => Err(CliError::Invalid(e.to_string())),
        Err(e) => Err(CliError::CannotRun(e.to_string())),
    }
}

/// Keeps the current master key under its id and writes a new one. Nothing to rotate (no
/// master key in `dir`) is an invalid input; a directory that cannot be written, a failure
/// to run.
pub fn keys_rotate(dir: &Path) -> Result<(), CliError> {
    let rotation = crate::crypto::rotate::rotate_key_dir(dir).map_err(|e| match e {
        KeyError::Missing { .. } => CliError::Invalid(e.to_string()),
        e => CliError::CannotRun(e.to_string()),
    })?;
    println!(
        "kept the master key {:08x} as {}",
        rotation.kept_id,
        rotation.kept.display()
    );
    println!(
        "wrote a new master key {:08x} to {}",
        rotation.new_id,
        dir.join(crate::crypto::keys::MASTER_KEY_FILE).display()
    );
    let files: Vec<String> = rotation
        .previous_files
        .iter()
        .map(|p| format!("{:?}", p.display().to_string()))
        .collect();
    println!(
        "add to [keys]: previous_master_key_files = [{}]",
        files.join(", ")
    );
    Ok(())
}
