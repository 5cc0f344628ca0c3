//! Data-parallel fine-tuning, as processes on 127.0.0.1: two ranks train
//! the weights one process trains; a killed rank stops the run without hanging, and the
//! run resumes from what rank 0 saved; bad rank settings fail within seconds.
//!
//! Every process here talks to 127.0.0.1 only, and every wait is bounded.

use crate::common;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, ChildStderr, Command, Stdio};
use std::time::{Duration, Instant};

use burn::backend::NdArray;
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use common::{head, path, text};
use llama_model::fixtures::fixture;
use llama_model::{load_checkpoint, LoadOptions};
use llama_train::classify::finetune::load_classifier;

/// Largest difference allowed between the weights of a 2-rank run and a 1-process run after
/// six AdamW steps at lr 1e-3 (two epochs of 8 + 8 + 1 rows): the gradients differ in f32
/// summation order only (two 4-row products summed instead of one 8-row product).
/// Measured 1.1e-6 (see the README, "Data-parallel training").
const WEIGHT_TOLERANCE: f32 = 5e-6;

/// The same for `pretrain` of the stories260K preset from scratch: one epoch of 74 steps at
/// lr 1e-3, global batch 8 windows of 32 tokens, gradient clipping at 1. Measured 1.9e-5.
const PRETRAIN_TOLERANCE: f32 = 1e-4;

/// `finetune` of stories260K at global batch 8, 16 tokens a sentence, lr 1e-3, on flex
/// with one thread (the ranks share this machine's cores).
pub(crate) fn finetune(train: &str, dev: &str, out_dir: &Path, epochs: u32) -> Vec<String> {
    let checkpoint = path(&fixture("models/stories260K/stories260K.bin"));
    let epochs = epochs.to_string();
    let out = path(out_dir);
    let dev_out = path(&out_dir.with_extension("dev-out.txt"));
    [
        "--backend",
        "flex",
        "--threads",
        "1",
        "--quiet",
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
        "--lr",
        "1e-3",
        "--dev-out",
        &dev_out,
        "--out-dir",
        &out,
    ]
    .map(String::from)
    .to_vec()
}

/// A scratch folder with the first `rows` CFIMDB training sentences, 8 dev sentences, and
/// the path of a run folder in it (not created).
pub(crate) struct Scratch {
    /// Kept for its lifetime: the folder goes when the scratch does.
    _dir: tempfile::TempDir,
    pub(crate) train: String,
    pub(crate) dev: String,
    pub(crate) run: std::path::PathBuf,
}

pub(crate) fn scratch(rows: usize) -> Scratch {
    let dir = tempfile::tempdir().unwrap();
    let train = head(dir.path(), "cfimdb-train.txt", rows);
    let dev = head(dir.path(), "cfimdb-dev.txt", 8);
    let run = dir.path().join("run");
    Scratch {
        _dir: dir,
        train,
        dev,
        run,
    }
}

