//! What the command-line tests share: running the built binary and reading its output.

use std::path::Path;
use std::process::{Command, Output};

/// `llama-cli --backend ndarray --quiet ARGS…`, run to completion.
pub fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_llama-cli"))
        .args(["--backend", "ndarray", "--quiet"])
        .args(args)
        .output()
        .expect("llama-cli runs")
}

/// Output bytes as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A path as an argument.
pub fn path(p: &Path) -> String {
    p.display().to_string()
}
