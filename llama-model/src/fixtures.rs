//! Locating the shared reference data (`shared/fixtures`) for tests, benchmarks and
//! `llama-cli check`. The panicking helpers are for tests only (the `test-support` feature).
//!
//! The fixtures are never copied into the repository. They are found through the
//! `LLAMA_FIXTURES` environment variable, else `../shared/fixtures` next to the workspace root.

use std::path::PathBuf;

/// The environment variable that points at the fixtures folder.
pub const FIXTURES_ENV: &str = "LLAMA_FIXTURES";

/// The fixtures folder, if it can be found.
pub fn try_fixtures_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os(FIXTURES_ENV) {
        let dir = PathBuf::from(dir);
        return dir.is_dir().then_some(dir);
    }
    // llama-model -> workspace root -> ../shared/fixtures
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = root.join("../shared/fixtures");
    dir.is_dir().then(|| dir.canonicalize().unwrap_or(dir))
}

/// The fixtures folder; panics with instructions when it is missing (test builds only: the
/// `test-support` feature).
#[cfg(any(test, feature = "test-support"))]
pub fn fixtures_dir() -> PathBuf {
    try_fixtures_dir().unwrap_or_else(|| {
        panic!(
            "reference fixtures not found: set {FIXTURES_ENV}=/path/to/shared/fixtures, or place \
             the project's shared/ folder beside the workspace (../shared/fixtures). \
             It holds stories260K, the tokenizers, the SST/CFIMDB data and the reference outputs \
             described in its README.md."
        )
    })
}

/// A file inside the fixtures folder, e.g. `fixture("models/stories260K/stories260K.bin")`;
/// panics when it is missing (test builds only: the `test-support` feature).
#[cfg(any(test, feature = "test-support"))]
pub fn fixture(relative: &str) -> PathBuf {
    let path = fixtures_dir().join(relative);
    assert!(path.exists(), "fixture file missing: {}", path.display());
    path
}
