//! llama2.c `.bin` variants built from the stories260K v0 export by a writer that follows
//! llama2.c's documented layouts, independently of the project's reader: the v1 (`ak42`)
//! export, and unshared classifiers (v0's negative vocab size, v1's shared byte 0), load to
//! the same model.

use crate::common;

use common::*;
use llama_model::checkpoint::CheckpointFormat;
use llama_model::exercise::compare::compare;
use llama_model::{load_checkpoint, LoadOptions};

/// The arrays of a llama2.c v0 `.bin`, cut from its bytes by the documented layout (7 × i32
/// header, then f32 arrays in export order), without the project's reader.
struct V0Arrays {
    header: [i32; 7],
    /// name -> little-endian bytes, in file order.
    arrays: Vec<(&'static str, Vec<u8>)>,
}

impl V0Arrays {
    fn parse(bytes: &[u8]) -> Self {
        let int = |i: usize| i32::from_le_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap());
        let header: [i32; 7] = std::array::from_fn(int);
        let [dim, hidden, layers, heads, kv_heads, vocab, seq] =
            header.map(|v| v.unsigned_abs() as usize);
        let kv_dim = dim * kv_heads / heads;
        let head_dim = dim / heads;
        let sizes = [
            ("tok_embeddings", vocab * dim),
            ("attention_norm", layers * dim),
            ("wq", layers * dim * dim),
            ("wk", layers * kv_dim * dim),
            ("wv", layers * kv_dim * dim),
            ("wo", layers * dim * dim),
            ("ffn_norm", layers * dim),
            ("w1", layers * hidden * dim),
            ("w2", layers * dim * hidden),
            ("w3", layers * hidden * dim),
            ("norm", dim),
            ("freq_cis_real", seq * head_dim / 2),
            ("freq_cis_imag", seq * head_dim / 2),
        ];
        let mut offset = 28;
        let arrays = sizes
            .iter()
            .map(|&(name, n)| {
                let part = bytes[offset..offset + 4 * n].to_vec();
                offset += 4 * n;
                (name, part)
            })
            .collect();
        assert_eq!(
            offset,
            bytes.len(),
            "a tied v0 file ends with the RoPE tables"
        );
        Self { header, arrays }
    }

    fn get(&self, name: &str) -> &[u8] {
        &self.arrays.iter().find(|(n, _)| *n == name).unwrap().1
    }

    /// The file llama2.c's `export.py` writes as version 1 (`version1_export`): magic
    /// `ak42`, version 1, the 7 header ints, the shared-classifier byte, zero padding to 256
    /// bytes, then the norms, the embeddings, the seven matrices (all layers of each), and the
    /// classifier when not shared.
    fn to_v1(&self, classifier: Option<&[u8]>) -> Vec<u8> {
        let mut out = vec![];
        out.extend(0x616b_3432u32.to_le_bytes());
        out.extend(1i32.to_le_bytes());
        for v in self.header {
            out.extend(v.to_le_bytes());
        }
        out.push(u8::from(classifier.is_none()));
        out.resize(256, 0);
        for name in [
            "attention_norm",
            "ffn_norm",
            "norm",
            "tok_embeddings",
            "wq",
            "wk",
            "wv",
            "wo",
            "w1",
            "w2",
            "w3",
        ] {
            out.extend(self.get(name));
        }
        if let Some(classifier) = classifier {
            out.extend(classifier);
        }
        out
    }
}

/// Each f32 of `bytes` times 2.
fn doubled(bytes: &[u8]) -> Vec<u8> {
    bytes
        .chunks_exact(4)
        .flat_map(|c| (2.0 * f32::from_le_bytes(c.try_into().unwrap())).to_le_bytes())
        .collect()
}

#[test]
fn v1_exports_and_unshared_classifiers_load_like_the_v0_file() {
    let v0 = std::fs::read(fixture("models/stories260K/stories260K.bin")).unwrap();
    let parts = V0Arrays::parse(&v0);
    let head = doubled(parts.get("tok_embeddings"));

    // v0 with vocab -512 and a classifier (the embeddings times 2) appended.
    let mut unshared = v0.clone();
    unshared[20..24].copy_from_slice(&(-parts.header[5]).to_le_bytes());
    unshared.extend(&head);

    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let v1_path = write("v1.bin", &parts.to_v1(None));
    let v1_unshared_path = write("v1-unshared.bin", &parts.to_v1(Some(&head)));
    let unshared_path = write("unshared.bin", &unshared);

    let device = Default::default();
    let input = tokens(&[1, 403, 407, 261, 378], [1, 5]);
    let logits = |path: &std::path::Path| {
        let loaded = load_checkpoint::<B>(path, &LoadOptions::default(), &device).unwrap();
        (
            loaded.format,
            loaded.config.tie_embeddings,
            values(loaded.model.forward(input.clone()).logits),
        )
    };
    let (_, _, reference) = logits(&fixture("models/stories260K/stories260K.bin"));
    let (format, tied, from_v1) = logits(&v1_path);
    assert_eq!((format, tied), (CheckpointFormat::Llama2cV1, true));
    assert_eq!(from_v1, reference, "v1 export must load bit-identically");

    // The separate head is twice the embeddings, so logits double.
    let twice: Vec<f32> = reference.iter().map(|v| v * 2.0).collect();
    for (path, format) in [
        (&unshared_path, CheckpointFormat::Llama2cV0),
        (&v1_unshared_path, CheckpointFormat::Llama2cV1),
    ] {
        let (found, tied, from_unshared) = logits(path);
        assert_eq!((found, tied), (format, false), "{}", path.display());
        let c = compare(&from_unshared, &twice, 1e-5, 1e-5);
        assert!(c.passed(), "{}: {c:?}", path.display());
    }
}
