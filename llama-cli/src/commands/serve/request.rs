//! The request bodies of `/v1/completions` and `/v1/chat/completions`, and their checks.
//!
//! Unknown fields are ignored (clients send many); a known field of the wrong type, a
//! negative or out-of-range value is a 400 naming the field.

use llama_model::generation::chat::Message;
use llama_model::generation::generate::GenerateConfig;
use llama_model::generation::logprobs::MAX_TOP_LOGPROBS;
use serde::Deserialize;

use super::error::ApiError;

/// One string or a list of them (`prompt`, `stop`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

/// `logprobs`: an integer for completions, a boolean for chat.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Logprobs {
    Flag(bool),
    Count(i64),
}

/// The fields both endpoints share.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Sampling {
    /// Checked for its type only: the server has one model.
    #[allow(dead_code)]
    pub model: Option<String>,
    pub max_tokens: Option<i64>,
    /// The chat API's newer name for `max_tokens`.
    pub max_completion_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub min_p: Option<f64>,
    pub seed: Option<i64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub repetition_penalty: Option<f64>,
    pub stop: Option<OneOrMany>,
    pub logprobs: Option<Logprobs>,
    pub top_logprobs: Option<i64>,
    pub n: Option<i64>,
    #[serde(default)]
    pub stream: bool,
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    pub prompt: OneOrMany,
    #[serde(flatten)]
    pub sampling: Sampling,
}

/// One message of `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    #[serde(flatten)]
    pub sampling: Sampling,
}

impl ChatRequest {
    pub fn messages(&self) -> Vec<Message> {
        self.messages
            .iter()
            .map(|m| Message::new(&m.role, m.content.clone()))
            .collect()
    }
}

impl CompletionRequest {
    /// The prompt text (a list must hold exactly one).
    pub fn prompt_text(&self) -> Result<String, ApiError> {
        let mut prompts = self.prompt.clone().into_vec();
        if prompts.len() != 1 {
            return Err(ApiError::field(
                "prompt",
                "prompt must be one string (batches of prompts are not supported)",
            ));
        }
        Ok(prompts.remove(0))
    }
}

/// Parses a JSON body into `T`, any error a 400 with serde's message.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("invalid request body: {e}")))
}

/// What a request asks of the model besides its prompt.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Sampling controls and budget; the server adds the stop ids and split.
    pub config: GenerateConfig,
    /// `max_tokens` as asked (`None`: up to the limit and the context).
    pub max_tokens: Option<usize>,
    /// Alternatives per token for log-probabilities; `None`: none reported.
    pub logprobs: Option<usize>,
    pub stream: bool,
}

impl Sampling {
    /// Checks the fields; `chat` selects the chat API's form of `logprobs`.
    pub fn settings(&self, chat: bool) -> Result<Settings, ApiError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::field("n", "only n = 1 is supported"));
        }
        let max_tokens = match self.max_tokens.or(self.max_completion_tokens) {
            Some(n) if n < 1 => {
                return Err(ApiError::field(
                    "max_tokens",
                    format!("max_tokens must be at least 1, not {n}"),
                ))
            }
            other => other.map(|n| n as usize),
        };
        let seed = match self.seed {
            Some(s) if s < 0 => {
                return Err(ApiError::field(
                    "seed",
                    format!("seed must be non-negative, not {s}"),
                ))
            }
            other => other.unwrap_or(0) as u64,
        };
        let top_k = match self.top_k {
            Some(k) if k < 0 => {
                return Err(ApiError::field(
                    "top_k",
                    format!("top_k must be non-negative, not {k}"),
                ))
            }
            Some(0) | None => None,
            Some(k) => Some(k as usize),
        };
        let logprobs = self.logprobs(chat)?;
        let stop = self
            .stop
            .clone()
            .map(OneOrMany::into_vec)
            .unwrap_or_default();
        if stop.len() > 4 || stop.iter().any(String::is_empty) {
            return Err(ApiError::field(
                "stop",
                "stop takes up to 4 non-empty strings",
            ));
        }
        let config = GenerateConfig::new()
            .with_temperature(self.temperature.unwrap_or(1.0))
            .with_top_p(self.top_p)
            .with_top_k(top_k)
            .with_min_p(self.min_p)
            .with_seed(seed)
            .with_presence_penalty(self.presence_penalty.unwrap_or(0.0))
            .with_frequency_penalty(self.frequency_penalty.unwrap_or(0.0))
            .with_repetition_penalty(self.repetition_penalty.unwrap_or(1.0))
            .with_stop_strings(stop)
            .with_logprobs(logprobs);
        config
            .validate()
            .map_err(|e| ApiError::invalid(e.to_string()))?;
        Ok(Settings {
            config,
            max_tokens,
            logprobs,
            stream: self.stream,
        })
    }

    /// Completions: `logprobs: N`; chat: `logprobs: true` with `top_logprobs: N`.
    fn logprobs(&self, chat: bool) -> Result<Option<usize>, ApiError> {
        let count = |name: &'static str, n: i64| {
            if (0..=MAX_TOP_LOGPROBS as i64).contains(&n) {
                Ok(n as usize)
            } else {
                Err(ApiError::field(
                    name,
                    format!("{name} must be between 0 and {MAX_TOP_LOGPROBS}, not {n}"),
                ))
            }
        };
        match (&self.logprobs, chat) {
            (None | Some(Logprobs::Flag(false)), _) => match self.top_logprobs {
                Some(_) if chat => Err(ApiError::field(
                    "top_logprobs",
                    "top_logprobs needs logprobs: true",
                )),
                _ => Ok(None),
            },
            (Some(Logprobs::Flag(true)), true) => Ok(Some(
                self.top_logprobs
                    .map_or(Ok(0), |n| count("top_logprobs", n))?,
            )),
            (Some(Logprobs::Count(n)), false) => Ok(Some(count("logprobs", *n)?)),
            (Some(_), true) => Err(ApiError::field(
                "logprobs",
                "logprobs must be a boolean here (use top_logprobs for a count)",
            )),
            (Some(_), false) => Err(ApiError::field(
                "logprobs",
                "logprobs must be an integer here",
            )),
        }
    }
}
