//! A mutation fuzzer for the file readers: checkpoints (.bin, .pt, .safetensors), Hugging
//! Face folders (their configs, index and shards; JSON values also set to extremes) and
//! GGUF files (their headers patched with extreme counts, lengths and offsets) and
//! tokenizer files (.bin, .model) are truncated, bit-flipped and patched with random header
//! values; every reader must return an error or a value, never panic.
//!
//! The `.pt` reader is fuzzed twice: whole-file mutants (mostly stopped by the zip layer) and
//! mutants of the pickle alone, re-zipped intact, which reach the pickle interpreter.
//!
//! Header fields are also set to extreme sizes (`extreme_header`), and the crafted files of
//! `llama_model::crafted` run as a fixed corpus.
//!
//! The test suite runs a short corpus (`LLAMA_FUZZ_ITERS`, default 60 mutants per file); run
//! it longer by count or by time per file, with a new seed, e.g.
//! `LLAMA_FUZZ_SECONDS=600 LLAMA_FUZZ_SEED=7 cargo test --test fuzz_loaders pickle -- --nocapture`.

use crate::common;

use std::io::{Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use llama_model::generation::chat::ChatTemplate;
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

/// Time budget per fuzzed file (`LLAMA_FUZZ_SECONDS`), instead of a mutant count.
fn time_budget() -> Option<Duration> {
    std::env::var("LLAMA_FUZZ_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_secs_f64)
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
    fuzz_with(dir, fixture_path, name, seed, mutate, read)
}

/// [`fuzz`] with another mutator.
fn fuzz_with(
    dir: &Path,
    fixture_path: &str,
    name: &str,
    seed: u64,
    mutator: impl Fn(&mut StdRng, &[u8]) -> Vec<u8>,
    read: impl Fn(&Path) -> bool,
) -> (usize, usize) {
    let original = std::fs::read(fixture(fixture_path)).unwrap();
    let mut rng = StdRng::seed_from_u64(seed.wrapping_add(seed_offset().wrapping_mul(1000)));
    let path = dir.join(name);
    let mut accepted = 0;
    let (n, budget) = match time_budget() {
        Some(budget) => (usize::MAX, Some(budget)),
        None => (iterations(), None),
    };
    let start = Instant::now();
    let mut done = 0;
    for i in 0..n {
        if budget.is_some_and(|b| start.elapsed() >= b) {
            break;
        }
        done += 1;
        let mutant = mutator(&mut rng, &original);
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
    println!(
        "{fixture_path} ({name}): {done} mutants in {:.0} s, {accepted} still loaded, no panic",
        start.elapsed().as_secs_f64()
    );
    (done, accepted)
}

/// Mutate only the pickle (`*/data.pkl`) of a `torch.save` zip and re-zip every entry intact,
/// so that the mutant gets past the zip layer to the pickle interpreter.
fn mutate_pickle(rng: &mut StdRng, zip_bytes: &[u8]) -> Vec<u8> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip_bytes)).unwrap();
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).unwrap();
        let name = entry.name().to_string();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        if name.ends_with("data.pkl") {
            bytes = mutate(rng, &bytes);
        }
        out.start_file(name, options).unwrap();
        out.write_all(&bytes).unwrap();
    }
    out.finish().unwrap().into_inner()
}

fn checkpoint_loads(path: &Path) -> bool {
    load_checkpoint::<B>(path, &LoadOptions::default(), &Default::default()).is_ok()
}

/// A folder holding the config that safetensors mutants named `m.safetensors` need.
fn checkpoint_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture("models/stories260K/stories260K.config.json"),
        dir.path().join("m.config.json"),
    )
    .unwrap();
    dir
}

#[test]
fn bin_reader_never_panics() {
    let dir = checkpoint_dir();
    let (n, _) = fuzz(
        dir.path(),
        "models/stories260K/stories260K.bin",
        "m.bin",
        1,
        checkpoint_loads,
    );
    assert!(n > 0);
}

#[test]
fn pt_reader_never_panics() {
    let dir = checkpoint_dir();
    for (file, seed) in [("stories260K.pt", 2), ("stories260K-llama2c.pt", 3)] {
        fuzz(
            dir.path(),
            &format!("models/stories260K/{file}"),
            "m.pt",
            seed,
            checkpoint_loads,
        );
    }
}

#[test]
fn pickle_reader_never_panics() {
    let dir = checkpoint_dir();
    for (file, seed) in [("stories260K.pt", 7), ("stories260K-llama2c.pt", 8)] {
        fuzz_with(
            dir.path(),
            &format!("models/stories260K/{file}"),
            "p.pt",
            seed,
            mutate_pickle,
            checkpoint_loads,
        );
    }
}

