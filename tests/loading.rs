//! Loading draws nothing at random: a model is built from its checkpoint's tensors alone
//! (`llama_model::model::param_source`), and a saved classifier from lazy placeholders that its record
//! replaces. The backend's generator is global to the process on ndarray and flex, so a draw
//! hidden in a load would shift every later draw of the process (a training run's, a test's).

use crate::common;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use common::{fixture, B};
use llama_model::{load_checkpoint, Llama, LoadOptions};

/// Every float parameter of a module, in visiting order, as values.
#[derive(Default)]
struct Values(Vec<Vec<f32>>);

impl ModuleVisitor<B> for Values {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.0
            .push(param.val().into_data().to_vec::<f32>().expect("f32"));
    }
}

fn values(model: &Llama<B>) -> Vec<Vec<f32>> {
    let mut v = Values::default();
    model.visit(&mut v);
    v.0
}

fn load(file: &str) -> Llama<B> {
    load_checkpoint::<B>(
        &fixture(&format!("models/stories260K/{file}")),
        &LoadOptions::default(),
        &Default::default(),
    )
    .expect("loads")
    .model
}

/// The next values the global generator gives.
fn next_draw() -> Vec<f32> {
    Tensor::<B, 1>::random([64], Distribution::Normal(0.0, 1.0), &Default::default())
        .into_data()
        .to_vec::<f32>()
        .expect("f32")
}

#[test]
fn loading_a_checkpoint_draws_nothing_from_the_global_generator() {
    let device = Default::default();
    for file in [
        "stories260K.bin",
        "stories260K.pt",
        "stories260K.safetensors",
    ] {
        // The same parameters whatever the generator's state.
        B::seed(&device, 1);
        let first = values(&load(file));
        B::seed(&device, 2);
        let second = values(&load(file));
        assert_eq!(first, second, "{file}");
        assert!(
            first.len() >= 2 + 5 * 9,
            "{file}: embeddings, 5 layers of 9, final norm"
        );

        // The generator's next draw is the same with and without a load in between.
        B::seed(&device, 7);
        let _model = load(file);
        let after_load = next_draw();
        B::seed(&device, 7);
        assert_eq!(
            after_load,
            next_draw(),
            "{file}: the load drew from the generator"
        );
    }
}
