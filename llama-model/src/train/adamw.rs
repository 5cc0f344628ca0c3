//! The AdamW optimizer of the CMU "minllama" exercise, on Burn's optimizer traits.
//!
//! [`AdamW`] implements Burn's [`SimpleOptimizer`]; [`AdamWConfig::init`] wraps it in Burn's
//! [`OptimizerAdaptor`], which implements [`Optimizer`](burn::optim::Optimizer) for any
//! [`AutodiffModule`] on any [`AutodiffBackend`], so it plugs into Burn's `Learner` or a
//! hand-written loop (`optim.step(lr, model, grads)`), and its state is saved and restored with
//! `Optimizer::to_record` / `Optimizer::load_record`.
//!
//! # Algorithm
//!
//! For each parameter `p` with gradient `g`, at step `t = 1, 2, ...`:
//!
//! ```text
//! m = b1 m + (1 - b1) g                       first moment (m_0 = 0)
//! v = b2 v + (1 - b2) g^2                     second moment (v_0 = 0)
//! a = lr sqrt(1 - b2^t) / (1 - b1^t)          if correct_bias, else a = lr
//! p = p - a m / (sqrt(v) + eps)
//! p = p - lr wd p                             decoupled weight decay, after the update
//! ```
//!
//! This differs from Burn's own `burn::optim::AdamW` in three ways that change the numbers:
//! epsilon is added to `sqrt(v)` of the *uncorrected* second moment (the "efficient" form of the
//! bias correction, Kingma & Ba 2015, end of section 2), the weight decay is applied to the
//! already-updated parameter rather than before the update, and the default epsilon is `1e-6`.
//!
//! # Learning rate
//!
//! Burn passes the learning rate at every step (`Optimizer::step(lr, ..)`, usually from a
//! learning-rate scheduler), so it is not part of [`AdamWConfig`]. The exercise's default is
//! [`DEFAULT_LEARNING_RATE`] (`1e-3`). A learning rate can be checked up front with
//! [`validate_lr`]; a negative, NaN or infinite learning rate reaching
//! [`SimpleOptimizer::step`] cannot be reported through Burn's infallible trait, so the step
//! **panics** instead of silently moving the parameters the wrong way.

use burn::config::Config;
use burn::module::AutodiffModule;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{LearningRate, SimpleOptimizer};
use burn::record::Record;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;

/// The learning rate the exercise uses by default (`lr=1e-3`), for callers choosing one.
pub const DEFAULT_LEARNING_RATE: LearningRate = 1e-3;

/// Burn's optimizer for module `M` on backend `B` driven by [`AdamW`]: what
/// [`AdamWConfig::init`] returns.
pub type AdamWOptimizer<M, B> = OptimizerAdaptor<AdamW, M, B>;

/// An invalid AdamW hyperparameter (the checks of the exercise's reference implementation, plus
/// a non-negative weight decay and the rejection of NaN).
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum AdamWError {
    /// The learning rate is negative, NaN or infinite.
    #[error("invalid learning rate: {0} - should be >= 0.0 and finite")]
    InvalidLearningRate(f64),
    /// `beta_1` or `beta_2` (`which` is 1 or 2) is outside `[0.0, 1.0)`.
    #[error("invalid beta_{which} parameter: {value} - should be in [0.0, 1.0)")]
    InvalidBeta {
        /// 1 for `beta_1`, 2 for `beta_2`.
        which: u8,
        /// The rejected value.
        value: f64,
    },
    /// Epsilon is negative or NaN.
    #[error("invalid epsilon value: {0} - should be >= 0.0")]
    InvalidEpsilon(f64),
    /// The weight decay is negative, NaN or infinite.
    #[error("invalid weight decay: {0} - should be >= 0.0 and finite")]
    InvalidWeightDecay(f64),
}

/// Checks a learning rate: `Ok(lr)` when it is finite and `>= 0`, else
/// [`AdamWError::InvalidLearningRate`].
///
/// Call it on a configured or scheduled learning rate before training to get a typed error;
/// [`AdamW`]'s step panics on the same condition.
pub fn validate_lr(lr: LearningRate) -> Result<LearningRate, AdamWError> {
    if lr.is_finite() && lr >= 0.0 {
        Ok(lr)
    } else {
        Err(AdamWError::InvalidLearningRate(lr))
    }
}

