//! A Hugging Face chat template: Jinja source from `chat_template.jinja` or from
//! `tokenizer_config.json`'s `chat_template`, rendered over a list of messages.
//!
//! Rendered with `minijinja`, the Jinja engine HF-compatible Rust servers (TGI, mistral.rs)
//! use, with `minijinja-contrib`'s pycompat methods for the Python string methods templates
//! call (`.strip()`, `.startswith()`…), and Jinja's whitespace settings as `transformers`
//! sets them (`trim_blocks`, `lstrip_blocks`). The context is what `transformers` passes:
//! `messages`, `add_generation_prompt`, `bos_token`, `eos_token`, and `raise_exception`.
//!
//! The rendered text holds special tokens as text (`<|eot_id|>`); it is tokenized with
//! specials parsed and no BOS added (the template writes BOS itself).

use std::path::{Path, PathBuf};

use minijinja::syntax::SyntaxConfig;
use minijinja::{context, Environment, ErrorKind};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::tokenizer::{Tokenizer, TokenizerError};

/// The file a template may have to itself.
const TEMPLATE_FILE: &str = "chat_template.jinja";
/// The tokenizer config, which may hold the template and names BOS and EOS.
const TOKENIZER_CONFIG: &str = "tokenizer_config.json";

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// Its text.
    pub content: String,
}

impl Message {
    /// A message of `role` saying `content`.
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Self {
            role: role.to_string(),
            content: content.into(),
        }
    }
}

/// Why a chat template cannot be read, rendered or tokenized.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// The model folder has neither file with a template.
    #[error("{folder}: the model has no chat template (no {TEMPLATE_FILE}, no chat_template in {TOKENIZER_CONFIG}), so it cannot chat")]
    NoTemplate {
        /// The folder looked in.
        folder: PathBuf,
    },
    /// A GGUF file without `tokenizer.chat_template`.
    #[error("{path}: the model has no chat template (no tokenizer.chat_template in its metadata), so it cannot chat")]
    NoGgufTemplate {
        /// The GGUF file.
        path: PathBuf,
    },
    /// A GGUF file's metadata could not be read.
    #[error("{path}: {reason}")]
    Gguf {
        /// The GGUF file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `tokenizer_config.json` is not JSON.
    #[error("{path}: not valid JSON: {reason}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        reason: String,
    },
    /// The template does not parse or fails to render (including its own
    /// `raise_exception`).
    #[error("chat template of {path}: {reason}")]
    Render {
        /// The file the template came from.
        path: PathBuf,
        /// The engine's message.
        reason: String,
    },
    /// The last message alone leaves no room for a reply in the model's context.
    #[error("the message makes the conversation {tokens} tokens long, which leaves no room for a reply of {reserve} in the model's context of {context}")]
    TooLong {
        /// Tokens of the prompt with only the system and the last message.
        tokens: usize,
        /// The model's context.
        context: usize,
        /// Tokens kept for the reply.
        reserve: usize,
    },
    /// The rendered text cannot be tokenized.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

/// A model's chat template with the BOS and EOS texts it is rendered with.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    source: String,
    bos_token: String,
    eos_token: String,
    /// Where the template came from (for errors).
    origin: PathBuf,
}

impl ChatTemplate {
    /// The template of the model folder `folder`: `chat_template.jinja`, else
    /// `tokenizer_config.json`'s `chat_template`; BOS and EOS texts from
    /// `tokenizer_config.json` (empty when it names none).
    pub fn from_folder(folder: &Path) -> Result<Self, ChatError> {
        let config_path = folder.join(TOKENIZER_CONFIG);
        let config = if config_path.is_file() {
            let text = read(&config_path)?;
            serde_json::from_str::<Value>(&text).map_err(|e| ChatError::Json {
                path: config_path.clone(),
                reason: e.to_string(),
            })?
        } else {
            Value::Null
        };
        let file = folder.join(TEMPLATE_FILE);
        let (source, origin) = if file.is_file() {
            (read(&file)?, file)
        } else {
            match template_in_config(&config) {
                Some(source) => (source, config_path),
                None => {
                    return Err(ChatError::NoTemplate {
                        folder: folder.to_path_buf(),
                    })
                }
            }
        };
        Ok(Self::new(
            source,
            token_text(&config, "bos_token"),
            token_text(&config, "eos_token"),
            origin,
        ))
    }

