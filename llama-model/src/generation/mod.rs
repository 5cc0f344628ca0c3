//! Text generation: the batched decoding engine with its KV cache, and sampling the next token.

pub mod generate;
pub mod sampling;
