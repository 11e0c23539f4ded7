//! The open-file limit of `pgveil serve`: every session holds two sockets (client and
//! database), so the usual soft limit of 1,024 would stop pgveil near 500 sessions while the
//! hard limit allows far more (issue #14: 10,000 idle connections must be served).

/// Raises the soft RLIMIT_NOFILE to the hard limit, once at start, and logs both. A failure
/// is logged and serving goes on with the limit as it was.
pub fn raise_open_files_limit() {
    match raise() {
        Ok((before, after)) if before != after => {
            tracing::info!(
                before,
                after,
                "raised the open-file limit to its hard limit"
            )
        }
        Ok((before, _)) => tracing::info!(limit = before, "open-file limit"),
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open-file limit; the number of sessions is limited by it")
        }
    }
}

/// (soft limit before, soft limit after).
fn raise() -> std::io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) writes one `rlimit` through the pointer, which points to a live,
    // properly aligned local of that type.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur >= limit.rlim_max {
        return Ok((before, before));
    }
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: setrlimit(2) only reads the `rlimit` behind the pointer, a live local; raising
    // the soft limit up to the hard one needs no privilege.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((before, limit.rlim_cur))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_soft_limit_ends_at_the_hard_limit() {
        let (before, after) = super::raise().expect("getrlimit/setrlimit");
        assert!(after >= before);
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as in `raise`: one live, aligned local written through the pointer.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        assert_eq!(limit.rlim_cur, limit.rlim_max);
        assert_eq!(limit.rlim_cur, after);
    }
}