    /// The template of the model `checkpoint` names: a GGUF file's own, its Hugging Face
    /// folder's, else that of the folder the checkpoint file is in.
    pub fn for_checkpoint(checkpoint: &Path) -> Result<Self, ChatError> {
        if crate::checkpoint::detect_format(checkpoint).ok()
            == Some(crate::checkpoint::CheckpointFormat::Gguf)
        {
            return Self::from_gguf(checkpoint);
        }
        let folder = match crate::checkpoint::hf::locate(checkpoint) {
            Ok(Some(config)) => config.parent().map(Path::to_path_buf),
            _ if checkpoint.is_dir() => Some(checkpoint.to_path_buf()),
            _ => checkpoint.parent().map(Path::to_path_buf),
        };
        let folder = folder
            .filter(|f| !f.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        Self::from_folder(&folder)
    }

    /// The template of a GGUF file (`tokenizer.chat_template`), rendered with the texts of
    /// its BOS and EOS tokens.
    pub fn from_gguf(path: &Path) -> Result<Self, ChatError> {
        use crate::gguf::{read_metadata, Value};
        let meta = read_metadata(path).map_err(|reason| ChatError::Gguf {
            path: path.to_path_buf(),
            reason,
        })?;
        let source = meta
            .get("tokenizer.chat_template")
            .and_then(Value::as_str)
            .ok_or_else(|| ChatError::NoGgufTemplate {
                path: path.to_path_buf(),
            })?;
        let tokens = meta.get("tokenizer.ggml.tokens").and_then(Value::as_array);
        let text = |key: &str| {
            let id = meta.get(key).and_then(Value::as_u64)?;
            let token = tokens?.get(usize::try_from(id).ok()?)?;
            token.as_str().map(str::to_string)
        };
        Ok(Self::new(
            source.to_string(),
            text("tokenizer.ggml.bos_token_id").unwrap_or_default(),
            text("tokenizer.ggml.eos_token_id").unwrap_or_default(),
            path.to_path_buf(),
        ))
    }

    /// A template from its Jinja `source`, rendered with these BOS and EOS texts; `origin`
    /// names it in errors.
    pub fn new(source: String, bos_token: String, eos_token: String, origin: PathBuf) -> Self {
        Self {
            source,
            bos_token,
            eos_token,
            origin,
        }
    }

    /// The template's Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The text of `messages`, followed by the assistant's header when
    /// `add_generation_prompt` (the prompt a model replies to).
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        let error = |e: minijinja::Error| ChatError::Render {
            path: self.origin.clone(),
            reason: match e.kind() {
                // The template's own message, as raise_exception gave it.
                ErrorKind::InvalidOperation => e.detail().unwrap_or_default().to_string(),
                _ => e.to_string(),
            },
        };
        let env = environment().map_err(error)?;
        let template = env.template_from_str(&self.source).map_err(error)?;
        template
            .render(context! {
                messages => minijinja::value::Serde(messages),
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(error)
    }
}

impl ChatTemplate {
    /// The ids a model replies after: `messages` rendered with the generation prompt,
    /// tokenized with special tokens parsed and no BOS added (the template writes it).
    pub fn prompt_ids(
        &self,
        tokenizer: &Tokenizer,
        messages: &[Message],
    ) -> Result<Vec<u32>, ChatError> {
        let text = self.render(messages, true)?;
        Ok(tokenizer.encode(&text, false, false)?)
    }
}

/// A Jinja environment set up as `transformers` sets up its own.
fn environment() -> Result<Environment<'static>, minijinja::Error> {
    let mut env = Environment::new();
    env.set_syntax(
        SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()?,
    );
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |message: String| -> Result<String, _> {
        Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
    });
    Ok(env)
}

/// `chat_template` of a tokenizer config: a string, or a list of named templates whose
/// `default` is used.
fn template_in_config(config: &Value) -> Option<String> {
    match config.get("chat_template")? {
        Value::String(source) => Some(source.clone()),
        Value::Array(named) => named
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
        _ => None,
    }
}

/// The text of the token `key` names: a string or `{"content": text, ...}`; empty if absent.
fn token_text(config: &Value, key: &str) -> String {
    config
        .get(key)
        .and_then(|v| v.as_str().or_else(|| v.get("content")?.as_str()))
        .unwrap_or_default()
        .to_string()
}

fn read(path: &Path) -> Result<String, ChatError> {
    std::fs::read_to_string(path).map_err(|source| ChatError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
#[path = "template_tests.rs"]
mod tests;
