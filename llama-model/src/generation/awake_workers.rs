//! Keeping rayon's other workers awake through one decoding step.
//!
//! A decoded token is dozens of small parallel products (each a few tens of microseconds on
//! the CPU) with short serial stretches between them: the norms, the rotary embedding, the
//! attention over the cache. A rayon worker that finds no work sleeps after a few dozen empty
//! polls, and waking it costs a futex call and, on a virtual machine, an interrupt between
//! processors: often longer than its half of the next product, which the calling thread then
//! runs itself. OpenMP's threads (llama2.c's) spin between parallel loops instead. Here each
//! other worker runs a job that keeps looking for work until the step ends, so a product's
//! second half is taken as soon as it is offered.
//!
//! Only from a worker of rayon's pool (the CLI runs its commands there), with at most one
//! thread per core (a spinning worker would take a core from the others); elsewhere, or with
//! one thread, the step runs as it is.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

/// Runs `step` on the current thread while the pool's other workers poll for its work.
pub fn with_workers_awake<R>(step: impl FnOnce() -> R) -> R {
    let Some(caller) = rayon::current_thread_index() else {
        return step();
    };
    let threads = rayon::current_num_threads();
    if threads < 2 || threads > cores() {
        return step();
    }
    let done = Arc::new(AtomicBool::new(false));
    for _ in 1..threads {
        let done = Arc::clone(&done);
        rayon::spawn(move || {
            // A poller that the caller picks up itself (while waiting inside the step)
            // must not spin there: the step could not go on.
            if rayon::current_thread_index() == Some(caller) {
                return;
            }
            while !done.load(Ordering::Acquire) {
                if rayon::yield_now() != Some(rayon::Yield::Executed) {
                    std::hint::spin_loop();
                }
            }
        });
    }
    // Set on the way out, a panic included, so that no worker spins on.
    let _done = SetOnDrop(done);
    step()
}

/// The cores this process may run on (read once).
fn cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    /// A step's parallel work runs, pollers stop when it ends, and a pool used again
    /// afterwards still works (nothing is left spinning or blocked).
    #[test]
    fn a_step_runs_its_parallel_work_and_the_pollers_stop() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .expect("a pool");
        let sums: Vec<u64> = pool.install(|| {
            (0..50)
                .map(|step| {
                    with_workers_awake(|| (0..10_000u64).into_par_iter().map(|v| v * step).sum())
                })
                .collect()
        });
        let want: Vec<u64> = (0..50).map(|step| step * 9_999 * 10_000 / 2).collect();
        assert_eq!(sums, want);
        // Outside the pool the step simply runs.
        assert_eq!(with_workers_awake(|| 7), 7);
        // The pool is free again: a blocking join across all workers finishes.
        let n = pool.install(|| (0..1000).into_par_iter().count());
        assert_eq!(n, 1000);
    }
}
