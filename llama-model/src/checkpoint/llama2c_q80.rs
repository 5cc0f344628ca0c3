//! llama2.c's int8 export (`export.py --version 2`, the file `runq.c` reads).
//!
//! * A 256-byte header: magic `ak42` (u32), version 2 (i32), the seven i32 `dim, hidden_dim,
//!   n_layers, n_heads, n_kv_heads, vocab_size, seq_len`, a shared-classifier byte, the
//!   group size (i32, at byte 37: the export packs it unaligned), zero padding.
//! * The f32 norms: attention norms of every layer, FFN norms of every layer, final norm.
//! * Each weight matrix as its int8 values (PyTorch's `[out, in]` order) followed by its
//!   f32 group scales: the embedding table, then wq of every layer, wk…, wv…, wo…, w1…,
//!   w2…, w3…, then the classifier if it is not shared.
//!
//! The matrices are returned as [`Q8Matrix`]es under the exercise's parameter names, and
//! their dequantized values as the f32 tensors every other reader returns.

use std::path::Path;
use std::sync::Arc;

use super::llama2c_bin::{element_count, is_per_layer, layout, parse_header};
use super::tensors::{RawTensor, TensorMap};
use super::CheckpointError;
use crate::model::config::LlamaConfig;
use crate::weights::q8_matrix::Q8Matrix;
use crate::weights::q8_weights::Q8Store;

/// Byte offset of the group size in the header.
const GROUP_OFFSET: usize = 37;

