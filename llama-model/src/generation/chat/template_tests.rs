use super::*;
use crate::fixtures::fixture;
use crate::Tokenizer;

/// The `hf/` entries of `reference.json`: key and entry.
fn hf_entries() -> Vec<(String, Value)> {
    let text = std::fs::read_to_string(fixture("real-models/reference.json")).unwrap();
    let models = serde_json::from_str::<Value>(&text).unwrap()["models"].clone();
    let entries: Vec<_> = models
        .as_object()
        .unwrap()
        .iter()
        .filter(|(key, _)| key.starts_with("hf/"))
        .map(|(key, entry)| (key.clone(), entry.clone()))
        .collect();
    assert!(entries.len() >= 4, "expected the four hf/ fixtures");
    entries
}

/// A case's `messages` (OpenAI's shape, which [`Message`] reads).
fn messages(case: &Value) -> Vec<Message> {
    serde_json::from_value(case["messages"].clone()).unwrap()
}

#[test]
fn every_hf_chat_entry_renders_and_tokenizes_as_transformers_does() {
    let mut checked = 0;
    for (key, entry) in hf_entries() {
        let folder = fixture(&format!("real-models/{key}"));
        let template = ChatTemplate::from_folder(&folder).unwrap();
        let tokenizer = Tokenizer::from_file(folder.join("tokenizer.json")).unwrap();
        for case in entry["chat"].as_array().unwrap() {
            let generation = case["add_generation_prompt"].as_bool().unwrap();
            let rendered = template.render(&messages(case), generation);
            let Some(expected) = case["text"].as_str() else {
                assert!(rendered.is_err(), "{key}: the template should raise");
                continue;
            };
            let text = rendered.unwrap_or_else(|e| panic!("{key}: {e}"));
            assert_eq!(text, expected, "{key}: rendered text");
            let ids = tokenizer.encode(&text, false, false).unwrap();
            let expected: Vec<u32> = case["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(ids, expected, "{key}: ids of {text:?}");
            checked += 1;
        }
    }
    assert!(checked >= 16, "only {checked} chat entries checked");
}

#[test]
fn both_template_conventions_are_read() {
    // A file of its own, and tokenizer_config.json's chat_template (tiny-llama2-f16).
    let own = fixture("real-models/hf/tiny-llama3");
    assert!(own.join(TEMPLATE_FILE).is_file());
    let inside = fixture("real-models/hf/tiny-llama2-f16");
    assert!(!inside.join(TEMPLATE_FILE).exists());
    let template = ChatTemplate::from_folder(&inside).unwrap();
    assert!(template.origin.ends_with(TOKENIZER_CONFIG));
    let text = template
        .render(&[Message::new("user", "hi")], true)
        .unwrap();
    assert_eq!(text, "<s>[INST] hi [/INST]");
}

#[test]
fn a_folder_without_a_template_is_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(TOKENIZER_CONFIG), r#"{"bos_token": "<s>"}"#).unwrap();
    let err = ChatTemplate::from_folder(dir.path()).unwrap_err();
    assert!(matches!(err, ChatError::NoTemplate { .. }));
    let line = err.to_string();
    assert!(
        line.contains("no chat template") && !line.contains('\n'),
        "{line}"
    );
}

#[test]
fn raise_exception_gives_the_templates_message() {
    let template = ChatTemplate::from_folder(&fixture("real-models/hf/stories260K")).unwrap();
    let two_users = [Message::new("user", "a"), Message::new("user", "b")];
    let err = template.render(&two_users, true).unwrap_err().to_string();
    assert!(err.contains("Conversation roles must alternate"), "{err}");
    assert!(err.contains(TEMPLATE_FILE), "{err}");
}

#[test]
fn named_templates_and_token_objects_are_understood() {
    let config = serde_json::json!({
        "chat_template": [{"name": "tool_use", "template": "x"}, {"name": "default", "template": "{{ bos_token }}{{ messages[0].content | upper }}{{ eos_token }}"}],
        "bos_token": {"content": "<s>", "lstrip": false},
        "eos_token": "</s>",
    });
    let source = template_in_config(&config).unwrap();
    let template = ChatTemplate::new(
        source,
        token_text(&config, "bos_token"),
        token_text(&config, "eos_token"),
        PathBuf::from("t"),
    );
    let text = template
        .render(&[Message::new("user", "hi")], false)
        .unwrap();
    assert_eq!(text, "<s>HI</s>");
}