/// A loopback port that was free a moment ago.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `llama-cli coordinator` on a free port, once it accepts connections; and its address.
pub(crate) fn start_coordinator() -> (Child, String) {
    let port = free_port();
    let coordinator = common::llama_cli()
        .args([
            "coordinator",
            "--world-size",
            "2",
            "--port",
            &port.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no coordinator"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (coordinator, format!("127.0.0.1:{port}"))
}

/// Waits (at most 2 minutes) until rank 0 has saved an epoch of the run in `run`.
pub(crate) fn wait_for_a_saved_epoch(run: &Path) {
    let started = Instant::now();
    while !run.join("resume.json").exists() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no epoch saved"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `llama-cli launch --nproc 2 -- ARGS`, to completion, bounded by a watchdog.
pub(crate) fn launch(args: &[String], limit: Duration) -> (bool, String, String) {
    let child = common::llama_cli()
        .args(["launch", "--nproc", "2", "--"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("llama-cli runs");
    let out = wait_bounded(child, limit);
    (out.0, out.1, out.2)
}

/// Waits for `child` at most `limit`, killing it past that (and failing).
pub(crate) fn wait_bounded(mut child: Child, limit: Duration) -> (bool, String, String) {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut stdout = String::new();
            let mut stderr = String::new();
            if let Some(mut s) = child.stdout.take() {
                s.read_to_string(&mut stdout).unwrap();
            }
            if let Some(mut s) = child.stderr.take() {
                s.read_to_string(&mut stderr).unwrap();
            }
            return (status.success(), stdout, stderr);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("llama-cli ran past {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `command` to its end: it must fail with exit status 1 and a message holding `needle`.
pub(crate) fn fails_with(command: &mut Command, needle: &str) {
    let out = command.output().expect("llama-cli runs");
    let said = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains(needle), "no {needle:?} in {said}");
}

/// `llama-cli launch --nproc 2 -- ARGS` started, its ranks' process ids, and its standard
/// error (read up to the ranks' start).
pub(crate) fn launch_watched(args: &[String]) -> (Child, Vec<u32>, BufReader<ChildStderr>) {
    let mut child = common::llama_cli()
        .args(["launch", "--nproc", "2", "--"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let seen = read_until(&mut stderr, "rank 1 is process ", Duration::from_secs(60));
    let pids: Vec<u32> = seen
        .lines()
        .filter_map(|l| l.split("is process ").nth(1)?.trim().parse().ok())
        .collect();
    assert_eq!(pids.len(), 2, "{seen}");
    (child, pids, stderr)
}

/// Every float parameter's values, in visiting order.
fn weights<B: Backend, M: Module<B>>(module: &M) -> Vec<f32> {
    struct Collect(Vec<f32>);
    impl<B: Backend> ModuleVisitor<B> for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let data = param.val().into_data().convert::<f32>();
            self.0.extend(data.iter::<f32>());
        }
    }
    let mut collect = Collect(Vec::new());
    module.visit(&mut collect);
    collect.0
}

/// The largest absolute difference between two weight lists of the same model shape.
fn largest_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max)
}

/// The digest each rank prints at the end: `rank R: N steps; weights digest D`.
fn digests(stdout: &str) -> Vec<(String, String)> {
    let mut found: Vec<(String, String)> = stdout
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("rank ")?;
            let (rank, rest) = rest.split_once(": ")?;
            let digest = rest.split("weights digest ").nth(1)?.split(';').next()?;
            Some((rank.to_string(), digest.to_string()))
        })
        .collect();
    found.sort();
    found
}

#[test]
fn two_ranks_train_the_weights_one_process_trains() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 17 sentences: batches of 8, 8 and 1 row (the last one trained whole by both ranks).
    let train = head(d, "cfimdb-train.txt", 17);
    let dev = head(d, "cfimdb-dev.txt", 8);

    let one = d.join("one");
    let out = common::llama_cli()
        .args(finetune(&train, &dev, &one, 2))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));

    let two = d.join("two");
    let (ok, stdout, stderr) = launch(&finetune(&train, &dev, &two, 2), Duration::from_secs(300));
    assert!(ok, "{stdout}{stderr}");
    // Both ranks took the 6 steps and hold bit-identical weights.
    let found = digests(&stdout);
    assert_eq!(found.len(), 2, "{stdout}");
    assert_eq!(found[0].1, found[1].1, "{stdout}");
    assert!(stdout.contains("rank 1: 6 steps"), "{stdout}");
    // Rank 0 alone wrote the run and the predictions.
    assert!(two.join("classifier.mpk").exists());

    let device = Default::default();
    let a = weights(&load_classifier::<NdArray>(&one, &device).unwrap().model);
    let b = weights(&load_classifier::<NdArray>(&two, &device).unwrap().model);
    let worst = largest_difference(&a, &b);
    eprintln!("largest weight difference, 2 ranks against 1 process: {worst:e}");
    assert!(worst <= WEIGHT_TOLERANCE, "{worst:e}");
    // The base weights moved: the comparison is not of two untrained models.
    let base = weights(
        &load_classifier::<NdArray>(&one, &device)
            .unwrap()
            .model
            .llama,
    );
    assert!(!base.is_empty());
    assert_eq!(
        std::fs::read_to_string(one.with_extension("dev-out.txt")).unwrap(),
        std::fs::read_to_string(two.with_extension("dev-out.txt")).unwrap(),
        "the same dev predictions"
    );
}

/// Reads `child`'s standard error until a line contains `marker`; returns what it read.
pub(crate) fn read_until(stderr: &mut impl BufRead, marker: &str, limit: Duration) -> String {
    let started = Instant::now();
    let mut seen = String::new();
    while !seen.contains(marker) {
        assert!(started.elapsed() < limit, "no {marker:?} in {seen}");
        let mut line = String::new();
        if stderr.read_line(&mut line).expect("read stderr") == 0 {
            panic!("ended before {marker:?}: {seen}");
        }
        seen.push_str(&line);
    }
    seen
}

