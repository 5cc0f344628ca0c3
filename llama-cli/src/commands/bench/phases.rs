//! The timed phases of a bench run: greedy generation, zero-shot prompting, and fine-tuning
//! steps. Each runs a warm-up, then `--runs` timed runs, and records its median figures and
//! its peak resident memory.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use burn::module::{AutodiffModule, Module};
use burn::optim::Optimizer;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::train::TrainStep;
use indicatif::ProgressBar;
use llama_model::generation::generate::{GenerateConfig, Generator};
use llama_model::train::adamw::AdamWConfig;
use llama_model::{Llama, Tokenizer};
use llama_train::classify::classifier::ClassifierConfig;
use llama_train::classify::prompting::{PromptingConfig, ZeroShotClassifier};
use llama_train::data::sentences::{make_batch, read_label_names, DataOptions, SentenceDataset};
use llama_train::run::order::step_seed;
use rand::{Rng, SeedableRng};

use super::report::Figures;
use super::system::{median, peak_rss_mb, reset_peak_rss};
use super::{BenchArgs, Model};
use crate::args::data_files::fixture_or;

/// One greedy generation: `(time to first token, decode tokens/s)`.
pub(super) fn time_generation<B: Backend>(
    model: &Llama<B>,
    prompt: &[u32],
    new_tokens: usize,
    split: usize,
) -> Result<(Duration, f64)> {
    let config = GenerateConfig::greedy(new_tokens).with_decode_split(split);
    let mut generator = Generator::new(model, prompt, &config)?;
    for token in generator.by_ref() {
        token?;
    }
    let stats = generator.stats();
    Ok((
        stats.time_to_first_token.unwrap_or_default(),
        stats.tokens_per_second().unwrap_or(f64::NAN),
    ))
}

pub(super) fn bench_generate<B: Backend>(
    args: &BenchArgs,
    model: &Model<B>,
    llama: &Llama<B>,
    split: usize,
    f: &mut Figures,
    bar: &ProgressBar,
) -> Result<()> {
    bar.set_prefix("bench generate");
    let n = args.prompt_tokens as usize;
    if n + args.new_tokens as usize > model.config.max_seq_len {
        bail!(
            "{} prompt + {} new tokens exceed the model's context of {}",
            n,
            args.new_tokens,
            model.config.max_seq_len
        );
    }
    // A seeded random prompt of ordinary tokens (ids past BOS/EOS/byte pieces).
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let low = 259.min(model.config.vocab_size as u32 - 1);
    let mut prompt = vec![1u32];
    prompt.extend((1..n).map(|_| rng.random_range(low..model.config.vocab_size as u32)));
    reset_peak_rss();
    time_generation(llama, &prompt, 8, split)?; // warm-up
    bar.inc(1);
    let mut ttft = vec![];
    let mut decode = vec![];
    for _ in 0..args.runs {
        let (first, speed) = time_generation(llama, &prompt, args.new_tokens as usize, split)?;
        bar.inc(1);
        ttft.push(first.as_secs_f64());
        decode.push(speed);
    }
    let ttft = median(ttft);
    f.time_to_first_token_s = Some(ttft);
    f.prefill_tokens_per_s = Some(n as f64 / ttft);
    f.decode_tokens_per_s = Some(median(decode));
    f.generate_peak_rss_mb = peak_rss_mb();
    Ok(())
}

