//! Choosing the compute backend at run time.
//!
//! The generic code is instantiated once per backend compiled into this binary (cargo
//! features `ndarray`, `flex`, `wgpu`, `tch`); `--backend` picks one of them. Every job runs on
//! the autodiff wrapper of the chosen backend, so training can differentiate; inference jobs
//! use its inner backend and pay nothing for autodiff.

#[allow(unused_imports)]
use anyhow::{bail, Result};
use burn::tensor::backend::{AutodiffBackend, Backend};
use clap::ValueEnum;
use llama_model::Llama;

/// The backends a user can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// Pure-Rust CPU backend on ndarray (the test backend).
    Ndarray,
    /// Burn's fast pure-Rust CPU backend (gemm, SIMD, rayon).
    Flex,
    /// GPU through wgpu (Vulkan/Metal/DX12; lavapipe on machines without a GPU).
    Wgpu,
    /// libtorch on the CPU.
    TchCpu,
    /// libtorch on a CUDA GPU.
    TchCuda,
}

impl BackendKind {
    /// Column blocks per decoding product (`--decode-split`): the given number, else one
    /// per thread of the pool on the CPU backends Burn runs itself, for models of `dim` 512
    /// and more, and 1 otherwise. libtorch and GPUs thread their own products, and the
    /// products of smaller models are too short to share: splitting stories260K's (dim 64)
    /// slowed its decoding by a fifth, while the 42M shape's gained 15–30%.
    pub fn decode_split(self, requested: Option<usize>, dim: usize) -> usize {
        requested.unwrap_or(match self {
            Self::Ndarray | Self::Flex if dim >= 512 => rayon::current_num_threads(),
            _ => 1,
        })
    }

    /// `model` laid out for batched inference (prompting): on flex, every linear weight is
    /// copied into `[d_in, d_out]` order, which its many-row products read faster
    /// (`llama_model::model::weight_layout`); other backends keep the loaded layout.
    pub fn layout_for_batches<B: Backend>(self, model: Llama<B>) -> Llama<B> {
        match self {
            Self::Flex => model.with_batch_layout(),
            _ => model,
        }
    }

