//! Hugging Face Llama folders on the command line: `--checkpoint` takes the folder or its
//! `config.json`, and the folder's own `tokenizer.json` is used.

use llama_model::fixtures::fixture;
use llama_model::Tokenizer;

use crate::common::{greedy_generation, json_ids, path, real_models_reference};

/// `generate --checkpoint CHECKPOINT --prompt PROMPT` for `n` tokens; the greedy file's text.
fn greedy_text(checkpoint: &str, prompt: &str, n: usize) -> String {
    let (stderr, greedy) = greedy_generation(checkpoint, prompt, n);
    assert!(stderr.contains("Hugging Face folder"), "{stderr}");
    greedy
}

#[test]
fn generate_runs_on_a_hugging_face_folder_and_on_its_config() {
    let reference = real_models_reference();
    let ids = json_ids;
    let n = 12;
    for (key, checkpoint) in [
        ("hf/stories260K", fixture("real-models/hf/stories260K")),
        (
            "hf/tiny-llama3",
            fixture("real-models/hf/tiny-llama3/config.json"),
        ),
    ] {
        let case = &reference["models"][key]["greedy"][0];
        let prompt = case["prompt"].as_str().unwrap();
        let greedy = greedy_text(&path(&checkpoint), prompt, n);
        // transformers' greedy ids, decoded by the folder's tokenizer.json.
        let tok =
            Tokenizer::from_file(fixture(&format!("real-models/{key}/tokenizer.json"))).unwrap();
        let mut all = ids(&case["prompt_ids"]);
        all.extend(&ids(&case["new_ids"])[..n]);
        assert_eq!(greedy, format!("{}\n", tok.decode(&all).unwrap()), "{key}");
    }
}
