//! Language-model training on the fixtures: a tiny preset's loss falls, its saved model
//! reloads (safetensors and llama2.c `.bin`) to the recorded validation figure exactly, a
//! run stopped and resumed ends bit for bit where an uninterrupted one does, and LoRA
//! training saves an adapter that reproduces the merged model.

use std::path::{Path, PathBuf};

use burn::backend::NdArray;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use llama_model::fixtures::fixture;
use llama_model::lora::file::AdapterFile;
use llama_model::lora::{LoraConfig, LoraTarget};
use llama_model::{load_checkpoint, Llama, LlamaConfig, LoadOptions, Tokenizer};
use llama_train::data::documents::{encode_documents, read_text, TextFormat};
use llama_train::data::sentences::read_labelled_file;
use llama_train::lm::corpus::{LmCorpus, Validation};
use llama_train::lm::perplexity::perplexity;
use llama_train::lm::pretrain::config::PretrainConfig;
use llama_train::lm::pretrain::error::PretrainError;
use llama_train::lm::pretrain::{pretrain_with, window_len, PretrainOutcome, MODEL_BIN_FILE};
use llama_train::report::metrics_log::{read_metrics, Split, METRICS_FILE};
use llama_train::run::control::RunControl;

/// What the CLI trains on (balanced checkpointing).
type TB = llama_train::TrainBackend<NdArray>;
type IB = NdArray;

fn tokenizer() -> Tokenizer {
    Tokenizer::from_file(fixture("models/stories260K/tok512.bin")).expect("tok512")
}

/// The first `n` SST training sentences as a plain text file in `dir`, encoded.
fn sst_documents(dir: &Path, n: usize) -> Vec<Vec<u32>> {
    let records = read_labelled_file(fixture("data/sst-train.txt")).expect("sst");
    let lines: Vec<String> = records.iter().take(n).map(|r| r.sentence.clone()).collect();
    let path = dir.join("sst.txt");
    std::fs::write(&path, lines.join("\n")).expect("write");
    let docs = read_text(&path, TextFormat::Plain).expect("read");
    encode_documents(&tokenizer(), &docs, usize::MAX, &path)
        .expect("encode")
        .rows
}

/// A 2-layer model on tok512's vocabulary with a 64-token context.
fn tiny() -> (Llama<TB>, LlamaConfig) {
    let config = LlamaConfig::new(32, 2, 4, 512)
        .with_n_kv_heads(Some(2))
        .with_max_seq_len(64);
    (config.init::<TB>(&Default::default()), config)
}

fn run_config(dir: PathBuf) -> PretrainConfig {
    PretrainConfig::new(dir)
        .with_seq_len(Some(32))
        .with_batch_size(8)
        .with_lr(5e-3)
        .with_min_lr(5e-4)
        .with_warmup_steps(4)
        .with_eval_every(8)
        .with_log_every(2)
}

fn train(
    config: &PretrainConfig,
    model: Llama<TB>,
    llama: &LlamaConfig,
    corpus: &LmCorpus,
    control: &RunControl,
) -> Result<PretrainOutcome<IB>, PretrainError> {
    pretrain_with(config, model, llama, corpus, &Default::default(), control)
}

fn logits<B: Backend>(model: &Llama<B>, ids: &[u32]) -> Vec<f32> {
    let data: Vec<i64> = ids.iter().map(|&t| i64::from(t)).collect();
    let tokens =
        Tensor::<B, 2, Int>::from_data(TensorData::new(data, [1, ids.len()]), &Default::default());
    model
        .forward(tokens)
        .logits
        .into_data()
        .to_vec()
        .expect("f32")
}

#[test]
fn a_tiny_preset_learns_and_its_saved_model_reloads_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let docs = sst_documents(dir.path(), 240);
    let (model, llama) = tiny();
    let config = run_config(dir.path().join("run"))
        .with_epochs(2)
        .with_export_bin(true)
        // 56 steps per epoch: no epoch ends on a logged step.
        .with_log_every(5);
    let seq_len = window_len(&config, &llama).unwrap();
    let corpus = LmCorpus::new(docs, Validation::Fraction(0.1), seq_len, 64, config.seed).unwrap();
    let outcome = train(&config, model, &llama, &corpus, &RunControl::default()).unwrap();

    // The loss falls: training rows, and validation against the random start.
    let rows = read_metrics(&config.artifact_dir.join(METRICS_FILE)).unwrap();
    let train: Vec<f64> = rows
        .iter()
        .filter(|r| r.split == Split::Train)
        .filter_map(|r| r.loss)
        .collect();
    println!("train losses {train:?}");
    let start = outcome.start().expect("step 0 evaluation");
    println!(
        "validation: start {:.4}, best {:.4} at step {}",
        start.val_loss, outcome.best.val_loss, outcome.best.step
    );
    assert_eq!(start.step, 0);
    // A random model predicts about uniformly: ln(512) = 6.24 nats.
    assert!(
        (start.val_loss - 512f64.ln()).abs() < 0.2,
        "{}",
        start.val_loss
    );
    assert!(train.last().unwrap() < &(train[0] - 1.0), "{train:?}");
    assert!(outcome.best.val_loss < start.val_loss - 1.0);
    let per_epoch = config.steps_per_epoch(corpus.windows.len());
    assert_eq!(outcome.steps, 2 * per_epoch);

    // Each epoch ends with one train row, also when it does not end on a logged step.
    assert_ne!(
        per_epoch % config.log_every,
        0,
        "no epoch ends on a logged step"
    );
    for epoch in 1..=2 {
        let steps: Vec<usize> = rows
            .iter()
            .filter(|r| r.split == Split::Train && r.epoch == epoch)
            .map(|r| r.step)
            .collect();
        assert_eq!(
            steps.last(),
            Some(&(epoch * per_epoch)),
            "epoch {epoch}: {steps:?}"
        );
        assert!(steps.windows(2).all(|w| w[0] < w[1]), "{steps:?}");
    }

    // The saved model reloads to exactly the recorded figure, and the llama2.c export to
    // exactly the same logits.
    let again = perplexity(
        &outcome.model,
        &corpus.val_rows,
        config.eval_batch_size,
        &Default::default(),
        |_| {},
    )
    .unwrap();
    assert_eq!(again.mean_nll().to_bits(), outcome.best.val_loss.to_bits());
    let bin = load_checkpoint::<IB>(
        &config.artifact_dir.join(MODEL_BIN_FILE),
        &LoadOptions::default(),
        &Default::default(),
    )
    .unwrap();
    let ids = &corpus.val_rows[0];
    assert_eq!(logits(&bin.model, ids), logits(&outcome.model, ids));
}