    /// Whether int8 weights run as int8 products (`llama_model::weights::q8_kernel`): on the CPU
    /// backends, whose tensors already live in host memory. The GPU backends run the
    /// dequantized f32 weights instead.
    pub fn runs_int8_products(self) -> bool {
        matches!(self, Self::Ndarray | Self::Flex | Self::TchCpu)
    }

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ndarray => "ndarray",
            Self::Flex => "flex",
            Self::Wgpu => "wgpu",
            Self::TchCpu => "tch-cpu",
            Self::TchCuda => "tch-cuda",
        }
    }

    /// The CLI's default: flex (measured faster than ndarray for inference and training on
    /// the CPU, see the README), else ndarray.
    pub fn default_kind() -> Self {
        if cfg!(feature = "flex") {
            Self::Flex
        } else {
            Self::Ndarray
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Work that runs on any backend. `B` is an autodiff backend; use `B::InnerBackend` for
/// inference.
pub trait Job {
    type Output;
    fn run<B: AutodiffBackend>(
        self,
        device: B::Device,
        backend: BackendKind,
    ) -> Result<Self::Output>;
}

#[allow(dead_code)]
fn not_compiled(kind: BackendKind, feature: &str) -> anyhow::Error {
    let extra = if feature == "tch" {
        " (needs libtorch: see docs/formats.md, \"Backends and libtorch\")"
    } else {
        ""
    };
    anyhow::anyhow!(
        "backend `{kind}` is not compiled into this binary: rebuild with \
         `cargo build --release -p llama-cli --features {feature}`{extra}"
    )
}

/// Defines `fn $name(job, device, kind)` running `$body` when `$feature` is compiled in, and
/// explaining how to get it otherwise.
macro_rules! backend_runner {
    ($name:ident, $feature:literal, |$job:ident, $device:ident, $kind:ident| $body:expr) => {
        #[cfg(feature = $feature)]
        fn $name<J: Job>($job: J, $device: usize, $kind: BackendKind) -> Result<J::Output> {
            $body
        }
        #[cfg(not(feature = $feature))]
        fn $name<J: Job>(_: J, _: usize, kind: BackendKind) -> Result<J::Output> {
            Err(not_compiled(kind, $feature))
        }
    };
}

backend_runner!(run_ndarray, "ndarray", |job, _device, kind| {
    job.run::<llama_train::TrainBackend<burn::backend::NdArray>>(Default::default(), kind)
});
backend_runner!(run_flex, "flex", |job, _device, kind| {
    job.run::<llama_train::TrainBackend<burn::backend::Flex>>(Default::default(), kind)
});
backend_runner!(run_wgpu, "wgpu", |job, device, kind| {
    use burn::backend::wgpu::WgpuDevice;
    let device = if device == 0 {
        WgpuDevice::DefaultDevice
    } else {
        WgpuDevice::DiscreteGpu(device)
    };
    wgpu_preflight::check(&device)?;
    job.run::<llama_train::TrainBackend<burn::backend::Wgpu>>(device, kind)
});

/// Checks that wgpu has an adapter for the device before Burn asks for one: Burn (through
/// CubeCL) panics when there is none, deep inside its first tensor operation.
#[cfg(feature = "wgpu")]
mod wgpu_preflight {
    use anyhow::{bail, Result};
    use burn::backend::wgpu::graphics::{AutoGraphicsApi, GraphicsApi};
    use burn::backend::wgpu::WgpuDevice;

    const HINT: &str = "install a Vulkan driver; on a machine without a GPU, Debian's \
                        mesa-vulkan-drivers provides lavapipe";

    /// Fails with one line when CubeCL would find no adapter for `device`. Mirrors CubeCL's
    /// own choice (`cubecl-wgpu` `request_adapter`): the platform's graphics API (Vulkan on
    /// Linux), `request_adapter` for the default device, the n-th adapter of the asked type
    /// (else of type `Other`) for a numbered one. (CubeCL's `CUBECL_WGPU_DEFAULT_DEVICE`
    /// override of the default device is not mirrored.)
    pub fn check(device: &WgpuDevice) -> Result<()> {
        let backend = AutoGraphicsApi::backend();
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends: backend.into(),
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        match device {
            WgpuDevice::DiscreteGpu(n) => {
                let adapters = pollster::block_on(instance.enumerate_adapters(backend.into()));
                let count = |ty: wgpu::DeviceType| {
                    adapters
                        .iter()
                        .filter(|a| a.get_info().device_type == ty)
                        .count()
                };
                if count(wgpu::DeviceType::DiscreteGpu) <= *n
                    && count(wgpu::DeviceType::Other) <= *n
                {
                    let found: Vec<String> = adapters
                        .iter()
                        .map(|a| {
                            let info = a.get_info();
                            format!("{} ({:?})", info.name, info.device_type)
                        })
                        .collect();
                    let found = if found.is_empty() {
                        "none".to_string()
                    } else {
                        found.join(", ")
                    };
                    bail!(
                        "backend `wgpu`: no discrete GPU with index {n} ({backend:?} adapters \
                         found: {found}); `--device 0` takes the default adapter"
                    );
                }
            }
            _ => {
                let options = wgpu::RequestAdapterOptions {
                    power_preference: wgpu::PowerPreference::HighPerformance,
                    force_fallback_adapter: false,
                    compatible_surface: None,
                };
                if pollster::block_on(instance.request_adapter(&options)).is_err() {
                    bail!("backend `wgpu`: no GPU adapter found ({HINT})");
                }
            }
        }
        Ok(())
    }
}

backend_runner!(run_tch_cpu, "tch", |job, _device, kind| {
    use burn::backend::libtorch::LibTorchDevice;
    job.run::<llama_train::TrainBackend<burn::backend::LibTorch>>(LibTorchDevice::Cpu, kind)
});
backend_runner!(run_tch_cuda, "tch", |job, device, kind| {
    use burn::backend::libtorch::LibTorchDevice;
    if !tch::Cuda::is_available() {
        bail!(
            "backend `tch-cuda`: libtorch sees no CUDA device (check `nvidia-smi`, and that \
             the pip torch wheel is a CUDA build); use `--backend tch-cpu` otherwise"
        );
    }
    job.run::<llama_train::TrainBackend<burn::backend::LibTorch>>(
        LibTorchDevice::Cuda(device),
        kind,
    )
});

/// Run `job` on the backend `kind`, device index `device` (GPU backends).
pub fn run_on<J: Job>(kind: BackendKind, device: usize, job: J) -> Result<J::Output> {
    match kind {
        BackendKind::Ndarray => run_ndarray(job, device, kind),
        BackendKind::Flex => run_flex(job, device, kind),
        BackendKind::Wgpu => run_wgpu(job, device, kind),
        BackendKind::TchCpu => run_tch_cpu(job, device, kind),
        BackendKind::TchCuda => run_tch_cuda(job, device, kind),
    }
}

/// Size the CPU thread pools (rayon's, used by ndarray and flex, and libtorch's). Must run
/// before any tensor work; `0` keeps the defaults (one thread per core).
pub fn set_threads(threads: usize) -> Result<()> {
    // Commands run on a thread of this pool (see `main::on_pool`): give its threads the main
    // thread's usual 8 MiB of stack rather than the 2 MiB of spawned threads.
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads) // 0: rayon's default, one per core
        .stack_size(8 << 20)
        .build_global()
        .map_err(|e| anyhow::anyhow!("cannot size the thread pool to {threads}: {e}"))?;
    if threads > 0 {
        // libtorch keeps its own (OpenMP) pool, one thread per core by default.
        #[cfg(feature = "tch")]
        tch::set_num_threads(
            i32::try_from(threads).map_err(|_| {
                anyhow::anyhow!("--threads {threads} is more than libtorch accepts")
            })?,
        );
    }
    Ok(())
}
