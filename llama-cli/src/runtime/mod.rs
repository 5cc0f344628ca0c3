//! What every command runs on: the backend chosen at run time, the allocator, Ctrl-C handling,
//! progress output, and result files written whole or not at all.

pub mod allocator;
pub mod backend;
pub mod confusion;
pub mod interrupt;
pub mod output;
pub mod progress;
