//! Ctrl-C (or SIGTERM, SIGHUP) during training: the first stops the run after its current
//! step (saved, so that `--resume` continues); a second exits, but never in the middle of a
//! save: it says "saving…" and exits once the save is done; a third exits at once.

use std::sync::atomic::{AtomicUsize, Ordering};

use llama_train::run::control::INTERRUPTED;
use llama_train::run::saving::{self, OnStopSignal};

/// The exit status of a process stopped by a signal before it finished (the shell's
/// convention for SIGINT).
const EXIT_INTERRUPTED: i32 = 130;

/// An interrupter fired by the first stop signal (training then finishes its step and
/// saves); later ones exit as [`OnStopSignal::decide`] says.
pub fn interrupt_on_ctrl_c() -> burn::train::Interrupter {
    let interrupter = burn::train::Interrupter::new();
    let handle = interrupter.clone();
    let presses = AtomicUsize::new(0);
    let handler = ctrlc::set_handler(move || {
        let press = presses.fetch_add(1, Ordering::SeqCst) + 1;
        match OnStopSignal::decide(press, saving::in_progress()) {
            OnStopSignal::StopAfterStep => {
                eprintln!("\nstop requested (Ctrl-C or SIGTERM): finishing the current step, then saving (Ctrl-C again to quit now)");
                handle.stop(Some(INTERRUPTED));
            }
            OnStopSignal::ExitAfterSave => {
                eprintln!("\nsaving… exiting when the save is done (Ctrl-C again to quit now; the previous save stays)");
                // Waiting here would hold the handler thread, which must stay free to take
                // a third signal.
                std::thread::spawn(|| {
                    saving::wait_until_saved();
                    eprintln!("saved; exiting");
                    std::process::exit(EXIT_INTERRUPTED);
                });
            }
            OnStopSignal::ExitNow => {
                eprintln!("\nexiting without saving (the last save stays)");
                std::process::exit(EXIT_INTERRUPTED);
            }
        }
    });
    if let Err(e) = handler {
        // Training still works; it just cannot be stopped gracefully.
        eprintln!("warning: cannot catch Ctrl-C ({e}): an interrupted run will not be saved");
    }
    interrupter
}
