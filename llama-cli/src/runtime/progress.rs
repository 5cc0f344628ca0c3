//! `--progress auto|plain` and `--quiet`: whether long commands draw bars. The choice is made
//! once, from the global flags, before the command runs.

use std::sync::OnceLock;

use clap::ValueEnum;
use indicatif::ProgressBar;
use llama_train::report::progress_bar::ProgressMode;

/// The `--progress` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressFlag {
    /// Bars with elapsed time, time left and rate when standard error is a terminal; plain
    /// lines otherwise.
    Auto,
    /// Plain lines only: one per `--log-every` training steps and one per epoch.
    Plain,
}

static MODE: OnceLock<ProgressMode> = OnceLock::new();

/// Record the flags' choice (`--quiet` is `--progress plain`).
pub fn set(flag: ProgressFlag, quiet: bool) {
    let mode = match (flag, quiet) {
        (ProgressFlag::Auto, false) => ProgressMode::Auto,
        _ => ProgressMode::Plain,
    };
    let _ = MODE.set(mode);
}

/// The chosen mode (bars where possible, if the flags were never read).
pub fn mode() -> ProgressMode {
    MODE.get().copied().unwrap_or(ProgressMode::Auto)
}

/// A bar of `len` `unit`s labelled `prefix`, hidden unless bars are on.
pub fn bar(len: usize, prefix: &str, unit: &str) -> ProgressBar {
    mode().bar(len, prefix, unit)
}
