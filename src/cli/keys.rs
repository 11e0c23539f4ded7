//! `pgveil keys init --dir DIR`: the master key and the audit signing key pair.

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
