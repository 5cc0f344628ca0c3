//! The learning-rate schedule of language-model training: linear warm-up, then cosine
//! decay, as llama2.c's `train.py` schedules it. Built from Burn's own schedulers (Burn 0.21
//! composes schedulers only in parallel, by sum or product, so the sequence is ours):
//!
//! * steps `1..=W` (`W` warm-up steps): Burn's [`LinearLrScheduler`], `lr · k / W` at step
//!   `k`, ending at `lr` (llama2.c starts at `lr · 0 / W`, a step that changes nothing);
//! * steps `W+1..=T` (`T` steps in the run): Burn's [`CosineAnnealingLrScheduler`] from `lr`
//!   at step `W+1` down to `min_lr`, reached at the last step `T`;
//! * past `T` (a run given more steps than it was planned for): `min_lr`.

use burn::optim::lr_scheduler::cosine::{
    CosineAnnealingLrScheduler, CosineAnnealingLrSchedulerConfig,
};
use burn::optim::lr_scheduler::linear::{LinearLrScheduler, LinearLrSchedulerConfig};
use burn::optim::lr_scheduler::LrScheduler;
use burn::optim::LearningRate;
use burn::tensor::backend::Backend;

/// Settings of [`WarmupCosine`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WarmupCosineConfig {
    /// Peak learning rate, reached at the end of the warm-up.
    pub lr: LearningRate,
    /// Learning rate at the last step.
    pub min_lr: LearningRate,
    /// Steps of linear warm-up.
    pub warmup_steps: usize,
    /// Optimizer steps in the whole run.
    pub total_steps: usize,
}

impl WarmupCosineConfig {
    /// The scheduler at step 0. Fails (with Burn's message) unless `0 < lr <= 1` and
    /// `0 <= min_lr <= lr`.
    pub fn init(&self) -> Result<WarmupCosine, String> {
        if !(self.min_lr >= 0.0 && self.min_lr <= self.lr) {
            return Err(format!(
                "the minimum learning rate {} must be between 0 and the learning rate {}",
                self.min_lr, self.lr
            ));
        }
        let warmup = match self.warmup_steps {
            0 => None,
            w => Some(
                LinearLrSchedulerConfig::new(self.lr / w as f64, self.lr, (w - 1).max(1)).init()?,
            ),
        };
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps);
        // Burn's cosine reaches its minimum after `num_iters` steps past its first.
        let decay = match decay_steps {
            0 | 1 => None,
            d => Some(
                CosineAnnealingLrSchedulerConfig::new(self.lr, d - 1)
                    .with_min_lr(self.min_lr)
                    .init()?,
            ),
        };
        Ok(WarmupCosine {
            config: *self,
            warmup,
            decay,
            steps: 0,
        })
    }
}

/// Linear warm-up then cosine decay; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct WarmupCosine {
    config: WarmupCosineConfig,
    warmup: Option<LinearLrScheduler>,
    decay: Option<CosineAnnealingLrScheduler>,
    /// Steps taken.
    steps: usize,
}

impl WarmupCosine {
    /// Steps taken so far.
    pub fn steps(&self) -> usize {
        self.steps
    }
}

impl LrScheduler for WarmupCosine {
    /// The number of steps taken: the schedule is a function of it.
    type Record<B: Backend> = usize;

    fn step(&mut self) -> LearningRate {
        self.steps += 1;
        let c = &self.config;
        if self.steps <= c.warmup_steps {
            // A one-step warm-up is Burn's linear scheduler held at its end.
            return match (&mut self.warmup, c.warmup_steps) {
                (Some(warmup), w) if w > 1 => warmup.step(),
                _ => c.lr,
            };
        }
        if self.steps > c.total_steps {
            return c.min_lr;
        }
        // A single step after the warm-up is the cosine's first: at `lr`.
        self.decay.as_mut().map_or(c.lr, LrScheduler::step)
    }

    fn to_record<B: Backend>(&self) -> Self::Record<B> {
        self.steps
    }

    fn load_record<B: Backend>(self, steps: Self::Record<B>) -> Self {
        // Replayed: Burn's schedulers keep their position privately.
        let Ok(mut fresh) = self.config.init() else {
            return self;
        };
        for _ in 0..steps {
            fresh.step();
        }
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    /// llama2.c's `get_lr`, shifted to 1-based steps, written out independently.
    fn expected(c: &WarmupCosineConfig, k: usize) -> f64 {
        let (w, t) = (c.warmup_steps as f64, c.total_steps as f64);
        let k = k as f64;
        if k <= w {
            return c.lr * k / w;
        }
        if k > t {
            return c.min_lr;
        }
        let ratio = (k - w - 1.0) / (t - w - 1.0);
        c.min_lr + 0.5 * (1.0 + (std::f64::consts::PI * ratio).cos()) * (c.lr - c.min_lr)
    }

    #[test]
    fn warm_up_then_cosine_to_the_minimum_at_the_last_step() {
        let c = WarmupCosineConfig {
            lr: 5e-4,
            min_lr: 5e-5,
            warmup_steps: 10,
            total_steps: 100,
        };
        let mut s = c.init().unwrap();
        for k in 1..=120 {
            let lr = s.step();
            let want = expected(&c, k);
            assert!(
                (lr - want).abs() <= 1e-12 * want,
                "step {k}: {lr} vs {want}"
            );
        }
    }

    #[test]
    fn short_runs_and_no_warm_up_still_follow_the_schedule() {
        for (warmup_steps, total_steps) in [(0, 5), (1, 5), (3, 3), (2, 3), (0, 1)] {
            let c = WarmupCosineConfig {
                lr: 1e-3,
                min_lr: 1e-4,
                warmup_steps,
                total_steps,
            };
            let mut s = c.init().unwrap();
            let lrs: Vec<f64> = (1..=total_steps).map(|_| s.step()).collect();
            if warmup_steps < total_steps && total_steps - warmup_steps > 1 {
                assert!((lrs[total_steps - 1] - c.min_lr).abs() < 1e-15, "{lrs:?}");
            }
            if warmup_steps > 0 {
                assert!((lrs[warmup_steps - 1] - c.lr).abs() < 1e-15, "{lrs:?}");
            }
            assert!(lrs.iter().all(|&lr| lr > 0.0 && lr <= c.lr), "{lrs:?}");
        }
    }

    #[test]
    fn a_reloaded_record_continues_where_it_stopped() {
        let c = WarmupCosineConfig {
            lr: 1e-3,
            min_lr: 0.0,
            warmup_steps: 4,
            total_steps: 20,
        };
        let mut a = c.init().unwrap();
        for _ in 0..7 {
            a.step();
        }
        let record = LrScheduler::to_record::<NdArray>(&a);
        let mut b = LrScheduler::load_record::<NdArray>(c.init().unwrap(), record);
        for _ in 0..15 {
            assert_eq!(a.step().to_bits(), b.step().to_bits());
        }
    }

    #[test]
    fn bad_settings_are_refused() {
        let bad = |lr, min_lr| {
            WarmupCosineConfig {
                lr,
                min_lr,
                warmup_steps: 2,
                total_steps: 10,
            }
            .init()
            .is_err()
        };
        assert!(bad(1e-3, 2e-3));
        assert!(bad(1e-3, -1.0));
        assert!(bad(0.0, 0.0));
        assert!(bad(2.0, 0.0));
    }
}
