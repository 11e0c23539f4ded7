//! `[server] pid_file`: `serve` writes its process id there while it runs, `reload` reads it
//! and sends that process SIGHUP.

use std::io;
use std::path::{Path, PathBuf};

/// The pid file of a running `serve`; removed on drop if it still holds our pid.
pub(super) struct PidFile {
    path: PathBuf,
    pid: u32,
}

impl PidFile {
    /// Writes the file (through a temporary file and a rename, so `reload` never reads half
    /// of it). A failure is logged as a warning: the proxy runs without a pid file.
    pub(super) fn write(path: &Path) -> Option<PidFile> {
        let pid = std::process::id();
        let tmp = path.with_extension(format!("pid.{pid}.tmp"));
        let result = std::fs::write(&tmp, format!("{pid}\n")).and_then(|()| {
            std::fs::rename(&tmp, path).inspect_err(|_| {
                let _ = std::fs::remove_file(&tmp);
            })
        });
        match result {
            Ok(()) => Some(PidFile {
                path: path.to_path_buf(),
                pid,
            }),
            Err(e) => {
                tracing::warn!(
                    pid_file = %path.display(),
                    error = %e,
                    "cannot write the pid file; pgveil reload will not find this process"
                );
                None
            }
        }
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Another serve may have taken the file over since; leave its pid alone.
        if read_pid(&self.path).ok() == Some(self.pid) {
            if let Err(e) = std::fs::remove_file(&self.path) {
                tracing::warn!(pid_file = %self.path.display(), error = %e, "cannot remove the pid file");
            }
        }
    }
}

pub(super) fn read_pid(path: &Path) -> io::Result<u32> {
    let text = std::fs::read_to_string(path)?;
    text.trim()
        .parse::<u32>()
        .ok()
        .filter(|pid| *pid > 1 && i32::try_from(*pid).is_ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "does not hold a process id"))
}
