//! The API key: read from `LLAMA_API_KEY` or a file (never a flag, which other users can
//! read in the process list), and checked in constant time.

use std::path::Path;

use anyhow::{bail, Context, Result};
use axum::http::HeaderMap;
use subtle::ConstantTimeEq;

/// The variable that holds the key.
pub const KEY_VARIABLE: &str = "LLAMA_API_KEY";

/// The key a request must bear, if any.
#[derive(Clone)]
pub struct ApiKey(Option<Vec<u8>>);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.write_str(if self.0.is_some() {
            "ApiKey(set)"
        } else {
            "ApiKey(none)"
        })
    }
}

impl ApiKey {
    /// The key of `file` (its content, surrounding whitespace trimmed), else of
    /// `LLAMA_API_KEY`, else none. An empty key is an error rather than no key.
    pub fn load(file: Option<&Path>) -> Result<Self> {
        let key = match file {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the API key file {}", path.display()))?
                .trim()
                .to_string(),
            None => match std::env::var(KEY_VARIABLE) {
                Ok(key) => key.trim().to_string(),
                Err(_) => return Ok(Self(None)),
            },
        };
        if key.is_empty() {
            bail!(
                "the API key ({}) is empty",
                file.map_or(KEY_VARIABLE.to_string(), |p| p.display().to_string())
            );
        }
        Ok(Self(Some(key.into_bytes())))
    }

    /// Whether a key is required.
    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }

    /// Whether `headers` carry `Authorization: Bearer <key>` (always, without a key). The
    /// comparison takes the same time wherever the bytes differ.
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        let Some(key) = &self.0 else {
            return true;
        };
        let given = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .unwrap_or_default();
        bool::from(given.ct_eq(key.as_slice()))
    }
}
