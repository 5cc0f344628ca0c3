//! The stories260K forward pass against the PyTorch reference, for every checkpoint format.

use crate::common;

use common::*;
use llama_model::exercise::compare::compare;
use llama_model::{load_checkpoint, LoadOptions};

/// The fixture README's tolerance for forward outputs.
const ATOL: f64 = 1e-5;
const RTOL: f64 = 1e-4;

#[test]
fn every_container_reproduces_the_reference_forward() {
    let reference = read_safetensors(&fixture("reference/forward-stories260K.safetensors"));
    let ids = &reference["input_ids"];
    let input = tokens(&ids.i64, [ids.shape[0], ids.shape[1]]);
    let mut worst_logit_error = 0.0f64;
    for path in stories260k_files() {
        let loaded = load_checkpoint::<B>(&path, &LoadOptions::default(), &Default::default())
            .unwrap_or_else(|e| panic!("{e}"));
        let model = loaded.model;
        let trace = model.trace(input.clone());
        let last = model.forward_last(input.clone());

        let mut actual = vec![
            ("embeddings", values(trace.embeddings)),
            ("logits", values(trace.output.logits)),
            ("final_hidden", values(trace.output.hidden)),
            ("last_logits", values(last.logits)),
        ];
        for (i, (h, out)) in trace.layers.into_iter().enumerate() {
            actual.push((
                Box::leak(format!("layer{i}_after_attention").into_boxed_str()),
                values(h),
            ));
            actual.push((
                Box::leak(format!("layer{i}_output").into_boxed_str()),
                values(out),
            ));
        }
        assert_eq!(actual.len(), 4 + 2 * 5);
        for (name, values) in actual {
            let expected = &reference[name].f32;
            let c = compare(&values, expected, ATOL, RTOL);
            assert!(c.passed(), "{}: {name}: {c:?}", path.display());
            if name.ends_with("logits") {
                worst_logit_error = worst_logit_error.max(c.max_abs_diff);
            }
        }
    }
    println!("largest absolute logit error over the four containers: {worst_logit_error:e}");
}

#[test]
fn every_container_holds_the_same_weights_as_the_bin() {
    use llama_model::checkpoint::read_checkpoint;
    let files = stories260k_files();
    let read = |path: &std::path::Path| {
        let (config, mut tensors, _) = read_checkpoint(path, &LoadOptions::default()).unwrap();
        // Tied containers may carry the output head as a copy of the embeddings.
        if let Some(out) = tensors.remove("output.weight") {
            assert_eq!(out, tensors["tok_embeddings.weight"], "{}", path.display());
        }
        (config, tensors)
    };
    let (bin_config, bin) = read(&files[0]);
    assert_eq!(
        bin.len(),
        1 + 9 * 5 + 1,
        "embeddings, 9 tensors per layer, final norm"
    );
    for path in &files[1..] {
        let (config, tensors) = read(path);
        assert_eq!(
            config.hidden_dim(),
            bin_config.hidden_dim(),
            "{}",
            path.display()
        );
        assert_eq!(
            config.n_kv_heads(),
            bin_config.n_kv_heads(),
            "{}",
            path.display()
        );
        assert!(
            tensors == bin,
            "{} holds other weights than the .bin",
            path.display()
        );
    }
}
