//! Training runs on [`llama_train::TrainBackend`], Burn's autodiff with balanced
//! checkpointing: its backward pass recomputes elementwise results instead of keeping them.
//! The recomputation must give Burn's default strategy's loss and gradients bit for bit, on a
//! padded batch with dropout on.

use burn::backend::{Autodiff, NdArray};
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;
use llama_model::fixtures::fixture;
use llama_model::{load_checkpoint, LoadOptions, Tokenizer};
use llama_train::classify::classifier::{nll_loss, ClassifierConfig, SentencePosition};
use llama_train::data::sentences::{make_batch, read_labelled_file, DataOptions, SentenceDataset};
use llama_train::TrainBackend;

/// Every parameter's gradient, flattened, in visiting order (empty where none).
struct Gradients<'a, B: AutodiffBackend> {
    grads: &'a B::Gradients,
    all: Vec<Vec<f32>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Gradients<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let grad = param
            .grad(self.grads)
            .map(|g| g.into_data().to_vec::<f32>().expect("f32"))
            .unwrap_or_default();
        self.all.push(grad);
    }
}

/// Loss and gradients of the stories260K classifier (dropout 0.3, seeded) on the first
/// eight SST training sentences, padded to the longest.
fn loss_and_gradients<B: AutodiffBackend>() -> (f32, Vec<Vec<f32>>) {
    let device = Default::default();
    let loaded = load_checkpoint::<B>(
        &fixture("models/stories260K/stories260K.bin"),
        &LoadOptions::default(),
        &device,
    )
    .expect("load stories260K");
    let tokenizer = Tokenizer::from_file(fixture("models/stories260K/tok512.bin")).expect("tok512");
    let path = fixture("data/sst-train.txt");
    let mut records = read_labelled_file(&path).expect("read SST");
    records.truncate(8);
    let data = SentenceDataset::from_records(records, &path, &tokenizer, &DataOptions::default())
        .expect("tokenize");
    let rows: Vec<&[u32]> = data.items().iter().map(|i| i.tokens.as_slice()).collect();
    let labels: Vec<usize> = data.items().iter().map(|i| i.label).collect();
    let widths: Vec<usize> = rows.iter().map(|r| r.len()).collect();
    assert!(
        widths.iter().min() < widths.iter().max(),
        "rows of one length"
    );
    let batch = make_batch::<B, _>(&rows, &labels, tokenizer.pad_id(), &device);

    let model = ClassifierConfig::new(loaded.config, 5)
        .with_hidden_dropout_prob(0.3)
        .with_position(SentencePosition::LastToken)
        .init_with_llama(loaded.model, 7)
        .expect("classifier");
    let log_probs = model.forward_with_dropout_seed(batch.tokens, batch.lengths, Some(11));
    let loss = nll_loss(log_probs, batch.labels);
    let value = loss.clone().into_data().to_vec::<f32>().expect("loss")[0];
    let grads = loss.backward();
    let mut visitor = Gradients::<B> {
        grads: &grads,
        all: Vec::new(),
    };
    model.visit(&mut visitor);
    (value, visitor.all)
}

#[test]
fn balanced_checkpointing_gives_the_default_gradients_bit_for_bit() {
    let (loss_default, default) = loss_and_gradients::<Autodiff<NdArray>>();
    let (loss_balanced, balanced) = loss_and_gradients::<TrainBackend<NdArray>>();
    assert_eq!(loss_default.to_bits(), loss_balanced.to_bits());
    assert_eq!(default.len(), balanced.len());
    // Every weight of the Llama and the head has a gradient (the frozen parts would not).
    let with_grad = default.iter().filter(|g| !g.is_empty()).count();
    assert_eq!(with_grad, default.len(), "parameters without a gradient");
    for (i, (a, b)) in default.iter().zip(&balanced).enumerate() {
        assert!(
            a.iter()
                .map(|x| x.to_bits())
                .eq(b.iter().map(|x| x.to_bits())),
            "parameter {i}: the gradients differ"
        );
        assert!(
            a.iter().any(|&x| x != 0.0),
            "parameter {i}: all-zero gradient"
        );
    }
}