#[test]
fn a_killed_rank_stops_the_run_and_it_resumes_from_the_last_save() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let train = head(d, "cfimdb-train.txt", 16);
    let dev = head(d, "cfimdb-dev.txt", 8);
    let run = d.join("run");
    let mut args = finetune(&train, &dev, &run, 40);
    args.extend(["--collective-timeout", "30"].map(String::from));
    let (mut child, pids, mut stderr) = launch_watched(&args);
    // Wait for a saved epoch (2 steps each), then kill rank 1.
    wait_for_a_saved_epoch(&run);
    let killed_at = Instant::now();
    let kill = Command::new("kill")
        .args(["-KILL", &pids[1].to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    let status = child.wait().unwrap();
    assert!(
        killed_at.elapsed() < Duration::from_secs(20),
        "took {:?}",
        killed_at.elapsed()
    );
    assert_eq!(status.code(), Some(1), "{rest}");
    assert!(rest.contains("rank 1 was killed (SIGKILL)"), "{rest}");
    // Rank 0 was stopped too: no process is left.
    assert!(
        !Path::new(&format!("/proc/{}", pids[0])).exists(),
        "rank 0 still runs"
    );

    // Resuming continues from the saved state: 2 more steps, saved.
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("resume.json")).unwrap()).unwrap();
    let steps = saved["steps"].as_u64().unwrap();
    assert!(steps >= 2 && steps.is_multiple_of(2), "{saved}");
    let mut resume = args.clone();
    resume.extend(["--resume", "--max-steps", "2"].map(String::from));
    let (ok, stdout, stderr) = launch(&resume, Duration::from_secs(300));
    assert!(ok, "{stdout}{stderr}");
    let after: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("resume.json")).unwrap()).unwrap();
    assert_eq!(after["steps"].as_u64().unwrap(), steps + 2, "{stderr}");
}

