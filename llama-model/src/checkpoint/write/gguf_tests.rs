//! Round trips through the GGUF writer: export, read back with our GGUF reader, the same
//! logits; and the very tensor bytes of the fixtures llama.cpp's gguf-py wrote from the same
//! weights.

use std::collections::BTreeMap;
use std::path::Path;

use super::gguf::{GgufDtype, GgufExport};
use crate::fixtures::fixture;
use crate::gguf::{GgufFile, Value};
use crate::{LoadOptions, LoadedCheckpoint, Tokenizer};

use super::round_trip::{load, logits, B};

/// Export `source` with `tokenizer` as `dtype` to `out`.
fn export(source: &LoadedCheckpoint<B>, tokenizer: &Tokenizer, dtype: GgufDtype, out: &Path) {
    GgufExport {
        config: &source.config,
        tokenizer,
        dtype,
        name: "test".into(),
        chat_template: None,
    }
    .save(&source.model, out)
    .unwrap();
}

/// Every tensor of a GGUF file: name → (type, shape, payload bytes).
fn payloads(path: &Path) -> BTreeMap<String, (String, Vec<usize>, Vec<u8>)> {
    let file = GgufFile::open(path).unwrap();
    file.tensors
        .iter()
        .map(|(name, info)| {
            let bytes = file.bytes(info).to_vec();
            (
                name.clone(),
                (info.kind.to_string(), info.shape.clone(), bytes),
            )
        })
        .collect()
}

/// The metadata value `key` of a GGUF file.
fn meta(path: &Path, key: &str) -> Option<Value> {
    GgufFile::open(path).unwrap().metadata.get(key).cloned()
}

/// `a` and `b` give each of `texts` the same ids (BOS added).
fn assert_same_ids(a: &Tokenizer, b: &Tokenizer, texts: &[&str]) {
    for text in texts {
        assert_eq!(
            a.encode(text, true, false).unwrap(),
            b.encode(text, true, false).unwrap(),
            "{text:?}"
        );
    }
}

fn stories() -> (LoadedCheckpoint<B>, Tokenizer) {
    let source = load(&fixture("models/stories260K/stories260K.bin"));
    let tokenizer = Tokenizer::from_file(fixture("models/stories260K/tok512.model")).unwrap();
    (source, tokenizer)
}

#[test]
fn stories260k_f32_round_trips_exactly_and_equals_the_fixture() {
    let (source, tokenizer) = stories();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.gguf");
    export(&source, &tokenizer, GgufDtype::F32, &out);
    let back = load(&out);
    assert_eq!(logits(&back), logits(&source));
    let fixture_file = fixture("real-models/gguf/stories260K-f32.gguf");
    assert_eq!(payloads(&out), payloads(&fixture_file));
    // The vocabulary is the one the converter wrote from tok512.model.
    for key in [
        "tokens",
        "scores",
        "token_type",
        "bos_token_id",
        "eos_token_id",
    ] {
        let key = format!("tokenizer.ggml.{key}");
        assert_eq!(meta(&out, &key), meta(&fixture_file, &key), "{key}");
    }
    for key in [
        "context_length",
        "embedding_length",
        "block_count",
        "feed_forward_length",
        "attention.head_count",
        "attention.head_count_kv",
        "rope.dimension_count",
        "attention.layer_norm_rms_epsilon",
        "rope.freq_base",
    ] {
        let key = format!("llama.{key}");
        assert_eq!(meta(&out, &key), meta(&fixture_file, &key), "{key}");
    }
    assert!(!payloads(&out).contains_key("output.weight"), "tied head");
}

#[test]
fn f16_and_q8_0_exports_equal_the_fixtures_bit_for_bit() {
    let (source, tokenizer) = stories();
    let dir = tempfile::tempdir().unwrap();
    for (dtype, name) in [(GgufDtype::F16, "f16"), (GgufDtype::Q8_0, "q8_0")] {
        let out = dir.path().join(format!("{name}.gguf"));
        export(&source, &tokenizer, dtype, &out);
        let fixture_file = fixture(&format!("real-models/gguf/stories260K-{name}.gguf"));
        // Q8_0 matrices (ffn_down's rows of 172 in F16), norms in F32: the very bytes.
        assert_eq!(payloads(&out), payloads(&fixture_file), "{name}");
        assert_eq!(
            meta(&out, "general.file_type"),
            meta(&fixture_file, "general.file_type")
        );
        assert_eq!(logits(&load(&out)), logits(&load(&fixture_file)), "{name}");
    }
}

