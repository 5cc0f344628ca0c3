//! `llama-cli`: load Llama 2 checkpoints, check them, generate text, classify sentences.

mod commands;

// The flag groups and the runtime live in the library target (src/lib.rs), whose unit tests
// build without the commands; imported here, they keep their `crate::args` and
// `crate::runtime` paths.
use llama_cli::{args, runtime};

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use llama_train::classify::finetune::FinetuneError;
use llama_train::lm::pretrain::error::PretrainError;
use runtime::backend::{run_on, BackendKind};

/// jemalloc keeping freed memory, large buffers on transparent huge pages: see [`runtime::allocator`].
#[global_allocator]
static ALLOCATOR: runtime::allocator::Allocator = runtime::allocator::Allocator;

/// Llama 2 on Burn: the minllama exercise as a tool.
#[derive(Debug, Parser)]
#[command(name = "llama-cli", version, about)]
struct Cli {
    /// Compute backend (those compiled into this binary; see `--help` of the build features).
    #[arg(
        long,
        global = true,
        env = "LLAMA_BACKEND",
        value_enum,
        default_value_t = BackendKind::default_kind()
    )]
    backend: BackendKind,
    /// Device index for GPU backends (`llama-cli launch --devices` sets it per rank).
    #[arg(long, global = true, env = "LLAMA_DEVICE", default_value_t = 0)]
    device: usize,
    /// CPU threads for ndarray, flex and libtorch (0 = one per core).
    #[arg(long, global = true, default_value_t = 0)]
    threads: usize,
    /// Progress of long commands: bars on a terminal (auto) or plain lines (plain, also
    /// what a pipe or a log file gets).
    #[arg(long, global = true, value_enum, default_value_t = runtime::progress::ProgressFlag::Auto)]
    progress: runtime::progress::ProgressFlag,
    /// Plain progress lines, no bars (the same as `--progress plain`).
    #[arg(long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Compare the forward pass with reference outputs (the exercise's sanity check).
    Sanity(commands::sanity::SanityArgs),
    /// Continue a prompt with a KV cache, streaming the text (greedy or sampled).
    Generate(commands::generate::GenerateArgs),
    /// Chat with a model over stdin, keeping its KV cache across turns.
    Chat(commands::chat::ChatArgs),
    /// Serve a model over an OpenAI-compatible HTTP API, decoding requests in one batch.
    Serve(commands::serve::ServeArgs),
    /// Measure generation, prompting and fine-tuning speed and memory.
    Bench(commands::bench::BenchArgs),
    /// Zero-shot classification by prompting (label-name log-probabilities).
    Prompt(commands::prompt::PromptArgs),
    /// Fine-tune a classifier head (and the model) with Burn's Learner and our AdamW.
    #[command(alias = "train")]
    Finetune(commands::finetune::FinetuneArgs),
    /// Re-run a saved classifier on a data file.
    Eval(commands::eval::EvalArgs),
    /// The exercise's RoPE, optimizer and sanity checks, with its success lines.
    Check(commands::check::CheckArgs),
    /// Perplexity of a model on a text file (one document per line).
    Perplexity(commands::perplexity::PerplexityArgs),
    /// Train the language model on text: continue a checkpoint, or start a preset.
    Pretrain(commands::pretrain::PretrainArgs),
    /// Redraw a training run's curves from its metrics.csv (PNG or SVG).
    Plot(commands::plot::PlotArgs),
    /// Merge a LoRA adapter into its base model's weights and write a plain model.
    MergeLora(commands::merge_lora::MergeLoraArgs),
    /// Write a model for other tools: a Hugging Face folder or a llama2.c .bin.
    Export(commands::export::ExportArgs),
    /// Write a model of a preset's shape with seeded random weights as a Hugging Face folder.
    Init(commands::init::InitArgs),
    /// Serve the coordinator of a data-parallel run (the ranks register with it).
    Coordinator(commands::coordinator::CoordinatorArgs),
    /// Start a data-parallel run on this machine: the coordinator and N ranks of a command
    /// (`launch --nproc 2 -- finetune …`).
    Launch(commands::launch::LaunchArgs),
}

/// Run `f`, turning a panic inside a library (a bug, or a backend that panics on a missing
/// device) into an error instead of a backtrace.
fn catch_panics<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    if std::env::var_os("LLAMA_DEBUG_PANICS").is_none() {
        std::panic::set_hook(Box::new(|_| {}));
    }
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    let _ = std::panic::take_hook();
    result.unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("unknown cause");
        Err(anyhow::anyhow!("internal error: {message}"))
    })
}

