//! Chat on the command line: `generate --chat` (one turn) and `chat` (turns over stdin,
//! the KV cache kept between them).

use std::io::Write;
use std::path::Path;
use std::process::{Output, Stdio};

use llama_model::fixtures::fixture;
use llama_model::tokenizer::TextStream;
use llama_model::Tokenizer;
use serde_json::{json, Value};

use crate::common::{cli, json_ids as ids, llama_cli, path, reference, text};

#[test]
fn generate_chat_replies_as_transformers_does() {
    let folder = fixture("real-models/hf/stories260K");
    let tokenizer = Tokenizer::from_file(folder.join("tokenizer.json")).unwrap();
    check_generate_chat("hf/stories260K", &folder, &tokenizer);
}

#[test]
fn generate_chat_uses_a_gguf_files_own_template_and_vocabulary() {
    let key = "gguf/stories260K-f16.gguf";
    let file = fixture(&format!("real-models/{key}"));
    check_generate_chat(key, &file, &Tokenizer::from_file(&file).unwrap());
}

/// `generate --checkpoint CHECKPOINT --chat MESSAGE` prints and writes the greedy reply of
/// `key`'s first one-message conversation, decoded by `tokenizer`.
fn check_generate_chat(key: &str, checkpoint: &Path, tokenizer: &Tokenizer) {
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
        &path(checkpoint),
        "--chat",
        message,
        "--temperature",
        "0",
        "--max-new-tokens",
        &reply.len().to_string(),
        "--out",
        &path(&out),
    ]);
    assert!(run.status.success(), "{key}: {}", text(&run.stderr));
    let expected = tokenizer.decode(&reply).unwrap();
    let written = std::fs::read_to_string(&out).unwrap();
    // Only the reply is printed (no template text); it continues after `[/INST]`, so it
    // keeps the space the first piece starts with.
    assert_eq!(written.trim_start(), format!("{expected}\n"), "{key}");
    assert_eq!(
        text(&run.stdout).trim_start(),
        format!("{expected}\n"),
        "{key}"
    );
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

/// `llama-cli chat` greedy on `checkpoint`, starting from `messages`, fed `input` on stdin
/// (which then ends, ending the chat).
fn chat(checkpoint: &Path, messages: &Value, input: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("messages.json");
    std::fs::write(&file, messages.to_string()).unwrap();
    let mut child = llama_cli()
        .args(["--backend", "ndarray", "--quiet", "chat", "--checkpoint"])
        .arg(checkpoint)
        .args(["--messages", &path(&file), "--temperature", "0"])
        .args(["--max-new-tokens", "24"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    out
}

/// Per turn, the stats line's (prefilled, prompt tokens, generated tokens).
fn stats(out: &Output) -> Vec<(usize, usize, usize)> {
    text(&out.stderr)
        .lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.strip_prefix("prefilled ")?.split(' ').collect();
            let number = |i: usize| words[i].trim_end_matches(';').parse::<usize>().unwrap();
            Some((number(0), number(2), number(5)))
        })
        .collect()
}

#[test]
fn chat_keeps_the_cache_across_turns_and_replies_as_one_shot_generation() {
    let key = "hf/tiny-llama3-eot";
    let folder = fixture(&format!("real-models/{key}"));
    let cases = reference(key)["chat"].as_array().unwrap().clone();
    let with_prompt = |n: usize| {
        cases
            .iter()
            .find(|c| {
                c["add_generation_prompt"] == true && c["messages"].as_array().unwrap().len() == n
            })
            .unwrap()
            .clone()
    };
    // The fixture's second conversation: its last user message is typed, the rest given.
    let second = with_prompt(4);
    let history = &second["messages"].as_array().unwrap()[..3];
    let asked = second["messages"][3]["content"].as_str().unwrap();
    let next = with_prompt(1)["messages"][0]["content"]
        .as_str()
        .unwrap()
        .to_string();
    let out = chat(
        &folder,
        &json!(history),
        &format!("{asked}\n\n{next}\n/exit\nnever read\n"),
    );

    // Turn 1 is transformers' greedy reply, stopped at <|eot_id|> (the last reply id).
    let tokenizer = Tokenizer::from_file(folder.join("tokenizer.json")).unwrap();
    let reply = ids(&second["reply_ids"]);
    let prompt = ids(&second["ids"]);
    let mut stream = TextStream::after(&tokenizer, *prompt.last().unwrap());
    let mut first = String::new();
    for &id in &reply[..reply.len() - 1] {
        first.push_str(&stream.push(id).unwrap());
    }
    first.push_str(&stream.finish());
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with(&format!("{first}\n")), "{stdout:?}");
    let turns = stats(&out);
    assert_eq!(turns.len(), 2, "{}", text(&out.stderr));
    assert_eq!(turns[0], (prompt.len(), prompt.len(), reply.len()));

    // Turn 2 pre-fills only what follows the cached prefix, and replies as a fresh chat
    // over the same conversation does.
    let (prefilled, whole, _) = turns[1];
    assert!(prefilled > 0 && prefilled < whole, "{turns:?}");
    let mut so_far = second["messages"].as_array().unwrap().clone();
    so_far.push(json!({"role": "assistant", "content": first}));
    let fresh = chat(&folder, &json!(so_far), &format!("{next}\n"));
    assert_eq!(
        stats(&fresh)[0].0,
        whole,
        "a fresh chat pre-fills everything"
    );
    assert_eq!(stats(&fresh)[0].1, whole);
    assert_eq!(stdout, format!("{first}\n{}", text(&fresh.stdout)));
}

#[test]
fn chat_refuses_a_model_without_a_template_and_reset_starts_over() {
    let run = llama_cli()
        .args(["--backend", "ndarray", "chat", "--checkpoint"])
        .arg(fixture("models/stories260K/stories260K.bin"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!run.status.success());
    assert!(
        text(&run.stderr).contains("no chat template"),
        "{}",
        text(&run.stderr)
    );

    // The Llama 2 template refuses two user messages in a row: the first typed message is
    // left out, the chat goes on.
    let folder = fixture("real-models/hf/stories260K");
    let pending = json!([{"role": "user", "content": "Hi"}]);
    let out = chat(&folder, &pending, "Hello\n/reset\nHello\n");
    assert!(
        text(&out.stderr).contains("roles must alternate"),
        "{}",
        text(&out.stderr)
    );
    let turns = stats(&out);
    assert_eq!(turns.len(), 1);
    let out = chat(&folder, &json!([]), "Hello\n/reset\nHello\n");
    let turns = stats(&out);
    assert_eq!(turns.len(), 2);
    // After /reset nothing is reused: the same prompt is pre-filled whole, the same reply.
    assert_eq!(turns[0], turns[1]);
    assert_eq!(turns[1].0, turns[1].1);
    let stdout = text(&out.stdout);
    let (a, b) = stdout.split_at(stdout.len() / 2);
    assert_eq!(a, b, "{stdout:?}");
    assert!(text(&out.stderr).contains("starts over"));
}