#[test]
fn standalone_ranks_fail_clearly_and_never_hang() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let train = head(d, "cfimdb-train.txt", 16);
    let dev = head(d, "cfimdb-dev.txt", 8);
    let run = d.join("run");
    let rank = |world: &str, rank: &str, coordinator: &str, extra: &[&str]| {
        let mut args = finetune(&train, &dev, &run, 1);
        args.extend(
            [
                "--world-size",
                world,
                "--rank",
                rank,
                "--coordinator",
                coordinator,
            ]
            .map(String::from),
        );
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };

    // A rank outside the world: refused before anything loads (on any backend).
    let args = rank("2", "2", "127.0.0.1:9", &[]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let subcommand = refs.iter().position(|a| *a == "finetune").unwrap();
    let out = common::cli(&refs[subcommand..]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("rank 2 is not below the world size 2"),
        "{}",
        text(&out.stderr)
    );
    // Several devices in one process: refused, naming `launch`.
    let mut devices = refs[subcommand..].to_vec();
    devices.truncate(devices.len() - 6); // without the rank flags
    devices.extend(["--devices", "0,1"]);
    let out = common::cli(&devices);
    assert_eq!(out.status.code(), Some(1));
    let said = text(&out.stderr);
    assert!(
        said.contains("single device") && said.contains("launch --nproc 2"),
        "{said}"
    );
    fails_with(
        common::llama_cli().args(["launch", "--nproc", "2", "--devices", "0", "--", "finetune"]),
        "give one per rank",
    );
    // Not an address.
    let out = common::llama_cli()
        .args(rank("2", "0", "127.0.0.1", &[]))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    // No coordinator there: an error within seconds.
    let coordinator = format!("127.0.0.1:{}", free_port());
    let started = Instant::now();
    let out = common::llama_cli()
        .args(rank("2", "0", &coordinator, &[]))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cannot reach the coordinator"),
        "{}",
        text(&out.stderr)
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(!run.exists(), "nothing written");

    // A rank alone, its partner never started: it gives up after its timeout.
    let (mut coordinator, address) = start_coordinator();
    let node = format!("127.0.0.1:{}", free_port());
    let lonely = common::llama_cli()
        .args(rank(
            "2",
            "0",
            &address,
            &["--collective-timeout", "3", "--node-address", &node],
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (ok, _, stderr) = wait_bounded(lonely, Duration::from_secs(120));
    let _ = coordinator.kill();
    let _ = coordinator.wait();
    assert!(!ok);
    assert!(
        stderr.contains("joining the run") && stderr.contains("within 3 s"),
        "{stderr}"
    );
}

/// Two ranks started by hand (no `launch` to watch them): when rank 1 is killed mid-run,
/// rank 0 stops by itself with an error naming rank 1, well within its timeout.
#[test]
fn a_rank_left_alone_mid_run_stops_naming_the_dead_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let train = head(d, "cfimdb-train.txt", 16);
    let dev = head(d, "cfimdb-dev.txt", 8);
    let run = d.join("run");
    let (mut coordinator, address) = start_coordinator();
    let ranks: Vec<Child> = (0..2)
        .map(|rank| {
            let node = free_port();
            let mut args = finetune(&train, &dev, &run, 40);
            args.extend(
                [
                    "--world-size",
                    "2",
                    "--rank",
                    &rank.to_string(),
                    "--coordinator",
                    &address,
                    "--node-address",
                    &format!("127.0.0.1:{node}"),
                    "--collective-timeout",
                    "60",
                ]
                .map(String::from),
            );
            common::llama_cli()
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let [rank0, mut rank1]: [Child; 2] = ranks.try_into().unwrap();
    wait_for_a_saved_epoch(&run);
    rank1.kill().unwrap();
    rank1.wait().unwrap();
    let killed_at = Instant::now();
    let (ok, _, stderr) = wait_bounded(rank0, Duration::from_secs(120));
    let _ = coordinator.kill();
    let _ = coordinator.wait();
    assert!(!ok);
    // Well before the 60 s timeout: the broken connection names the rank at once.
    assert!(
        killed_at.elapsed() < Duration::from_secs(30),
        "{:?}",
        killed_at.elapsed()
    );
    eprintln!(
        "rank 0 said: {}",
        stderr
            .lines()
            .filter(|l| l.starts_with("error: "))
            .collect::<Vec<_>>()
            .join(" / ")
    );
    assert!(stderr.contains("rank 1"), "{stderr}");
    assert_eq!(
        stderr.lines().filter(|l| l.starts_with("error: ")).count(),
        1,
        "{stderr}"
    );
}

/// `pretrain` of the stories260K preset from scratch on 2 ranks and on 1 process: 2 ranks
/// hold bit-identical weights, and the best model saved equals the one process's within
/// [`PRETRAIN_TOLERANCE`].
#[test]
fn pretrain_on_two_ranks_trains_what_one_process_trains() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sentences: Vec<String> = std::fs::read_to_string(fixture("data/sst-train.txt"))
        .unwrap()
        .lines()
        .take(300)
        .filter_map(|l| Some(l.split_once("|||")?.1.trim().to_string()))
        .collect();
    let text_file = d.join("text.txt");
    std::fs::write(&text_file, sentences.join("\n") + "\n").unwrap();
    let preset = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/stories260K.json");
    let tokenizer = path(&fixture("models/stories260K/tok512.bin"));
    let args = |out: &Path| -> Vec<String> {
        [
            "--backend",
            "flex",
            "--threads",
            "1",
            "--quiet",
            "pretrain",
            "--config",
            preset,
            "--tokenizer",
            &tokenizer,
            "--text",
            &path(&text_file),
            "--seq-len",
            "32",
            "--batch-size",
            "8",
            "--warmup-steps",
            "2",
            "--lr",
            "1e-3",
            "--out-dir",
            &path(out),
        ]
        .map(String::from)
        .to_vec()
    };
    let one = d.join("one");
    let out = common::llama_cli().args(args(&one)).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let two = d.join("two");
    let (ok, stdout, stderr) = launch(&args(&two), Duration::from_secs(300));
    assert!(ok, "{stdout}{stderr}");
    let found = digests(&stdout);
    assert_eq!(found.len(), 2, "{stdout}");
    assert_eq!(found[0].1, found[1].1, "{stdout}");

    let device = Default::default();
    let load = |dir: &Path| {
        let loaded = load_checkpoint::<NdArray>(
            &dir.join("model.safetensors"),
            &LoadOptions::default(),
            &device,
        )
        .unwrap();
        weights(&loaded.model)
    };
    let (a, b) = (load(&one), load(&two));
    let worst = largest_difference(&a, &b);
    eprintln!("pretrain: largest weight difference, 2 ranks against 1 process: {worst:e}");
    assert!(worst <= PRETRAIN_TOLERANCE, "{worst:e}");
}
