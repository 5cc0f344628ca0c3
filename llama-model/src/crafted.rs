//! Hostile checkpoints for the loader tests (`test-support`): the stories260K fixtures with one
//! field changed, as a stranger's file could have it. Each returns the file's bytes.
//!
//! The llama2.c header order is `dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size,
//! seq_len` (see `checkpoint::llama2c_bin`).

use std::io::{Cursor, Read, Write};

use crate::fixtures::fixture;

/// A fixture file of the stories260K folder.
pub fn stories(name: &str) -> Vec<u8> {
    std::fs::read(fixture(&format!("models/stories260K/{name}"))).expect("fixture file")
}

/// A llama2.c v1/v2 header (magic `ak42`, `version`, the seven ints, a shared-classifier byte,
/// and for version 2 the group size at byte 37), padded to 256 bytes.
pub fn llama2c_header(version: i32, ints: [i32; 7], group: i32) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend(0x616b_3432u32.to_le_bytes());
    out.extend(version.to_le_bytes());
    for v in ints {
        out.extend(v.to_le_bytes());
    }
    out.push(1);
    out.extend(group.to_le_bytes());
    out.resize(256, 0);
    out
}

/// A 256-byte int8 (v2) header of stories260K's shape but `n_layers` layers, and no data.
pub fn q80_header(n_layers: i32) -> Vec<u8> {
    llama2c_header(2, [64, 172, n_layers, 8, 4, 512, 512], 4)
}

/// A v1 header whose sizes overflow 64-bit arithmetic to 512 data bytes: its element count
/// is `l·d·(2 + 2d + 2kv + 3·hidden) + d·(1 + vocab)`, and with `l = 2^30`, `d = kv = 64`,
/// `hidden = 2^28 - 86` the first term is `3·2^64`, so an unchecked sum wraps to the 128
/// floats of `d·(1 + vocab)`. 768 bytes in all.
pub fn overflowing_bin() -> Vec<u8> {
    let mut out = llama2c_header(1, [64, (1 << 28) - 86, 1 << 30, 8, 8, 1, 512], 0);
    out.resize(768, 0);
    out
}

/// stories260K as a llama2.c v1 export (the fixture is v0) with `seq_len` in its header: the
/// same floats, in v1's order (norms, embeddings, then each kind of matrix for all layers).
pub fn v1_bin(seq_len: i32) -> Vec<u8> {
    let v0 = stories("stories260K.bin");
    let ints: Vec<i32> = v0[..28]
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let [dim, hidden, layers, heads, kv_heads, vocab, _] = ints[..] else {
        panic!("short v0 header");
    };
    let (d, h, l, v) = (
        dim as usize,
        hidden as usize,
        layers as usize,
        vocab as usize,
    );
    let kv = d / heads as usize * kv_heads as usize;
    // v0's arrays in order, as element counts.
    let counts = [
        v * d,
        l * d,
        l * d * d,
        l * kv * d,
        l * kv * d,
        l * d * d,
        l * d,
        l * h * d,
        l * d * h,
        l * h * d,
        d,
    ];
    let mut arrays = Vec::new();
    let mut at = 28;
    for n in counts {
        arrays.push(&v0[at..at + 4 * n]);
        at += 4 * n;
    }
    let mut out = llama2c_header(
        1,
        [dim, hidden, layers, heads, kv_heads, vocab.abs(), seq_len],
        0,
    );
    // v1: attention norms, ffn norms, final norm, embeddings, wq, wk, wv, wo, w1, w2, w3.
    for i in [1, 6, 10, 0, 2, 3, 4, 5, 7, 8, 9] {
        out.extend_from_slice(arrays[i]);
    }
    out
}

/// stories260K's config (the fixtures' wrapped form) with `max_seq_len` set.
pub fn config_json(max_seq_len: u64) -> String {
    let text = String::from_utf8(stories("stories260K.config.json")).expect("UTF-8");
    let mut value: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    value["model_args"]["max_seq_len"] = max_seq_len.into();
    value.to_string()
}

/// The entries of a zip archive, in order.
fn unzip(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).expect("a zip");
    (0..archive.len())
        .map(|i| {
            let mut entry = archive.by_index(i).expect("entry");
            let mut data = Vec::new();
            entry.read_to_end(&mut data).expect("entry data");
            (entry.name().to_string(), data)
        })
        .collect()
}

/// A zip archive of `entries`, stored uncompressed as `torch.save` writes them.
pub fn zip_stored(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, data) in entries {
        out.start_file(name.as_str(), options).expect("zip entry");
        out.write_all(data).expect("zip data");
    }
    out.finish().expect("zip").into_inner()
}

/// stories260K.pt with its archive's entries changed by `edit`.
pub fn edited_pt(edit: impl FnOnce(&mut Vec<(String, Vec<u8>)>)) -> Vec<u8> {
    let mut entries = unzip(&stories("stories260K.pt"));
    edit(&mut entries);
    zip_stored(&entries)
}

/// stories260K.pt with the opcodes after `tok_embeddings.weight`'s storage reference
/// (`BINPERSID`, offset `BININT1 0`, shape `BININT2 512, BININT1 64, TUPLE2`) replaced by
/// `edit(offset opcodes, shape opcodes)`.
fn pt_with_embedding_args(offset: Vec<u8>, shape: Vec<u8>) -> Vec<u8> {
    edited_pt(|entries| {
        let pickle = &mut entries
            .iter_mut()
            .find(|(name, _)| name.ends_with("data.pkl"))
            .expect("data.pkl")
            .1;
        let at = find(pickle, b"tok_embeddings.weight", 0).expect("the embeddings' name");
        let old = [b'Q', b'K', 0, b'M', 0x00, 0x02, b'K', 64, 0x86];
        let args = find(pickle, &old, at).expect("the embeddings' offset and shape");
        let mut new = vec![b'Q'];
        new.extend(offset);
        new.extend(shape);
        pickle.splice(args..args + old.len(), new);
    })
}

/// stories260K.pt whose pickle gives `tok_embeddings.weight` the shape `(rows, cols)`
/// instead of `(512, 64)`; its storage is unchanged.
pub fn pt_with_embedding_shape(rows: u32, cols: u32) -> Vec<u8> {
    let mut shape = vec![b'J'];
    shape.extend(rows.to_le_bytes());
    shape.push(b'J');
    shape.extend(cols.to_le_bytes());
    shape.push(0x86);
    pt_with_embedding_args(vec![b'K', 0], shape)
}

/// stories260K.pt whose `tok_embeddings.weight` starts `offset` elements into its storage,
/// so that it reads past the storage's end.
pub fn pt_with_embedding_offset(offset: u8) -> Vec<u8> {
    pt_with_embedding_args(vec![b'K', offset], vec![b'M', 0x00, 0x02, b'K', 64, 0x86])
}

/// stories260K.pt with the storage entry `data/KEY` cut to `keep` bytes, or removed (`None`).
pub fn pt_with_storage(key: &str, keep: Option<usize>) -> Vec<u8> {
    let suffix = format!("/data/{key}");
    edited_pt(|entries| match keep {
        None => entries.retain(|(name, _)| !name.ends_with(&suffix)),
        Some(keep) => {
            for (name, data) in entries.iter_mut() {
                if name.ends_with(&suffix) {
                    data.truncate(keep);
                }
            }
        }
    })
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}
