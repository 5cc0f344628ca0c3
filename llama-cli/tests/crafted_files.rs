//! Crafted checkpoints given to `generate`, each run in a child process whose peak resident
//! memory is read from the kernel (`wait4`'s `ru_maxrss`, for that child alone): every one
//! ends in one error line (or, for a long but real context, a normal run), never a panic or
//! an abort, and peaks under 4 × the file's size + the bytes of the model its config
//! describes (0 for a refused config) + 64 MiB.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::Path;

use crate::common::*;
use llama_model::checkpoint::read_checkpoint;
use llama_model::checkpoint::tensors::parameter_shapes;
use llama_model::crafted;
use llama_model::fixtures::fixture;
use llama_model::model::config::MAX_SEQ_LEN;
use llama_model::{LlamaConfig, LoadOptions};

/// Headroom over the file's own bytes and the model's: the process's code, the tokenizer,
/// the allocator and the backend.
const SLACK: u64 = 64 << 20;

/// The address space the child may map: a regression then fails the test with an abort
/// instead of exhausting the machine (far above any bound checked here; a normal run fits
/// in 2 GiB of address space).
const ADDRESS_SPACE_CAP: u64 = 4 << 30;

/// How a measured child ended.
struct Measured {
    /// The exit code, `None` when a signal ended it.
    code: Option<i32>,
    signal: Option<i32>,
    stderr: String,
    /// Peak resident set, bytes.
    peak: u64,
}

