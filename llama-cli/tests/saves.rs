//! What survives what: `pretrain` and `finetune` saves cut off by a full disk (the child's
//! `RLIMIT_FSIZE`, with `SIGXFSZ` ignored, so that writes fail with `EFBIG` as they would
//! with `ENOSPC`) or by a crash after each file operation of a save (the test builds'
//! `LLAMA_FAULT_AT=k` hook aborts the process there). Each time the folder resumes from the
//! state before the save or the one after it, whole: the run then ends with exactly the
//! weights of an uninterrupted run, every model and record file in the folder is a complete
//! version of itself, and no temporary file is left once the run goes on.

use std::collections::BTreeMap;

use burn::backend::NdArray;
use llama_train::classify::finetune::load_classifier;
use llama_train::fnv::weights_digest;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use crate::cli::finetune_args;
use crate::common::{head, llama_cli, path, text};
use crate::pretrain::{preset, sentences, tok512};

/// How a child run is cut off.
#[derive(Clone, Copy)]
pub(crate) enum Fault {
    None,
    /// Files may grow to this many bytes; a write past it fails (`EFBIG`).
    FileSize(u64),
    /// Abort after the k-th file operation of the run's saves.
    At(usize),
    /// List the file operations (an `At` never reached).
    Count,
}

/// `llama-cli --backend ndarray --quiet ARGS…` under `fault`.
pub(crate) fn run(args: &[String], fault: Fault) -> Output {
    let mut command = llama_cli();
    command.args(["--backend", "ndarray", "--quiet"]).args(args);
    match fault {
        Fault::None => {}
        Fault::FileSize(limit) => {
            // SAFETY: only async-signal-safe calls (setrlimit, signal) between fork and exec.
            unsafe {
                command.pre_exec(move || {
                    let rlimit = libc::rlimit {
                        rlim_cur: limit,
                        rlim_max: limit,
                    };
                    if libc::setrlimit(libc::RLIMIT_FSIZE, &rlimit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                    Ok(())
                });
            }
        }
        Fault::At(k) => {
            command.env("LLAMA_FAULT_AT", k.to_string());
            // SAFETY: only an async-signal-safe call (setrlimit) between fork and exec.
            unsafe {
                command.pre_exec(|| {
                    // No core file for each of the aborts.
                    let none = libc::rlimit {
                        rlim_cur: 0,
                        rlim_max: 0,
                    };
                    libc::setrlimit(libc::RLIMIT_CORE, &none);
                    Ok(())
                });
            }
        }
        Fault::Count => {
            command.env("LLAMA_FAULT_AT", usize::MAX.to_string());
        }
    }
    command.output().expect("llama-cli runs")
}

fn ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Every file under `dir`, by path relative to it.
pub(crate) fn files(dir: &Path) -> BTreeMap<PathBuf, PathBuf> {
    let mut all = BTreeMap::new();
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
            } else {
                all.insert(path.strip_prefix(dir).unwrap().to_path_buf(), path);
            }
        }
    }
    all
}

/// The model and record files under `dir` (safetensors, Burn records).
fn weights(dir: &Path) -> Vec<(PathBuf, PathBuf)> {
    files(dir)
        .into_iter()
        .filter(|(name, _)| {
            let name = name.to_string_lossy();
            !name.contains(".tmp-") && (name.ends_with(".mpk") || name.ends_with(".safetensors"))
        })
        .collect()
}

/// The temporary files of cut-off saves under `dir`.
fn temporaries(dir: &Path) -> Vec<PathBuf> {
    files(dir)
        .into_keys()
        .filter(|name| name.to_string_lossy().contains(".tmp-"))
        .collect()
}

/// Every model and record file of `dir` is whole: a complete MessagePack document (Burn's
/// records) or safetensors file.
fn all_whole(dir: &Path, what: &str) {
    for (name, path) in weights(dir) {
        let bytes = std::fs::read(&path).unwrap();
        let whole = if name.to_string_lossy().ends_with(".mpk") {
            rmp_serde::from_slice::<serde::de::IgnoredAny>(&bytes).is_ok()
        } else {
            safetensors::SafeTensors::deserialize(&bytes).is_ok()
        };
        assert!(whole, "{what}: {} is torn", name.display());
    }
}

