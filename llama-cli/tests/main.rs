//! The command-line tests: the built `llama-cli` binary run as a user runs it.
//!
//! One test binary for the package: each file is a module, so the generic model and
//! training code is instantiated and linked once.

mod common;

mod chat;
mod cli;
mod crafted_files;
mod data_parallel;
mod data_parallel_trust;
mod exercise_folder;
mod export;
mod gguf_files;
mod hf_folders;
mod init;
mod interrupt;
mod lora;
mod lora_init;
mod perplexity;
mod pretrain;
mod run_folder;
mod saves;
mod serve;
mod watching;
