//! `[server] pid_file`: `serve` writes its process id there while it runs, `reload` reads it
//! and sends that process SIGHUP.

use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::{fail, load_config};

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

fn read_pid(path: &Path) -> io::Result<u32> {
    let text = std::fs::read_to_string(path)?;
    text.trim()
        .parse::<u32>()
        .ok()
        .filter(|pid| *pid > 1 && i32::try_from(*pid).is_ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "does not hold a process id"))
}

/// The command name of `pid` (Linux `/proc`); `None` where it cannot be read.
fn process_name(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// `pgveil reload --config FILE`: SIGHUP to the `serve` named by `[server] pid_file`.
pub fn reload(config_path: &Path) -> ExitCode {
    let config = match load_config(config_path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let path = &config.server.pid_file;
    let pid = match read_pid(path) {
        Ok(pid) => pid,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return fail(format_args!(
                "no pid file {}: is pgveil serve running with this configuration?",
                path.display()
            ))
        }
        Err(e) => return fail(format_args!("pid file {}: {e}", path.display())),
    };
    // A stale file may name a pid that now belongs to something else: never signal that.
    if let Some(name) = process_name(pid) {
        if !name.starts_with("pgveil") {
            return fail(format_args!(
                "pid file {} names process {pid} ({name}), which is not pgveil; stale pid file?",
                path.display()
            ));
        }
    }
    let Ok(raw_pid) = libc::pid_t::try_from(pid) else {
        return fail(format_args!("pid file {}: bad process id", path.display()));
    };
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is positive (> 1), so
    // this signals exactly one process, never a process group.
    let rc = unsafe { libc::kill(raw_pid, libc::SIGHUP) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        return if err.raw_os_error() == Some(libc::ESRCH) {
            fail(format_args!(
                "no process {pid} (from stale pid file {}): pgveil is not running",
                path.display()
            ))
        } else {
            fail(format_args!("cannot signal process {pid}: {err}"))
        };
    }
    #[allow(clippy::print_stdout)]
    {
        println!("sent SIGHUP to pgveil (pid {pid})");
    }
    ExitCode::SUCCESS
}
