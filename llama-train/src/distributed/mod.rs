//! Data-parallel training across processes and machines: a rank's settings, its membership of
//! the run, the per-step gradient exchange, and the coordinator.

pub mod collective;
pub mod coordinator;
pub mod exchange;
pub mod settings;
