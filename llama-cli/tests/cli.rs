//! The command-line front end: exit codes, messages and outputs, on the ndarray backend.

use std::path::PathBuf;
use std::process::{Command, Output};

use llama_model::fixtures::{fixture, fixtures_dir, FIXTURES_ENV};

use crate::common::{head, text};

fn cli(args: &[&str]) -> Output {
    crate::common::llama_cli()
        .args(["--backend", "ndarray"])
        .args(args)
        .output()
        .expect("llama-cli runs")
}

fn path(p: PathBuf) -> String {
    p.display().to_string()
}

#[test]
fn sanity_passes_for_every_stories260k_container() {
    let reference = path(fixture("reference/forward-stories260K.safetensors"));
    for file in [
        "stories260K.bin",
        "stories260K.pt",
        "stories260K-llama2c.pt",
        "stories260K.safetensors",
    ] {
        let checkpoint = path(fixture(&format!("models/stories260K/{file}")));
        let out = cli(&[
            "sanity",
            "--checkpoint",
            &checkpoint,
            "--reference",
            &reference,
        ]);
        let stdout = text(&out.stdout);
        assert!(
            out.status.success(),
            "{file}: {stdout}{}",
            text(&out.stderr)
        );
        assert!(
            stdout.contains("Your Llama implementation is correct!"),
            "{stdout}"
        );
    }
}

