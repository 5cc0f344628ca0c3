//! Ctrl-C during training: the first stops the run after its current step (saved, so that
//! `--resume` continues); a second exits at once.

use llama_train::run::control::INTERRUPTED;

/// An interrupter fired by the first Ctrl-C (training then finishes its step and saves);
/// a second Ctrl-C exits at once.
pub fn interrupt_on_ctrl_c() -> burn::train::Interrupter {
    let interrupter = burn::train::Interrupter::new();
    let handle = interrupter.clone();
    let handler = ctrlc::set_handler(move || {
        if handle.should_stop() {
            eprintln!("\nsecond Ctrl-C: exiting without saving");
            std::process::exit(130);
        }
        eprintln!("\nstop requested (Ctrl-C or SIGTERM): finishing the current step, then saving (Ctrl-C again to quit now)");
        handle.stop(Some(INTERRUPTED));
    });
    if let Err(e) = handler {
        // Training still works; it just cannot be stopped gracefully.
        eprintln!("warning: cannot catch Ctrl-C ({e}): an interrupted run will not be saved");
    }
    interrupter
}
