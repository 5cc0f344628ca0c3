//! Gradient clipping by the global norm, as PyTorch's `clip_grad_norm_` does it (llama2.c's
//! `--grad_clip`): with `n = sqrt(Σ ‖g‖²)` over every gradient of the model, each gradient is
//! scaled by `max_norm / (n + 1e-6)` when that is below 1. Burn 0.21's own clipping
//! (`GradientClipping::Norm`) works per parameter, which is another rule.

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor};

/// PyTorch's guard against dividing by a zero norm.
const EPS: f64 = 1e-6;

/// `Σ ‖g‖²` over the gradients of a model's float parameters.
struct SquaredNorm<'a> {
    grads: &'a GradientsParams,
    sum: f64,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SquaredNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            self.sum += g.powi_scalar(2).sum().into_scalar().elem::<f64>();
        }
    }
}

/// Scales every gradient of a model's float parameters by `factor`.
struct Scale<'a> {
    grads: &'a mut GradientsParams,
    factor: f64,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Scale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            self.grads.register(param.id, g * self.factor);
        }
    }
}

/// The global L2 norm of `grads` over `model`'s parameters.
pub fn global_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    grads: &GradientsParams,
) -> f64 {
    let mut visitor = SquaredNorm { grads, sum: 0.0 };
    model.visit(&mut visitor);
    visitor.sum.sqrt()
}

/// Clip `grads` to the global norm `max_norm` (see the [module docs](self)); returns the
/// gradients and their norm before clipping.
pub fn clip_global_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    mut grads: GradientsParams,
    max_norm: f64,
) -> (GradientsParams, f64) {
    let norm = global_norm(model, &grads);
    let factor = max_norm / (norm + EPS);
    if factor < 1.0 {
        model.visit(&mut Scale {
            grads: &mut grads,
            factor,
        });
    }
    (grads, norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};
    use burn::module::Module;
    use burn::nn::{Linear, LinearConfig};

    type B = Autodiff<NdArray>;

    #[derive(Module, Debug)]
    struct Two<B: burn::tensor::backend::Backend> {
        a: Linear<B>,
        b: Linear<B>,
    }

    fn grads_of(model: &Two<B>) -> GradientsParams {
        let device = Default::default();
        let x = Tensor::<B, 2>::ones([3, 4], &device);
        let loss = (model.b.forward(model.a.forward(x)) * 3.0).sum();
        GradientsParams::from_grads(loss.backward(), model)
    }

    fn values(model: &Two<B>, grads: &GradientsParams) -> Vec<f32> {
        let g2 = |p: &Param<Tensor<B, 2>>| grads.get::<NdArray, 2>(p.id).unwrap();
        let g1 = |p: &Param<Tensor<B, 1>>| grads.get::<NdArray, 1>(p.id).unwrap();
        let mut out = Vec::new();
        for linear in [&model.a, &model.b] {
            out.extend(g2(&linear.weight).into_data().to_vec::<f32>().unwrap());
            out.extend(
                g1(linear.bias.as_ref().unwrap())
                    .into_data()
                    .to_vec::<f32>()
                    .unwrap(),
            );
        }
        out
    }

    #[test]
    fn clipping_scales_every_gradient_to_the_global_norm() {
        let device = Default::default();
        let model = Two {
            a: LinearConfig::new(4, 5).init::<B>(&device),
            b: LinearConfig::new(5, 2).init::<B>(&device),
        };
        let before = values(&model, &grads_of(&model));
        let norm = before
            .iter()
            .map(|&v| f64::from(v).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!(norm > 1.0);

        let (clipped, reported) = clip_global_norm(&model, grads_of(&model), 1.0);
        assert!(
            (reported - norm).abs() < 1e-4 * norm,
            "{reported} vs {norm}"
        );
        let after = values(&model, &clipped);
        let factor = 1.0 / (norm + EPS);
        for (a, b) in after.iter().zip(&before) {
            assert!((f64::from(*a) - f64::from(*b) * factor).abs() < 1e-6);
        }
        // Below the limit nothing changes.
        let (same, _) = clip_global_norm(&model, grads_of(&model), norm * 2.0);
        assert_eq!(values(&model, &same), before);
    }
}
