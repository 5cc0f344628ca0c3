//! How a training run starts and when it stops early: resume or start over, Ctrl-C, a step
//! budget, how progress is shown, and the run's place in a data-parallel run.

use burn::train::Interrupter;

use crate::distributed::settings::CollectiveSettings;
use crate::report::progress::ProgressMode;

/// The message our interrupter carries when the user asked to stop (Ctrl-C).
pub const INTERRUPTED: &str = "interrupted by the user";

/// How a training run (fine-tuning or `pretrain`) starts and when it stops early.
#[derive(Clone, Default)]
pub struct RunControl {
    /// Continue the run saved in `artifact_dir` (`resume.json`) instead of starting over.
    pub resume: bool,
    /// Stop after the current step and save when this fires (the CLI fires it on Ctrl-C).
    pub interrupter: Option<Interrupter>,
    /// Stop after this many training steps of this call and save (a time-boxed run).
    pub max_steps: Option<usize>,
    /// Bars on a terminal, or plain lines (the default for a library).
    pub progress: ProgressMode,
    /// Data-parallel training: this process's rank in a run on several (see
    /// [`crate::distributed::collective`]); `None` trains alone.
    pub collective: Option<CollectiveSettings>,
}

impl RunControl {
    /// Whether the interrupter has fired (Ctrl-C).
    pub fn interrupted(&self) -> bool {
        self.interrupter
            .as_ref()
            .is_some_and(Interrupter::should_stop)
    }
}
