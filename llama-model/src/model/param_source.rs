//! Where a model's parameters come from, so that each module is built by one function
//! whether its weights are drawn at random or read from a checkpoint (as candle's
//! `load(vb, cfg)` does).
//!
//! [`RandomInit`] draws llama2.c's initialisation (a preset, a model trained from scratch);
//! the checkpoint loader's source hands out the file's tensors, checking each name and shape.
//! A loaded model therefore draws nothing from the backend's random generator (global to the
//! process on ndarray and flex): Burn's `Param::from_tensor` is eager, so building a random
//! model first and overwriting its weights would draw every weight and throw it away.

use std::convert::Infallible;

use burn::module::{Param, ParamId};
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};

/// A supplier of named parameters. Names are the exercise's state-dict names
/// (`layers.0.attention.compute_query.weight`); shapes are PyTorch's.
pub trait ParamSource<B: Backend> {
    /// Why a parameter cannot be supplied ([`Infallible`] for random initialisation).
    type Error;

    /// A bias-free linear layer `d_in -> d_out`, weight `name` of PyTorch shape
    /// `[d_out, d_in]`; a random source draws it from N(0, `init_std`²).
    ///
    /// The weight is held as Burn's `Linear` wants it, `[d_in, d_out]`, as the transposed view
    /// of the `[d_out, d_in]` storage: single-row products (decoding) read that layout
    /// fastest, and loaded and random models then run the same products at the same speed.
    fn linear(
        &mut self,
        name: &str,
        d_in: usize,
        d_out: usize,
        init_std: f64,
    ) -> Result<Linear<B>, Self::Error>;

    /// A matrix `name` of shape `[rows, cols]` (the embedding table); a random source draws it
    /// from N(0, `init_std`²).
    fn matrix(
        &mut self,
        name: &str,
        shape: [usize; 2],
        init_std: f64,
    ) -> Result<Param<Tensor<B, 2>>, Self::Error>;

    /// A norm's gain `name` of shape `[dim]`; a random source gives ones.
    fn gain(&mut self, name: &str, dim: usize) -> Result<Param<Tensor<B, 1>>, Self::Error>;
}

/// `prefix.name`, or `name` at the top level.
pub fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// llama2.c's random initialisation, drawn from the backend's generator on `device`.
#[derive(Debug)]
pub struct RandomInit<'d, B: Backend> {
    device: &'d B::Device,
}

impl<'d, B: Backend> RandomInit<'d, B> {
    /// Draws on `device`.
    pub fn new(device: &'d B::Device) -> Self {
        Self { device }
    }
}

impl<B: Backend> ParamSource<B> for RandomInit<'_, B> {
    type Error = Infallible;

    fn linear(
        &mut self,
        _name: &str,
        d_in: usize,
        d_out: usize,
        init_std: f64,
    ) -> Result<Linear<B>, Infallible> {
        let weight = Tensor::<B, 2>::random(
            [d_out, d_in],
            Distribution::Normal(0.0, init_std),
            self.device,
        );
        Ok(Linear {
            weight: Param::from_tensor(weight.transpose()),
            bias: None,
        })
    }

    fn matrix(
        &mut self,
        _name: &str,
        shape: [usize; 2],
        init_std: f64,
    ) -> Result<Param<Tensor<B, 2>>, Infallible> {
        Ok(Param::from_tensor(Tensor::random(
            shape,
            Distribution::Normal(0.0, init_std),
            self.device,
        )))
    }

    fn gain(&mut self, _name: &str, dim: usize) -> Result<Param<Tensor<B, 1>>, Infallible> {
        Ok(Param::from_tensor(Tensor::ones([dim], self.device)))
    }
}

/// Placeholders for a model whose parameters a Burn record then replaces (`load_file`,
/// `load_record`): each parameter is lazy (Burn's `Param::uninitialized`), so nothing is
/// allocated or drawn for it. One read before the record replaces it would see zeros.
#[derive(Debug)]
pub struct ForRecord<'d, B: Backend> {
    device: &'d B::Device,
}

impl<'d, B: Backend> ForRecord<'d, B> {
    /// Placeholders on `device`.
    pub fn new(device: &'d B::Device) -> Self {
        Self { device }
    }

    fn lazy_zeros<const D: usize>(&self, shape: [usize; D]) -> Param<Tensor<B, D>> {
        Param::uninitialized(
            ParamId::new(),
            move |device, require_grad| {
                let zeros = Tensor::zeros(shape, device);
                if require_grad {
                    zeros.require_grad()
                } else {
                    zeros
                }
            },
            self.device.clone(),
            true,
            shape.into(),
        )
    }
}

impl<B: Backend> ParamSource<B> for ForRecord<'_, B> {
    type Error = Infallible;

    fn linear(
        &mut self,
        _name: &str,
        d_in: usize,
        d_out: usize,
        _init_std: f64,
    ) -> Result<Linear<B>, Infallible> {
        Ok(Linear {
            weight: self.lazy_zeros([d_in, d_out]),
            bias: None,
        })
    }

    fn matrix(
        &mut self,
        _name: &str,
        shape: [usize; 2],
        _init_std: f64,
    ) -> Result<Param<Tensor<B, 2>>, Infallible> {
        Ok(self.lazy_zeros(shape))
    }

    fn gain(&mut self, _name: &str, dim: usize) -> Result<Param<Tensor<B, 1>>, Infallible> {
        Ok(self.lazy_zeros([dim]))
    }
}
