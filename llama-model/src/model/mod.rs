//! The Llama 2 model from its parts: its config, embeddings and layers (attention with RoPE
//! and a KV cache, SwiGLU feed-forward, RMSNorm), the projection every weight product goes
//! through, and where parameters come from.

pub(crate) mod attention;
pub mod config;
pub(crate) mod decode_attention;
pub(crate) mod feed_forward;
pub(crate) mod fused_attention;
pub(crate) mod kv_cache;
pub(crate) mod kv_write;
pub(crate) mod layer;
pub mod llama;
pub mod param_source;
pub(crate) mod projection;
pub(crate) mod rms_norm;
pub(crate) mod rope;
pub mod rope_scaling;
pub(crate) mod weight_layout;
