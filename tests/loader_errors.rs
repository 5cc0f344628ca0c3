//! Every way a checkpoint can be wrong gives its own error, naming the file (and tensor).

use crate::common;

use std::path::{Path, PathBuf};

use common::*;
use llama_model::checkpoint::CheckpointError;
use llama_model::{load_checkpoint, LoadOptions};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

fn load(path: &Path) -> Result<(), CheckpointError> {
    load_checkpoint::<B>(path, &LoadOptions::default(), &Default::default()).map(|_| ())
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn stories(name: &str) -> Vec<u8> {
    std::fs::read(fixture(&format!("models/stories260K/{name}"))).unwrap()
}

#[test]
fn truncated_files_are_reported_not_read_past() {
    let dir = tempfile::tempdir().unwrap();
    for (name, cuts) in [
        ("stories260K.bin", vec![3usize, 27, 28, 1000, 1_056_539]),
        ("stories260K.pt", vec![10, 5000, 200_000]),
        ("stories260K.safetensors", vec![4, 9, 5000, 200_000]),
    ] {
        let bytes = stories(name);
        for cut in cuts {
            let path = write(dir.path(), &format!("cut-{cut}-{name}"), &bytes[..cut]);
            if name.ends_with(".safetensors") {
                std::fs::copy(
                    fixture("models/stories260K/stories260K.config.json"),
                    dir.path()
                        .join(format!("cut-{cut}-stories260K.config.json")),
                )
                .unwrap();
            }
            let err = load(&path).expect_err("a truncated file must not load");
            assert_eq!(err.path(), path, "{err}");
            assert!(
                matches!(
                    err,
                    CheckpointError::Corrupt { .. } | CheckpointError::UnknownFormat { .. }
                ),
                "{name} cut at {cut}: {err}"
            );
        }
    }
}

#[test]
fn bin_header_inconsistent_with_size_names_both_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = stories("stories260K.bin");
    bytes[8..12].copy_from_slice(&6i32.to_le_bytes()); // n_layers 5 -> 6
    let path = write(dir.path(), "six-layers.bin", &bytes);
    let err = load(&path).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, CheckpointError::Corrupt { .. }), "{msg}");
    assert!(msg.contains("6 layers") && msg.contains("1056540"), "{msg}");
}

#[test]
fn files_of_another_kind_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let empty = write(dir.path(), "empty.bin", b"");
    assert!(matches!(
        load(&empty),
        Err(CheckpointError::UnknownFormat { .. })
    ));
    let text = write(
        dir.path(),
        "notes.pt",
        b"hello, this is not a model at all\n",
    );
    assert!(matches!(
        load(&text),
        Err(CheckpointError::UnknownFormat { .. })
    ));
    let tokenizer = fixture("models/stories260K/tok512.model");
    let err = load(&tokenizer).unwrap_err();
    assert!(
        matches!(err, CheckpointError::UnknownFormat { .. }),
        "{err}"
    );
    let missing = dir.path().join("nope.bin");
    assert!(matches!(load(&missing), Err(CheckpointError::Io { .. })));
}

/// Rewrite the stories260K safetensors with `edit` applied to its tensors, with its config.
fn edited_safetensors(
    dir: &Path,
    name: &str,
    edit: impl FnOnce(&mut Vec<(String, Vec<usize>, Vec<u8>)>),
) -> PathBuf {
    let bytes = stories("stories260K.safetensors");
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = file
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.shape().to_vec(), v.data().to_vec()))
        .collect();
    edit(&mut tensors);
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, shape, data)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    let path = dir.join(format!("{name}.safetensors"));
    safetensors::serialize_to_file(views, None, &path).unwrap();
    std::fs::copy(
        fixture("models/stories260K/stories260K.config.json"),
        dir.join(format!("{name}.config.json")),
    )
    .unwrap();
    path
}

#[test]
fn wrong_shaped_tensor_names_the_tensor_and_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let path = edited_safetensors(dir.path(), "wrong-shape", |tensors| {
        let t = tensors
            .iter_mut()
            .find(|t| t.0 == "layers.2.feed_forward.w1.weight")
            .unwrap();
        t.1 = vec![t.1[1], t.1[0]]; // [172, 64] stored as [64, 172]
    });
    match load(&path).unwrap_err() {
        CheckpointError::ShapeMismatch {
            name,
            expected,
            found,
            ..
        } => {
            assert_eq!(name, "layers.2.feed_forward.w1.weight");
            assert_eq!((expected, found), (vec![172, 64], vec![64, 172]));
        }
        other => panic!("expected a shape mismatch, got {other}"),
    }
}

#[test]
fn missing_and_unexpected_tensors_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = edited_safetensors(dir.path(), "missing", |tensors| {
        tensors.retain(|t| t.0 != "layers.4.ffn_norm.weight");
    });
    match load(&path).unwrap_err() {
        CheckpointError::MissingTensor { name, expected, .. } => {
            assert_eq!(
                (name.as_str(), expected),
                ("layers.4.ffn_norm.weight", vec![64])
            );
        }
        other => panic!("expected a missing tensor, got {other}"),
    }

    let path = edited_safetensors(dir.path(), "extra", |tensors| {
        tensors.push(("layers.5.ffn_norm.weight".into(), vec![64], vec![0u8; 256]));
    });
    match load(&path).unwrap_err() {
        CheckpointError::UnexpectedTensor { name, shape, .. } => {
            assert_eq!(
                (name.as_str(), shape),
                ("layers.5.ffn_norm.weight", vec![64])
            );
        }
        other => panic!("expected an unexpected tensor, got {other}"),
    }
}

