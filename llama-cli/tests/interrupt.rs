//! Stopping a training run by hand: a second Ctrl-C during a save waits for the save
//! (held open by the test builds' save gate, so nothing here depends on timing), and the
//! folder then resumes.

use crate::common;
use crate::data_parallel::{finetune, read_until, scratch};
use crate::data_parallel_trust::signal;

use std::io::BufReader;
use std::process::Stdio;
use std::time::{Duration, Instant};

#[test]
fn a_second_ctrl_c_during_a_save_exits_after_the_save() {
    let s = scratch(16);
    let gate = tempfile::tempdir().unwrap();
    let mut child = common::llama_cli()
        .args(finetune(&s.train, &s.dev, &s.run, 40))
        .env("LLAMA_SAVE_GATE", gate.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let started = Instant::now();
    // Held at the start of the first save (the end of epoch 1).
    while !gate.path().join("saving").exists() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no save began"
        );
        assert!(child.try_wait().unwrap().is_none(), "ended before saving");
        std::thread::sleep(Duration::from_millis(50));
    }
    let limit = Duration::from_secs(60);
    signal(child.id(), "INT");
    read_until(&mut stderr, "stop requested", limit);
    signal(child.id(), "INT");
    read_until(&mut stderr, "saving… exiting when the save is done", limit);
    assert!(
        child.try_wait().unwrap().is_none(),
        "exited in the middle of the save"
    );
    assert!(!s.run.join("resume.json").exists(), "the save is held");

    std::fs::write(gate.path().join("go"), b"").unwrap();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(180) {
            let _ = child.kill();
            panic!("did not exit after the save");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(130));
    // The save it waited for is whole: the run resumes from it to its end.
    assert!(s.run.join("resume.json").is_file());
    assert!(s.run.join("classifier.mpk").is_file());
    let mut args = finetune(&s.train, &s.dev, &s.run, 40);
    args.extend(["--resume", "--max-steps", "2"].map(String::from));
    let out = common::llama_cli().args(&args).output().unwrap();
    let said = common::text(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("step budget spent"), "{said}");
}
