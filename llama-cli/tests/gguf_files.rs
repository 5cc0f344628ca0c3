//! GGUF files on the command line: `--checkpoint model.gguf` loads the weights, the file's
//! own vocabulary and its chat template.

use llama_model::fixtures::fixture;
use llama_model::Tokenizer;

use crate::common::{cli, json_ids as ids, path, reference, text};

#[test]
fn generate_runs_on_a_gguf_file_with_its_own_vocabulary() {
    let key = "gguf/stories260K-q8_0.gguf";
    let file = fixture(&format!("real-models/{key}"));
    let case = &reference(key)["greedy"][0];
    let n = 12;
    let dir = tempfile::tempdir().unwrap();
    let out = cli(&[
        "generate",
        "--checkpoint",
        &path(&file),
        "--prompt",
        case["prompt"].as_str().unwrap(),
        "--max-new-tokens",
        &n.to_string(),
        "--out-dir",
        &path(dir.path()),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("GGUF"), "{}", text(&out.stderr));
    let greedy = std::fs::read_to_string(dir.path().join("generated-sentence-temp-0.txt")).unwrap();
    let tok = Tokenizer::from_file(&file).unwrap();
    let mut all = ids(&case["prompt_ids"]);
    all.extend(&ids(&case["new_ids"])[..n]);
    assert_eq!(greedy, format!("{}\n", tok.decode(&all).unwrap()));
}