/// Configuration of [`AdamW`] (the exercise's `AdamW(params, lr, betas, eps, weight_decay,
/// correct_bias)` without `params` and `lr`, which Burn supplies at step time).
///
/// ```
/// use llama_model::AdamWConfig;
/// let config = AdamWConfig::new().with_weight_decay(1e-4);
/// assert!(config.validate().is_ok());
/// ```
#[derive(Config, Debug)]
pub struct AdamWConfig {
    /// Decay rate of the first moment (`betas[0]`), in `[0, 1)`.
    #[config(default = 0.9)]
    pub beta_1: f64,
    /// Decay rate of the second moment (`betas[1]`), in `[0, 1)`.
    #[config(default = 0.999)]
    pub beta_2: f64,
    /// Added to `sqrt(v)` in the denominator for numerical stability, `>= 0`.
    #[config(default = 1e-6)]
    pub epsilon: f64,
    /// Decoupled weight decay, `>= 0`: after the update, `p -= lr * weight_decay * p`.
    #[config(default = 0.0)]
    pub weight_decay: f64,
    /// Whether to apply Adam's bias correction (`sqrt(1 - b2^t) / (1 - b1^t)` on the step size).
    #[config(default = true)]
    pub correct_bias: bool,
}

impl AdamWConfig {
    /// Checks the hyperparameters: `0 <= beta_1, beta_2 < 1`, `epsilon >= 0`,
    /// `weight_decay >= 0` and finite (NaN is rejected everywhere).
    pub fn validate(&self) -> Result<(), AdamWError> {
        for (which, value) in [(1, self.beta_1), (2, self.beta_2)] {
            if !(0.0..1.0).contains(&value) {
                return Err(AdamWError::InvalidBeta { which, value });
            }
        }
        if self.epsilon.is_nan() || self.epsilon < 0.0 {
            return Err(AdamWError::InvalidEpsilon(self.epsilon));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(AdamWError::InvalidWeightDecay(self.weight_decay));
        }
        Ok(())
    }

    /// Builds the per-tensor [`AdamW`] rule after [validating](Self::validate) the config.
    pub fn build(&self) -> Result<AdamW, AdamWError> {
        self.validate()?;
        Ok(AdamW {
            beta_1: self.beta_1,
            beta_2: self.beta_2,
            epsilon: self.epsilon,
            weight_decay: self.weight_decay,
            correct_bias: self.correct_bias,
        })
    }

    /// Builds an optimizer for module `M` on autodiff backend `B` (for Burn's `Learner` or
    /// `optim.step(lr, module, grads)`), after [validating](Self::validate) the config.
    ///
    /// Gradient clipping can be added with
    /// [`OptimizerAdaptor::with_grad_clipping`] on the result.
    pub fn init<B: AutodiffBackend, M: AutodiffModule<B>>(
        &self,
    ) -> Result<AdamWOptimizer<M, B>, AdamWError> {
        Ok(OptimizerAdaptor::from(self.build()?))
    }
}

/// The exercise's AdamW update rule for one tensor, built from a validated [`AdamWConfig`].
///
/// Use it through [`AdamWConfig::init`], which adapts it to whole modules.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamW {
    beta_1: f64,
    beta_2: f64,
    epsilon: f64,
    weight_decay: f64,
    correct_bias: bool,
}

impl AdamW {
    /// The configuration this optimizer was built from.
    pub fn config(&self) -> AdamWConfig {
        AdamWConfig {
            beta_1: self.beta_1,
            beta_2: self.beta_2,
            epsilon: self.epsilon,
            weight_decay: self.weight_decay,
            correct_bias: self.correct_bias,
        }
    }

    /// The step size `a` of step `t` (1-based) for learning rate `lr`: with bias correction
    /// `lr * sqrt(1 - b2^t) / (1 - b1^t)`, which folds the corrections of both moments into one
    /// scalar (`m_hat / sqrt(v_hat) = m / sqrt(v) * sqrt(1 - b2^t) / (1 - b1^t)`), else `lr`.
    fn step_size(&self, lr: LearningRate, t: usize) -> f64 {
        if !self.correct_bias {
            return lr;
        }
        // beta^t underflows to 0 long before t leaves i32; saturate instead of wrapping.
        let t = i32::try_from(t).unwrap_or(i32::MAX);
        // 1 - b1^t > 0 since 0 <= b1 < 1 and t >= 1.
        lr * (1.0 - self.beta_2.powi(t)).sqrt() / (1.0 - self.beta_1.powi(t))
    }
}