/// Runs `llama-cli --backend ndarray --quiet ARGS…` and reaps it with `wait4`, which reports
/// the child's own peak resident set.
#[allow(clippy::zombie_processes)] // reaped by wait4, which std's Child does not see
fn run_measured(dir: &Path, args: &[&str]) -> Measured {
    let stdout = File::create(dir.join("stdout.txt")).unwrap();
    let stderr_path = dir.join("stderr.txt");
    let stderr = File::create(&stderr_path).unwrap();
    let mut command = llama_cli();
    command
        .args(["--backend", "ndarray", "--quiet"])
        .args(args)
        .stdout(stdout)
        .stderr(stderr);
    // SAFETY: between fork and exec the closure calls only setrlimit, which is
    // async-signal-safe, and allocates nothing.
    unsafe {
        command.pre_exec(|| {
            let cap = libc::rlimit {
                rlim_cur: ADDRESS_SPACE_CAP,
                rlim_max: ADDRESS_SPACE_CAP,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &cap) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let child = command.spawn().expect("llama-cli starts");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data, fully written by wait4.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our child, not yet reaped (std's Child does not wait on drop).
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(reaped, pid, "{}", std::io::Error::last_os_error());
    let exited = libc::WIFEXITED(status);
    Measured {
        code: exited.then(|| libc::WEXITSTATUS(status)),
        signal: libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status)),
        stderr: std::fs::read_to_string(&stderr_path).unwrap(),
        // ru_maxrss is in KiB on Linux.
        peak: usage.ru_maxrss as u64 * 1024,
    }
}

/// The bytes of the parameters of a model of `config` (f32).
fn model_bytes(config: &LlamaConfig) -> u64 {
    parameter_shapes(config)
        .into_iter()
        .filter(|(name, _)| !(config.tie_embeddings && name == "output.weight"))
        .map(|(_, shape)| 4 * shape.iter().product::<usize>() as u64)
        .sum()
}

/// A crafted file: its name, bytes, an optional config written beside it
/// (`<stem>.config.json`), and what `generate` must say: `Err(text)` or a normal run.
struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    config: Option<String>,
    expect: Result<(), String>,
}

fn case(name: &'static str, bytes: Vec<u8>, error: &str) -> Case {
    Case {
        name,
        bytes,
        config: None,
        expect: Err(error.to_string()),
    }
}

fn cases() -> Vec<Case> {
    let long = i32::try_from(MAX_SEQ_LEN).unwrap();
    let safetensors = crafted::stories("stories260K.safetensors");
    vec![
        case(
            "overflow.bin",
            crafted::overflowing_bin(),
            "n_layers 1073741824 is above the supported maximum",
        ),
        case(
            "layers-q80.bin",
            crafted::q80_header(i32::MAX),
            "n_layers 2147483647 is above the supported maximum",
        ),
        case(
            "context-max.bin",
            crafted::v1_bin(i32::MAX),
            "max_seq_len 2147483647 is above the supported maximum",
        ),
        Case {
            name: "context-2M.bin",
            bytes: crafted::v1_bin(long),
            config: None,
            expect: Ok(()),
        },
        Case {
            name: "huge.safetensors",
            bytes: safetensors.clone(),
            config: Some(crafted::config_json(i32::MAX as u64)),
            expect: Err("max_seq_len 2147483647 is above the supported maximum".into()),
        },
        Case {
            name: "long.safetensors",
            bytes: safetensors,
            config: Some(crafted::config_json(MAX_SEQ_LEN as u64)),
            expect: Ok(()),
        },
        case(
            "big-shape.pt",
            crafted::pt_with_embedding_shape(1 << 20, 1 << 16),
            "has shape [1048576, 65536], the config expects [512, 64]",
        ),
        case(
            "no-storage.pt",
            crafted::pt_with_storage("0", None),
            "storage 0 is missing",
        ),
        case(
            "short-storage.pt",
            crafted::pt_with_storage("0", Some(1000)),
            "storage 0 holds 1000 bytes",
        ),
    ]
}

#[test]
fn crafted_checkpoints_end_in_one_error_within_the_memory_bound() {
    let tokenizer = path(&fixture("models/stories260K/tok512.model"));
    let mut failures = Vec::new();
    for case in cases() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(case.name);
        std::fs::write(&file, &case.bytes).unwrap();
        let stem = case.name.split('.').next().unwrap_or(case.name);
        if let Some(config) = &case.config {
            std::fs::write(dir.path().join(format!("{stem}.config.json")), config).unwrap();
        }
        let run = run_measured(
            dir.path(),
            &[
                "generate",
                "--checkpoint",
                &path(&file),
                "--tokenizer",
                &tokenizer,
                "--prompt",
                "Once upon a time",
                "--temperature",
                "0",
                "--max-new-tokens",
                "8",
            ],
        );
        let model = match &case.expect {
            Ok(()) => {
                let (config, _, _) =
                    read_checkpoint(&file, &LoadOptions::default()).expect("a real model loads");
                model_bytes(&config)
            }
            Err(_) => 0,
        };
        let bound = 4 * case.bytes.len() as u64 + model + SLACK;
        println!(
            "{}: {} bytes, exit {:?} (signal {:?}), peak {:.1} MiB, bound {:.1} MiB: {}",
            case.name,
            case.bytes.len(),
            run.code,
            run.signal,
            run.peak as f64 / (1 << 20) as f64,
            bound as f64 / (1 << 20) as f64,
            run.stderr.lines().next().unwrap_or("")
        );
        // The file at fault: the checkpoint, or the config beside it.
        let named = match &case.config {
            Some(_) => format!("{stem}.config.json"),
            None => case.name.to_string(),
        };
        let ended_right = match &case.expect {
            Ok(()) => run.code == Some(0),
            Err(text) => {
                run.code == Some(1)
                    && run.stderr.starts_with("error: ")
                    && run.stderr.contains(&named)
                    && run.stderr.contains(text.as_str())
                    && run.stderr.lines().count() == 1
            }
        };
        if !ended_right || run.stderr.contains("panicked") {
            failures.push(format!(
                "{}: exit {:?}, signal {:?}, stderr: {}",
                case.name, run.code, run.signal, run.stderr
            ));
        }
        if run.peak > bound {
            failures.push(format!(
                "{}: peak {} bytes over the bound {bound}",
                case.name, run.peak
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