#[test]
fn sanity_fails_loudly_when_outputs_differ() {
    let reference = path(fixture("reference/forward-stories260K.safetensors"));
    let checkpoint = path(fixture("models/stories260K/stories260K.bin"));
    let out = cli(&[
        "sanity",
        "--checkpoint",
        &checkpoint,
        "--reference",
        &reference,
        "--atol",
        "0",
        "--rtol",
        "0",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("outside tolerance") && !stdout.contains("correct!"),
        "{stdout}"
    );
}

#[test]
fn bad_checkpoint_is_one_clear_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("half.bin");
    let bytes = std::fs::read(fixture("models/stories260K/stories260K.bin")).unwrap();
    std::fs::write(&bad, &bytes[..5000]).unwrap();
    let reference = path(fixture("reference/forward-stories260K.safetensors"));
    let out = cli(&[
        "sanity",
        "--checkpoint",
        &path(bad.clone()),
        "--reference",
        &reference,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with("error: ") && stderr.contains("half.bin"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn usage_errors_exit_with_2() {
    let out = cli(&["--backend", "cuda", "sanity"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = cli(&["no-such-command"]);
    assert_eq!(out.status.code(), Some(2));
    // Batch size 0, for prompting and for fine-tuning; --max-steps 0.
    let dev = path(fixture("data/sst-dev.txt"));
    for args in [
        vec!["prompt", "--dev", &dev, "--batch-size", "0"],
        vec![
            "finetune",
            "--train",
            &dev,
            "--dev",
            &dev,
            "--batch-size",
            "0",
        ],
        vec![
            "finetune",
            "--train",
            &dev,
            "--dev",
            &dev,
            "--max-steps",
            "0",
        ],
    ] {
        let out = cli(&args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("invalid value '0'"), "{args:?}: {err}");
    }
}

fn stories260k() -> String {
    path(fixture("models/stories260K/stories260K.bin"))
}

#[test]
fn generate_writes_the_two_exercise_files_and_streams_text() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = path(dir.path().to_path_buf());
    let out = cli(&[
        "generate",
        "--checkpoint",
        &stories260k(),
        "--prompt",
        "Once upon a time",
        "--max-new-tokens",
        "32",
        "--out-dir",
        &out_dir,
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let greedy = std::fs::read_to_string(dir.path().join("generated-sentence-temp-0.txt")).unwrap();
    let sampled =
        std::fs::read_to_string(dir.path().join("generated-sentence-temp-1.txt")).unwrap();
    // The greedy continuation is the fixture's (first 32 of its 64 tokens).
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("reference/generate-stories260K.json")).unwrap(),
    )
    .unwrap();
    let case = reference["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["prompt"] == "Once upon a time")
        .expect("fixture case");
    let full = case["text"].as_str().unwrap();
    assert!(greedy.starts_with("Once upon a time"), "{greedy}");
    assert!(
        full.starts_with(greedy.trim_end()),
        "{greedy:?} is not a prefix of {full:?}"
    );
    assert!(sampled.starts_with("Once upon a time") && sampled != greedy);
    // Both runs were streamed to stdout; speed went to stderr.
    assert!(stdout.contains(greedy.trim_end()), "{stdout}");
    assert!(text(&out.stderr).contains("tokens/s"));
}

/// Every output file gets the usual mode: 0644 under umask 022, whatever writes it
/// (generation files once kept a temporary file's 0600 through the rename).
#[cfg(unix)]
#[test]
fn output_files_get_the_usual_mode() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let dev = head(d, "cfimdb-dev.txt", 4);
    let run = |args: &[&str]| {
        // Under a known umask, whatever the test runner's is.
        let out = Command::new("sh")
            .env(FIXTURES_ENV, fixtures_dir())
            .arg("-c")
            .arg("umask 022; exec \"$0\" \"$@\"")
            .arg(env!("CARGO_BIN_EXE_llama-cli"))
            .args(["--backend", "ndarray"])
            .args(args)
            .output()
            .expect("llama-cli runs");
        assert!(out.status.success(), "{}", text(&out.stderr));
    };
    run(&[
        "generate",
        "--checkpoint",
        &stories260k(),
        "--max-new-tokens",
        "2",
        "--out-dir",
        &path(d.to_path_buf()),
    ]);
    run(&[
        "prompt",
        "--checkpoint",
        &stories260k(),
        "--dev",
        &dev,
        "--label-names",
        &path(fixture("data/cfimdb-label-mapping.json")),
        "--dev-out",
        &path(d.join("dev-out.txt")),
    ]);
    for name in [
        "generated-sentence-temp-0.txt",
        "generated-sentence-temp-1.txt",
        "dev-out.txt",
    ] {
        let mode = std::fs::metadata(d.join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o644, "{name}: mode {mode:o}");
    }
}

#[test]
fn generate_rejects_bad_flags_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    for bad in [
        vec!["--temperature", "-1"],
        vec!["--temperature", "NaN"],
        vec!["--max-new-tokens", "0"],
        vec!["--top-p", "1.5"],
        vec!["--top-k", "0"],
        vec!["--min-p", "1.5"],
        vec!["--repetition-penalty", "0"],
        vec!["--presence-penalty", "3"],
        vec!["--frequency-penalty", "-2.5"],
    ] {
        let mut args = vec!["generate", "--checkpoint"];
        let checkpoint = stories260k();
        args.push(&checkpoint);
        args.extend(bad.iter().copied());
        let out = cli(&args);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", text(&out.stderr));
    }
    let target = dir.path().join("missing-folder/out.txt");
    let out = cli(&[
        "generate",
        "--checkpoint",
        &stories260k(),
        "--temperature",
        "0",
        "--out",
        &path(target.clone()),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("missing-folder"),
        "{}",
        text(&out.stderr)
    );
    assert!(!target.exists());
}

/// `generate` of stories260K at temperature 0 for `tokens` tokens with `extra` flags, which
/// must succeed: its stdout and stderr.
fn greedy_generate(tokens: u32, extra: &[&str]) -> (String, String) {
    let (checkpoint, tokens) = (stories260k(), tokens.to_string());
    let mut args = vec![
        "generate",
        "--checkpoint",
        &checkpoint,
        "--temperature",
        "0",
        "--max-new-tokens",
        &tokens,
    ];
    args.extend(extra);
    let out = cli(&args);
    assert!(out.status.success(), "{extra:?}: {}", text(&out.stderr));
    (text(&out.stdout), text(&out.stderr))
}

/// Penalties change a greedy text (as in `transformers`, they act on the logits); filters
/// (top-k, min-p) cannot, since the most probable token always stays.
#[test]
fn generate_penalties_change_greedy_text_and_filters_do_not() {
    let greedy = |extra: &[&str]| greedy_generate(40, extra).0;
    let plain = greedy(&[]);
    assert_eq!(greedy(&["--top-k", "1", "--min-p", "0.9"]), plain);
    let penalized = greedy(&["--repetition-penalty", "1.5", "--frequency-penalty", "0.5"]);
    assert_ne!(penalized, plain);
}

/// `--stop` ends the text before the stop string (not printed, wherever the token
/// boundaries fall); `--logprobs N` lists each token's log-probability and N alternatives.
#[test]
fn generate_stops_at_a_stop_string_and_lists_logprobs() {
    let greedy = |extra: &[&str]| greedy_generate(60, extra);
    let (full, _) = greedy(&[]);
    // A stop string that begins mid-text: two words of the greedy continuation.
    let prompt_end = full.find("John Wick, is").unwrap() + "John Wick, is".len();
    let continuation = &full[prompt_end..];
    let words: Vec<&str> = continuation.split_whitespace().collect();
    let stop = format!("{} {}", words[3], words[4]);
    let at = continuation.find(&stop).unwrap();
    let (stopped, stderr) = greedy(&["--stop", &stop, "--logprobs", "2"]);
    assert_eq!(
        stopped.trim_end(),
        full[..prompt_end + at].trim_end(),
        "{stop:?}"
    );
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("logprob "))
        .collect();
    assert!(!lines.is_empty(), "{stderr}");
    for line in &lines {
        assert_eq!(line.matches(" | top: ").count(), 1, "{line}");
        assert_eq!(
            line.split(" | top: ").nth(1).unwrap().split(", ").count(),
            2,
            "{line}"
        );
    }
    // Greedy: each token is its step's most probable one.
    let first = lines[0];
    let chosen = first
        .split(": ")
        .nth(1)
        .unwrap()
        .split(" | ")
        .next()
        .unwrap();
    let best = first
        .split(" | top: ")
        .nth(1)
        .unwrap()
        .split(", ")
        .next()
        .unwrap();
    assert_eq!(chosen, best, "{first}");
    let out = cli(&[
        "generate",
        "--checkpoint",
        &stories260k(),
        "--logprobs",
        "21",
    ]);
    assert_eq!(out.status.code(), Some(2));
}

/// An output path that is a device or a FIFO (`--out /dev/stdout`, a named pipe) is written
/// in place: renaming a file over it would replace the device (for root, `/dev/null`).
#[test]
fn outputs_to_a_fifo_are_written_through_it() {
    use std::io::Read;
    use std::os::unix::fs::FileTypeExt;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            let mut text = String::new();
            std::fs::File::open(fifo)
                .unwrap()
                .read_to_string(&mut text)
                .unwrap();
            text
        })
    };
    let (stdout, _) = greedy_generate(5, &["--out", &path(fifo.clone())]);
    // Checked first: a FIFO renamed over would leave the reader waiting for ever.
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
    let written = reader.join().unwrap();
    assert_eq!(written.trim_end(), stdout.trim_end());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

/// A prompt longer than the context is cropped to its last `max_seq_len` tokens at every step,
/// as the exercise's `generate` does, with a notice; the output file holds the whole prompt
/// and the continuation.
#[test]
fn generate_crops_a_prompt_longer_than_the_context() {
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("long.txt");
    // 600 words: over 600 tokens, stories260K's context is 512.
    let long = "word ".repeat(600);
    let out = cli(&[
        "generate",
        "--checkpoint",
        &stories260k(),
        "--temperature",
        "0",
        "--max-new-tokens",
        "4",
        "--prompt",
        &long,
        "--out",
        &path(out_file.clone()),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("more than the model's context of 512"),
        "{stderr}"
    );
    assert!(stderr.contains("4 tokens;"), "{stderr}");
    let written = std::fs::read_to_string(&out_file).unwrap();
    assert!(written.starts_with(long.trim_end()), "{written:?}");
    assert!(written.len() > long.trim_end().len() + 1, "{written:?}");
}

/// The design's example `llama-cli generate --backend wgpu`, from the default build: the
/// greedy text equals ndarray's. Without a Vulkan adapter the test is skipped with a note,
/// unless `LLAMA_REQUIRE_WGPU=1` (as in CI) makes that a failure.
#[test]
fn generate_runs_on_wgpu_from_the_default_build() {
    let dir = tempfile::tempdir().unwrap();
    let run = |backend: &str| {
        let out_file = dir.path().join(format!("{backend}.txt"));
        let out = crate::common::llama_cli()
            .args(["generate", "--backend", backend, "--checkpoint"])
            .arg(stories260k())
            .args(["--temperature", "0", "--max-new-tokens", "24", "--out"])
            .arg(&out_file)
            .output()
            .expect("llama-cli runs");
        (out, out_file)
    };
    let (out, wgpu_file) = run("wgpu");
    let stderr = text(&out.stderr);
    if stderr.contains("no GPU adapter found") {
        assert!(
            std::env::var_os("LLAMA_REQUIRE_WGPU").is_none_or(|v| v == "0"),
            "LLAMA_REQUIRE_WGPU is set and wgpu cannot run: {stderr}"
        );
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "generate_runs_on_wgpu_from_the_default_build: skipped: {}",
            stderr.trim()
        );
        return;
    }
    assert!(out.status.success(), "{stderr}");
    let (out, ndarray_file) = run("ndarray");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let wgpu = std::fs::read_to_string(wgpu_file).unwrap();
    assert_eq!(wgpu, std::fs::read_to_string(ndarray_file).unwrap());
    assert!(wgpu.len() > "I have wanted".len());
}

#[test]
fn f16_weights_generate_on_flex_and_are_refused_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("f16.txt");
    let args = |backend: &'static str| {
        vec![
            "--backend".to_string(),
            backend.to_string(),
            "generate".into(),
            "--checkpoint".into(),
            stories260k(),
            "--weight-dtype".into(),
            "f16".into(),
            "--prompt".into(),
            "Once upon a time".into(),
            "--temperature".into(),
            "0".into(),
            "--max-new-tokens".into(),
            "32".into(),
            "--out".into(),
            path(target.clone()),
        ]
    };
    let run = |args: Vec<String>| {
        crate::common::llama_cli()
            .args(args)
            .output()
            .expect("llama-cli runs")
    };
    // ndarray has no f16 tensors: one line, exit 1, nothing written.
    let out = run(args("ndarray"));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("flex backend only"),
        "{}",
        text(&out.stderr)
    );
    assert!(!target.exists());
    // On flex, greedy text with f16 weights is the f32 reference's (first 32 of 64 tokens).
    let out = run(args("flex"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("weights f16"),
        "{}",
        text(&out.stderr)
    );
    let written = std::fs::read_to_string(&target).unwrap();
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("reference/generate-stories260K.json")).unwrap(),
    )
    .unwrap();
    let full = reference["prompts"][0]["text"].as_str().unwrap();
    assert!(
        written.len() > "Once upon a time".len() + 40 && full.starts_with(written.trim_end()),
        "{written:?} is not a prefix of {full:?}"
    );
}