#[test]
fn a_stopped_run_resumes_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let docs = sst_documents(dir.path(), 120);
    let (model, llama) = tiny();
    let corpus = LmCorpus::new(docs, Validation::Fraction(0.1), 32, 64, 1337).unwrap();
    let whole = run_config(dir.path().join("whole")).with_grad_accum_steps(2);
    let parts = run_config(dir.path().join("parts")).with_grad_accum_steps(2);
    let a = train(
        &whole,
        model.clone(),
        &llama,
        &corpus,
        &RunControl::default(),
    )
    .unwrap();

    let stop = RunControl {
        max_steps: Some(3),
        ..RunControl::default()
    };
    let err = train(&parts, model.clone(), &llama, &corpus, &stop).unwrap_err();
    assert!(
        matches!(
            err,
            PretrainError::Stopped {
                step: 3,
                interrupted: false,
                ..
            }
        ),
        "{err}"
    );
    let resume = RunControl {
        resume: true,
        ..RunControl::default()
    };
    let b = train(&parts, model, &llama, &corpus, &resume).unwrap();

    let bytes =
        |c: &PretrainConfig| std::fs::read(c.artifact_dir.join("model.safetensors")).unwrap();
    assert_eq!(bytes(&whole), bytes(&parts), "the best models differ");
    let figures = |o: &PretrainOutcome<IB>| -> Vec<(usize, u64, Option<u64>)> {
        o.evaluations
            .iter()
            .map(|e| (e.step, e.val_loss.to_bits(), e.train_loss.map(f64::to_bits)))
            .collect()
    };
    assert_eq!(figures(&a), figures(&b));
    let losses = |c: &PretrainConfig| -> Vec<(usize, Option<u64>)> {
        read_metrics(&c.artifact_dir.join(METRICS_FILE))
            .unwrap()
            .iter()
            .map(|r| (r.step, r.loss.map(f64::to_bits)))
            .collect()
    };
    assert_eq!(losses(&whole), losses(&parts));

    // A different setting is refused, naming it.
    let other = parts.clone().with_lr(1e-3);
    let err = train(&other, tiny().0, &llama, &corpus, &resume)
        .unwrap_err()
        .to_string();
    assert!(err.contains("learning rate"), "{err}");
}

#[test]
fn lora_pretraining_saves_an_adapter_that_rebuilds_the_merged_model() {
    let dir = tempfile::tempdir().unwrap();
    let docs = sst_documents(dir.path(), 120);
    let loaded = load_checkpoint::<TB>(
        &fixture("models/stories260K/stories260K.pt"),
        &LoadOptions::default(),
        &Default::default(),
    )
    .expect("stories260K");
    let lora = LoraConfig::new(4)
        .with_targets(vec![LoraTarget::Q, LoraTarget::V, LoraTarget::W2])
        .with_dropout(0.1);
    let config = run_config(dir.path().join("lora"))
        .with_seq_len(Some(64))
        .with_lr(1e-2)
        .with_lora(Some(lora));
    let corpus = LmCorpus::new(docs, Validation::Fraction(0.1), 64, 512, 1337).unwrap();
    let outcome = train(
        &config,
        loaded.model,
        &loaded.config,
        &corpus,
        &RunControl::default(),
    )
    .unwrap();
    let start = outcome.start().unwrap();
    println!(
        "LoRA: start {:.4}, best {:.4}",
        start.val_loss, outcome.best.val_loss
    );
    assert!(outcome.best.val_loss < start.val_loss - 0.05);

    // base + saved adapter: merged, exactly the saved model; unmerged, the same logits
    // within float rounding (atol 1e-5 + rtol 1e-5).
    let base = load_checkpoint::<IB>(
        &fixture("models/stories260K/stories260K.pt"),
        &LoadOptions::default(),
        &Default::default(),
    )
    .unwrap();
    let adapter = AdapterFile::read(outcome.adapter_path.as_ref().unwrap()).unwrap();
    let rebuilt = adapter.apply(base.model).unwrap();
    let ids = &corpus.val_rows[0];
    let saved = logits(&outcome.model, ids);
    assert_eq!(logits(&rebuilt.clone().merge_lora(), ids), saved);
    let unmerged = logits(&rebuilt, ids);
    let worst = unmerged
        .iter()
        .zip(&saved)
        .map(|(x, y)| (x - y).abs() / (1.0 + y.abs()))
        .fold(0f32, f32::max);
    println!("adapter vs merged logits: max |diff| / (1 + |merged|) = {worst:e}");
    assert!(worst <= 1e-5, "{worst}");
}
