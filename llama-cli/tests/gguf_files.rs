//! GGUF files on the command line: `--checkpoint model.gguf` loads the weights, the file's
//! own vocabulary and its chat template.

use std::path::Path;
use std::process::Output;

use llama_model::fixtures::fixture;
use llama_model::Tokenizer;

use crate::common::{cli, json_ids as ids, path, reference, text};

/// `generate` on `file` from `prompt`, `n` new tokens, writing into `dir`.
fn generate(file: &Path, prompt: &str, n: usize, extra: &[&str], dir: &Path) -> Output {
    let (file, n, dir) = (path(file), n.to_string(), path(dir));
    let mut args = vec!["generate", "--checkpoint", &file, "--prompt", prompt];
    args.extend(["--max-new-tokens", &n, "--out-dir", &dir]);
    args.extend(extra);
    cli(&args)
}

#[test]
fn generate_runs_on_a_gguf_file_with_its_own_vocabulary() {
    let key = "gguf/stories260K-q8_0.gguf";
    let file = fixture(&format!("real-models/{key}"));
    let case = &reference(key)["greedy"][0];
    let n = 12;
    let dir = tempfile::tempdir().unwrap();
    let out = generate(&file, case["prompt"].as_str().unwrap(), n, &[], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("GGUF"), "{}", text(&out.stderr));
    let greedy = std::fs::read_to_string(dir.path().join("generated-sentence-temp-0.txt")).unwrap();
    let tok = Tokenizer::from_file(&file).unwrap();
    let mut all = ids(&case["prompt_ids"]);
    all.extend(&ids(&case["new_ids"])[..n]);
    assert_eq!(greedy, format!("{}\n", tok.decode(&all).unwrap()));
}

/// `--weight-dtype q8` on a Q8_0 GGUF decodes on the file's own blocks (group 32, "as
/// stored"), not on a requantization of its dequantized weights at the default group 64.
#[test]
fn weight_dtype_q8_runs_a_q8_0_gguf_on_its_own_blocks() {
    let file = fixture("real-models/gguf/stories260K-q8_0.gguf");
    let dir = tempfile::tempdir().unwrap();
    let out = generate(
        &file,
        "Once upon a time",
        8,
        &["--weight-dtype", "q8"],
        dir.path(),
    );
    let log = text(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("weights q8 (Q8_0, group 32, as stored; int8 products:"),
        "{log}"
    );
}
