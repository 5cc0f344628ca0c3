//! llama2.c `.bin` exports.
//!
//! * Legacy (v0): seven little-endian i32 `dim, hidden_dim, n_layers, n_heads, n_kv_heads,
//!   vocab_size, seq_len` (a negative vocab size means the classifier is not shared), then f32
//!   arrays: embeddings, attention norms, wq, wk, wv, wo (layers stacked), ffn norms, w1, w2, w3,
//!   final norm, the legacy RoPE tables (skipped: we compute our own), and the classifier if
//!   not shared.
//! * Version 1: magic `ak42`, version 1, the same seven ints, a shared-classifier byte, zero
//!   padding to 256 bytes, then norms, embeddings, wq…w3 per kind for all layers, classifier.
//!   Version 2 (int8, Q8_0) shares the header and is read by [`super::llama2c_q80`].
//!
//! The file size must match the header exactly: a truncated download or a foreign file is
//! reported instead of read past.

use std::path::Path;

use super::tensors::{RawTensor, TensorMap};
use super::CheckpointError;
use crate::model::config::LlamaConfig;

/// `ak42` as a little-endian u32, the llama2.c v1/v2 magic.
pub(super) const MAGIC: u32 = 0x616b_3432;
const V1_HEADER_BYTES: usize = 256;
const V0_HEADER_BYTES: usize = 7 * 4;

