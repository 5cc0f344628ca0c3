//! How long jobs show progress: an `indicatif` bar on standard error with the elapsed time,
//! the time left, the rate and the running figures when standard error is a terminal;
//! nothing drawn otherwise, so that a log file or a pipe never receives control characters
//! (training then prints plain lines, see [`crate::report::progress`]).

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Whether progress is drawn as bars.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProgressMode {
    /// Bars when standard error is a terminal, plain lines otherwise.
    Auto,
    /// Plain lines only (`--progress plain`, `--quiet`): what a log file gets.
    #[default]
    Plain,
}

impl ProgressMode {
    /// Whether bars are drawn: `Auto` with a terminal on standard error.
    pub fn bars(self) -> bool {
        self == Self::Auto && std::io::stderr().is_terminal()
    }

    /// A bar of `len` steps counting `unit`s, labelled `prefix`; hidden (drawing nothing,
    /// costing next to nothing) when bars are off.
    pub fn bar(self, len: usize, prefix: impl Into<String>, unit: &str) -> ProgressBar {
        if self.bars() {
            styled_bar(len, prefix, unit, ProgressDrawTarget::stderr())
        } else {
            ProgressBar::hidden()
        }
    }
}

/// The style of every bar: `prefix [=====>    ] 120/800 sentences [00:00:12<00:01:08,
/// 9.8/s] message`.
pub fn bar_style(unit: &str) -> ProgressStyle {
    let template = format!(
        "{{prefix}} [{{bar:28}}] {{pos}}/{{len}} {unit} [{{elapsed_precise}}<{{eta_precise}}, {{per_sec}}] {{wide_msg}}"
    );
    ProgressStyle::with_template(&template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// A bar drawn to `target`.
pub fn styled_bar(
    len: usize,
    prefix: impl Into<String>,
    unit: &str,
    target: ProgressDrawTarget,
) -> ProgressBar {
    ProgressBar::with_draw_target(Some(len as u64), target)
        .with_style(bar_style(unit))
        .with_prefix(prefix.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_mode_and_a_non_terminal_draw_no_bar() {
        assert!(ProgressMode::Plain.bar(10, "x", "items").is_hidden());
        if !std::io::stderr().is_terminal() {
            assert!(ProgressMode::Auto.bar(10, "x", "items").is_hidden());
        }
    }
}
