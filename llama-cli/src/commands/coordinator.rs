//! `llama-cli coordinator`: serve the coordinator of a data-parallel run across machines.

use anyhow::Result;
use clap::Args;
use llama_train::distributed::coordinator::Coordinator;
use llama_train::distributed::run_key::{RunKey, RunToken};
use llama_train::distributed::settings::{require_token, PeerAddress};

use crate::args::values;

/// Arguments of `llama-cli coordinator`.
#[derive(Debug, Args)]
pub struct CoordinatorArgs {
    /// The number of ranks of each run it serves (every rank must be started with it).
    #[arg(long, value_parser = values::positive())]
    pub world_size: usize,
    /// The address to listen on: 127.0.0.1 (this machine only), or one the ranks reach
    /// (`0.0.0.0` for every interface); off this machine it needs `LLAMA_RUN_TOKEN`.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on; the ranks get `--coordinator HOST:PORT`.
    #[arg(long, default_value_t = 29500)]
    pub port: u16,
    /// Listen beyond this machine without `LLAMA_RUN_TOKEN` (anyone who reaches the port
    /// could join a run): only on a network you trust.
    #[arg(long)]
    pub insecure: bool,
}

/// Serves runs until the process is stopped.
pub fn run(args: &CoordinatorArgs) -> Result<()> {
    let address = PeerAddress {
        host: args.host.clone(),
        port: args.port,
    };
    let token = RunToken::from_env()?;
    if token.is_none() && !args.insecure {
        require_token("the coordinator", &address)?;
    }
    let coordinator = Coordinator::bind(&address, args.world_size, RunKey::new(token.as_ref()))?;
    eprintln!(
        "coordinator listening on {address} for runs of {} ranks (ranks: --coordinator {address}){}; Ctrl-C stops it",
        args.world_size,
        if token.is_some() { ", messages signed with LLAMA_RUN_TOKEN" } else { "" }
    );
    coordinator.serve();
    Ok(())
}
