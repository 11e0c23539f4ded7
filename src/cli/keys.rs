//! `pgveil keys rotate --dir DIR`: keeps the current master key under its id, writes a new
//! one, and prints the `previous_master_key_files` line the configuration needs. Never a key.

use std::path::Path;
use std::process::ExitCode;

use super::fail;

pub fn keys_rotate(dir: &Path) -> ExitCode {
    match crate::crypto::rotate::rotate_key_dir(dir) {
        Ok(rotation) => {
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
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}
