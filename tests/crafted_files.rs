//! Files from strangers: header sizes that would drive allocations, sizes that overflow, and
//! `.pt` archives whose storages are missing or short. Each is an error naming the file and
//! the problem, found before anything is sized by the file's numbers; a large but real
//! context loads without tables for it. (The CLI's tests run the same files in a child
//! process and bound its peak memory.)

use crate::common;

use std::path::{Path, PathBuf};

use common::*;
use llama_model::checkpoint::CheckpointError;
use llama_model::crafted;
use llama_model::model::config::MAX_SEQ_LEN;
use llama_model::{load_checkpoint, LoadOptions};

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn load_err(path: &Path) -> CheckpointError {
    let err = load_checkpoint::<B>(path, &LoadOptions::default(), &Default::default())
        .expect_err("a crafted file must not load");
    assert_eq!(err.path(), path, "{err}");
    println!("{err}");
    err
}

fn assert_config_error(err: &CheckpointError, field: &str) {
    let msg = err.to_string();
    assert!(matches!(err, CheckpointError::Config { .. }), "{msg}");
    assert!(
        msg.contains(field) && msg.contains("above the supported maximum"),
        "{msg}"
    );
}

/// The old size check wrapped around: this 768-byte file passed it and then panicked on a
/// slice (in a debug build, on the multiplication).
#[test]
fn a_header_whose_sizes_overflow_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "overflow.bin", &crafted::overflowing_bin());
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 768);
    assert_config_error(&load_err(&path), "n_layers 1073741824");
}

/// A 256-byte int8 header naming 2^31-1 layers: refused from the header alone (it used to
/// list every layer's tensors before comparing the file's size).
#[test]
fn an_int8_header_with_two_billion_layers_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "layers-q80.bin", &crafted::q80_header(i32::MAX));
    assert_config_error(&load_err(&path), "n_layers 2147483647");
}

/// A valid v1 export whose header names a context of 2^31-1 positions is refused; one of
/// 2^21 (the bound) loads, and its RoPE tables cover only the first positions.
#[test]
fn a_v1_context_beyond_the_bound_is_refused_and_a_long_one_loads_lazily() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "ctx-max.bin", &crafted::v1_bin(i32::MAX));
    assert_config_error(&load_err(&path), "max_seq_len 2147483647");

    let path = write(
        dir.path(),
        "ctx-2M.bin",
        &crafted::v1_bin(MAX_SEQ_LEN as i32),
    );
    let loaded = load_checkpoint::<B>(&path, &LoadOptions::default(), &Default::default())
        .expect("a long context loads");
    assert_eq!(loaded.model.max_seq_len(), MAX_SEQ_LEN);
    assert!(loaded.model.rope().max_seq_len() < MAX_SEQ_LEN);
    // The same weights as the v0 fixture: equal logits.
    let (reference, _) = stories260k();
    let tokens = burn::tensor::Tensor::<B, 2, burn::tensor::Int>::from_data(
        burn::tensor::TensorData::new(vec![1i64, 403, 407, 261], [1, 4]),
        &Default::default(),
    );
    let a = loaded.model.forward(tokens.clone()).logits.into_data();
    let b = reference.forward(tokens).logits.into_data();
    a.assert_eq(&b, true);
}

/// Our `config.json` beside a safetensors file, with a context of 2^31-1 positions.
#[test]
fn a_config_json_context_beyond_the_bound_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "m.safetensors",
        &crafted::stories("stories260K.safetensors"),
    );
    let config = dir.path().join("config.json");
    std::fs::write(&config, crafted::config_json(i32::MAX as u64)).unwrap();
    let err = load_checkpoint::<B>(&path, &LoadOptions::default(), &Default::default())
        .expect_err("refused");
    let msg = err.to_string();
    assert!(msg.contains("config.json"), "{msg}");
    assert!(msg.contains("max_seq_len 2147483647"), "{msg}");
}

/// A pickled shape of (2^20, 2^16) for a (512, 64) parameter: a shape error before any
/// tensor is read (reading it allocated 256 GiB).
#[test]
fn a_pt_shape_is_compared_with_the_config_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "big-shape.pt",
        &crafted::pt_with_embedding_shape(1 << 20, 1 << 16),
    );
    match load_err(&path) {
        CheckpointError::ShapeMismatch {
            name,
            expected,
            found,
            ..
        } => {
            assert_eq!(name, "tok_embeddings.weight");
            assert_eq!((expected, found), (vec![512, 64], vec![1 << 20, 1 << 16]));
        }
        other => panic!("expected a shape mismatch, got {other}"),
    }
}

/// A missing or short storage, or a tensor reaching past its storage, used to load as
/// zeros, silently.
#[test]
fn a_pt_with_a_missing_or_truncated_storage_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "no-storage.pt",
        &crafted::pt_with_storage("0", None),
    );
    let msg = load_err(&path).to_string();
    assert!(msg.contains("storage 0 is missing"), "{msg}");

    for keep in [0, 4, 65_532] {
        let path = write(
            dir.path(),
            &format!("short-{keep}.pt"),
            &crafted::pt_with_storage("0", Some(keep)),
        );
        let err = load_err(&path);
        let msg = err.to_string();
        assert!(matches!(err, CheckpointError::Corrupt { .. }), "{msg}");
        assert!(
            msg.contains(&format!("storage 0 holds {keep} bytes")),
            "{msg}"
        );
    }

    let path = write(
        dir.path(),
        "offset.pt",
        &crafted::pt_with_embedding_offset(1),
    );
    let msg = load_err(&path).to_string();
    assert!(
        msg.contains("tensor `tok_embeddings.weight` of shape [512, 64] at offset 1 reads past its storage 0"),
        "{msg}"
    );
}

/// An entry compressed (burn-store would size its buffer by the declared length) or
/// declaring more bytes than the file has is refused before it is read.
#[test]
fn a_pt_entry_must_be_stored_and_fit_in_the_file() {
    use std::io::{Cursor, Write};
    let dir = tempfile::tempdir().unwrap();
    let mut out = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    out.start_file("archive/data.pkl", options).unwrap();
    out.write_all(&vec![b'N'; 1 << 16]).unwrap();
    let bytes = out.finish().unwrap().into_inner();
    let path = write(dir.path(), "deflated.pt", &bytes);
    let msg = load_err(&path).to_string();
    assert!(msg.contains("compressed"), "{msg}");
}
