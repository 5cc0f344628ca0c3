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

/// `generate --checkpoint CHECKPOINT --prompt PROMPT` for `n` greedy tokens, which must
/// succeed: its stderr and the text of its greedy file.
pub fn greedy_generation(checkpoint: &str, prompt: &str, n: usize) -> (String, String) {
    greedy_generation_with(checkpoint, prompt, n, &[])
}

/// [`greedy_generation`] with `extra` flags.
pub fn greedy_generation_with(
    checkpoint: &str,
    prompt: &str,
    n: usize,
    extra: &[&str],
) -> (String, String) {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let n = n.to_string();
    let out_dir = path(dir.path());
    let mut args = vec![
        "generate",
        "--checkpoint",
        checkpoint,
        "--prompt",
        prompt,
        "--max-new-tokens",
        &n,
        "--out-dir",
        &out_dir,
    ];
    args.extend_from_slice(extra);
    let out = cli(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let greedy = std::fs::read_to_string(dir.path().join("generated-sentence-temp-0.txt"))
        .expect("the greedy file");
    (text(&out.stderr), greedy)
}

/// `real-models/reference.json`: what transformers and peft compute on the fixture models.
pub fn real_models_reference() -> Value {
    let text = std::fs::read_to_string(fixture("real-models/reference.json")).expect("fixture");
    serde_json::from_str(&text).expect("reference.json is JSON")
}

/// A JSON list of token ids.
pub fn json_ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("a list of ids")
        .iter()
        .map(|i| i.as_u64().expect("an id") as u32)
        .collect()
}

/// `reference.json`'s entry for `key`.
pub fn reference(key: &str) -> Value {
    real_models_reference()["models"][key].clone()
}
