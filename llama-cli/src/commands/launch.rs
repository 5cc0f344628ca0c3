//! `llama-cli launch --nproc N -- finetune …`: a data-parallel run on this machine, the way
//! torchrun starts one. It serves the coordinator on 127.0.0.1, starts N copies of this
//! program with the given command line and `LLAMA_WORLD_SIZE`, `LLAMA_RANK`,
//! `LLAMA_COORDINATOR`, `LLAMA_NODE_ADDRESS` (free loopback ports) and a fresh
//! `LLAMA_RUN_TOKEN` set (in the environment only: a command line is readable by every user),
//! and watches them: when a rank fails or is killed, the others are asked to stop (SIGTERM),
//! killed after a grace period, and the error names the rank.
//!
//! The ranks run in their own process group, so a Ctrl-C at the terminal reaches this
//! process alone, which passes it on once to every rank (as does a SIGTERM or SIGHUP from a
//! scheduler): they agree to stop after the same step, and rank 0 saves the run for
//! `--resume`. Each rank gets SIGTERM when this process dies, however it dies.

use std::net::TcpListener;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use llama_train::distributed::coordinator::Coordinator;
use llama_train::distributed::run_key::{RunKey, RunToken, TOKEN_VARIABLE};
use llama_train::distributed::settings::PeerAddress;

use crate::args::values;

/// Arguments of `llama-cli launch`.
#[derive(Debug, Args)]
pub struct LaunchArgs {
    /// Number of ranks (processes) to start.
    #[arg(long, value_parser = values::positive())]
    pub nproc: usize,
    /// The coordinator's port; default: a free one.
    #[arg(long)]
    pub port: Option<u16>,
    /// One GPU index per rank (`--devices 0,1`): rank r runs on device r of the list
    /// (it sets `LLAMA_DEVICE`, which `--device` in the command would override).
    #[arg(long, value_delimiter = ',')]
    pub devices: Vec<usize>,
    /// The command each rank runs, after `--`: global flags, then the subcommand and its
    /// flags (`-- --threads 1 finetune --train …`).
    #[arg(last = true, required = true, num_args = 1..)]
    pub command: Vec<String>,
}

/// The exit status of a run stopped by Ctrl-C (and saved).
const INTERRUPTED: i32 = 130;

/// How long the other ranks get to stop by themselves after one failed, before SIGKILL.
const GRACE: Duration = Duration::from_secs(10);

/// Runs the ranks to the end; fails naming the first rank that fails.
pub fn run(args: &LaunchArgs) -> Result<i32> {
    if !args.devices.is_empty() && args.devices.len() != args.nproc {
        bail!(
            "--devices lists {} devices for --nproc {}: give one per rank",
            args.devices.len(),
            args.nproc
        );
    }
    if !args
        .command
        .iter()
        .any(|a| ["finetune", "train", "pretrain"].contains(&a.as_str()))
    {
        bail!(
            "launch runs `finetune` or `pretrain`: `launch --nproc N -- [global flags] finetune …`"
        );
    }
    let ports = free_ports(args.nproc)?;
    let token = RunToken::generate();
    let coordinator = Coordinator::bind(
        &PeerAddress {
            host: "127.0.0.1".into(),
            port: args.port.unwrap_or(0),
        },
        args.nproc,
        RunKey::new(Some(&token)),
    )?;
    let port = coordinator
        .local_addr()
        .context("the coordinator's address")?
        .port();
    std::thread::Builder::new()
        .name("coordinator".into())
        .spawn(move || coordinator.serve())
        .context("starting the coordinator")?;

    let program = std::env::current_exe().context("finding this program")?;
    let children: Arc<Mutex<Vec<Child>>> = Arc::new(Mutex::new(Vec::new()));
    forward_signals(children.clone());
    let launcher = std::process::id();
    for (rank, node_port) in ports.iter().enumerate() {
        let mut command = Command::new(&program);
        command
            .args(&args.command)
            .env("LLAMA_WORLD_SIZE", args.nproc.to_string())
            .env("LLAMA_RANK", rank.to_string())
            .env("LLAMA_COORDINATOR", format!("127.0.0.1:{port}"))
            .env("LLAMA_NODE_ADDRESS", format!("127.0.0.1:{node_port}"))
            .env(TOKEN_VARIABLE, token.expose())
            .process_group(0);
        // SAFETY: between fork and exec the child calls only async-signal-safe functions
        // (prctl, getppid, _exit) and touches no memory of ours.
        unsafe {
            command.pre_exec(move || {
                // SIGTERM (stop after the step, and save) when this process dies; spawned from
                // the main thread, which lives as long as the process.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                // Died before the line above took effect: no one would watch this rank.
                if libc::getppid() != launcher as libc::pid_t {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        if let Some(device) = args.devices.get(rank) {
            command.env("LLAMA_DEVICE", device.to_string());
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting rank {rank}"))?;
        eprintln!("launch: rank {rank} is process {}", child.id());
        lock(&children).push(child);
    }
    watch(&children)
}

/// Waits for every rank. A rank that fails stops the others: SIGTERM, then SIGKILL after
/// [`GRACE`] (they would otherwise wait for it until their collective timeout).
fn watch(children: &Mutex<Vec<Child>>) -> Result<i32> {
    let n = lock(children).len();
    let mut statuses: Vec<Option<ExitStatus>> = vec![None; n];
    loop {
        let mut failed = None;
        for (rank, child) in lock(children).iter_mut().enumerate() {
            if statuses[rank].is_some() {
                continue;
            }
            if let Some(status) = child.try_wait().context("watching the ranks")? {
                statuses[rank] = Some(status);
                if !status.success() && status.code() != Some(INTERRUPTED) {
                    failed = Some((rank, status));
                }
            }
        }
        if let Some((rank, status)) = failed {
            stop_all(&mut lock(children));
            bail!(
                "rank {rank} {}; the other ranks were stopped",
                describe(status)
            );
        }
        if statuses.iter().all(Option::is_some) {
            let interrupted = statuses
                .iter()
                .any(|s| s.is_some_and(|s| s.code() == Some(INTERRUPTED)));
            return Ok(if interrupted { INTERRUPTED } else { 0 });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(9)) => "was killed (SIGKILL)".into(),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => "ended abnormally".into(),
    }
}

/// Asks every rank still running to stop (SIGTERM), and kills those that have not after
/// [`GRACE`].
fn stop_all(children: &mut [Child]) {
    signal_all(children, libc::SIGTERM);
    let started = Instant::now();
    for child in children.iter_mut() {
        while matches!(child.try_wait(), Ok(None)) && started.elapsed() < GRACE {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Sends `signal` to every rank.
fn signal_all(children: &[Child], signal: libc::c_int) {
    for child in children {
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: kill(2) on a process id of ours; no memory is involved.
            unsafe {
                libc::kill(pid, signal);
            }
        }
    }
}

/// Ctrl-C, SIGTERM or SIGHUP here is passed on to every rank once, as SIGTERM (they finish
/// their step and save).
fn forward_signals(children: Arc<Mutex<Vec<Child>>>) {
    let handler = ctrlc::set_handler(move || {
        eprintln!("\nlaunch: stop requested: asking every rank to stop after its current step");
        signal_all(&lock(&children), libc::SIGTERM);
    });
    if let Err(e) = handler {
        eprintln!("warning: cannot catch Ctrl-C or SIGTERM ({e})");
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `n` distinct loopback ports that were free a moment ago.
fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()
        .context("finding free ports on 127.0.0.1")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect::<std::io::Result<Vec<_>>>()
        .context("finding free ports on 127.0.0.1")
}
