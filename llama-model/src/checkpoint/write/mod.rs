//! Writing a model back out: safetensors (with its `config.json`) and llama2.c's `.bin`.

pub(super) mod llama2c;
pub(super) mod safetensors;
