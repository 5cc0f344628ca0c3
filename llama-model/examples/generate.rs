//! Load a checkpoint and its tokenizer, then continue a prompt greedily.
//!
//! `cargo run --example generate [CHECKPOINT TOKENIZER]`: without arguments, the fixtures'
//! stories260K (`$LLAMA_FIXTURES`, else `../shared/fixtures` beside the workspace).
use std::path::PathBuf;

use burn::backend::NdArray;
use llama_model::generation::generate::{generate_text, GenerateConfig};
use llama_model::{load_checkpoint, LoadOptions, Tokenizer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fixtures = std::env::var_os("LLAMA_FIXTURES").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures"),
        PathBuf::from,
    );
    let mut args = std::env::args_os().skip(1).map(PathBuf::from);
    let checkpoint = args
        .next()
        .unwrap_or_else(|| fixtures.join("models/stories260K/stories260K.bin"));
    let tokenizer = args
        .next()
        .unwrap_or_else(|| fixtures.join("models/stories260K/tok512.model"));

    let device = Default::default();
    let model = load_checkpoint::<NdArray>(&checkpoint, &LoadOptions::default(), &device)?.model;
    let tokenizer = Tokenizer::from_file(&tokenizer)?;
    let prompt = tokenizer.encode("Once upon a time", true, false)?;
    print!("{}", tokenizer.decode(&prompt)?);
    let config = GenerateConfig::greedy(60);
    generate_text(&model, &tokenizer, &prompt, &config, |text| {
        print!("{text}")
    })?;
    println!();
    Ok(())
}