fn corrupt(path: &Path, detail: impl Into<String>) -> CheckpointError {
    CheckpointError::Corrupt {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

/// Read a version-2 export: the config, the dequantized tensors and the int8 matrices.
pub(super) fn read(path: &Path) -> Result<(LlamaConfig, TensorMap, Q8Store), CheckpointError> {
    let bytes = std::fs::read(path).map_err(|source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let header = parse_header(path, &bytes)?;
    let group = i32::from_le_bytes(
        bytes[GROUP_OFFSET..GROUP_OFFSET + 4]
            .try_into()
            .map_err(|_| corrupt(path, "short header"))?,
    );
    let group = usize::try_from(group)
        .ok()
        .filter(|&g| g > 0)
        .ok_or_else(|| corrupt(path, format!("group size {group} is not positive")))?;
    let config = header.config;
    let layout = layout(&config, false, header.shared_classifier);
    check_size(path, &bytes, &config, &layout, group)?;

    // Every stored tensor, per layer where stacked: (name, rows, cols); norms have 1 row.
    // Built only now that the file's length has confirmed the header's sizes.
    let mut entries = Vec::new();
    for (name, shape) in &layout {
        if is_per_layer(name) {
            for i in 0..shape[0] {
                let (rows, cols) = rows_cols(&shape[1..]);
                entries.push((
                    format!("layers.{i}.{name}"),
                    rows,
                    cols,
                    shape[1..].to_vec(),
                ));
            }
        } else {
            let (rows, cols) = rows_cols(shape);
            entries.push((name.to_string(), rows, cols, shape.clone()));
        }
    }

    let floats = |b: &[u8]| -> Vec<f32> {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    let mut tensors = TensorMap::new();
    let mut store = Q8Store::new();
    let mut offset = 256;
    for (name, rows, cols, shape) in entries {
        let n = rows * cols;
        if is_norm(&name) {
            let data = floats(&bytes[offset..offset + 4 * n]);
            offset += 4 * n;
            tensors.insert(name, RawTensor { shape, data });
            continue;
        }
        let values: Vec<i8> = bytes[offset..offset + n].iter().map(|&b| b as i8).collect();
        offset += n;
        let scales = floats(&bytes[offset..offset + 4 * (n / group)]);
        offset += 4 * (n / group);
        let matrix = Q8Matrix::from_parts(rows, cols, group, values, scales)
            .map_err(|e| corrupt(path, format!("`{name}`: {e}")))?;
        let data = matrix.dequantize();
        tensors.insert(name.clone(), RawTensor { shape, data });
        store.insert(name, Arc::new(matrix));
    }
    Ok((config, tensors, store))
}

/// `shape` as a matrix: (product of all but the last dimension, last dimension).
fn rows_cols(shape: &[usize]) -> (usize, usize) {
    let cols = *shape.last().unwrap_or(&1);
    (shape.iter().product::<usize>() / cols.max(1), cols)
}

fn is_norm(name: &str) -> bool {
    name.ends_with("norm.weight")
}

/// Checks the group size against every matrix and the file's length against the header's
/// sizes (checked arithmetic, computed from the stacked layout: nothing is allocated per
/// layer before the file has shown it holds them).
fn check_size(
    path: &Path,
    bytes: &[u8],
    config: &LlamaConfig,
    layout: &[(&'static str, Vec<usize>)],
    group: usize,
) -> Result<(), CheckpointError> {
    let mut expected = Some(256usize);
    for (name, shape) in layout {
        let (layers, matrix) = if is_per_layer(name) {
            (shape[0], &shape[1..])
        } else {
            (1, &shape[..])
        };
        let cols = *matrix.last().unwrap_or(&1);
        if !is_norm(name) && !cols.is_multiple_of(group) {
            let name = if is_per_layer(name) {
                format!("layers.0.{name}")
            } else {
                name.to_string()
            };
            return Err(CheckpointError::Unsupported {
                path: path.to_path_buf(),
                detail: format!(
                    "group size {group} does not divide the rows of `{name}` ({cols} values): \
                     runq.c would mix rows in one group"
                ),
            });
        }
        let per_layer = element_count(matrix).and_then(|n| {
            if is_norm(name) {
                n.checked_mul(4)
            } else {
                n.checked_add((n / group).checked_mul(4)?)
            }
        });
        expected = expected
            .zip(per_layer.and_then(|b| b.checked_mul(layers)))
            .and_then(|(total, b)| total.checked_add(b));
    }
    let expected = expected.ok_or_else(|| corrupt(path, "header sizes overflow"))?;
    if bytes.len() != expected {
        return Err(corrupt(
            path,
            format!(
                "an int8 export of dim {}, hidden {}, {} layers, vocab {} and group {group} \
                 has {expected} bytes, the file has {}",
                config.dim,
                config.hidden_dim(),
                config.n_layers,
                config.vocab_size,
                bytes.len()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::weights::q8_matrix::quantize_groups;

    /// A version-2 export written independently of the reader, following llama2.c's
    /// `version2_export`: header, f32 norms, then int8 values and scales per matrix.
    pub(crate) fn write_q80(
        path: &Path,
        ints: [i32; 7],
        shared: bool,
        group: usize,
        norms: &[f32],
        matrices: &[Vec<f32>],
    ) {
        let mut out = Vec::new();
        out.extend(0x616b_3432u32.to_le_bytes());
        out.extend(2i32.to_le_bytes());
        for v in ints {
            out.extend(v.to_le_bytes());
        }
        out.push(u8::from(shared));
        out.extend((group as i32).to_le_bytes());
        out.resize(256, 0);
        for v in norms {
            out.extend(v.to_le_bytes());
        }
        for m in matrices {
            let mut q = vec![0i8; m.len()];
            let mut s = vec![0f32; m.len() / group];
            quantize_groups(m, group, &mut q, &mut s);
            out.extend(q.iter().map(|&v| v as u8));
            for v in s {
                out.extend(v.to_le_bytes());
            }
        }
        std::fs::write(path, out).unwrap();
    }

    #[test]
    fn reads_an_independently_written_export_with_group_8() {
        // dim 16, hidden 24, 2 layers, 2 heads, 1 kv head (kv dim 8), vocab 10, untied.
        let (d, h, l, v, kv) = (16usize, 24usize, 2usize, 10usize, 8usize);
        let norms: Vec<f32> = (0..(2 * l * d + d))
            .map(|i| 1.0 + i as f32 / 100.0)
            .collect();
        let value = |seed: usize, n: usize| -> Vec<f32> {
            (0..n)
                .map(|i| (((i * 7 + seed * 13) % 23) as f32 - 11.0) / 10.0)
                .collect()
        };
        let mut matrices = vec![value(0, v * d)];
        let shapes = [d * d, kv * d, kv * d, d * d, h * d, d * h, h * d];
        for (k, &n) in shapes.iter().enumerate() {
            for layer in 0..l {
                matrices.push(value(1 + k * l + layer, n));
            }
        }
        matrices.push(value(99, v * d)); // the classifier
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny-q80.bin");
        let ints = [d as i32, h as i32, l as i32, 2, 1, v as i32, 32];
        write_q80(&path, ints, false, 8, &norms, &matrices);

        let (config, tensors, store) = read(&path).unwrap();
        assert_eq!(
            (config.dim, config.hidden_dim(), config.n_layers),
            (16, 24, 2)
        );
        assert!(!config.tie_embeddings);
        assert_eq!(
            tensors["layers.1.ffn_norm.weight"].data,
            norms[l * d + d..l * d + 2 * d]
        );
        // w2 of layer 1, matrix 12: after the embeddings, two each of wq, wk, wv, wo and w1,
        // and w2 of layer 0.
        let w2 = &store["layers.1.feed_forward.w2.weight"];
        assert_eq!((w2.rows(), w2.cols(), w2.group()), (16, 24, 8));
        let original = &matrices[12];
        let step = w2.scales().iter().fold(0f32, |a, &s| a.max(s));
        for (a, b) in w2.dequantize().iter().zip(original) {
            assert!((a - b).abs() <= step / 2.0 + 1e-6);
        }
        assert_eq!(
            tensors["layers.1.feed_forward.w2.weight"].shape,
            vec![16, 24]
        );
        assert_eq!(store["output.weight"].rows(), 10);

        // A byte short: an error naming the sizes.
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(
            err.contains("tiny-q80.bin") && err.contains("group 8"),
            "{err}"
        );
    }
}
