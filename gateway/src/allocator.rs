//! The `gateway` binary's allocator: the system's jemalloc (Debian's
//! `libjemalloc2`), linked by name.
//!
//! Why: with glibc's malloc, 10,000 idle TLS connections held 273 MiB
//! resident; with jemalloc, 202 MiB, for the same throughput (BENCHMARKS.md,
//! "Allocators"). Most of a connection's memory is hyper's and rustls'
//! buffers, allocated and freed in sizes glibc rounds up and fragments.
//!
//! How: `#[link(name = "jemalloc")]` on the one symbol read here puts
//! `libjemalloc.so.2` in the binary's needed libraries ahead of libc, so the
//! dynamic linker resolves `malloc`, `free` and the rest to jemalloc for
//! everything in the process: Rust's `System` allocator and C code alike.
//! Debian builds jemalloc without a symbol prefix, which is what makes that
//! work. The crate `tikv-jemallocator` would compile jemalloc from source
//! in every build profile (about 1.7 CPU-minutes each, against CI's budget);
//! the system's copy is built already and patched by Debian. Only this
//! binary links it: the library and its tests, and the fuzz targets under
//! sanitizers, keep the system's malloc.
use std::ffi::{CStr, c_char, c_int, c_void};

#[link(name = "jemalloc")]
unsafe extern "C" {
    /// jemalloc's control interface (`man 3 jemalloc`, "MALLCTL NAMESPACE").
    fn mallctl(
        name: *const c_char,
        oldp: *mut c_void,
        oldlenp: *mut usize,
        newp: *mut c_void,
        newlen: usize,
    ) -> c_int;
}

/// Reads one value of jemalloc's control namespace, by name.
fn read<T: Copy + Default>(name: &CStr) -> Option<T> {
    let mut value = T::default();
    let mut len = size_of::<T>();
    // SAFETY: `value` is a valid, writable `T` of `len` bytes; jemalloc
    // writes at most `len` bytes and reports the size it wrote, which is
    // checked. No new value is passed.
    let rc = unsafe {
        mallctl(
            name.as_ptr(),
            (&raw mut value).cast(),
            &raw mut len,
            std::ptr::null_mut(),
            0,
        )
    };
    (rc == 0 && len == size_of::<T>()).then_some(value)
}

/// jemalloc's version string (`5.3.0-0-g54eaed1d…` on Debian 12).
pub fn version() -> Option<String> {
    let ptr: *const c_char = read(c"version").filter(|p: &*const c_char| !p.is_null())?;
    // SAFETY: jemalloc's version control returns a pointer to a static,
    // NUL-terminated string.
    Some(
        unsafe { CStr::from_ptr(ptr) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// Whether Rust's global allocator really reaches jemalloc: the calling
/// thread's `thread.allocated` count grows by a fresh allocation's size.
/// False if the link order ever let glibc's `malloc` win.
pub fn serves_rust() -> bool {
    const PROBE: usize = 1 << 16;
    let Some(before) = read::<u64>(c"thread.allocated") else {
        return false;
    };
    let probe = std::hint::black_box(vec![0u8; PROBE]);
    let after = read::<u64>(c"thread.allocated").unwrap_or(before);
    drop(probe);
    after.saturating_sub(before) >= PROBE as u64
}

/// One line for the daemon's start-up log, and whether jemalloc serves
/// (each probed once).
pub fn describe() -> (String, bool) {
    let serving = serves_rust();
    let text = match (version(), serving) {
        (Some(v), true) => format!("jemalloc {v}"),
        (Some(v), false) => format!("glibc malloc (jemalloc {v} is loaded but not serving)"),
        (None, _) => "glibc malloc (jemalloc did not answer)".into(),
    };
    (text, serving)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jemalloc_serves_the_binary() {
        let v = version().expect("jemalloc answers mallctl(\"version\")");
        assert!(v.starts_with("5."), "unexpected jemalloc version {v}");
        assert!(serves_rust(), "Rust's allocations do not reach jemalloc");
        assert_eq!(describe(), (format!("jemalloc {v}"), true));
    }

    #[test]
    fn reading_an_unknown_name_is_none() {
        assert_eq!(read::<u64>(c"no.such.control"), None);
    }
}