#[test]
fn safetensors_reader_never_panics() {
    let dir = checkpoint_dir();
    fuzz(
        dir.path(),
        "models/stories260K/stories260K.safetensors",
        "m.safetensors",
        4,
        checkpoint_loads,
    );
}

#[test]
fn int8_reader_never_panics() {
    let dir = checkpoint_dir();
    fuzz(
        dir.path(),
        "models/stories260K/stories260K-q80.bin",
        "m.bin",
        9,
        checkpoint_loads,
    );
}

/// One header field of a llama2.c file (seven i32 from `at`) set to an extreme size: the
/// values that once drove allocations (2^31-1 layers, a 2^31-1 context) or overflowed the
/// size check, and the bounds' edges.
fn extreme_header(at: usize) -> impl Fn(&mut StdRng, &[u8]) -> Vec<u8> {
    move |rng, bytes| {
        let mut out = bytes.to_vec();
        let field = at + 4 * rng.random_range(0..7);
        let values = [
            i32::MAX,
            1 << 30,
            (1 << 28) - 86,
            (1 << 21) + 1,
            1 << 21,
            (1 << 20) + 1,
            1025,
            0,
            -1,
            i32::MIN,
        ];
        let value = values[rng.random_range(0..values.len())];
        out[field..field + 4].copy_from_slice(&value.to_le_bytes());
        out
    }
}

#[test]
fn extreme_header_sizes_never_panic() {
    let dir = checkpoint_dir();
    for (file, at, seed) in [("stories260K.bin", 0, 10), ("stories260K-q80.bin", 8, 11)] {
        fuzz_with(
            dir.path(),
            &format!("models/stories260K/{file}"),
            "x.bin",
            seed,
            extreme_header(at),
            checkpoint_loads,
        );
    }
}

/// The crafted files of `llama_model::crafted` (each once shown to abort, panic or load
/// zeros), as a fixed corpus: every one is refused, without a panic.
#[test]
fn the_crafted_corpus_is_refused_without_a_panic() {
    use llama_model::crafted;
    let dir = checkpoint_dir();
    let corpus: Vec<(&str, Vec<u8>)> = vec![
        ("overflow.bin", crafted::overflowing_bin()),
        ("layers-q80.bin", crafted::q80_header(i32::MAX)),
        ("context.bin", crafted::v1_bin(i32::MAX)),
        (
            "shape.pt",
            crafted::pt_with_embedding_shape(1 << 20, 1 << 16),
        ),
        (
            "square.pt",
            crafted::pt_with_embedding_shape(1 << 14, 1 << 14),
        ),
        ("no-storage.pt", crafted::pt_with_storage("0", None)),
        ("short-storage.pt", crafted::pt_with_storage("3", Some(7))),
        ("offset.pt", crafted::pt_with_embedding_offset(200)),
    ];
    for (name, bytes) in corpus {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let loaded = catch_unwind(AssertUnwindSafe(|| checkpoint_loads(&path)));
        assert_eq!(loaded.ok(), Some(false), "{name}: loaded, or panicked");
    }
}

#[test]
fn tokenizer_bin_reader_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let loads = |path: &Path| Tokenizer::from_file(path).is_ok();
    fuzz(
        dir.path(),
        "models/stories260K/tok512.bin",
        "t.bin",
        5,
        loads,
    );
}

#[test]
fn tokenizer_model_reader_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let loads = |path: &Path| Tokenizer::from_file(path).is_ok();
    fuzz(
        dir.path(),
        "models/stories260K/tok512.model",
        "t.model",
        6,
        loads,
    );
}

/// A writable copy of the Hugging Face fixture folder `key` (`hf/…`).
fn hf_folder_copy(key: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("model");
    std::fs::create_dir(&folder).unwrap();
    for entry in std::fs::read_dir(fixture(&format!("real-models/{key}"))).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, folder.join(path.file_name().unwrap())).unwrap();
    }
    (dir, folder)
}

