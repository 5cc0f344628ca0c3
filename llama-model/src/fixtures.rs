//! Locating the shared reference data (`shared/fixtures`).
//!
//! The fixtures are never copied into the repository. A shipped binary (`llama-cli check`
//! and `bench`) finds them only through the `LLAMA_FIXTURES` environment variable
//! ([`fixtures_from_env`]); test builds (the `test-support` feature) also look in
//! `../shared/fixtures` beside the workspace, so that `cargo test` needs no setting. The
//! panicking helpers are for tests only.

use std::path::PathBuf;

/// The environment variable that points at the fixtures folder.
pub const FIXTURES_ENV: &str = "LLAMA_FIXTURES";

/// The folder `LLAMA_FIXTURES` names, if it is set and is a folder.
pub fn fixtures_from_env() -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os(FIXTURES_ENV)?);
    dir.is_dir().then_some(dir)
}

/// The fixtures folder of a test build: `LLAMA_FIXTURES` when set, else
/// `../shared/fixtures` beside the workspace (test builds only: the `test-support` feature,
/// so that no shipped binary embeds the build machine's source path).
#[cfg(any(test, feature = "test-support"))]
pub fn try_fixtures_dir() -> Option<PathBuf> {
    if std::env::var_os(FIXTURES_ENV).is_some() {
        return fixtures_from_env();
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
