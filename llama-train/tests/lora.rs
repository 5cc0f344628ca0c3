//! LoRA fine-tuning of the stories260K classifier: a fresh adapter changes nothing, training
//! moves only the adapters and the head, the optimizer keeps state only for them, the loss
//! falls, and the saved adapter merged into the base gives the trained model's logits.

use burn::backend::NdArray;
use burn::data::dataloader::batcher::Batcher;
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use llama_model::fixtures::fixture;
use llama_model::lora::file::AdapterFile;
use llama_model::lora::{LoraConfig, LoraTarget};
use llama_model::{load_checkpoint, AdamWConfig, Llama, LoadOptions, Tokenizer};
use llama_train::classify::classifier::{
    nll_loss, ClassifierConfig, FinetuneOption, LlamaEmbeddingClassifier,
};
use llama_train::classify::finetune::{finetune_with, FinetuneConfig, FinetuneData};
use llama_train::data::sentences::{
    read_labelled_file, DataOptions, SentenceBatch, SentenceBatcher,
};
use llama_train::run::control::RunControl;

/// What the CLI trains on (balanced checkpointing).
type TB = llama_train::TrainBackend<NdArray>;

fn stories260k<B: Backend>() -> (Llama<B>, llama_model::LlamaConfig) {
    let loaded = load_checkpoint::<B>(
        &fixture("models/stories260K/stories260K.pt"),
        &LoadOptions::default(),
        &Default::default(),
    )
    .expect("stories260K");
    (loaded.model, loaded.config)
}

/// The first `n` SST training sentences as one batch.
fn sst_batch(n: usize) -> SentenceBatch<TB> {
    let tokenizer = Tokenizer::from_file(fixture("models/stories260K/tok512.bin")).expect("tok512");
    let path = fixture("data/sst-train.txt");
    let mut records = read_labelled_file(&path).expect("sst");
    records.truncate(n);
    let options = DataOptions::default().with_max_sentence_len(Some(24));
    let data = llama_train::data::sentences::SentenceDataset::from_records(
        records, &path, &tokenizer, &options,
    )
    .expect("tokenize");
    SentenceBatcher::from_tokenizer(&tokenizer).batch(data.items().to_vec(), &Default::default())
}

fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().expect("f32")
}

/// Every base parameter of the Llama (not the adapters), flattened, in a fixed order.
fn base_values<B: Backend>(llama: &Llama<B>) -> Vec<Vec<f32>> {
    let mut out = vec![
        values(llama.tok_embeddings.weight.val()),
        values(llama.norm.weight.val()),
    ];
    for (_, linear) in llama.projections() {
        out.push(values(linear.weight.val()));
    }
    for layer in &llama.layers {
        out.push(values(layer.attention_norm.weight.val()));
        out.push(values(layer.ffn_norm.weight.val()));
    }
    out
}

fn adapter_values<B: Backend>(llama: &Llama<B>) -> Vec<Vec<f32>> {
    llama
        .projections()
        .filter_map(|(_, l)| l.lora.as_ref())
        .flat_map(|a| [values(a.lora_a.val()), values(a.lora_b.val())])
        .collect()
}

fn classifier(lora: Option<LoraConfig>) -> LlamaEmbeddingClassifier<TB> {
    let (llama, config) = stories260k::<TB>();
    ClassifierConfig::new(config, 5)
        .with_hidden_dropout_prob(0.0)
        .with_lora(lora)
        .init_with_llama(llama, 11)
        .expect("classifier")
        .with_option(FinetuneOption::Finetune)
}

