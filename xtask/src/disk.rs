//! Free disk space, checked before `cargo xtask test` builds anything.
//!
//! A fresh run writes several GB (debug, release, fuzz and eBPF builds, the
//! VM suites' staging); a disk that fills half way fails with linker bus
//! errors and `No space left on device` from whichever step ran out, long
//! after the start. One clear refusal up front is better.

use std::path::Path;

use anyhow::{Context as _, Result, bail};

const GIB: u64 = 1024 * 1024 * 1024;

/// What a fresh `cargo xtask test` writes under the target dir, rounded up
/// from a measured fresh-clone run (8.2 GB at its end, the debug builds keeping
/// line tables only), with room for the VM suites' staging and temp files.
pub const TEST_FRESH: u64 = 10 * GIB;

/// What a run on an existing target dir may still add (changed crates,
/// test binaries, fuzz corpora, logs).
pub const TEST_WARM: u64 = 3 * GIB;

/// Bytes available to an unprivileged writer on the filesystem of `path`
/// (its nearest existing ancestor).
pub fn available(path: &Path) -> Result<u64> {
    let existing = path
        .ancestors()
        .find(|p| p.exists())
        .context("no existing ancestor directory")?;
    let c_path = std::ffi::CString::new(existing.as_os_str().as_encoded_bytes())
        .context("the path holds a NUL byte")?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: c_path is a valid C string; statvfs fills `st` on success.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("statvfs {}", existing.display()));
    }
    // SAFETY: statvfs returned 0, so it initialised `st`.
    let st = unsafe { st.assume_init() };
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Refuses to start when the target dir's filesystem has less room than a
/// run needs: [`TEST_FRESH`] when `target` holds no debug build yet,
/// [`TEST_WARM`] otherwise.
pub fn check_for_test(target: &Path) -> Result<()> {
    let fresh = !target.join("debug").exists();
    let need = if fresh { TEST_FRESH } else { TEST_WARM };
    let free = available(target)?;
    check(target, fresh, need, free)
}

fn check(target: &Path, fresh: bool, need: u64, free: u64) -> Result<()> {
    let gib = |b: u64| b as f64 / GIB as f64;
    if free < need {
        bail!(
            "not enough disk space: `cargo xtask test` needs about {:.0} GiB free for {} under {}, and its filesystem has {:.1} GiB free. Free some space (`cargo clean` removes old builds) or point CARGO_TARGET_DIR at a larger disk",
            gib(need),
            if fresh {
                "a fresh build"
            } else {
                "what a run adds to an existing build"
            },
            target.display(),
            gib(free),
        );
    }
    println!(
        "disk: {:.1} GiB free under {} ({:.0} GiB needed{})",
        gib(free),
        target.display(),
        gib(need),
        if fresh { " for a fresh build" } else { "" }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_little_room_is_refused_with_the_numbers() {
        let e = check(Path::new("/t"), true, TEST_FRESH, 287 * 1024 * 1024)
            .expect_err("287 MiB is too little");
        let text = format!("{e:#}");
        assert!(text.contains("10 GiB"), "{text}");
        assert!(text.contains("0.3 GiB free"), "{text}");
        assert!(
            text.contains("/t") && text.contains("fresh build"),
            "{text}"
        );
        assert!(check(Path::new("/t"), false, TEST_WARM, 4 * GIB).is_ok());
        assert!(check(Path::new("/t"), false, TEST_WARM, 2 * GIB).is_err());
    }

    #[test]
    fn the_root_filesystem_reports_some_room() {
        // A missing path is measured at its nearest existing ancestor.
        let free = available(Path::new("/nonexistent/sub/dir")).expect("statvfs /");
        assert!(free > 0);
    }
}
