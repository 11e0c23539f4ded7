//! `pgveil reload --config FILE`: SIGHUP to the running `serve`. Every failure (no pid file,
//! a stale one, a process that is gone) is a command that could not run (exit 2).

use std::io;
use std::path::Path;

use super::pidfile::read_pid;
use super::{load_config, CliError};

/// The command name of `pid` (Linux `/proc`); `None` where it cannot be read.
fn process_name(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// `pgveil reload --config FILE`: SIGHUP to the `serve` named by `[server] pid_file`.
pub fn reload(config_path: &Path) -> Result<(), CliError> {
    let config = load_config(config_path)?;
    let path = &config.server.pid_file;
    let pid = match read_pid(path) {
        Ok(pid) => pid,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(CliError::CannotRun(format!(
                "no pid file {}: is pgveil serve running with this configuration?",
                path.display()
            )))
        }
        Err(e) => {
            return Err(CliError::CannotRun(format!(
                "pid file {}: {e}",
                path.display()
            )))
        }
    };
    // A stale file may name a pid that now belongs to something else: never signal that.
    if let Some(name) = process_name(pid) {
        if !name.starts_with("pgveil") {
            return Err(CliError::CannotRun(format!(
                "pid file {} names process {pid} ({name}), which is not pgveil; stale pid file?",
                path.display()
            )));
        }
    }
    let Ok(raw_pid) = libc::pid_t::try_from(pid) else {
        return Err(CliError::CannotRun(format!(
            "pid file {}: bad process id",
            path.display()
        )));
    };
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is positive (> 1), so
    // this signals exactly one process, never a process group.
    let rc = unsafe { libc::kill(raw_pid, libc::SIGHUP) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        return if err.raw_os_error() == Some(libc::ESRCH) {
            Err(CliError::CannotRun(format!(
                "no process {pid} (from stale pid file {}): pgveil is not running",
                path.display()
            )))
        } else {
            Err(CliError::CannotRun(format!(
                "cannot signal process {pid}: {err}"
            )))
        };
    }
    println!("sent SIGHUP to pgveil (pid {pid})");
    Ok(())
}