#[test]
fn lora_steps_train_only_the_adapters_and_head_and_lower_the_loss() {
    let batch = sst_batch(16);
    let lora = LoraConfig::new(4).with_targets(vec![LoraTarget::Q, LoraTarget::V, LoraTarget::W2]);
    let full = classifier(None);
    let mut model = classifier(Some(lora.clone()));

    // B = 0: exactly the outputs of the same classifier without adapters.
    let log_probs =
        |m: &LlamaEmbeddingClassifier<TB>| m.forward(batch.tokens.clone(), batch.lengths.clone());
    assert_eq!(values(log_probs(&model)), values(log_probs(&full)));

    let base_before = base_values(&model.llama);
    let adapters_before = adapter_values(&model.llama);
    let head_before = values(model.classifier_head.weight.val());
    let mut optim = AdamWConfig::new()
        .init::<TB, LlamaEmbeddingClassifier<TB>>()
        .expect("adamw");
    let mut losses = Vec::new();
    for _ in 0..4 {
        let loss = nll_loss(log_probs(&model), batch.labels.clone()).mean();
        losses.push(values(loss.clone())[0]);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-2, model, grads);
    }
    losses.push(values(nll_loss(log_probs(&model), batch.labels.clone()).mean())[0]);
    println!("losses over 4 LoRA steps: {losses:?}");
    assert!(
        losses[4] < losses[0] - 0.05,
        "the loss did not fall: {losses:?}"
    );

    // The base weights are bit-identical; every adapter's B and the head moved.
    assert_eq!(base_values(&model.llama), base_before);
    let adapters_after = adapter_values(&model.llama);
    assert_eq!(adapters_after.len(), 5 * 3 * 2);
    for (i, (after, before)) in adapters_after.iter().zip(&adapters_before).enumerate() {
        assert_ne!(after, before, "adapter tensor {i} did not train");
    }
    assert_ne!(values(model.classifier_head.weight.val()), head_before);

    // The optimizer holds state for the 30 adapter tensors and the head's weight and bias
    // only, not for the model's 48 frozen tensors.
    assert_eq!(optim.to_record().len(), 30 + 2);
}

#[test]
fn a_lora_run_saves_an_adapter_that_merges_into_the_trained_model() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokenizer = Tokenizer::from_file(fixture("models/stories260K/tok512.bin")).expect("tok512");
    let lora = LoraConfig::new(2).with_alpha(Some(4.0));
    let config = FinetuneConfig::new(dir.path().to_path_buf())
        .with_epochs(1)
        .with_batch_size(8)
        .with_lr(1e-2)
        .with_hidden_dropout_prob(0.0)
        .with_max_sentence_len(Some(16))
        .with_lora(Some(lora.clone()));
    let slice = |file: &str, n: usize| {
        let path = fixture(&format!("data/{file}"));
        let mut records = read_labelled_file(&path).expect("read");
        records.truncate(n);
        llama_train::data::sentences::SentenceDataset::from_records(
            records,
            &path,
            &tokenizer,
            &config.data_options(),
        )
        .expect("tokenize")
    };
    let data = FinetuneData {
        num_labels: 5,
        ..FinetuneData::new(
            slice("sst-train.txt", 24),
            slice("sst-dev.txt", 8),
            None,
            tokenizer.pad_id(),
        )
    };
    let (llama, llama_config) = stories260k::<TB>();
    let outcome = finetune_with(
        &config,
        llama,
        &llama_config,
        &data,
        &Default::default(),
        &RunControl::default(),
    )
    .expect("LoRA fine-tune");
    let adapter_path = outcome.adapter_path.expect("an adapter file");
    let adapter = AdapterFile::read(&adapter_path).expect("read adapter");
    assert_eq!(adapter.config(), &lora);

    // The adapter plus the untouched base, merged, gives the trained model's logits within
    // 1e-5 of their scale (max |logit|, 20 here): the f32 sum of the two products and the
    // product with the summed weight round differently, and five layers carry that on
    // (measured: 3.1e-5 absolute, 1.6e-6 of the scale; 1e-5 absolute holds for one layer,
    // see llama-model's `projection` tests).
    let (base, _) = stories260k::<NdArray>();
    let merged = adapter.apply(base).expect("apply").merge_lora();
    let tokens = sst_batch(4).tokens.inner();
    let trained = values(outcome.model.llama.forward(tokens.clone()).logits);
    let merged = values(merged.forward(tokens).logits);
    let scale = trained.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = trained
        .iter()
        .zip(&merged)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    println!("merged vs adapter logits: max |diff| {worst:.3e}, max |logit| {scale:.2}");
    assert!(worst <= 1e-5 * scale, "{worst} > 1e-5 × {scale}");
    // Its head is the trained head, in PyTorch's layout.
    let head = adapter.extra("classifier_head.weight").expect("head");
    assert_eq!(head.shape, vec![5, llama_config.dim]);
    assert_eq!(
        head.data,
        values(outcome.model.classifier_head.weight.val().transpose())
    );
}
