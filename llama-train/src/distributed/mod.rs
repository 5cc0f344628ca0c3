//! Data-parallel training across processes and machines: a rank's settings, the run's key,
//! the wire format, the rendezvous at the coordinator, the per-step exchange between ranks,
//! and a rank's handle on the run.

pub mod collective;
pub mod coordinator;
pub mod exchange;
pub mod rendezvous;
pub mod run_key;
pub mod settings;
pub mod wire;