#[test]
fn a_bf16_export_holds_the_rounded_weights() {
    let (source, tokenizer) = stories();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.gguf");
    export(&source, &tokenizer, GgufDtype::Bf16, &out);
    let back = crate::checkpoint::read_checkpoint(&out, &LoadOptions::default())
        .unwrap()
        .1;
    let original = crate::checkpoint::model_tensors(&source.model);
    for (name, tensor) in &original {
        let rounded: Vec<f32> = if tensor.shape.len() == 1 {
            tensor.data.clone()
        } else {
            let bf16 = |v: &f32| half::bf16::from_f32(*v).to_f32();
            tensor.data.iter().map(bf16).collect()
        };
        assert_eq!(back[name].data, rounded, "{name}");
    }
}

#[test]
fn tiny_llama3_exports_as_the_converter_wrote_it() {
    // bf16 weights, a byte-level vocabulary, llama3 RoPE scaling as `rope_freqs`.
    let folder = fixture("real-models/hf/tiny-llama3");
    let source = load(&folder);
    let tokenizer = Tokenizer::from_file(folder.join("tokenizer.json")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.gguf");
    export(&source, &tokenizer, GgufDtype::Bf16, &out);
    let fixture_file = fixture("real-models/gguf/tiny-llama3-bf16.gguf");
    assert_eq!(payloads(&out), payloads(&fixture_file));
    assert_eq!(logits(&load(&out)), logits(&load(&fixture_file)));
    for key in [
        "tokens",
        "token_type",
        "merges",
        "bos_token_id",
        "eos_token_id",
    ] {
        let key = format!("tokenizer.ggml.{key}");
        assert_eq!(meta(&out, &key), meta(&fixture_file, &key), "{key}");
    }
    // The folder's tokenizer splits with GPT-2's regex (llama.cpp's `gpt-2`); read back, the
    // vocabulary tokenizes as the folder's tokenizer.json does.
    assert_eq!(
        meta(&out, "tokenizer.ggml.pre"),
        Some(Value::Str("gpt-2".into()))
    );
    assert_same_ids(
        &Tokenizer::from_file(&out).unwrap(),
        &tokenizer,
        &[
            "Once upon a time",
            "  leading spaces, tabs\tand\nnewlines",
            "naïve café — ünïcödé ✓ 日本 12345",
        ],
    );
}

#[test]
fn an_untied_f16_model_round_trips_its_weights_exactly() {
    let folder = fixture("real-models/hf/tiny-llama2-f16");
    let source = load(&folder);
    let tokenizer = Tokenizer::from_file(folder.join("tokenizer.json")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.gguf");
    export(&source, &tokenizer, GgufDtype::F16, &out);
    assert!(payloads(&out).contains_key("output.weight"));
    let options = LoadOptions::default();
    let (_, back, _) = crate::checkpoint::read_checkpoint(&out, &options).unwrap();
    let (_, original, _) = crate::checkpoint::read_checkpoint(&folder, &options).unwrap();
    assert_eq!(back, original);
    // The folder's RoPE frequencies are rounded to f16 (transformers runs it in f16); a
    // GGUF's are f32, as llama.cpp computes them: the logits agree within the tolerance.
    let (a, b) = (logits(&load(&out)), logits(&source));
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs() - 1e-4 * y.abs())
        .fold(f32::MIN, f32::max);
    assert!(worst <= 1e-5, "{worst}");
}

#[test]
fn a_tokenizer_json_vocabulary_tokenizes_as_the_converted_gguf() {
    // hf/stories260K's tokenizer.json has merges, not scores: the scores written from the
    // merge ranks give llama.cpp's tokenizer (ours for GGUF files) the fixture GGUF's ids.
    let folder = fixture("real-models/hf/stories260K");
    let source = load(&folder);
    let tokenizer = Tokenizer::from_file(folder.join("tokenizer.json")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.gguf");
    export(&source, &tokenizer, GgufDtype::F32, &out);
    let ours = Tokenizer::from_file(&out).unwrap();
    let converted = Tokenizer::from_file(fixture("real-models/gguf/stories260K-f32.gguf")).unwrap();
    assert_same_ids(
        &ours,
        &converted,
        &[
            "Once upon a time",
            "Lily and Ben went to the park. They saw a big red ball!",
            "  leading spaces, tabs\tand\nnewlines",
            "naïve café — ünïcödé ✓ 日本",
            "<s> is not special inside text",
        ],
    );
}

#[test]
fn a_tokenizer_larger_than_the_embedding_is_refused_and_nothing_written() {
    let (source, _) = stories();
    let big = Tokenizer::from_file(fixture("real-models/hf/tiny-llama3/tokenizer.json")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.gguf");
    let err = GgufExport {
        config: &source.config,
        tokenizer: &big,
        dtype: GgufDtype::F32,
        name: "test".into(),
        chat_template: None,
    }
    .save(&source.model, &out)
    .unwrap_err();
    assert!(
        err.to_string().contains("more than the model's 512"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