/// Per-parameter state of [`AdamW`]: the step count and both moment estimates (same shape as the
/// parameter). Saved and loaded as part of the optimizer's record.
#[derive(Record, Clone)]
pub struct AdamWState<B: Backend, const D: usize> {
    /// Number of updates applied to this parameter so far (`t` after the last step).
    pub step: usize,
    /// First moment estimate `m` (exponential average of the gradient), not bias-corrected.
    pub moment_1: Tensor<B, D>,
    /// Second moment estimate `v` (exponential average of the squared gradient), not
    /// bias-corrected.
    pub moment_2: Tensor<B, D>,
}

impl<B: Backend, const D: usize> AdamWState<B, D> {
    /// Moves both moment tensors to `device`.
    pub fn to_device(self, device: &B::Device) -> Self {
        Self {
            step: self.step,
            moment_1: self.moment_1.to_device(device),
            moment_2: self.moment_2.to_device(device),
        }
    }
}

impl<B: Backend> SimpleOptimizer<B> for AdamW {
    type State<const D: usize> = AdamWState<B, D>;

    /// One AdamW update of `tensor` with gradient `grad` (see the [module docs](self)).
    ///
    /// # Panics
    ///
    /// If `lr` is negative, NaN or infinite (see [`validate_lr`]): Burn's trait has no error
    /// channel, and silently ascending the loss is worse than stopping.
    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<B, D>, Option<Self::State<D>>) {
        if let Err(err) = validate_lr(lr) {
            panic!("AdamW step: {err}");
        }
        let (b1, b2) = (self.beta_1, self.beta_2);

        // Exponential moving averages of g and g^2, starting from zero (so the first step
        // reduces to (1 - b) g and (1 - b) g^2).
        let grad_sq = grad.clone().square();
        let (t, m, v) = match state {
            Some(s) => (
                s.step + 1,
                s.moment_1.mul_scalar(b1) + grad.mul_scalar(1.0 - b1),
                s.moment_2.mul_scalar(b2) + grad_sq.mul_scalar(1.0 - b2),
            ),
            None => (1, grad.mul_scalar(1.0 - b1), grad_sq.mul_scalar(1.0 - b2)),
        };

        // Bias correction folded into the step size; epsilon is added to sqrt of the
        // uncorrected v (Kingma & Ba's "efficient" version, as in the exercise).
        let step_size = self.step_size(lr, t);
        let denom = v.clone().sqrt().add_scalar(self.epsilon);
        let mut updated = tensor - m.clone().div(denom).mul_scalar(step_size);

        // Decoupled weight decay (Loshchilov & Hutter), applied to the updated parameter and
        // scaled by the learning rate: p - lr * wd * p = p * (1 - lr * wd).
        let decay = lr * self.weight_decay;
        if decay != 0.0 {
            updated = updated.mul_scalar(1.0 - decay);
        }

        let state = AdamWState {
            step: t,
            moment_1: m,
            moment_2: v,
        };
        (updated, Some(state))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &B::Device) -> Self::State<D> {
        state.to_device(device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exercise::checks::WeightMatrix;
    use burn::backend::{Autodiff, NdArray};
    use burn::optim::{GradientsParams, Optimizer};
    use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
    use burn::tensor::TensorData;

    type TB = Autodiff<NdArray>;

    /// A bare weight matrix `W`, the model of the exercise's optimizer test.
    type Weight<B> = WeightMatrix<B>;

    /// `W` from its rows.
    fn weight(values: &[Vec<f32>]) -> Weight<TB> {
        let rows = values.len();
        let cols = values.first().map_or(0, Vec::len);
        let flat: Vec<f32> = values.iter().flatten().copied().collect();
        WeightMatrix::new(flat, [rows, cols], &Default::default())
    }

    impl Weight<TB> {
        /// One optimizer step on the loss `sum(W * c)`, whose gradient is exactly `c`.
        fn step_with_grad(
            self,
            optim: &mut AdamWOptimizer<Self, TB>,
            lr: LearningRate,
            grad: &[f32],
        ) -> Self {
            let shape = self.weight().dims();
            let c = Tensor::<TB, 2>::from_data(
                TensorData::new(grad.to_vec(), shape),
                &Default::default(),
            );
            let loss = (self.weight() * c).sum();
            let grads = GradientsParams::from_grads::<TB, _>(loss.backward(), &self);
            optim.step(lr, self, grads)
        }
    }

    fn close(actual: f64, expected: f64, atol: f64, rtol: f64) -> bool {
        (actual - expected).abs() <= atol + rtol * expected.abs()
    }

    /// Hand computation in f64 of the exercise's update for one element.
    fn reference_updates(p0: f64, grads: &[f64], lr: f64, cfg: &AdamWConfig) -> Vec<f64> {
        let (mut p, mut m, mut v) = (p0, 0.0, 0.0);
        let mut out = Vec::new();
        for (i, &g) in grads.iter().enumerate() {
            let t = i as i32 + 1;
            m = cfg.beta_1 * m + (1.0 - cfg.beta_1) * g;
            v = cfg.beta_2 * v + (1.0 - cfg.beta_2) * g * g;
            let a = if cfg.correct_bias {
                lr * (1.0 - cfg.beta_2.powi(t)).sqrt() / (1.0 - cfg.beta_1.powi(t))
            } else {
                lr
            };
            p -= a * m / (v.sqrt() + cfg.epsilon);
            p -= lr * cfg.weight_decay * p;
            out.push(p);
        }
        out
    }

    fn check_against_hand_computation(cfg: AdamWConfig) {
        let lr = 0.01;
        let p0 = [0.5f32, -1.25, 2.0, 0.0];
        let steps: [[f32; 4]; 3] = [
            [0.3, -2.0, 1.0, 0.0],
            [-0.7, 0.5, 1.0, 4.0],
            [0.1, 0.25, -3.0, -1.0],
        ];
        let mut model = weight(&[p0.to_vec()]);
        let mut optim = cfg.init::<TB, Weight<TB>>().expect("valid config");
        let mut trajectory = Vec::new();
        for grad in &steps {
            model = model.step_with_grad(&mut optim, lr, grad);
            trajectory.push(model.values());
        }
        for (j, &p) in p0.iter().enumerate() {
            let grads: Vec<f64> = steps.iter().map(|g| f64::from(g[j])).collect();
            let expected = reference_updates(f64::from(p), &grads, lr, &cfg);
            for (t, e) in expected.iter().enumerate() {
                let a = f64::from(trajectory[t][j]);
                assert!(
                    close(a, *e, 1e-6, 1e-6),
                    "element {j}, step {}: got {a}, expected {e} (correct_bias {})",
                    t + 1,
                    cfg.correct_bias
                );
            }
        }
    }

    #[test]
    fn without_bias_correction_matches_hand_computation() {
        check_against_hand_computation(
            AdamWConfig::new()
                .with_correct_bias(false)
                .with_weight_decay(0.1),
        );
    }

    #[test]
    fn with_bias_correction_matches_hand_computation() {
        check_against_hand_computation(AdamWConfig::new().with_weight_decay(0.1));
    }

    #[test]
    fn weight_decay_alone_scales_by_one_minus_lr_wd() {
        let (lr, wd) = (0.1, 0.5);
        let p0 = vec![1.0f32, -3.5, 0.123, 7.0, -0.0, 42.0];
        let mut model = weight(std::slice::from_ref(&p0));
        let mut optim = AdamWConfig::new()
            .with_weight_decay(wd)
            .init::<TB, Weight<TB>>()
            .expect("valid config");
        let factor = (1.0 - lr * wd) as f32;
        let mut expected = p0;
        for _ in 0..3 {
            model = model.step_with_grad(&mut optim, lr, &[0.0; 6]);
            expected.iter_mut().for_each(|p| *p *= factor);
            assert_eq!(model.values(), expected);
        }
    }

    #[test]
    fn config_validation() {
        assert!(AdamWConfig::new().validate().is_ok());
        assert_eq!(AdamWConfig::new().epsilon, 1e-6);
        assert_eq!(AdamWConfig::new().weight_decay, 0.0);
        assert!(AdamWConfig::new().correct_bias);
        assert!(AdamWConfig::new().with_beta_1(0.0).validate().is_ok());

        let err = |c: AdamWConfig| c.init::<TB, Weight<TB>>().err();
        assert_eq!(
            err(AdamWConfig::new().with_beta_1(1.0)),
            Some(AdamWError::InvalidBeta {
                which: 1,
                value: 1.0
            })
        );
        assert_eq!(
            err(AdamWConfig::new().with_beta_1(-0.1)),
            Some(AdamWError::InvalidBeta {
                which: 1,
                value: -0.1
            })
        );
        assert_eq!(
            err(AdamWConfig::new().with_beta_2(1.5)),
            Some(AdamWError::InvalidBeta {
                which: 2,
                value: 1.5
            })
        );
        assert!(matches!(
            err(AdamWConfig::new().with_beta_2(f64::NAN)),
            Some(AdamWError::InvalidBeta { which: 2, .. })
        ));
        assert_eq!(
            err(AdamWConfig::new().with_epsilon(-1e-8)),
            Some(AdamWError::InvalidEpsilon(-1e-8))
        );
        assert!(matches!(
            err(AdamWConfig::new().with_epsilon(f64::NAN)),
            Some(AdamWError::InvalidEpsilon(_))
        ));
        assert_eq!(
            err(AdamWConfig::new().with_weight_decay(-0.01)),
            Some(AdamWError::InvalidWeightDecay(-0.01))
        );
        assert!(AdamWConfig::new().with_epsilon(0.0).build().is_ok());

        assert_eq!(validate_lr(DEFAULT_LEARNING_RATE), Ok(1e-3));
        assert_eq!(validate_lr(0.0), Ok(0.0));
        assert_eq!(
            validate_lr(-1e-3),
            Err(AdamWError::InvalidLearningRate(-1e-3))
        );
        assert!(validate_lr(f64::NAN).is_err());
        assert!(validate_lr(f64::INFINITY).is_err());
        let message = AdamWError::InvalidLearningRate(-1.0).to_string();
        assert!(message.contains("learning rate"), "{message}");
    }

    #[test]
    #[should_panic(expected = "invalid learning rate")]
    fn negative_learning_rate_panics_at_step() {
        let model = weight(&[vec![1.0, 2.0]]);
        let mut optim = AdamWConfig::new()
            .init::<TB, Weight<TB>>()
            .expect("valid config");
        let _ = model.step_with_grad(&mut optim, -1e-3, &[1.0, 1.0]);
    }

    #[test]
    fn state_record_round_trip() {
        let cfg = AdamWConfig::new().with_weight_decay(0.01);
        let lr = 0.05;
        let grads: [[f32; 3]; 3] = [[0.5, -1.0, 2.0], [1.5, 0.25, -0.5], [-2.0, 1.0, 0.75]];
        let p0 = vec![0.1f32, 0.2, -0.3];

        // Uninterrupted: three steps with one optimizer.
        let mut model = weight(std::slice::from_ref(&p0));
        let mut optim = cfg.init::<TB, Weight<TB>>().expect("valid config");
        for g in &grads {
            model = model.step_with_grad(&mut optim, lr, g);
        }
        let uninterrupted = model.values();

        // Interrupted: two steps, save the optimizer state to bytes, load it into a fresh
        // optimizer, then the third step.
        let mut model = weight(&[p0]);
        let mut optim = cfg.init::<TB, Weight<TB>>().expect("valid config");
        for g in &grads[..2] {
            model = model.step_with_grad(&mut optim, lr, g);
        }
        let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
        let bytes = recorder.record(optim.to_record(), ()).expect("save record");
        drop(optim);
        let record =
            Recorder::<TB>::load(&recorder, bytes, &Default::default()).expect("load record");
        let mut restored = cfg
            .init::<TB, Weight<TB>>()
            .expect("valid config")
            .load_record(record);
        {
            let saved = restored.to_record();
            assert_eq!(saved.len(), 1);
            let state: AdamWState<NdArray, 2> =
                saved.into_values().next().expect("one state").into_state();
            assert_eq!(state.step, 2);
        }
        model = model.step_with_grad(&mut restored, lr, &grads[2]);
        assert_eq!(model.values(), uninterrupted);

        // A fresh optimizer without the state gives a different third step, so the comparison
        // above does depend on the restored moments.
        let mut model_fresh = weight(&[vec![0.1f32, 0.2, -0.3]]);
        let mut optim = cfg.init::<TB, Weight<TB>>().expect("valid config");
        for g in &grads[..2] {
            model_fresh = model_fresh.step_with_grad(&mut optim, lr, g);
        }
        let mut fresh = cfg.init::<TB, Weight<TB>>().expect("valid config");
        model_fresh = model_fresh.step_with_grad(&mut fresh, lr, &grads[2]);
        assert_ne!(model_fresh.values(), uninterrupted);
    }
}