/// The distinct sizes of the files a save writes, each less one: file-size limits that
/// fail the write of every file at least that large.
fn limits(written: &Path) -> Vec<u64> {
    let mut sizes: Vec<u64> = files(written)
        .into_values()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .filter(|&n| n > 0)
        .collect();
    sizes.sort_unstable();
    sizes.dedup();
    // The smallest, a middle one and the largest: a save cut off early, midway, late.
    let picks = [0, sizes.len() / 2, sizes.len() - 1];
    let mut limits: Vec<u64> = picks.iter().map(|&i| sizes[i] - 1).collect();
    limits.dedup();
    limits
}

/// The step `resume.json` of `dir` stands at.
fn saved_step(dir: &Path) -> u64 {
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("resume.json")).unwrap()).unwrap();
    state["steps"].as_u64().unwrap()
}

/// The `pretrain` call of these tests: the stories260K preset on a few SST sentences, a
/// step of four 32-token windows, into `out`.
pub(crate) fn pretrain(data: &(String, String), out: &Path, extra: &[&str]) -> Vec<String> {
    let flags = [
        ("--config", preset()),
        ("--tokenizer", tok512()),
        ("--text", data.0.clone()),
        ("--val-text", data.1.clone()),
        ("--seq-len", "32".into()),
        ("--batch-size", "4".into()),
        ("--warmup-steps", "1".into()),
        ("--out-dir", path(out)),
    ];
    let mut args = vec!["pretrain".to_string()];
    for (flag, value) in flags {
        args.extend([flag.to_string(), value]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// The folders of a run stopped after step 1 (`good`) and of one more step from there
/// (`reference`), and the file operations of that step.
struct Folders {
    good: PathBuf,
    reference: PathBuf,
    /// How many file operations the step does.
    operations: usize,
    /// Those after which a crash leaves something new on disk (see [`crash_points`]).
    crash_points: Vec<usize>,
}

/// The operations (1-based) of a step's list (`file operation N: WHAT PATH` lines) after
/// which a process that dies leaves a state on disk that no earlier crash point left: each
/// rename (the new file in place) and each remove, and the first finished write (a
/// temporary file left behind). A crash after any other operation leaves one of these
/// states (for a killed process; a power loss is the `fsync`s' concern): after a
/// temporary's create, write or `fsync`, the state after the rename or remove before it,
/// plus a temporary file; after a folder's `fsync`, the state after its rename. With
/// `LLAMA_TEST_EVERY_FAULT=1` every operation is a crash point (slower: about four times as
/// many runs).
fn crash_points(stderr: &str) -> Vec<usize> {
    let operations: Vec<(usize, &str)> = stderr
        .lines()
        .filter_map(|line| line.strip_prefix("file operation "))
        .filter_map(|rest| {
            let (n, what) = rest.split_once(": ")?;
            Some((n.parse().ok()?, what))
        })
        .collect();
    if std::env::var_os("LLAMA_TEST_EVERY_FAULT").is_some() {
        return operations.iter().map(|&(n, _)| n).collect();
    }
    let first_write = operations
        .iter()
        .find(|(_, what)| what.starts_with("write "))
        .map(|&(n, _)| n);
    operations
        .iter()
        .filter(|(_, what)| what.starts_with("rename ") || what.starts_with("remove "))
        .map(|&(n, _)| n)
        .chain(first_write)
        .collect()
}

impl Folders {
    /// Runs `call(folder, flags)` for step 1 into `d/good`, then one more step from a copy
    /// of it (`d/reference`), its file operations counted.
    fn new(d: &Path, call: impl Fn(&Path, &[&str]) -> Vec<String>) -> Self {
        let good = d.join("good");
        ok(
            &run(&call(&good, &["--max-steps", "1"]), Fault::None),
            "step 1",
        );
        let reference = d.join("reference");
        copy_dir(&good, &reference);
        let out = run(&call(&reference, &ONE_MORE_STEP), Fault::Count);
        ok(&out, "step 2");
        let stderr = text(&out.stderr);
        Self {
            good,
            reference,
            operations: stderr.matches("file operation ").count(),
            crash_points: crash_points(&stderr),
        }
    }
}

/// The flags of the step after the good state.
const ONE_MORE_STEP: [&str; 3] = ["--resume", "--max-steps", "1"];

/// A run stopped at a good state, and the step from there whose saves are cut off.
trait Saves {
    fn folders(&self) -> &Folders;
    /// The call that takes the run in `dir` one step on from the good state.
    fn step(&self, dir: &Path) -> Vec<String>;
    /// Resumes what a cut-off step left in `dir` and checks that the run ends as an
    /// uninterrupted one does.
    fn resume_and_check(&self, dir: &Path, what: &str);
}

/// The step from the good state in `scratch`, cut off by `fault`; then the run resumed from
/// what is left: every model and record file whole, the run ending as an uninterrupted one,
/// no temporary file left.
fn cut_off_then_resume(states: &impl Saves, scratch: &Path, fault: Fault, what: &str) -> Output {
    copy_dir(&states.folders().good, scratch);
    let cut = run(&states.step(scratch), fault);
    all_whole(scratch, what);
    states.resume_and_check(scratch, what);
    assert_eq!(temporaries(scratch), Vec::<PathBuf>::new(), "{what}");
    cut
}

/// A crash after each file operation of the step that changes what is on disk, one at a
/// time.
fn crash_after_every_operation(states: &impl Saves, scratch: &Path) {
    let Folders {
        operations,
        crash_points,
        ..
    } = states.folders();
    // Every record and output of the step: its saves are many files' operations.
    assert!(*operations >= 20, "{operations} operations");
    assert!(!crash_points.is_empty());
    for &k in crash_points {
        let what = format!("crash after file operation {k}");
        let cut = cut_off_then_resume(states, scratch, Fault::At(k), &what);
        assert_eq!(cut.status.code(), None, "{what}: {}", text(&cut.stderr));
    }
}

/// The step on a disk too small for some of its files: one clear error.
fn fill_the_disk(states: &impl Saves, scratch: &Path) {
    for limit in limits(&states.folders().reference) {
        let what = format!("files limited to {limit} bytes");
        let cut = cut_off_then_resume(states, scratch, Fault::FileSize(limit), &what);
        let err = text(&cut.stderr);
        assert_eq!(cut.status.code(), Some(1), "{what}: {err}");
        assert!(err.contains("File too large"), "{what}: {err}");
    }
}

/// `pretrain` stopped after step 1; `model-last.safetensors` of steps 2 and 3 of an
/// uninterrupted run.
struct PretrainStates {
    data: (String, String),
    folders: Folders,
    last: [Vec<u8>; 2],
}

impl PretrainStates {
    fn new(d: &Path) -> Self {
        let data = (
            sentences(d, "sst-train.txt", 40),
            sentences(d, "sst-dev.txt", 4),
        );
        let folders = Folders::new(d, |out, extra| pretrain(&data, out, extra));
        let last = |dir: &Path| std::fs::read(dir.join("model-last.safetensors")).unwrap();
        let third = d.join("third");
        copy_dir(&folders.reference, &third);
        ok(
            &run(&pretrain(&data, &third, &ONE_MORE_STEP), Fault::None),
            "step 3",
        );
        Self {
            last: [last(&folders.reference), last(&third)],
            data,
            folders,
        }
    }
}

impl Saves for PretrainStates {
    fn folders(&self) -> &Folders {
        &self.folders
    }

    fn step(&self, dir: &Path) -> Vec<String> {
        pretrain(&self.data, dir, &ONE_MORE_STEP)
    }

    /// One more step: the run stands at step 2 (the cut-off save was lost) or 3 (it was
    /// whole), with an uninterrupted run's weights.
    fn resume_and_check(&self, dir: &Path, what: &str) {
        ok(
            &run(&self.step(dir), Fault::None),
            &format!("{what}, resumed"),
        );
        let saved = saved_step(dir);
        assert!(saved == 2 || saved == 3, "{what}: resumed to step {saved}");
        let last = std::fs::read(dir.join("model-last.safetensors")).unwrap();
        assert!(
            last == self.last[saved as usize - 2],
            "{what}: the weights of step {saved} differ from an uninterrupted run's"
        );
    }
}

#[test]
fn a_pretrain_save_cut_off_anywhere_resumes_the_state_before_or_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let states = PretrainStates::new(dir.path());
    crash_after_every_operation(&states, &dir.path().join("scratch"));
}

#[test]
fn a_pretrain_save_on_a_full_disk_fails_and_the_run_resumes_from_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let states = PretrainStates::new(dir.path());
    let scratch = dir.path().join("scratch");
    fill_the_disk(&states, &scratch);
    // A record that `resume.json` names, cut short behind the run's back: refused, with the
    // file and both lengths, and nothing changed.
    copy_dir(&states.folders.good, &scratch);
    let record = scratch.join("checkpoint/model-1.mpk");
    let bytes = std::fs::read(&record).unwrap();
    std::fs::write(&record, &bytes[..bytes.len() / 2]).unwrap();
    let state = std::fs::read(scratch.join("resume.json")).unwrap();
    let out = run(&states.step(&scratch), Fault::None);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let expected = format!(
        "model-1.mpk: {} bytes, but {} when it was saved",
        bytes.len() / 2,
        bytes.len()
    );
    assert!(err.contains(&expected), "{err}");
    assert_eq!(std::fs::read(scratch.join("resume.json")).unwrap(), state);
}

/// The `finetune` call of these tests: stories260K on `data` (training and dev files), two
/// epochs of one step, into `out`.
fn finetune(data: &(String, String), out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = finetune_args(&data.0, &data.1, &path(out), "/dev/null", 2);
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// A digest of the weights of the classifier saved in `dir` (the record's bytes also hold
/// the parameters' ids, drawn anew by each process).
fn classifier_digest(dir: &Path) -> u64 {
    let saved = load_classifier::<NdArray<f32>>(dir, &Default::default()).unwrap();
    weights_digest(&saved.model)
}

/// `finetune` of two epochs of one step each, stopped after step 1 (the step after it is
/// the first epoch's dev pass, best model and save, then step 2 and the stop); the weights
/// digest of the classifier an uninterrupted run saves.
struct FinetuneStates {
    data: (String, String),
    folders: Folders,
    expected: u64,
}

impl FinetuneStates {
    fn new(d: &Path) -> Self {
        let data = (head(d, "cfimdb-train.txt", 8), head(d, "cfimdb-dev.txt", 4));
        let straight = d.join("straight");
        ok(
            &run(&finetune(&data, &straight, &[]), Fault::None),
            "straight run",
        );
        Self {
            expected: classifier_digest(&straight),
            folders: Folders::new(d, |out, extra| finetune(&data, out, extra)),
            data,
        }
    }
}

impl Saves for FinetuneStates {
    fn folders(&self) -> &Folders {
        &self.folders
    }

    fn step(&self, dir: &Path) -> Vec<String> {
        finetune(&self.data, dir, &ONE_MORE_STEP)
    }

    /// The rest of the run: its best classifier is the uninterrupted run's.
    fn resume_and_check(&self, dir: &Path, what: &str) {
        let rest = finetune(&self.data, dir, &["--resume"]);
        ok(&run(&rest, Fault::None), &format!("{what}, resumed"));
        assert!(
            classifier_digest(dir) == self.expected,
            "{what}: the classifier differs from an uninterrupted run's"
        );
    }
}

#[test]
fn a_finetune_save_cut_off_anywhere_resumes_the_state_before_or_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let states = FinetuneStates::new(dir.path());
    crash_after_every_operation(&states, &dir.path().join("scratch"));
}

#[test]
fn a_finetune_save_on_a_full_disk_fails_and_the_run_resumes_from_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let states = FinetuneStates::new(dir.path());
    fill_the_disk(&states, &dir.path().join("scratch"));
}