/// f32 decoding on flex runs on the AVX-512 row kernel where the CPU has it, and
/// `LLAMA_F32_KERNEL=gemm` sends it back to flex's product: both give the reference's greedy
/// texts (`generate-stories260K.json`, PyTorch's, equal to run.c's), and the load line names
/// the kernel. A value that names no kernel is refused before anything runs.
#[test]
fn flex_f32_decoding_gives_the_reference_texts_on_either_kernel() {
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("reference/generate-stories260K.json")).unwrap(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("out.txt");
    let row_kernel = llama_model::weights::f32_rows::available();
    for case in reference["prompts"].as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        let n = case["max_new_tokens"].as_u64().unwrap().to_string();
        for kernel in ["avx512", "gemm"] {
            let out = crate::common::llama_cli()
                .env("LLAMA_F32_KERNEL", kernel)
                .args([
                    "--backend",
                    "flex",
                    "generate",
                    "--checkpoint",
                    &stories260k(),
                ])
                .args([
                    "--prompt",
                    prompt,
                    "--temperature",
                    "0",
                    "--max-new-tokens",
                    &n,
                ])
                .args(["--out", &path(target.clone())])
                .output()
                .expect("llama-cli runs");
            let log = text(&out.stderr);
            assert!(out.status.success(), "{log}");
            let named = log.contains("weights f32 (few-row products: AVX-512 rows)");
            assert_eq!(named, kernel == "avx512" && row_kernel, "{kernel}: {log}");
            let written = std::fs::read_to_string(&target).unwrap();
            assert_eq!(
                written.trim_end(),
                case["text"].as_str().unwrap().trim_end(),
                "{kernel}, {prompt:?}"
            );
        }
    }
    let out = crate::common::llama_cli()
        .env("LLAMA_F32_KERNEL", "sse9")
        .args(["generate", "--checkpoint", &stories260k(), "--prompt", "a"])
        .output()
        .expect("llama-cli runs");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("LLAMA_F32_KERNEL=sse9: not a kernel"), "{err}");
}

