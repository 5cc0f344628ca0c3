//! The coordinator of a data-parallel run: burn-collective's orchestrator, which the ranks
//! register with and which tells each rank where the others are. Tensors do not pass
//! through it; the ranks exchange them directly.

use std::net::TcpListener;

use crate::distributed::settings::CollectiveError;

/// Serves the coordinator on `port` (all interfaces) until the process gets Ctrl-C or
/// SIGTERM. Fails at once when the port is taken.
pub fn serve_coordinator(port: u16) -> Result<(), CollectiveError> {
    // burn-collective only logs a failed bind; check it here, so that it is an error.
    TcpListener::bind(("0.0.0.0", port)).map_err(|e| CollectiveError::PortTaken {
        port,
        detail: e.to_string(),
    })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| CollectiveError::Start {
            what: "the coordinator",
            detail: e.to_string(),
        })?;
    runtime.block_on(burn_collective::start_global_orchestrator(port));
    Ok(())
}
