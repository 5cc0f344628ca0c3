//! What a data-parallel run promises about the network and about signals: its ports listen on
//! the addresses asked for (127.0.0.1 under `launch`, checked in `/proc/net/tcp`), its token
//! stays off every command line, a run past this machine needs a token, SIGTERM stops a run
//! as Ctrl-C does, and the ranks of a `launch` that is killed stop and save.
//!
//! Every process here talks to 127.0.0.1 (or 127.0.0.2) only, and every wait is bounded.

use crate::common;
use crate::data_parallel::{
    fails_with, finetune, free_port, launch_watched, scratch, wait_bounded, wait_for_a_saved_epoch,
    Scratch,
};

use std::io::{BufReader, Read};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, ChildStderr, Command, Stdio};
use std::time::{Duration, Instant};

use llama_train::distributed::wire::listening_on;

const LOOPBACK: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);

/// A `launch --nproc 2` of a long fine-tuning run in `s.run`.
fn launch_long(s: &Scratch) -> (Child, Vec<u32>, BufReader<ChildStderr>) {
    launch_watched(&finetune(&s.train, &s.dev, &s.run, 40))
}

/// A process's environment variable, from `/proc/PID/environ`.
fn environment(pid: u32, name: &str) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    environ.split(|&b| b == 0).find_map(|entry| {
        let entry = String::from_utf8_lossy(entry);
        Some(entry.strip_prefix(&format!("{name}="))?.to_string())
    })
}

/// The port of a `HOST:PORT` address.
fn port_of(address: &str) -> u16 {
    address.rsplit(':').next().unwrap().parse().unwrap()
}

/// Waits (at most `limit`) until none of `pids` runs.
fn wait_gone(pids: &[u32], limit: Duration) {
    let started = Instant::now();
    while pids
        .iter()
        .any(|pid| Path::new(&format!("/proc/{pid}")).exists())
    {
        assert!(started.elapsed() < limit, "ranks {pids:?} still run");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(crate) fn signal(pid: u32, name: &str) {
    let sent = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

#[test]
fn launch_listens_on_loopback_keeps_its_token_off_the_command_line_and_stops_on_sigterm() {
    let s = scratch(16);
    let run = &s.run;
    let (mut child, pids, mut stderr) = launch_long(&s);
    wait_for_a_saved_epoch(run);
    let mut tokens = Vec::new();
    for &pid in &pids {
        let token = environment(pid, "LLAMA_RUN_TOKEN").expect("a token in the environment");
        assert!(token.len() >= 32 && token.bytes().all(|b| b.is_ascii_hexdigit()));
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        assert!(!String::from_utf8_lossy(&cmdline).contains(&token));
        let node = port_of(&environment(pid, "LLAMA_NODE_ADDRESS").unwrap());
        assert_eq!(
            listening_on(node).unwrap(),
            [LOOPBACK],
            "rank {pid}'s exchange"
        );
        let coordinator = port_of(&environment(pid, "LLAMA_COORDINATOR").unwrap());
        assert_eq!(
            listening_on(coordinator).unwrap(),
            [LOOPBACK],
            "the coordinator"
        );
        tokens.push(token);
    }
    assert_eq!(tokens[0], tokens[1], "one token for the run");

    // A scheduler's SIGTERM: every rank stops after the same step and rank 0 saves.
    signal(child.id(), "TERM");
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{rest}");
    wait_gone(&pids, Duration::from_secs(30));
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("resume.json")).unwrap()).unwrap();
    assert!(saved["steps"].as_u64().unwrap() >= 2, "{saved}");
}

#[test]
fn the_ranks_of_a_killed_launch_stop_and_save() {
    let s = scratch(16);
    let run = &s.run;
    let (mut child, pids, _stderr) = launch_long(&s);
    wait_for_a_saved_epoch(run);
    signal(child.id(), "KILL");
    child.wait().unwrap();
    // Each rank got SIGTERM from its parent's death: they stop after a step, not orphaned.
    wait_gone(&pids, Duration::from_secs(60));
    assert!(run.join("resume.json").exists());
}

#[test]
fn a_lone_rank_stops_on_sigterm_as_on_ctrl_c() {
    let s = scratch(16);
    let run = &s.run;
    let child = common::llama_cli()
        .args(finetune(&s.train, &s.dev, run, 40))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_a_saved_epoch(run);
    signal(child.id(), "TERM");
    let (ok, _, stderr) = wait_bounded(child, Duration::from_secs(120));
    assert!(!ok);
    assert!(stderr.contains("stop requested"), "{stderr}");
    assert!(run.join("resume.json").exists());
}

#[test]
fn a_run_past_this_machine_needs_a_token_and_listens_where_asked() {
    let s = scratch(16);
    let run = &s.run;
    let mut args = finetune(&s.train, &s.dev, run, 1);
    args.extend(
        [
            "--world-size",
            "2",
            "--rank",
            "1",
            "--coordinator",
            "10.255.255.1:29500",
        ]
        .map(String::from),
    );
    fails_with(
        common::llama_cli().args(&args).env_remove("LLAMA_RUN_TOKEN"),
        "the coordinator is not on this machine (10.255.255.1:29500), and LLAMA_RUN_TOKEN is not set",
    );
    assert!(!run.exists(), "nothing written");
    fails_with(
        common::llama_cli()
            .args(&args)
            .env("LLAMA_RUN_TOKEN", "short"),
        "at least 32 hex digits",
    );
    fails_with(
        common::llama_cli()
            .args(["coordinator", "--world-size", "2", "--host", "0.0.0.0"])
            .env_remove("LLAMA_RUN_TOKEN"),
        "is not on this machine (0.0.0.0:29500)",
    );

    // Bound where asked: 127.0.0.2, not every interface.
    let port = free_port();
    let mut coordinator = common::llama_cli()
        .args(["coordinator", "--world-size", "2", "--host", "127.0.0.2"])
        .args(["--port", &port.to_string()])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut found = Vec::new();
    while found.is_empty() && started.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
        found = listening_on(port).unwrap();
    }
    let _ = coordinator.kill();
    let _ = coordinator.wait();
    assert_eq!(found, [Ipv4Addr::new(127, 0, 0, 2)]);
}