/// `--weight-dtype q8` and llama2.c's int8 export on flex: the text `generate` writes equals
/// what llama2.c's runq.c prints (`generate-q80-stories260K.json`) where it leaves run.c's
/// f32 text, from the export as stored and from the f32 file quantized at load, with the
/// group size in the load line (see `tests/q8_weights.rs` for ndarray and the tie).
#[test]
fn q8_generation_prints_runq_text() {
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("reference/generate-q80-stories260K.json")).unwrap(),
    )
    .unwrap();
    let case = reference["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["same_as_f32_run_c"] == false)
        .expect("a case where runq.c and run.c differ");
    let (prompt, steps) = (
        case["prompt"].as_str().unwrap(),
        case["steps"].as_u64().unwrap(),
    );
    let expected = case["runq_text"].as_str().unwrap();
    let tok = llama_model::Tokenizer::from_file(fixture("models/stories260K/tok512.bin")).unwrap();
    // runq.c runs `steps` positions; BOS and the prompt take the first of them.
    let new_tokens = steps + 1 - tok.encode(prompt, true, false).unwrap().len() as u64;
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("q8.txt");
    let run_with = |file: &str, dtype: Option<&str>, kernel: Option<&str>| {
        let checkpoint = path(fixture(&format!("models/stories260K/{file}")));
        let mut args = vec!["generate", "--checkpoint", &checkpoint, "--prompt", prompt];
        args.extend(["--temperature", "0", "--stop-at-bos"]);
        let n = new_tokens.to_string();
        args.extend(["--max-new-tokens", &n]);
        let target = path(target.clone());
        args.extend(["--out", &target]);
        if let Some(d) = dtype {
            args.extend(["--weight-dtype", d]);
        }
        let mut command = crate::common::llama_cli();
        match kernel {
            Some(kernel) => command.env("LLAMA_INT8_KERNEL", kernel),
            None => command.env_remove("LLAMA_INT8_KERNEL"),
        };
        let out = command
            .args(["--backend", "flex"])
            .args(&args)
            .output()
            .expect("llama-cli runs");
        assert!(out.status.success(), "{}", text(&out.stderr));
        (text(&out.stderr), std::fs::read_to_string(&target).unwrap())
    };
    let run = |file: &str, dtype: Option<&str>| run_with(file, dtype, None);
    // Every kernel this CPU has gives runq.c's text; a cap names the kernel that ran.
    for (cap, kernel) in [("portable", "portable"), ("avx2", "portable")] {
        let (log, written) = run_with("stories260K-q80.bin", None, Some(cap));
        assert!(log.contains(&format!("int8 products: {kernel})")), "{log}");
        assert_eq!(written, expected, "{cap}");
    }
    let (log, written) = run("stories260K-q80.bin", None);
    assert!(
        log.contains("int8 Q8_0") && log.contains("weights q8 (Q8_0, group 4, as stored"),
        "{log}"
    );
    let best = llama_model::weights::q8_kernel::kernel_name(4);
    assert!(log.contains(&format!("int8 products: {best})")), "{log}");
    assert_eq!(written, expected);
    let (log, written) = run("stories260K.bin", Some("q8"));
    assert!(
        log.contains("weights q8 (Q8_0, group 4, quantized at load"),
        "{log}"
    );
    assert_eq!(written, expected);
    let (log, _) = run("stories260K-q80.bin", Some("f32"));
    assert!(log.contains("weights f32"), "{log}");
    // A cap that names no kernel is refused before anything runs.
    let out = crate::common::llama_cli()
        .env("LLAMA_INT8_KERNEL", "sse9")
        .args(["generate", "--checkpoint", &stories260k(), "--prompt", "a"])
        .output()
        .expect("llama-cli runs");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("LLAMA_INT8_KERNEL=sse9: not a kernel"),
        "{err}"
    );
}

