//! Response bodies shaped as OpenAI's: completions, chat completions, their streamed
//! chunks, and log-probabilities in each API's form.

use serde_json::{json, Value};

use super::scheduler::TokenInfo;

/// Which endpoint answers: the two shape their choices differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Completions,
    Chat,
}

/// The fixed fields of one response.
#[derive(Debug, Clone)]
pub struct Header {
    pub api: Api,
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl Header {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.api, chunk) {
            (Api::Completions, _) => "text_completion",
            (Api::Chat, false) => "chat.completion",
            (Api::Chat, true) => "chat.completion.chunk",
        }
    }

    /// A whole (non-streamed) response.
    pub fn response(
        &self,
        text: &str,
        logprobs: Option<&[TokenInfo]>,
        finish_reason: &str,
        usage: Value,
    ) -> Value {
        let mut choice = json!({"index": 0, "finish_reason": finish_reason,
            "logprobs": logprobs.map(|l| self.logprobs(l, 0))});
        match self.api {
            Api::Completions => choice["text"] = json!(text),
            Api::Chat => choice["message"] = json!({"role": "assistant", "content": text}),
        }
        json!({"id": self.id, "object": self.object(false), "created": self.created,
            "model": self.model, "choices": [choice], "usage": usage})
    }

    /// One streamed chunk: `text` (the chat's first chunk also names the role), the
    /// tokens' log-probabilities, and the finish reason on the last.
    pub fn chunk(
        &self,
        text: Option<&str>,
        logprobs: Option<(&[TokenInfo], usize)>,
        finish_reason: Option<&str>,
        first: bool,
    ) -> Value {
        let mut choice = json!({"index": 0, "finish_reason": finish_reason,
            "logprobs": logprobs.map(|(l, offset)| self.logprobs(l, offset))});
        match self.api {
            Api::Completions => choice["text"] = json!(text.unwrap_or_default()),
            Api::Chat => {
                let mut delta = json!({});
                if first {
                    delta["role"] = json!("assistant");
                }
                if let Some(text) = text {
                    delta["content"] = json!(text);
                }
                choice["delta"] = delta;
            }
        }
        json!({"id": self.id, "object": self.object(true), "created": self.created,
            "model": self.model, "choices": [choice]})
    }

    /// Log-probabilities: the completions API's parallel lists (with `text_offset`s from
    /// `offset`), or the chat API's `content` entries.
    fn logprobs(&self, tokens: &[TokenInfo], offset: usize) -> Value {
        match self.api {
            Api::Completions => {
                let mut offsets = Vec::with_capacity(tokens.len());
                let mut at = offset;
                for t in tokens {
                    offsets.push(at);
                    at += t.token.text.len();
                }
                json!({
                    "tokens": tokens.iter().map(|t| &t.token.text).collect::<Vec<_>>(),
                    "token_logprobs": tokens.iter().map(|t| t.logprob).collect::<Vec<_>>(),
                    "top_logprobs": tokens.iter().map(|t| {
                        t.top.iter().map(|(p, lp)| (p.text.clone(), json!(lp)))
                            .collect::<serde_json::Map<_, _>>()
                    }).collect::<Vec<_>>(),
                    "text_offset": offsets,
                })
            }
            Api::Chat => json!({"content": tokens.iter().map(|t| json!({
                "token": t.token.text, "logprob": t.logprob, "bytes": t.token.bytes,
                "top_logprobs": t.top.iter().map(|(p, lp)| json!({
                    "token": p.text, "logprob": lp, "bytes": p.bytes})).collect::<Vec<_>>(),
            })).collect::<Vec<_>>()}),
        }
    }
}

/// The `usage` object.
pub fn usage(prompt_tokens: usize, completion_tokens: usize) -> Value {
    json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens})
}
