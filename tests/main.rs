//! End-to-end tests of the workspace against `../shared/fixtures`: loading every
//! checkpoint format, the forward pass, generation and the backends.
//!
//! One test binary for the package: each file is a module, so the generic model and
//! training code is instantiated and linked once.

mod common;

mod backends;
mod bin_formats;
mod chat;
mod crafted_files;
mod forward;
mod fuzz_loaders;
mod generate;
mod gguf_files;
mod half_weights;
mod hf_folder_errors;
mod hf_folders;
mod kv_cache;
mod layout;
mod loader_errors;
mod loading;
mod q8_weights;
mod real_models;
