//! Round trips through the Hugging Face folder writer: export, load with our readers, the
//! same weights and logits.

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::SafeTensors;

use super::hf::{ExportDtype, HfFolder, TokenizerWritten};
use super::safetensors::model_tensors;
use crate::checkpoint::hf::{special_ids, SpecialIds};
use crate::fixtures::fixture;
use crate::{LoadedCheckpoint, Tokenizer};

use super::round_trip::{load, logits, B};

/// Export `source` (with `tokenizer`) as an HF folder in `dtype` under `dir`.
fn export(source: &LoadedCheckpoint<B>, tokenizer: &Tokenizer, dtype: ExportDtype, dir: &Path) {
    let special = SpecialIds {
        bos: Some(tokenizer.bos_id()),
        eos: vec![tokenizer.eos_id()],
    };
    HfFolder {
        config: &source.config,
        special,
        tokenizer: Some(tokenizer),
        dtype,
    }
    .save(&source.model, dir)
    .unwrap();
}

/// An f32 folder of `source` without special ids.
fn f32_folder<'a>(
    source: &'a LoadedCheckpoint<B>,
    tokenizer: Option<&'a Tokenizer>,
) -> HfFolder<'a> {
    HfFolder {
        config: &source.config,
        special: SpecialIds::default(),
        tokenizer,
        dtype: ExportDtype::F32,
    }
}

/// The tensors of the safetensors files of `folder`, by name: (dtype, shape, bytes).
fn stored(folder: &Path) -> BTreeMap<String, (String, Vec<usize>, Vec<u8>)> {
    let mut all = BTreeMap::new();
    for entry in std::fs::read_dir(folder).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "safetensors") {
            let bytes = std::fs::read(&path).unwrap();
            let file = SafeTensors::deserialize(&bytes).unwrap();
            for (name, view) in file.tensors() {
                let dtype = format!("{:?}", view.dtype());
                all.insert(name, (dtype, view.shape().to_vec(), view.data().to_vec()));
            }
        }
    }
    all
}

#[test]
fn stories260k_exports_as_transformers_converted_it() {
    // From the .pt: q/k rows in our order, permuted on the way out. The fixture folder is
    // transformers' conversion of the same weights, so every tensor (names, order of rows,
    // f32 bytes) must match it exactly.
    let pt = fixture("models/stories260K/stories260K.pt");
    let source = load(&pt);
    let tokenizer = Tokenizer::from_file(fixture("models/stories260K/tok512.model")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("hf");
    export(&source, &tokenizer, ExportDtype::F32, &out);
    assert_eq!(stored(&out), stored(&fixture("real-models/hf/stories260K")));
    let back = load(&out);
    // `multiple_of` only matters without an explicit hidden size, which HF configs give.
    let config = crate::LlamaConfig {
        multiple_of: source.config.multiple_of,
        ..back.config.clone()
    };
    assert_eq!(config, source.config);
    assert_eq!(logits(&back), logits(&source));
    assert!(out.join("tokenizer.model").is_file());
    assert!(out.join("tokenizer_config.json").is_file());
    // Our loader takes the copied tokenizer and the ids back.
    let ids = special_ids(&out).unwrap().unwrap();
    assert_eq!(ids.bos, Some(tokenizer.bos_id()));
    assert_eq!(ids.eos, vec![tokenizer.eos_id()]);
}

#[test]
fn hf_fixtures_round_trip_in_their_own_dtype_exactly() {
    for (name, dtype) in [
        ("stories260K", ExportDtype::F32),
        ("tiny-llama2-f16", ExportDtype::F16),
        ("tiny-llama3", ExportDtype::Bf16),
        ("tiny-llama3-eot", ExportDtype::Bf16),
    ] {
        let folder = fixture(&format!("real-models/hf/{name}"));
        let source = load(&folder);
        let tokenizer = Tokenizer::from_file(folder.join("tokenizer.json")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join(name);
        export(&source, &tokenizer, dtype, &out);
        let back = load(&out);
        assert_eq!(back.config, source.config, "{name}");
        assert_eq!(logits(&back), logits(&source), "{name}");
        // The stored tensors are the fixture's, byte for byte, in its dtype.
        assert_eq!(stored(&out), stored(&folder), "{name}");
        assert!(out.join("tokenizer.json").is_file(), "{name}");
    }
}

#[test]
fn f16_and_bf16_exports_hold_the_rounded_weights() {
    let source = load(&fixture("models/stories260K/stories260K.pt"));
    let tokenizer = Tokenizer::from_file(fixture("models/stories260K/tok512.model")).unwrap();
    let reference = logits(&source);
    for (dtype, round) in [
        (
            ExportDtype::F16,
            (|v: f32| half::f16::from_f32(v).to_f32()) as fn(f32) -> f32,
        ),
        (ExportDtype::Bf16, |v: f32| half::bf16::from_f32(v).to_f32()),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("hf");
        export(&source, &tokenizer, dtype, &out);
        let back = load(&out);
        let mut expected = model_tensors(&source.model);
        for tensor in expected.values_mut() {
            tensor.data.iter_mut().for_each(|v| *v = round(*v));
        }
        assert_eq!(model_tensors(&back.model), expected, "{dtype:?}");
        // The logits move by the rounding only: well within the logits' own scale.
        let got = logits(&back);
        let scale = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = got
            .iter()
            .zip(&reference)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(worst < 0.05 * scale, "{dtype:?}: {worst} vs scale {scale}");
    }
}

#[test]
fn a_failed_export_leaves_nothing_behind() {
    let source = load(&fixture("models/stories260K/stories260K.pt"));
    let dir = tempfile::tempdir().unwrap();
    // A tokenizer whose file is gone by the time it is copied: the last file fails.
    let tok_path = dir.path().join("tok.model");
    std::fs::copy(fixture("models/stories260K/tok512.model"), &tok_path).unwrap();
    let tokenizer = Tokenizer::from_file(&tok_path).unwrap();
    std::fs::remove_file(&tok_path).unwrap();
    let out = dir.path().join("hf");
    let err = f32_folder(&source, Some(&tokenizer))
        .save(&source.model, &out)
        .unwrap_err();
    assert!(err.to_string().contains("tok.model"), "{err}");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    // An existing output is refused, untouched.
    std::fs::create_dir(&out).unwrap();
    let err = f32_folder(&source, None)
        .save(&source.model, &out)
        .unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
}

#[test]
fn a_llama2c_tokenizer_is_reported_not_written() {
    let source = load(&fixture("models/stories260K/stories260K.pt"));
    let tokenizer = Tokenizer::from_file(fixture("models/stories260K/tok512.bin")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("hf");
    let written = f32_folder(&source, Some(&tokenizer))
        .save(&source.model, &out)
        .unwrap();
    assert!(matches!(written, Some(TokenizerWritten::NotWritten(_))));
    assert!(out.join("model.safetensors").is_file());
}
