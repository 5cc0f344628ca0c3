//! Chat on the Hugging Face folders (`real-models/hf/…`): every `chat` entry of
//! `reference.json` with a generation prompt gives its ids and, replied to greedily until any
//! of the model's EOS ids, its `reply_ids` (which end with the EOS id when one came).

use std::path::Path;

use crate::common::*;

use llama_model::checkpoint::hf;
use llama_model::generation::chat::{ChatTemplate, Message};
use llama_model::generation::generate::{generate, GenerateConfig, StopReason};
use llama_model::{load_checkpoint, LoadOptions, Tokenizer};
use serde_json::Value;

/// A case's `messages` (OpenAI's shape, which [`Message`] reads).
fn messages(case: &Value) -> Vec<Message> {
    serde_json::from_value(case["messages"].clone()).unwrap()
}

/// Greedy reply ids to `prompt` of at most `n` tokens, the EOS id that ended it included.
fn greedy_reply(folder: &Path, tokenizer: &Tokenizer, prompt: &[u32], n: usize) -> Vec<u32> {
    let model = load_checkpoint::<B>(folder, &LoadOptions::default(), &Default::default())
        .unwrap()
        .model;
    let eos = hf::special_ids(folder).unwrap().unwrap().eos;
    let config = GenerateConfig::greedy(n)
        .with_stop_at_eos(true)
        .with_eos_id(tokenizer.eos_id())
        .with_eos_ids(eos);
    let mut stop = None;
    let generation = generate(&model, prompt, &config, |_| {}).unwrap();
    let mut reply = generation.tokens;
    if generation.stop_reason == StopReason::Eos {
        // The id that ended it: the next greedy token, sampled but not returned.
        let mut longer = prompt.to_vec();
        longer.extend(&reply);
        let next = generate(&model, &longer, &GenerateConfig::greedy(1), |_| {}).unwrap();
        stop = next.tokens.first().copied();
    }
    reply.extend(stop);
    reply
}

#[test]
fn every_hf_chat_reply_equals_transformers_greedy_reply() {
    let text = std::fs::read_to_string(fixture("real-models/reference.json")).unwrap();
    let models = serde_json::from_str::<Value>(&text).unwrap()["models"].clone();
    let mut ended_at_eos = 0;
    for (key, entry) in models.as_object().unwrap() {
        if !key.starts_with("hf/") {
            continue;
        }
        let folder = fixture(&format!("real-models/{key}"));
        let template = ChatTemplate::for_checkpoint(&folder).unwrap();
        let tokenizer = Tokenizer::from_file(folder.join("tokenizer.json")).unwrap();
        let eos = hf::special_ids(&folder).unwrap().unwrap().eos;
        for case in entry["chat"].as_array().unwrap() {
            let Some(expected) = case.get("reply_ids") else {
                continue;
            };
            let expected = ids(expected);
            let prompt = template.prompt_ids(&tokenizer, &messages(case)).unwrap();
            assert_eq!(prompt, ids(&case["ids"]), "{key}: prompt ids");
            let reply = greedy_reply(&folder, &tokenizer, &prompt, expected.len());
            assert_eq!(reply, expected, "{key}: reply ids");
            ended_at_eos += usize::from(expected.last().is_some_and(|id| eos.contains(id)));
        }
    }
    // hf/tiny-llama3-eot's second conversation ends at <|eot_id|>.
    assert!(ended_at_eos >= 1, "no reply ended at an EOS id");
}
