//! Broken Hugging Face folders (copies of `real-models/hf/stories260K` with one thing
//! wrong): each is one error line naming the file and the tensor or field.

use std::path::{Path, PathBuf};

use crate::common;

use common::*;
use llama_model::{load_checkpoint, CheckpointError, LoadOptions};
use serde_json::Value;

/// A writable copy of the sharded stories260K folder.
fn copy_of_stories260k() -> (tempfile::TempDir, PathBuf) {
    let source = fixture("real-models/hf/stories260K");
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("stories260K");
    std::fs::create_dir(&folder).unwrap();
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, folder.join(path.file_name().unwrap())).unwrap();
    }
    (dir, folder)
}

/// Edit the JSON file `name` of `folder` in place.
fn edit_json(folder: &Path, name: &str, edit: impl FnOnce(&mut Value)) {
    let path = folder.join(name);
    let mut value: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut value);
    std::fs::write(&path, serde_json::to_string_pretty(&value).unwrap()).unwrap();
}

/// The load error of `folder`, checked to be one line.
fn load_error(folder: &Path) -> CheckpointError {
    let err = load_checkpoint::<B>(folder, &LoadOptions::default(), &Default::default())
        .expect_err("a broken folder must not load");
    assert!(!err.to_string().contains('\n'), "one line: {err}");
    err
}

#[test]
fn a_missing_shard_names_the_shard_and_a_tensor_in_it() {
    let (_dir, folder) = copy_of_stories260k();
    std::fs::remove_file(folder.join("model-00002-of-00004.safetensors")).unwrap();
    let err = load_error(&folder);
    let text = err.to_string();
    assert!(
        matches!(err, CheckpointError::MissingShard { .. }),
        "{text}"
    );
    assert!(text.contains("model-00002-of-00004.safetensors"), "{text}");
    assert!(text.contains("model.layers."), "{text}");
}

#[test]
fn a_tensor_missing_from_the_index_is_named_with_the_index() {
    let (_dir, folder) = copy_of_stories260k();
    edit_json(&folder, "model.safetensors.index.json", |v| {
        v["weight_map"]
            .as_object_mut()
            .unwrap()
            .remove("model.layers.1.mlp.down_proj.weight");
    });
    let text = load_error(&folder).to_string();
    assert!(text.contains("model.safetensors.index.json"), "{text}");
    assert!(
        text.contains("`model.layers.1.mlp.down_proj.weight`"),
        "{text}"
    );
}

#[test]
fn a_shape_that_disagrees_with_the_config_names_the_file_and_the_tensor() {
    let (_dir, folder) = copy_of_stories260k();
    edit_json(&folder, "config.json", |v| {
        v["intermediate_size"] = 170.into()
    });
    let err = load_error(&folder);
    let text = err.to_string();
    assert!(
        matches!(err, CheckpointError::ShapeMismatch { .. }),
        "{text}"
    );
    assert!(text.contains(".safetensors"), "{text}");
    assert!(text.contains("mlp."), "{text}");
}

#[test]
fn a_foreign_architecture_is_refused_by_name() {
    let (_dir, folder) = copy_of_stories260k();
    edit_json(&folder, "config.json", |v| {
        v["architectures"] = serde_json::json!(["MistralForCausalLM"]);
        v["model_type"] = "mistral".into();
    });
    let text = load_error(&folder).to_string();
    assert!(text.contains("config.json"), "{text}");
    assert!(text.contains("`MistralForCausalLM`"), "{text}");
}

#[test]
fn an_unknown_rope_scaling_type_is_refused_by_name() {
    let (_dir, folder) = copy_of_stories260k();
    edit_json(&folder, "config.json", |v| {
        v["rope_parameters"] =
            serde_json::json!({"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0});
    });
    let text = load_error(&folder).to_string();
    assert!(text.contains("config.json"), "{text}");
    assert!(text.contains("`yarn`"), "{text}");
}

#[test]
fn a_folder_without_weights_or_config_says_what_is_missing() {
    let (_dir, folder) = copy_of_stories260k();
    std::fs::remove_file(folder.join("model.safetensors.index.json")).unwrap();
    let text = load_error(&folder).to_string();
    assert!(text.contains("model.safetensors"), "{text}");
    std::fs::remove_file(folder.join("config.json")).unwrap();
    let text = load_error(&folder).to_string();
    assert!(text.contains("config.json"), "{text}");
}