/// Whether 16 leading bytes look like a v0 header (small positive dims; vocab may be negative).
pub(super) fn plausible_v0_header(head: &[u8]) -> bool {
    let ints: Vec<i32> = head
        .chunks_exact(4)
        .take(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    ints.len() == 4 && ints.iter().all(|&v| v > 0 && v < (1 << 20))
}

pub(super) struct Header {
    pub(super) config: LlamaConfig,
    pub(super) shared_classifier: bool,
    /// 0 (legacy), 1 (f32) or 2 (int8).
    pub(super) version: i32,
    data_offset: usize,
    legacy_rope_tables: bool,
}

fn corrupt(path: &Path, detail: impl Into<String>) -> CheckpointError {
    CheckpointError::Corrupt {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

fn ints(bytes: &[u8]) -> Vec<i32> {
    bytes
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

pub(super) fn parse_header(path: &Path, bytes: &[u8]) -> Result<Header, CheckpointError> {
    let v1 = bytes.len() >= 8 && bytes[..4] == MAGIC.to_le_bytes();
    let mut version = 0;
    let (fields, shared_byte, data_offset) = if v1 {
        if bytes.len() < V1_HEADER_BYTES {
            return Err(corrupt(
                path,
                format!("{} bytes, shorter than the 256-byte header", bytes.len()),
            ));
        }
        version = ints(&bytes[4..8])[0];
        if version != 1 && version != 2 {
            return Err(CheckpointError::Unsupported {
                path: path.to_path_buf(),
                detail: format!(
                    "llama2.c export version {version} (versions 0 and 1, f32, and 2, int8 \
                     Q8_0, are supported)"
                ),
            });
        }
        (ints(&bytes[8..36]), Some(bytes[36]), V1_HEADER_BYTES)
    } else {
        if bytes.len() < V0_HEADER_BYTES {
            return Err(corrupt(
                path,
                format!("{} bytes, shorter than the 28-byte header", bytes.len()),
            ));
        }
        (ints(&bytes[..V0_HEADER_BYTES]), None, V0_HEADER_BYTES)
    };
    let [dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab, seq_len] = fields[..] else {
        return Err(corrupt(path, "short header"));
    };
    let positive = |v: i32, name: &str| -> Result<usize, CheckpointError> {
        usize::try_from(v).ok().filter(|&v| v > 0).ok_or_else(|| {
            corrupt(
                path,
                format!("header field {name} = {v} is not a positive size"),
            )
        })
    };
    let shared_classifier = match shared_byte {
        Some(b) => b != 0,
        None => vocab > 0,
    };
    let config = LlamaConfig::new(
        positive(dim, "dim")?,
        positive(n_layers, "n_layers")?,
        positive(n_heads, "n_heads")?,
        positive(vocab.checked_abs().unwrap_or(0), "vocab_size")?,
    )
    .with_hidden_dim(Some(positive(hidden_dim, "hidden_dim")?))
    .with_n_kv_heads(Some(positive(n_kv_heads, "n_kv_heads")?))
    .with_max_seq_len(positive(seq_len, "seq_len")?)
    .with_tie_embeddings(shared_classifier);
    let config = super::tensors::validated(path, config)?;
    Ok(Header {
        config,
        shared_classifier,
        version,
        data_offset,
        legacy_rope_tables: !v1,
    })
}

/// The tensors of a file in storage order: `(name, shape)`; per-layer stacks are split
/// into one tensor per layer by the caller. Names starting with `<` are the legacy RoPE
/// tables.
pub(super) fn layout(
    c: &LlamaConfig,
    legacy_rope_tables: bool,
    shared_classifier: bool,
) -> Vec<(&'static str, Vec<usize>)> {
    let (d, hid, l, v) = (c.dim, c.hidden_dim(), c.n_layers, c.vocab_size);
    let kv = c.n_kv_heads() * c.head_dim();
    let head = c.head_dim();
    let mut out = if legacy_rope_tables {
        vec![
            ("tok_embeddings.weight", vec![v, d]),
            ("attention_norm.weight", vec![l, d]),
            ("attention.compute_query.weight", vec![l, d, d]),
            ("attention.compute_key.weight", vec![l, kv, d]),
            ("attention.compute_value.weight", vec![l, kv, d]),
            ("attention.compute_output.weight", vec![l, d, d]),
            ("ffn_norm.weight", vec![l, d]),
            ("feed_forward.w1.weight", vec![l, hid, d]),
            ("feed_forward.w2.weight", vec![l, d, hid]),
            ("feed_forward.w3.weight", vec![l, hid, d]),
            ("norm.weight", vec![d]),
            ("<rope cos>", vec![c.max_seq_len, head / 2]),
            ("<rope sin>", vec![c.max_seq_len, head / 2]),
        ]
    } else {
        vec![
            ("attention_norm.weight", vec![l, d]),
            ("ffn_norm.weight", vec![l, d]),
            ("norm.weight", vec![d]),
            ("tok_embeddings.weight", vec![v, d]),
            ("attention.compute_query.weight", vec![l, d, d]),
            ("attention.compute_key.weight", vec![l, kv, d]),
            ("attention.compute_value.weight", vec![l, kv, d]),
            ("attention.compute_output.weight", vec![l, d, d]),
            ("feed_forward.w1.weight", vec![l, hid, d]),
            ("feed_forward.w2.weight", vec![l, d, hid]),
            ("feed_forward.w3.weight", vec![l, hid, d]),
        ]
    };
    if !shared_classifier {
        out.push(("output.weight", vec![v, d]));
    }
    out
}

/// The number of elements of `shape`, `None` on overflow.
pub(super) fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
}

/// Per-layer tensors are stored stacked; these names get a `layers.{i}.` prefix.
pub(super) fn is_per_layer(name: &str) -> bool {
    !matches!(
        name,
        "tok_embeddings.weight" | "norm.weight" | "output.weight"
    ) && !name.starts_with('<')
}

/// Read a `.bin` export.
pub(super) fn read(path: &Path) -> Result<(LlamaConfig, TensorMap), CheckpointError> {
    let bytes = std::fs::read(path).map_err(|source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let header = parse_header(path, &bytes)?;
    if header.version == 2 {
        return Err(CheckpointError::Unsupported {
            path: path.to_path_buf(),
            detail: "an int8 (version 2) export read as an f32 one".into(),
        });
    }
    let layout = layout(
        &header.config,
        header.legacy_rope_tables,
        header.shared_classifier,
    );
    // Checked: a header's sizes are a stranger's numbers, and a wrapped sum once let a
    // 768-byte file through to a slice past its end.
    let expected = layout
        .iter()
        .try_fold(0usize, |total, (_, shape)| {
            total.checked_add(element_count(shape)?)
        })
        .and_then(|floats| floats.checked_mul(4))
        .and_then(|n| n.checked_add(header.data_offset))
        .ok_or_else(|| corrupt(path, "header sizes overflow"))?;
    if bytes.len() != expected {
        let c = &header.config;
        return Err(corrupt(
            path,
            format!(
                "the header (dim {}, hidden {}, {} layers, {} heads, {} kv heads, vocab {}, seq_len {}) \
                 implies {expected} bytes, the file has {}",
                c.dim,
                c.hidden_dim(),
                c.n_layers,
                c.n_heads,
                c.n_kv_heads(),
                c.vocab_size,
                c.max_seq_len,
                bytes.len()
            ),
        ));
    }

    let mut tensors = TensorMap::new();
    let mut offset = header.data_offset;
    for (name, shape) in layout {
        let count: usize = shape.iter().product();
        let data: Vec<f32> = bytes[offset..offset + 4 * count]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        offset += 4 * count;
        if name.starts_with('<') {
            continue; // legacy RoPE tables: recomputed by the model
        }
        if is_per_layer(name) {
            let per_layer = count / shape[0];
            for (i, chunk) in data.chunks_exact(per_layer).enumerate() {
                let tensor = RawTensor {
                    shape: shape[1..].to_vec(),
                    data: chunk.to_vec(),
                };
                tensors.insert(format!("layers.{i}.{name}"), tensor);
            }
        } else {
            tensors.insert(name.to_string(), RawTensor { shape, data });
        }
    }
    Ok((header.config, tensors))
}
