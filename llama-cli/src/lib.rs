//! What the commands of `llama-cli` share, as a library target: the flag groups and value
//! parsers ([`args`]) and the runtime ([`runtime`]: backend dispatch, the allocator, Ctrl-C,
//! progress, whole-or-nothing output files). The commands themselves are the binary's
//! (`src/main.rs`, `src/commands/`); keeping these here lets their unit tests build without
//! instantiating every command on every backend.

pub mod args;
pub mod runtime;
