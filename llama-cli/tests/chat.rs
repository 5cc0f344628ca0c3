//! Chat on the command line: `generate --chat` (one turn).

use llama_model::fixtures::fixture;
use llama_model::Tokenizer;
use serde_json::Value;

use crate::common::{cli, path, text};

/// `reference.json`'s entry for `key`.
fn reference(key: &str) -> Value {
    let text = std::fs::read_to_string(fixture("real-models/reference.json")).unwrap();
    serde_json::from_str::<Value>(&text).unwrap()["models"][key].clone()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn generate_chat_replies_as_transformers_does() {
    let key = "hf/stories260K";
    let folder = fixture(&format!("real-models/{key}"));
    let case = reference(key)["chat"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| {
            c["add_generation_prompt"] == true && c["messages"].as_array().unwrap().len() == 1
        })
        .unwrap()
        .clone();
    let message = case["messages"][0]["content"].as_str().unwrap();
    let reply = ids(&case["reply_ids"]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("reply.txt");
    let run = cli(&[
        "generate",
        "--checkpoint",
        &path(&folder),
        "--chat",
        message,
        "--temperature",
        "0",
        "--max-new-tokens",
        &reply.len().to_string(),
        "--out",
        &path(&out),
    ]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let tokenizer = Tokenizer::from_file(folder.join("tokenizer.json")).unwrap();
    let expected = tokenizer.decode(&reply).unwrap();
    let written = std::fs::read_to_string(&out).unwrap();
    // Only the reply is printed (no template text); it continues after `[/INST]`, so it
    // keeps the space the first piece starts with.
    assert_eq!(written.trim_start(), format!("{expected}\n"));
    assert_eq!(text(&run.stdout).trim_start(), format!("{expected}\n"));
}

#[test]
fn a_model_without_a_chat_template_is_refused_in_one_line() {
    let run = cli(&[
        "generate",
        "--checkpoint",
        &path(&fixture("models/stories260K/stories260K.bin")),
        "--chat",
        "Hello",
        "--temperature",
        "0",
    ]);
    assert!(!run.status.success());
    let stderr = text(&run.stderr);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("chat template"))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(stderr.contains("no chat template"), "{stderr}");
}

#[test]
fn system_needs_chat() {
    let run = cli(&["generate", "--system", "Be brief.", "--temperature", "0"]);
    assert!(!run.status.success());
    assert!(
        text(&run.stderr).contains("--chat"),
        "{}",
        text(&run.stderr)
    );
}
