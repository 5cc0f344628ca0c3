//! Text generation: the decoding engine with its KV cache, the one sample-and-stop loop
//! over it, the public entry points, and sampling the next token.

mod awake_workers;
pub mod batch;
pub mod chat;
pub mod controls;
mod decoder;
mod engine;
pub mod generate;
pub mod logprobs;
pub mod sampling;
pub mod stop_strings;