/// One random edit of a JSON document's values: a number set to an extreme, a key removed, a
/// value replaced by one of another type, or (one time in four) the bytes mutated.
fn mutate_json(rng: &mut StdRng, bytes: &[u8]) -> Vec<u8> {
    use serde_json::Value;
    let Ok(mut value) = serde_json::from_slice::<Value>(bytes) else {
        return mutate(rng, bytes);
    };
    if rng.random_range(0..4) == 0 {
        return mutate(rng, bytes);
    }
    // Walk down to a random object and edit one of its keys.
    let mut node = &mut value;
    loop {
        let keys: Vec<String> = match node.as_object() {
            Some(map) if !map.is_empty() => map.keys().cloned().collect(),
            _ => break,
        };
        let key = keys[rng.random_range(0..keys.len())].clone();
        let map = node.as_object_mut().unwrap();
        let descend = map[&key].is_object() && rng.random();
        if descend {
            node = map.get_mut(&key).unwrap();
            continue;
        }
        let extremes = [
            Value::from(0),
            Value::from(-1),
            Value::from(1u64 << 31),
            Value::from(u64::MAX),
            Value::from(1e300),
            Value::from(0.5),
            Value::from("x"),
            Value::Null,
            Value::from(vec![1, 2]),
        ];
        match rng.random_range(0..3) {
            0 => {
                map.remove(&key);
            }
            _ => {
                map.insert(key, extremes[rng.random_range(0..extremes.len())].clone());
            }
        }
        break;
    }
    serde_json::to_vec(&value).unwrap()
}

/// Load the folder holding `path` (a mutated file of it).
fn folder_loads(path: &Path) -> bool {
    checkpoint_loads(path.parent().unwrap())
}

#[test]
fn hugging_face_folders_never_panic() {
    // Sharded f32 with the index, transformers 5's config convention.
    let (_dir, folder) = hf_folder_copy("hf/stories260K");
    let shard = "model-00002-of-00004.safetensors";
    for (i, name) in [
        "config.json",
        "model.safetensors.index.json",
        "generation_config.json",
    ]
    .into_iter()
    .enumerate()
    {
        let original = std::fs::read(folder.join(name)).unwrap();
        let target = format!("real-models/hf/stories260K/{name}");
        fuzz_with(
            &folder,
            &target,
            name,
            20 + i as u64,
            mutate_json,
            folder_loads,
        );
        std::fs::write(folder.join(name), original).unwrap();
    }
    fuzz(
        &folder,
        &format!("real-models/hf/stories260K/{shard}"),
        shard,
        23,
        folder_loads,
    );
    // One bf16 file, the older config convention with llama3 scaling.
    let (_dir, folder) = hf_folder_copy("hf/tiny-llama3");
    let original = std::fs::read(folder.join("config.json")).unwrap();
    fuzz_with(
        &folder,
        "real-models/hf/tiny-llama3/config.json",
        "config.json",
        24,
        mutate_json,
        folder_loads,
    );
    std::fs::write(folder.join("config.json"), original).unwrap();
    fuzz(
        &folder,
        "real-models/hf/tiny-llama3/model.safetensors",
        "model.safetensors",
        25,
        folder_loads,
    );
}

/// A GGUF mutant: the generic mutations, or a `u32`/`u64` somewhere in the header (counts,
/// string and array lengths, value kinds, dimensions, types, offsets) set to an extreme or
/// random value.
fn mutate_gguf(rng: &mut StdRng, bytes: &[u8]) -> Vec<u8> {
    if rng.random_bool(0.4) {
        return mutate(rng, bytes);
    }
    let mut out = bytes.to_vec();
    // The header (metadata with the vocabulary, then the tensor directory) fills the first
    // tens of KiB of the fixtures.
    let header = out.len().min(48 * 1024);
    let at = rng.random_range(0..header - 8);
    let value: u64 = match rng.random_range(0..6) {
        0 => u64::MAX,
        1 => u64::from(u32::MAX),
        2 => 1 << rng.random_range(20..63),
        3 => 0,
        4 => rng.random_range(0..64),
        _ => rng.random(),
    };
    if rng.random() {
        out[at..at + 8].copy_from_slice(&value.to_le_bytes());
    } else {
        out[at..at + 4].copy_from_slice(&(value as u32).to_le_bytes());
    }
    out
}

#[test]
fn gguf_reader_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    for (file, seed) in [
        ("stories260K-q8_0.gguf", 40),
        ("tiny-q4_k_m.gguf", 41),
        ("stories260K-f16.gguf", 42),
        ("tiny-llama3-bf16.gguf", 43),
    ] {
        // The weights and the vocabulary (with the chat template) of each mutant.
        let (n, _) = fuzz_with(
            dir.path(),
            &format!("real-models/gguf/{file}"),
            "m.gguf",
            seed,
            mutate_gguf,
            |path| {
                let vocabulary = Tokenizer::from_file(path).is_ok();
                let template = ChatTemplate::from_gguf(path).is_ok();
                checkpoint_loads(path) && vocabulary && template
            },
        );
        assert!(n > 0);
    }
}