pub(super) fn bench_prompt<B: Backend>(
    args: &BenchArgs,
    llama: &Llama<B>,
    tokenizer: &Tokenizer,
    device: &B::Device,
    f: &mut Figures,
    bar: &ProgressBar,
) -> Result<()> {
    bar.set_prefix("bench prompt");
    let names = read_label_names(fixture_or(
        &args.label_names,
        "data/sst-label-mapping.json",
        "--label-names",
    )?)?;
    let classifier = ZeroShotClassifier::new(tokenizer, names)?;
    let data = fixture_or(&args.data, "data/sst-dev.txt", "--data")?;
    let dataset = classifier.load_dataset(&data, tokenizer, &DataOptions::default())?;
    let items = dataset.items();
    let part = &items[..args
        .prompt_sentences
        .map_or(items.len(), |n| (n as usize).min(items.len()))];
    let config = PromptingConfig {
        batch_size: args.prompt_batch as usize,
        pad_position_scoring: false,
    };
    reset_peak_rss();
    // Warm-up: one batch.
    classifier.classify_items(
        llama,
        &part[..part.len().min(config.batch_size)],
        &config,
        device,
    )?;
    bar.inc(1);
    let mut rates = vec![];
    for _ in 0..args.runs {
        let start = Instant::now();
        classifier.classify_items(llama, part, &config, device)?;
        rates.push(part.len() as f64 / start.elapsed().as_secs_f64());
        bar.inc(1);
    }
    f.prompt_sentences_per_s = Some(median(rates));
    f.prompt_peak_rss_mb = peak_rss_mb();
    Ok(())
}

/// Marks every float parameter as requiring gradients.
pub(super) struct Trainable;

impl<B: Backend> burn::module::ModuleMapper<B> for Trainable {
    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<burn::tensor::Tensor<B, D>>,
    ) -> burn::module::Param<burn::tensor::Tensor<B, D>> {
        param.set_require_grad(true)
    }
}

pub(super) fn bench_train<B: AutodiffBackend>(
    args: &BenchArgs,
    model: &Model<B::InnerBackend>,
    tokenizer: &Tokenizer,
    device: &B::Device,
    f: &mut Figures,
    bar: &ProgressBar,
) -> Result<()> {
    bar.set_prefix("bench train");
    let train_data = fixture_or(&args.train_data, "data/sst-train.txt", "--train-data")?;
    let dataset = SentenceDataset::from_file(&train_data, tokenizer, &DataOptions::default())?;
    let items = dataset.items();
    let batch = args.train_batch as usize;
    if items.len() < batch {
        bail!(
            "{} has {} sentences, fewer than one batch of {batch}",
            train_data.display(),
            items.len()
        );
    }
    let num_labels = items.iter().map(|i| i.label).max().unwrap_or(0) + 1;
    let config = ClassifierConfig::new(model.config.clone(), num_labels);
    // `from_inner` keeps the inner parameters' "no gradient" flag: mark every weight
    // trainable, as a checkpoint loaded for fine-tuning is (otherwise only the head trains).
    let llama = Llama::<B>::from_inner(model.llama.clone()).map(&mut Trainable);
    let mut classifier = config.init_with_llama(llama, args.seed)?;
    let mut optim = AdamWConfig::new()
        .init::<B, llama_train::classify::classifier::LlamaEmbeddingClassifier<B>>()?;
    reset_peak_rss();
    let mut times = vec![];
    // Consecutive training batches (the exercise's batches are padded to 59–93 tokens).
    for (step, rows) in items
        .chunks_exact(batch)
        .take(args.runs as usize + 1)
        .enumerate()
    {
        let tokens: Vec<&[u32]> = rows.iter().map(|r| r.tokens.as_slice()).collect();
        let labels: Vec<usize> = rows.iter().map(|r| r.label).collect();
        let start = Instant::now();
        let mut batch = make_batch::<B, _>(&tokens, &labels, tokenizer.pad_id(), device);
        // The mask as fine-tuning draws it (on the host, from the step's seed).
        batch.dropout_seed = Some(step_seed(args.seed, 1, step));
        // Fine-tuning's own train step (forward, loss, backward), then AdamW.
        let output = TrainStep::step(&classifier, batch);
        classifier = optim.step(2e-5, classifier, output.grads);
        // Force the update to finish before the clock stops.
        let _ = classifier.classifier_head.weight.val().sum().into_scalar();
        if step > 0 {
            times.push(start.elapsed().as_secs_f64());
        }
        bar.inc(1);
    }
    let step = median(times);
    f.train_step_seconds = Some(step);
    f.train_sentences_per_s = Some(batch as f64 / step);
    f.train_peak_rss_mb = peak_rss_mb();
    Ok(())
}
