//! What the command-line tests share: running the built binary and reading its output.

use std::path::Path;
use std::process::{Command, Output};

use llama_model::fixtures::{fixture, fixtures_dir, FIXTURES_ENV};
use serde_json::Value;

/// The built `llama-cli`, told where the fixtures are (a shipped binary finds them only
/// through `LLAMA_FIXTURES`).
pub fn llama_cli() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_llama-cli"));
    command.env(FIXTURES_ENV, fixtures_dir());
    command
}

/// `llama-cli --backend ndarray --quiet ARGS…`, run to completion.
pub fn cli(args: &[&str]) -> Output {
    llama_cli()
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

/// The first `n` lines of the fixture data file `name`, written to `dir/name`; its path.
pub fn head(dir: &Path, name: &str, n: usize) -> String {
    let all = std::fs::read_to_string(fixture(&format!("data/{name}"))).expect("fixture data");
    let lines: Vec<&str> = all.lines().take(n).collect();
    let written = dir.join(name);
    std::fs::write(&written, lines.join("\n") + "\n").expect("write a data file");
    path(&written)
}

/// `reference.json`'s entry for `key`.
pub fn reference(key: &str) -> Value {
    let text = std::fs::read_to_string(fixture("real-models/reference.json")).unwrap();
    serde_json::from_str::<Value>(&text).unwrap()["models"][key].clone()
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_u64().unwrap() as u32)
        .collect()
}
