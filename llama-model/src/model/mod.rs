//! The Llama 2 model from its parts: its config, embeddings and layers (attention with RoPE
//! and a KV cache, SwiGLU feed-forward, RMSNorm), the projection every weight product goes
//! through, and where parameters come from.

pub mod attention;
pub mod config;
pub mod feed_forward;
pub mod kv_cache;
pub mod layer;
pub mod llama;
pub mod param_source;
pub mod projection;
pub mod rms_norm;
pub mod rope;
pub mod weight_layout;