#[test]
fn safetensors_without_a_config_says_where_it_looked() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "lonely.safetensors",
        &stories("stories260K.safetensors"),
    );
    let err = load(&path).unwrap_err();
    assert!(
        matches!(err, CheckpointError::MissingConfig { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("lonely.config.json"), "{err}");
    // An explicit config makes it load.
    let options = LoadOptions {
        config: Some(fixture("models/stories260K/stories260K.config.json")),
    };
    load_checkpoint::<B>(&path, &options, &Default::default()).expect("loads with --config");
}

/// A `torch.save`-style zip (`archive/data.pkl`, stored) whose pickle is `pickle`.
fn torch_zip(dir: &Path, name: &str, pickle: &[u8]) -> PathBuf {
    use std::io::Write;
    use zip::write::SimpleFileOptions;
    let path = dir.join(name);
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let options = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", options).unwrap();
    zip.write_all(pickle).unwrap();
    zip.start_file("archive/version", options).unwrap();
    zip.write_all(b"3\n").unwrap();
    zip.finish().unwrap();
    path
}

/// Pickle opcodes calling `module.name(argument)`: GLOBAL, MARK, BINUNICODE, TUPLE, REDUCE.
fn call(module: &str, name: &str, argument: &str) -> Vec<u8> {
    let mut p = vec![b'c'];
    p.extend(format!("{module}\n{name}\n").bytes());
    p.push(b'(');
    p.push(b'X');
    p.extend((argument.len() as u32).to_le_bytes());
    p.extend(argument.bytes());
    p.extend([b't', b'R']);
    p
}

/// The loader reads pickles with its own interpreter of the data opcodes: a pickle asking for
/// a class outside the tensor-storage set (`os.system`, `builtins.eval`, ...) is refused with
/// an error naming the file, and nothing it asks for runs.
#[test]
fn pickles_asking_for_foreign_classes_are_refused_and_never_run() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("pwned");
    let command = format!("touch {}", marker.display());
    for (module, name) in [
        ("os", "system"),
        ("posix", "system"),
        ("builtins", "eval"),
        ("subprocess", "check_call"),
    ] {
        // At the top: `os.system("touch ...")`.
        let mut top = vec![0x80, 2];
        top.extend(call(module, name, &command));
        top.push(b'.');
        // Inside the exercise's layout: `{"model": os.system("touch ...")}`.
        let mut nested = vec![0x80, 2, b'}', b'X'];
        nested.extend(5u32.to_le_bytes());
        nested.extend(b"model");
        nested.extend(call(module, name, &command));
        nested.extend([b's', b'.']);
        for (kind, pickle) in [("top", top), ("nested", nested)] {
            let file = format!("{module}-{name}-{kind}.pt");
            let path = torch_zip(dir.path(), &file, &pickle);
            let err = load(&path).expect_err(&file);
            let msg = err.to_string();
            assert!(matches!(err, CheckpointError::Unsupported { .. }), "{msg}");
            assert!(msg.contains(&file), "{msg}");
            assert!(msg.contains(&format!("`{module}.{name}`")), "{msg}");
            assert!(!marker.exists(), "{file}: the pickle ran code");
            println!("{file}: {msg}");
        }
    }
}

/// A state dict of another model (no Llama parameter names) is refused, naming a tensor.
#[test]
fn a_foreign_state_dict_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = edited_safetensors(dir.path(), "bert", |tensors| {
        *tensors = vec![
            (
                "bert.embeddings.word_embeddings.weight".into(),
                vec![4, 4],
                vec![0u8; 64],
            ),
            ("classifier.weight".into(), vec![2, 4], vec![0u8; 32]),
        ];
    });
    let err = load(&path).unwrap_err();
    let msg = err.to_string();
    println!("{msg}");
    assert!(msg.contains("bert.safetensors"), "{msg}");
    assert!(
        matches!(err, CheckpointError::UnknownFormat { .. }),
        "{msg}"
    );
    assert!(
        msg.contains("`bert.embeddings.word_embeddings.weight`"),
        "{msg}"
    );
}

/// NaN or infinite weights load (the file is well-formed) with a warning naming the tensor
/// and how many of its values are not finite.
#[test]
fn non_finite_weights_load_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let path = edited_safetensors(dir.path(), "nan", |tensors| {
        let norm = tensors
            .iter_mut()
            .find(|t| t.0 == "layers.1.ffn_norm.weight")
            .expect("tensor");
        norm.2[0..4].copy_from_slice(&f32::NAN.to_le_bytes());
        norm.2[8..12].copy_from_slice(&f32::INFINITY.to_le_bytes());
    });
    let loaded = load_checkpoint::<B>(&path, &LoadOptions::default(), &Default::default())
        .expect("loads with a warning");
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    let warning = &loaded.warnings[0];
    assert!(warning.contains("nan.safetensors"), "{warning}");
    assert!(
        warning.contains("`layers.1.ffn_norm.weight` holds 2 NaN or infinite values of 64"),
        "{warning}"
    );
}
