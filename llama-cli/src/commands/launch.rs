//! `llama-cli launch --nproc N -- finetune …`: a data-parallel run on this machine, the way
//! torchrun starts one. It serves the coordinator, starts N copies of this program with the
//! given command line and `LLAMA_WORLD_SIZE`, `LLAMA_RANK`, `LLAMA_COORDINATOR` and
//! `LLAMA_NODE_ADDRESS` set (free loopback ports), and watches them: when a rank fails or
//! is killed, the others are stopped at once and the error names the rank.
//!
//! The ranks run in their own process group, so a Ctrl-C at the terminal reaches this
//! process alone, which passes it on once to every rank: they agree to stop after the same
//! step, and rank 0 saves the run for `--resume`.

use std::net::{TcpListener, TcpStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use llama_train::distributed::coordinator::serve_coordinator;

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
    let ports = free_ports(args.nproc + 1)?;
    let port = args.port.unwrap_or(ports[0]);
    let coordinator = format!("ws://127.0.0.1:{port}");
    std::thread::Builder::new()
        .name("coordinator".into())
        .spawn(move || {
            if let Err(e) = serve_coordinator(port) {
                eprintln!("error: the coordinator stopped: {e}");
            }
        })
        .context("starting the coordinator")?;
    wait_for_port(port)?;

    let program = std::env::current_exe().context("finding this program")?;
    let children: Arc<Mutex<Vec<Child>>> = Arc::new(Mutex::new(Vec::new()));
    forward_ctrl_c(children.clone());
    for rank in 0..args.nproc {
        let mut command = Command::new(&program);
        command
            .args(&args.command)
            .env("LLAMA_WORLD_SIZE", args.nproc.to_string())
            .env("LLAMA_RANK", rank.to_string())
            .env("LLAMA_COORDINATOR", &coordinator)
            .env(
                "LLAMA_NODE_ADDRESS",
                format!("ws://127.0.0.1:{}", ports[rank + 1]),
            )
            .process_group(0);
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

/// Waits for every rank. A rank that fails stops the others (SIGKILL: they would
/// otherwise wait for it until their collective timeout).
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
            for child in lock(children).iter_mut() {
                let _ = child.kill();
                let _ = child.wait();
            }
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

/// Ctrl-C here is passed on to every rank once (they finish their step and save).
fn forward_ctrl_c(children: Arc<Mutex<Vec<Child>>>) {
    let handler = ctrlc::set_handler(move || {
        eprintln!("\nlaunch: Ctrl-C: asking every rank to stop after its current step");
        for child in lock(&children).iter() {
            if let Ok(pid) = i32::try_from(child.id()) {
                // SAFETY: kill(2) on a process id of ours; no memory is involved.
                unsafe {
                    libc::kill(pid, libc::SIGINT);
                }
            }
        }
    });
    if let Err(e) = handler {
        eprintln!("warning: cannot catch Ctrl-C ({e})");
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

/// Waits (up to 10 s) until the coordinator accepts connections.
fn wait_for_port(port: u16) -> Result<()> {
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if started.elapsed() > Duration::from_secs(10) {
            bail!("the coordinator did not start on port {port}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
