//! A mutation fuzzer for the file readers: checkpoints (.bin, .pt, .safetensors) and
//! tokenizer files (.bin, .model) are truncated, bit-flipped and patched with random header
//! values; every reader must return an error or a value, never panic.
//!
//! The test suite runs a short corpus (`LLAMA_FUZZ_ITERS`, default 60 per file); run it longer
//! with e.g. `LLAMA_FUZZ_ITERS=20000 LLAMA_FUZZ_SEED=7 cargo test --test fuzz_loaders -- --nocapture`.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use common::*;
use llama_model::{load_checkpoint, LoadOptions, Tokenizer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Added to every target's seed (`LLAMA_FUZZ_SEED`), so long runs can explore new mutants.
fn seed_offset() -> u64 {
    std::env::var("LLAMA_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn iterations() -> usize {
    std::env::var("LLAMA_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60)
}

/// One random mutation of `bytes`.
fn mutate(rng: &mut StdRng, bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    match rng.random_range(0..5) {
        0 => out.truncate(rng.random_range(0..bytes.len())),
        1 => {
            for _ in 0..rng.random_range(1..16) {
                let i = rng.random_range(0..out.len());
                out[i] ^= 1 << rng.random_range(0..8);
            }
        }
        2 => {
            // Patch a little-endian int near the start (headers, length fields).
            let i = rng.random_range(0..out.len().min(256).saturating_sub(4).max(1));
            let v: i32 = match rng.random_range(0..3) {
                0 => rng.random(),
                1 => -rng.random_range(0..1000),
                _ => rng.random_range(0..100_000),
            };
            out[i..i + 4].copy_from_slice(&v.to_le_bytes());
        }
        3 => {
            let start = rng.random_range(0..out.len());
            let end = (start + rng.random_range(1..4096)).min(out.len());
            out[start..end].fill(if rng.random() { 0 } else { 0xff });
        }
        _ => {
            let cut = rng.random_range(0..out.len());
            out.truncate(cut);
            out.extend((0..rng.random_range(0..64)).map(|_| rng.random::<u8>()));
        }
    }
    out
}

/// Mutate `fixture` many times, call `read` on each mutant written to `name` in `dir`,
/// and return (iterations, how many loaded anyway).
fn fuzz(
    dir: &Path,
    fixture_path: &str,
    name: &str,
    seed: u64,
    read: impl Fn(&Path) -> bool,
) -> (usize, usize) {
    let original = std::fs::read(fixture(fixture_path)).unwrap();
    let mut rng = StdRng::seed_from_u64(seed.wrapping_add(seed_offset().wrapping_mul(1000)));
    let path = dir.join(name);
    let mut accepted = 0;
    let n = iterations();
    for i in 0..n {
        let mutant = mutate(&mut rng, &original);
        std::fs::write(&path, &mutant).unwrap();
        let result = catch_unwind(AssertUnwindSafe(|| read(&path)));
        match result {
            Ok(true) => accepted += 1,
            Ok(false) => {}
            Err(_) => {
                let keep = dir.join(format!("crash-{i}-{name}"));
                std::fs::copy(&path, &keep).unwrap();
                panic!(
                    "{fixture_path}: mutant {i} panicked the reader (kept as {})",
                    keep.display()
                );
            }
        }
    }
    println!("{fixture_path}: {n} mutants, {accepted} still loaded, no panic");
    (n, accepted)
}

fn checkpoint_loads(path: &Path) -> bool {
    load_checkpoint::<B>(path, &LoadOptions::default(), &Default::default()).is_ok()
}

#[test]
fn checkpoint_readers_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture("models/stories260K/stories260K.config.json"),
        dir.path().join("m.config.json"),
    )
    .unwrap();
    fuzz(
        dir.path(),
        "models/stories260K/stories260K.bin",
        "m.bin",
        1,
        checkpoint_loads,
    );
    fuzz(
        dir.path(),
        "models/stories260K/stories260K.pt",
        "m.pt",
        2,
        checkpoint_loads,
    );
    fuzz(
        dir.path(),
        "models/stories260K/stories260K-llama2c.pt",
        "m.pt",
        3,
        checkpoint_loads,
    );
    fuzz(
        dir.path(),
        "models/stories260K/stories260K.safetensors",
        "m.safetensors",
        4,
        checkpoint_loads,
    );
}

#[test]
fn tokenizer_readers_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let loads = |path: &Path| Tokenizer::from_file(path).is_ok();
    fuzz(
        dir.path(),
        "models/stories260K/tok512.bin",
        "t.bin",
        5,
        loads,
    );
    fuzz(
        dir.path(),
        "models/stories260K/tok512.model",
        "t.model",
        6,
        loads,
    );
}