#[test]
fn prompt_finetune_and_eval_write_prediction_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let dev = head(d, "cfimdb-dev.txt", 8);
    let train = head(d, "cfimdb-train.txt", 16);
    let names = path(fixture("data/cfimdb-label-mapping.json"));
    let dev_out = path(d.join("dev-out.txt"));
    let out = cli(&[
        "prompt",
        "--checkpoint",
        &stories260k(),
        "--dev",
        &dev,
        "--label-names",
        &names,
        "--max-sentence-len",
        "48",
        "--dev-out",
        &dev_out,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("accuracy"));
    let lines = std::fs::read_to_string(&dev_out).unwrap();
    assert_eq!(lines.lines().count(), 8);
    assert!(
        lines
            .lines()
            .all(|l| l.starts_with('0') || l.starts_with('1'))
            && lines.contains(" ||| ")
    );

    let model_dir = path(d.join("run"));
    let ft_out = path(d.join("ft-dev.txt"));
    let out = cli(&[
        "finetune",
        "--checkpoint",
        &stories260k(),
        "--train",
        &train,
        "--dev",
        &dev,
        "--label-names",
        &names,
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--lr",
        "1e-3",
        "--max-sentence-len",
        "24",
        "--dev-out",
        &ft_out,
        "--out-dir",
        &model_dir,
    ]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let finetuned = std::fs::read_to_string(&ft_out).unwrap();
    assert_eq!(finetuned.lines().count(), 8);

    let eval_out = path(d.join("eval.txt"));
    let tokenizer = path(fixture("models/stories260K/tok512.bin"));
    let out = cli(&[
        "eval",
        "--model-dir",
        &model_dir,
        "--data",
        &dev,
        "--tokenizer",
        &tokenizer,
        "--out",
        &eval_out,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(&eval_out).unwrap(),
        finetuned,
        "eval reproduces the run"
    );

    // Label names whose count does not match the classes.
    let out = cli(&[
        "prompt",
        "--checkpoint",
        &stories260k(),
        "--dev",
        &dev,
        "--label-names",
        &path(fixture("data/sst-label-mapping.json")),
        "--dev-out",
        &path(d.join("x.txt")),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(!d.join("x.txt").exists());
}

/// `finetune` of stories260K on `train`/`dev` at batch 8 and 16 tokens a sentence, the run
/// kept in `out_dir`, dev predictions written to `dev_out`.
pub(crate) fn finetune_args(
    train: &str,
    dev: &str,
    out_dir: &str,
    dev_out: &str,
    epochs: u32,
) -> Vec<String> {
    let epochs = epochs.to_string();
    let checkpoint = stories260k();
    [
        "finetune",
        "--checkpoint",
        &checkpoint,
        "--train",
        train,
        "--dev",
        dev,
        "--epochs",
        &epochs,
        "--batch-size",
        "8",
        "--max-sentence-len",
        "16",
        "--dev-out",
        dev_out,
        "--out-dir",
        out_dir,
    ]
    .map(String::from)
    .to_vec()
}

/// Ctrl-C during fine-tuning: the step finishes, the run is saved, the message says how to
/// resume, the exit status is 130 and no predictions file appears; the printed command then
/// finishes the run.
#[test]
fn ctrl_c_saves_the_run_and_resume_finishes_it() {
    use std::io::{BufRead, BufReader, Read};
    use std::process::Stdio;

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let dev = head(d, "cfimdb-dev.txt", 8);
    let train = head(d, "cfimdb-train.txt", 32);
    let model_dir = path(d.join("run"));
    let ft_out = d.join("ft-dev.txt");
    let mut args: Vec<String> = ["--backend", "ndarray"].map(String::from).to_vec();
    args.extend(finetune_args(
        &train,
        &dev,
        &model_dir,
        &path(ft_out.clone()),
        3,
    ));
    args.extend(["--lr", "1e-3"].map(String::from));
    let mut child = crate::common::llama_cli()
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("llama-cli runs");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut seen = String::new();
    // The data are loaded and the handler installed once this line is printed.
    while !seen.contains("fine-tuning (") {
        let mut line = String::new();
        if stderr.read_line(&mut line).expect("read stderr") == 0 {
            panic!("llama-cli ended early: {seen}");
        }
        seen.push_str(&line);
    }
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(kill.success());
    stderr.read_to_string(&mut seen).expect("read stderr");
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(130), "{seen}");
    assert!(seen.contains("interrupted at epoch 1"), "{seen}");
    assert!(!seen.contains("panicked"), "{seen}");
    let resume = seen
        .lines()
        .find_map(|l| l.strip_prefix("resume with: "))
        .unwrap_or_else(|| panic!("no resume command in: {seen}"))
        .to_string();
    assert!(resume.ends_with(" --resume"), "{resume}");
    assert!(d.join("run").join("resume.json").exists());
    assert!(!ft_out.exists(), "no predictions from an interrupted run");

    let mut resumed = args.clone();
    resumed.push("--resume".into());
    let out = crate::common::llama_cli()
        .args(&resumed)
        .output()
        .expect("llama-cli runs");
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let predictions = std::fs::read_to_string(&ft_out).unwrap();
    assert_eq!(predictions.lines().count(), 8);
    // Resuming again finds nothing left to train and predicts the same.
    let again = crate::common::llama_cli()
        .args(&resumed)
        .output()
        .expect("llama-cli runs");
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert_eq!(std::fs::read_to_string(&ft_out).unwrap(), predictions);
}

#[test]
fn max_steps_stops_saved_and_resume_refuses_other_settings() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let dev = head(d, "cfimdb-dev.txt", 8);
    let train = head(d, "cfimdb-train.txt", 16);
    let model_dir = path(d.join("run"));
    let base = |extra: &[&str]| {
        let mut args = finetune_args(&train, &dev, &model_dir, "/dev/null", 1);
        args.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        cli(&refs)
    };
    let out = base(&["--max-steps", "1"]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("stopped (step budget spent) at epoch 1, after batch 1"),
        "{err}"
    );
    assert!(
        err.contains("resume with: ") && !err.contains("--max-steps 1 "),
        "{err}"
    );
    assert!(
        err.contains("% of epoch 1's token positions (")
            && err.contains("% with --group-by-length)"),
        "{err}"
    );
    let out = base(&["--resume", "--lr", "1e-3"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("its lr was 0.00002, now 0.001"), "{err}");
    let out = base(&["--resume", "--group-by-length"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("its group by length was false, now true"),
        "{err}"
    );
}

/// A tokenizer whose vocabulary does not fit the model is refused before anything runs.
#[test]
fn a_tokenizer_of_another_model_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let llama2 = path(fixture("tokenizers/llama2-tokenizer.model"));
    let out = cli(&[
        "generate",
        "--checkpoint",
        &stories260k(),
        "--tokenizer",
        &llama2,
        "--temperature",
        "0",
        "--out",
        &path(dir.path().join("out.txt")),
    ]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("has 32000 tokens but the model") && err.contains("expects 512"),
        "{err}"
    );
    assert!(!dir.path().join("out.txt").exists());
}

/// A backend left out of this build says which cargo feature brings it in.
#[cfg(not(feature = "tch"))]
#[test]
fn a_backend_not_compiled_in_names_its_feature() {
    let out = crate::common::llama_cli()
        .args(["--backend", "tch-cpu", "generate", "--checkpoint"])
        .arg(stories260k())
        .args(["--temperature", "0"])
        .output()
        .expect("llama-cli runs");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("backend `tch-cpu` is not compiled into this binary")
            && err.contains("--features tch"),
        "{err}"
    );
}

/// `llama-cli check` runs the exercise's three checks and prints its three success lines;
/// a broken reference file is one error naming the file.
#[test]
fn check_prints_the_exercise_success_lines() {
    let out = cli(&[
        "check",
        "--checkpoint",
        &stories260k(),
        "--sanity",
        &path(fixture("reference/forward-stories260K.safetensors")),
        "--rope",
        &path(fixture("reference/rope.json")),
        "--optimizer",
        &path(fixture("reference/adamw.json")),
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let successes: Vec<&str> = stdout
        .lines()
        .filter(|l| l.ends_with("passed!") || l.ends_with("correct!"))
        .collect();
    assert_eq!(
        successes,
        [
            "Rotary embedding test passed!",
            "Optimizer test passed!",
            "Your Llama implementation is correct!"
        ]
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("rope.json");
    std::fs::write(&bad, "{\"assignment_test\": []}").unwrap();
    let out = cli(&["check", "--only", "rope", "--rope", &path(bad)]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("rope.json") && stderr.contains("head_dim"),
        "{stderr}"
    );
    assert!(!text(&out.stdout).contains("passed!"));
}

/// The shipped binary finds the reference data only through `LLAMA_FIXTURES` (no build
/// machine path is compiled in): without it, `check`'s default is one error line naming the
/// flag and the variable; with it, the default is found.
#[test]
fn check_defaults_come_from_llama_fixtures_only() {
    let dir = tempfile::tempdir().unwrap();
    let run = |fixtures: Option<&std::path::Path>| {
        let mut command = crate::common::llama_cli();
        command.env_remove(FIXTURES_ENV).current_dir(dir.path());
        if let Some(f) = fixtures {
            command.env(FIXTURES_ENV, f);
        }
        command
            .args(["--backend", "ndarray", "--quiet", "check", "--only", "rope"])
            .output()
            .unwrap()
    };
    let out = run(None);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("--rope") && stderr.contains(FIXTURES_ENV),
        "{stderr}"
    );
    let out = run(Some(&fixtures_dir()));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("Rotary embedding test passed!"));
}

/// `finetune --pad-position-pooling` trains on the exercise's code's convention (the hidden
/// state at the batch's last position, `h[:, -1]`); the saved classifier keeps it, so `eval`
/// reproduces the run's predictions.
#[test]
fn pad_position_pooling_is_kept_by_the_saved_classifier() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let dev = head(d, "cfimdb-dev.txt", 8);
    let train = head(d, "cfimdb-train.txt", 16);
    let model_dir = path(d.join("run"));
    let dev_out = path(d.join("dev-out.txt"));
    let mut args = finetune_args(&train, &dev, &model_dir, &dev_out, 1);
    args.push("--pad-position-pooling".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = cli(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("run/classifier.json")).unwrap())
            .unwrap();
    assert_eq!(config["position"], "last_position", "{config}");
    let eval_out = path(d.join("eval.txt"));
    let out = cli(&[
        "eval",
        "--model-dir",
        &model_dir,
        "--data",
        &dev,
        "--tokenizer",
        &path(fixture("models/stories260K/tok512.bin")),
        "--batch-size",
        "8",
        "--out",
        &eval_out,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(&eval_out).unwrap(),
        std::fs::read_to_string(&dev_out).unwrap()
    );
}

/// `bench` names its allocator setting (peak memory depends on it) in the header and the
/// JSON, and jemalloc's own environment override reaches it.
#[test]
fn bench_reports_the_freed_page_setting_and_its_override() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = stories260k();
    for (env, header, decay) in [
        (None, "freed pages kept", -1),
        (
            Some("dirty_decay_ms:0,muzzy_decay_ms:0"),
            "freed pages returned after 0 ms",
            0,
        ),
    ] {
        let json = dir.path().join("bench.json");
        let json_arg = path(json.clone());
        let mut command = crate::common::llama_cli();
        command.args(["--backend", "ndarray", "bench", "--checkpoint", &checkpoint]);
        command.args(["--only", "generate", "--runs", "1", "--prompt-tokens", "4"]);
        command.args(["--new-tokens", "8", "--json", &json_arg]);
        match env {
            Some(conf) => command.env("_RJEM_MALLOC_CONF", conf),
            None => command.env_remove("_RJEM_MALLOC_CONF"),
        };
        let out = command.output().expect("llama-cli runs");
        assert!(out.status.success(), "{}", text(&out.stderr));
        let stdout = text(&out.stdout);
        assert!(stdout.contains(header), "{stdout}");
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!(report["freed_page_decay_ms"], decay);
        assert_eq!(report["backend"], "ndarray");
        assert!(report["decode_tokens_per_s"].as_f64().unwrap() > 0.0);
        // Decoding alone: the loading peak against the weights it holds.
        let held = report["weights_held_mb"].as_f64().unwrap();
        let peak = report["load_peak_rss_mb"].as_f64().unwrap();
        assert!(held > 0.0);
        assert_eq!(
            report["load_peak_over_weights"].as_f64().unwrap(),
            peak / held
        );
    }
}
