//! The flags of a rank in a data-parallel run (`finetune`), each also an environment
//! variable, as torchrun passes them; `llama-cli launch` sets the variables.

use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;
use llama_train::distributed::collective::{RankOutcome, RankSummary};
use llama_train::distributed::run_key::RunToken;
use llama_train::distributed::settings::{CollectiveSettings, PeerAddress, DEFAULT_TIMEOUT};
use llama_train::report::progress_bar::ProgressMode;

use crate::args::values;
use crate::runtime::backend::BackendKind;

/// Where this process stands in a data-parallel run.
#[derive(Debug, Args)]
pub struct CollectiveArgs {
    /// Number of processes of a data-parallel run (each trains `batch-size / world-size`
    /// rows of every batch; gradients are summed across them).
    #[arg(long, env = "LLAMA_WORLD_SIZE", value_parser = values::positive())]
    pub world_size: Option<usize>,
    /// This process's rank, 0..world-size; rank 0 evaluates and saves.
    #[arg(long, env = "LLAMA_RANK")]
    pub rank: Option<usize>,
    /// The coordinator, `HOST:PORT` (`llama-cli coordinator --world-size W --port PORT`).
    #[arg(long, env = "LLAMA_COORDINATOR")]
    pub coordinator: Option<PeerAddress>,
    /// Where the other ranks reach this one, `HOST:PORT`: it serves its gradients there,
    /// listening on that host only; default `127.0.0.1:<coordinator port + 1 + rank>`, for one
    /// machine.
    #[arg(long, env = "LLAMA_NODE_ADDRESS")]
    pub node_address: Option<PeerAddress>,
    /// Allow a run across machines without `LLAMA_RUN_TOKEN` (anyone who reaches its ports
    /// could join it, read its gradients or inject their own): only on a network you trust.
    #[arg(long)]
    pub insecure: bool,
    /// Seconds to wait for the other ranks at any exchange (joining, every step, and while
    /// rank 0 evaluates) before giving up with an error.
    #[arg(long, env = "LLAMA_COLLECTIVE_TIMEOUT", default_value_t = DEFAULT_TIMEOUT.as_secs(), value_parser = values::positive_u64())]
    pub collective_timeout: u64,
    /// Several devices in one process: not supported (see the error it gives); one rank per
    /// device with `llama-cli launch --nproc N --devices 0,1,…` instead.
    #[arg(long, value_delimiter = ',')]
    pub devices: Vec<usize>,
}

impl CollectiveArgs {
    /// Refuses `--devices` with more than one device, naming what to do instead: this
    /// tool's training loop drives one device per process (Burn's in-process multi-device
    /// strategies cut batches with their own loaders, which would lose the exact, resumable
    /// order), so several devices means several ranks.
    pub fn check_devices(&self, backend: BackendKind) -> Result<()> {
        if self.devices.len() <= 1 {
            return Ok(());
        }
        let n = self.devices.len();
        let list = self
            .devices
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(",");
        match backend {
            BackendKind::Wgpu | BackendKind::TchCuda => bail!(
                "--devices {list}: one process trains on one device here; run one rank per device: `llama-cli launch --nproc {n} --devices {list} -- --backend {backend} …`"
            ),
            _ => bail!(
                "--devices {list}: the {backend} backend has a single device (the CPU); for several processes use `llama-cli launch --nproc {n} -- …`"
            ),
        }
    }

    /// `None` for a run on one process (no `--world-size`, or 1).
    pub fn settings(&self) -> Result<Option<CollectiveSettings>> {
        let world_size = match self.world_size {
            None | Some(1) if self.rank.unwrap_or(0) == 0 && self.coordinator.is_none() => {
                return Ok(None)
            }
            None => bail!("--rank and --coordinator need --world-size"),
            Some(w) => w,
        };
        let Some(rank) = self.rank else {
            bail!("--world-size {world_size} needs --rank (0..{world_size})");
        };
        let Some(coordinator) = self.coordinator.clone() else {
            bail!("--world-size {world_size} needs --coordinator HOST:PORT");
        };
        let mut settings = CollectiveSettings::new(world_size, rank, coordinator)?;
        settings.node_address = self.node_address.clone();
        settings.timeout = Duration::from_secs(self.collective_timeout);
        // From the environment only: a command line is readable by every user.
        settings.token = RunToken::from_env()?;
        settings.insecure = self.insecure;
        settings.check_security()?;
        Ok(Some(settings))
    }
}

/// The line a rank prints when it starts.
pub fn describe_rank(c: &CollectiveSettings, batch_size: usize) -> String {
    format!(
        "data-parallel: rank {} of {}, coordinator {}, this rank at {}; {} of every {} rows",
        c.rank,
        c.world_size,
        c.coordinator,
        c.node(),
        batch_size / c.world_size,
        batch_size
    )
}

/// Bars from one process only: the other ranks print plain lines.
pub fn progress_of(collective: Option<&CollectiveSettings>) -> ProgressMode {
    match collective {
        Some(c) if !c.is_main() => ProgressMode::Plain,
        _ => crate::runtime::progress::mode(),
    }
}

/// The last line of each rank of a data-parallel run: equal digests mean equal weights.
pub fn report_rank(rank: usize, summary: &RankSummary) {
    let exchange = &summary.exchange;
    println!(
        "rank {rank}: {} steps; weights digest {:016x}; {} exchanges, {:.1} MB sent, {:.2} s in them",
        summary.steps,
        summary.last_weights_digest,
        exchange.exchanges,
        exchange.bytes_sent as f64 / 1e6,
        exchange.seconds
    );
}

/// Rank 0's outcome, or `None` after reporting another rank's end (rank 0 saved the run).
pub fn main_outcome<O>(
    outcome: RankOutcome<O>,
    rank: Option<usize>,
    summary: impl Fn(&O) -> Option<RankSummary>,
) -> Option<Box<O>> {
    match outcome {
        RankOutcome::Main(outcome) => {
            if let (Some(rank), Some(s)) = (rank, summary(&outcome)) {
                report_rank(rank, &s);
            }
            Some(outcome)
        }
        RankOutcome::Other(s) => {
            report_rank(rank.unwrap_or(0), &s);
            None
        }
    }
}
