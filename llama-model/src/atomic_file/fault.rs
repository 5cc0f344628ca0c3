//! The crash-injection hook of test builds: with `LLAMA_FAULT_AT=k` in the environment, the
//! process aborts right after its k-th file operation of [`crate::atomic_file`] (a create, a
//! finished write, an `fsync`, a rename, a remove), as if killed there; every operation is
//! also listed on stderr (`file operation N: WHAT PATH`), so that a test can count a save's
//! operations before it crashes each of them.
//!
//! It exists only with the `test-support` feature, which the workspace's test builds enable
//! (a dev-dependency) and no shipped build does: a release binary cannot be made to abort by
//! an environment variable. Elsewhere [`after`] does nothing and compiles away.

use std::path::Path;

/// The environment variable naming the operation to crash after (1-based).
pub const FAULT_AT_ENV: &str = "LLAMA_FAULT_AT";

/// Called after each file operation `what` on `path`.
#[cfg(feature = "test-support")]
pub(crate) fn after(what: &str, path: &Path) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::OnceLock;
    static AT: OnceLock<Option<usize>> = OnceLock::new();
    static DONE: AtomicUsize = AtomicUsize::new(0);
    let Some(at) = *AT.get_or_init(|| std::env::var(FAULT_AT_ENV).ok()?.parse().ok()) else {
        return;
    };
    let n = DONE.fetch_add(1, Ordering::SeqCst) + 1;
    eprintln!("file operation {n}: {what} {}", path.display());
    if n == at {
        eprintln!("{FAULT_AT_ENV}={at}: aborting");
        std::process::abort();
    }
}

/// Called after each file operation; nothing outside test builds.
#[cfg(not(feature = "test-support"))]
#[inline(always)]
pub(crate) fn after(_what: &str, _path: &Path) {}
