//! The same numbers on every backend of the test build: the stories260K forward fixture and a
//! greedy generation, on ndarray, flex and wgpu (a default feature of this package), and with
//! `--features tch` on libtorch (CPU). Where wgpu finds no adapter its test is skipped with
//! the reason, unless `LLAMA_REQUIRE_WGPU=1` (as in CI) makes that a failure.

use crate::common;

use burn::backend::{Flex, NdArray};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use common::{fixture, read_safetensors};
use llama_model::exercise::compare::compare;
use llama_model::generation::generate::{generate, GenerateConfig};
use llama_model::{load_checkpoint, Llama, LoadOptions};

fn forward_matches_reference<Bk: Backend>(name: &str, device: &Bk::Device) {
    forward_matches_reference_with::<Bk>(name, device, |model| model);
}

/// The forward fixture on `Bk`, with the loaded model passed through `prepare` first.
fn forward_matches_reference_with<Bk: Backend>(
    name: &str,
    device: &Bk::Device,
    prepare: fn(Llama<Bk>) -> Llama<Bk>,
) {
    let reference = read_safetensors(&fixture("reference/forward-stories260K.safetensors"));
    let ids = &reference["input_ids"];
    let tokens = Tensor::<Bk, 2, Int>::from_data(
        TensorData::new(ids.i64.clone(), [ids.shape[0], ids.shape[1]]),
        device,
    );
    let model = load_checkpoint::<Bk>(
        &fixture("models/stories260K/stories260K.bin"),
        &LoadOptions::default(),
        device,
    )
    .unwrap()
    .model;
    let out = prepare(model).forward(tokens);
    for (key, tensor) in [("logits", out.logits), ("final_hidden", out.hidden)] {
        let actual = tensor
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .unwrap();
        let c = compare(&actual, &reference[key].f32, 1e-5, 1e-4);
        assert!(c.passed(), "{name}: {key}: {c:?}");
    }
}

fn greedy_tokens<Bk: Backend>(device: &Bk::Device) -> Vec<u32> {
    let model = load_checkpoint::<Bk>(
        &fixture("models/stories260K/stories260K.bin"),
        &LoadOptions::default(),
        device,
    )
    .unwrap()
    .model;
    generate(&model, &[1], &GenerateConfig::greedy(100), |_| {})
        .unwrap()
        .tokens
}

/// A line on stderr that the test harness does not capture (for skips).
#[allow(dead_code)]
fn note(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

#[test]
fn forward_fixture_passes_on_ndarray_and_flex() {
    forward_matches_reference::<NdArray>("ndarray", &Default::default());
    forward_matches_reference::<Flex>("flex", &Default::default());
    // The layout `llama-cli prompt` uses on flex.
    forward_matches_reference_with::<Flex>("flex, batch layout", &Default::default(), |m| {
        m.with_batch_layout()
    });
}

#[test]
fn greedy_generation_is_token_identical_across_backends() {
    let ndarray = greedy_tokens::<NdArray>(&Default::default());
    let flex = greedy_tokens::<Flex>(&Default::default());
    assert_eq!(ndarray.len(), 100);
    assert_eq!(ndarray, flex);
}

#[cfg(feature = "tch")]
#[test]
fn libtorch_cpu_matches_the_reference_and_ndarray() {
    use burn::backend::libtorch::{LibTorch, LibTorchDevice};
    let device = LibTorchDevice::Cpu;
    forward_matches_reference::<LibTorch>("tch-cpu", &device);
    let tch = greedy_tokens::<LibTorch>(&device);
    assert_eq!(tch.len(), 100);
    assert_eq!(tch, greedy_tokens::<NdArray>(&Default::default()));
}

/// Why wgpu cannot run here, if it cannot: the adapter request CubeCL makes for the default
/// device (the platform's graphics API, high-performance preference), without its panic.
#[cfg(feature = "wgpu")]
fn wgpu_unavailable() -> Option<String> {
    use burn::backend::wgpu::graphics::{AutoGraphicsApi, GraphicsApi};
    let backend = AutoGraphicsApi::backend();
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: backend.into(),
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let request = instance.request_adapter(&wgpu::RequestAdapterOptions {
        power_preference: wgpu::PowerPreference::HighPerformance,
        force_fallback_adapter: false,
        compatible_surface: None,
    });
    match pollster::block_on(request) {
        Ok(_) => None,
        Err(e) => Some(format!("no {backend:?} adapter: {e}")),
    }
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_matches_the_reference_and_ndarray() {
    use burn::backend::wgpu::{Wgpu, WgpuDevice};
    if let Some(why) = wgpu_unavailable() {
        let why = format!(
            "{why} (install a Vulkan driver; without a GPU, Debian's mesa-vulkan-drivers \
             provides lavapipe)"
        );
        // CI sets LLAMA_REQUIRE_WGPU=1: there a missing adapter is a failure, not a skip.
        assert!(
            std::env::var_os("LLAMA_REQUIRE_WGPU").is_none_or(|v| v == "0"),
            "LLAMA_REQUIRE_WGPU is set and wgpu cannot run: {why}"
        );
        note(&format!(
            "wgpu_matches_the_reference_and_ndarray: skipped: {why}; set LLAMA_REQUIRE_WGPU=1 \
             to make this a failure"
        ));
        return;
    }
    let device = WgpuDevice::DefaultDevice;
    forward_matches_reference::<Wgpu>("wgpu", &device);
    let wgpu = greedy_tokens::<Wgpu>(&device);
    assert_eq!(wgpu.len(), 100);
    assert_eq!(wgpu, greedy_tokens::<NdArray>(&Default::default()));
}
