//! Writing a model back out: safetensors (with its `config.json`), a Hugging Face folder
//! and llama2.c's `.bin`.

pub(super) mod hf;
mod hf_config;
pub(super) mod llama2c;
pub(super) mod safetensors;

#[cfg(test)]
mod hf_tests;
