//! Whether a run is saving right now, process-wide: a signal handler that would end the
//! process (a second Ctrl-C) asks [`in_progress`] and waits for [`wait_until_saved`]
//! instead of cutting a save in half.
//!
//! A save is the whole sequence of files a resumed run reads back together (records, the
//! run record, `resume.json`, then the removal of what it replaces): each file is written
//! atomically, and the sequence is ordered so that a crash anywhere leaves a resumable
//! folder, but a user who asked to stop after saving should get the new save, not the old.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// A count of saves in progress (nested or concurrent saves each count).
#[derive(Debug)]
pub struct Saves(AtomicUsize);

/// This process's saves.
static SAVES: Saves = Saves::new();

impl Saves {
    const fn new() -> Self {
        Self(AtomicUsize::new(0))
    }

    fn begin(&'static self) -> SaveGuard {
        self.0.fetch_add(1, Ordering::SeqCst);
        SaveGuard(self)
    }

    fn in_progress(&self) -> bool {
        self.0.load(Ordering::SeqCst) > 0
    }

    fn wait(&self) {
        while self.in_progress() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Marks a save in progress until dropped.
#[must_use = "the save counts as in progress only while the guard lives"]
#[derive(Debug)]
pub struct SaveGuard(&'static Saves);

impl SaveGuard {
    /// A save of this process begins.
    pub fn begin() -> Self {
        let guard = SAVES.begin();
        gate::pause_if_asked();
        guard
    }
}

impl Drop for SaveGuard {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Whether a save of this process is in progress.
pub fn in_progress() -> bool {
    SAVES.in_progress()
}

/// Blocks until no save of this process is in progress.
pub fn wait_until_saved() {
    SAVES.wait();
}

/// What a process asked to stop does at its `press`-th stop signal (1-based; Ctrl-C,
/// SIGTERM or SIGHUP), `saving` telling whether a save is in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStopSignal {
    /// Finish the current step, save, then stop.
    StopAfterStep,
    /// Exit now: nothing is being written (the last save stays).
    ExitNow,
    /// Exit as soon as the save in progress is done.
    ExitAfterSave,
}

impl OnStopSignal {
    /// The decision: the first signal stops gracefully, the second exits but never in the
    /// middle of a save, and a third exits at once even then (each file is still whole or
    /// absent, and the save before stays resumable).
    pub fn decide(press: usize, saving: bool) -> Self {
        match press {
            0 | 1 => Self::StopAfterStep,
            2 if saving => Self::ExitAfterSave,
            _ => Self::ExitNow,
        }
    }
}

/// The test-only gate that holds a save at its start: with `LLAMA_SAVE_GATE=DIR` in the
/// environment of a test build (the `test-support` feature), [`SaveGuard::begin`] creates
/// `DIR/saving` and waits until `DIR/go` exists, so that a test can signal a process that
/// is provably mid-save. Shipped builds have no such variable.
mod gate {
    #[cfg(feature = "test-support")]
    pub(super) fn pause_if_asked() {
        let Some(dir) = std::env::var_os("LLAMA_SAVE_GATE").map(std::path::PathBuf::from) else {
            return;
        };
        if std::fs::write(dir.join("saving"), b"").is_err() {
            return;
        }
        while !dir.join("go").exists() {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    #[cfg(not(feature = "test-support"))]
    #[inline(always)]
    pub(super) fn pause_if_asked() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_save_is_in_progress_while_a_guard_lives() {
        // A counter of its own: the process-wide one counts the saves of concurrent tests.
        static COUNTER: Saves = Saves::new();
        let outer = COUNTER.begin();
        let inner = COUNTER.begin();
        drop(outer);
        assert!(COUNTER.in_progress(), "a nested save still runs");
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            COUNTER.wait();
            tx.send(()).unwrap();
        });
        assert!(rx.try_recv().is_err(), "the wait ends only after the save");
        drop(inner);
        waiter.join().unwrap();
        assert!(rx.try_recv().is_ok());
        assert!(!COUNTER.in_progress());
    }

    #[test]
    fn the_second_signal_waits_for_a_save_and_the_third_does_not() {
        use OnStopSignal::*;
        assert_eq!(OnStopSignal::decide(1, false), StopAfterStep);
        assert_eq!(OnStopSignal::decide(1, true), StopAfterStep);
        assert_eq!(OnStopSignal::decide(2, false), ExitNow);
        assert_eq!(OnStopSignal::decide(2, true), ExitAfterSave);
        assert_eq!(OnStopSignal::decide(3, true), ExitNow);
    }
}