/// Run `f` on a worker of rayon's global pool, the main thread waiting.
///
/// A parallel loop started from a thread outside the pool hands all of its work to the
/// pool and sleeps until it is done: two thread wake-ups per loop. While decoding that is
/// dozens of small products per token, so the command itself runs on a worker: there a
/// parallel loop runs one part on the calling thread and the other worker takes the rest.
fn on_pool<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    rayon::join(f, || ()).0
}

fn main() -> ExitCode {
    runtime::allocator::keep_freed_memory();
    let cli = Cli::parse(); // usage errors exit with status 2
    runtime::progress::set(cli.progress, cli.quiet);
    // Burn's libraries log through `tracing` and, when the application has no subscriber,
    // may install one that prints to stdout: ours drops them (errors reach the user as our
    // one line).
    let _ = tracing::subscriber::set_global_default(tracing::subscriber::NoSubscriber::default());
    if let Command::Launch(args) = &cli.command {
        // Not on the pool: the ranks compute; this process waits for them.
        return match commands::launch::run(args) {
            Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
            Err(err) => {
                eprintln!("error: {err:#}");
                ExitCode::FAILURE
            }
        };
    }
    let result = catch_panics(|| {
        runtime::backend::set_threads(cli.threads)?;
        llama_model::weights::q8_cpu::kernel_cap().map_err(anyhow::Error::msg)?;
        llama_model::weights::f32_rows::kernel_allowed().map_err(anyhow::Error::msg)?;
        on_pool(|| match cli.command {
            Command::Sanity(args) => run_on(cli.backend, cli.device, args),
            Command::Generate(args) => run_on(cli.backend, cli.device, args),
            Command::Chat(args) => run_on(cli.backend, cli.device, args),
            Command::Serve(args) => run_on(cli.backend, cli.device, args),
            Command::Bench(args) => run_on(cli.backend, cli.device, args),
            Command::Prompt(args) => run_on(cli.backend, cli.device, args),
            Command::Finetune(args) => run_on(cli.backend, cli.device, args),
            Command::Eval(args) => run_on(cli.backend, cli.device, args),
            Command::Check(args) => run_on(cli.backend, cli.device, args),
            Command::Perplexity(args) => run_on(cli.backend, cli.device, args),
            Command::Pretrain(args) => run_on(cli.backend, cli.device, args),
            Command::Plot(args) => commands::plot::run(&args),
            Command::MergeLora(args) => run_on(cli.backend, cli.device, args),
            Command::Export(args) => run_on(cli.backend, cli.device, args),
            Command::Init(args) => run_on(cli.backend, cli.device, args),
            Command::Coordinator(args) => commands::coordinator::run(&args),
            Command::Launch(_) => unreachable!("handled above"),
        })
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => match stopped(&err) {
            // A run stopped early was saved: say how to continue it.
            Some(interrupted) => {
                eprintln!("{err}");
                eprintln!("resume with: {}", resume_command());
                if interrupted {
                    ExitCode::from(130) // the shell's convention for SIGINT
                } else {
                    ExitCode::SUCCESS
                }
            }
            _ => {
                eprintln!("error: {err:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// `Some(interrupted)` when `err` is a training run that stopped early and was saved.
fn stopped(err: &anyhow::Error) -> Option<bool> {
    match (err.downcast_ref(), err.downcast_ref()) {
        (Some(FinetuneError::Stopped { interrupted, .. }), _)
        | (_, Some(PretrainError::Stopped { interrupted, .. })) => Some(*interrupted),
        _ => None,
    }
}

/// This process's command line with `--resume` (added if missing) and without
/// `--max-steps`.
fn resume_command() -> String {
    let mut args: Vec<String> = Vec::new();
    let mut skip_value = false;
    for arg in std::env::args() {
        if std::mem::take(&mut skip_value) {
            continue;
        }
        if arg == "--max-steps" {
            skip_value = true;
            continue;
        }
        if arg.starts_with("--max-steps=") {
            continue;
        }
        args.push(arg);
    }
    if !args.iter().any(|a| a == "--resume") {
        args.push("--resume".into());
    }
    args.iter()
        .map(|a| {
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '\'' || c == '"') {
                format!("'{}'", a.replace('\'', r"'\''"))
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
