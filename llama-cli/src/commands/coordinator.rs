//! `llama-cli coordinator`: serve the coordinator of a data-parallel run.

use anyhow::Result;
use clap::Args;
use llama_train::distributed::coordinator::serve_coordinator;

/// Arguments of `llama-cli coordinator`.
#[derive(Debug, Args)]
pub struct CoordinatorArgs {
    /// Port to listen on (all interfaces); the ranks get `--coordinator ws://HOST:PORT`.
    #[arg(long, default_value_t = 29500)]
    pub port: u16,
}

/// Serves until Ctrl-C or SIGTERM.
pub fn run(args: &CoordinatorArgs) -> Result<()> {
    eprintln!(
        "coordinator listening on port {} (ranks: --coordinator ws://THIS_HOST:{}); Ctrl-C stops it",
        args.port, args.port
    );
    serve_coordinator(args.port)?;
    Ok(())
}
