//! A saved classifier, loaded back from its run folder, and the predictions and scores of a
//! classifier on a dataset.

use std::path::Path;

use burn::config::Config;
use burn::module::Module;
use burn::record::FileRecorder;
use burn::tensor::backend::Backend;
use burn::tensor::ElementConversion;

use crate::classify::classifier::{nll_per_example, ClassifierConfig, LlamaEmbeddingClassifier};
use crate::classify::finetune::artifacts::{
    ClassifierRecorder, CLASSIFIER_CONFIG_FILE, CLASSIFIER_RECORD_STEM, FINETUNE_CONFIG_FILE,
};
use crate::classify::finetune::config::FinetuneConfig;
use crate::classify::finetune::error::FinetuneError;
use crate::classify::record_check::check_record;
use crate::data::sentences::{make_batch, SentenceDataset};
use crate::metrics::{class_ids, ConfusionMatrix};

/// Predictions and scores of a classifier on a dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// Predicted class of each example, in dataset order.
    pub predictions: Vec<usize>,
    /// Accuracy against the dataset's labels, in `[0, 1]`.
    pub accuracy: f64,
    /// Macro-F1 against the dataset's labels (scikit-learn's definition), in `[0, 1]`.
    pub macro_f1: f64,
    /// Mean NLL per example; `None` when some label is not a class of the head (placeholder
    /// test labels).
    pub loss: Option<f64>,
}

/// A classifier loaded from an artifact folder.
#[derive(Debug)]
pub struct SavedClassifier<B: Backend> {
    /// The model.
    pub model: LlamaEmbeddingClassifier<B>,
    /// Its configuration.
    pub config: ClassifierConfig,
    /// The settings it was trained with, when `finetune.json` is there (its
    /// `max_sentence_len` says how to tokenize evaluation data alike).
    pub finetune: Option<FinetuneConfig>,
}

/// Load the classifier saved in an artifact folder by [`crate::classify::finetune::finetune`] (`classifier.json` +
/// `classifier.mpk`, and `finetune.json` if present) onto `device`.
pub fn load_classifier<B: Backend>(
    artifact_dir: &Path,
    device: &B::Device,
) -> Result<SavedClassifier<B>, FinetuneError> {
    let config_path = artifact_dir.join(CLASSIFIER_CONFIG_FILE);
    let config = ClassifierConfig::load(&config_path).map_err(|e| FinetuneError::ConfigFile {
        path: config_path.clone(),
        detail: e.to_string(),
    })?;
    let record_stem = artifact_dir.join(CLASSIFIER_RECORD_STEM);
    let record_path =
        record_stem.with_extension(<ClassifierRecorder as FileRecorder<B>>::file_extension());
    // Placeholders that the record replaces: nothing is drawn or allocated for them.
    let model = config.init_for_record::<B>(device)?;
    // Burn's loader checks no shape: the record is checked against the placeholders first.
    let record_error = |detail: String| FinetuneError::Record {
        path: record_path.clone(),
        detail,
    };
    let bytes = std::fs::read(&record_path).map_err(|e| record_error(e.to_string()))?;
    check_record(&bytes, &model, &config_path).map_err(record_error)?;
    drop(bytes);
    let model = model
        .load_file(record_stem, &ClassifierRecorder::new(), device)
        .map_err(|e| record_error(e.to_string()))?;
    let finetune_path = artifact_dir.join(FINETUNE_CONFIG_FILE);
    let finetune = if finetune_path.exists() {
        Some(
            FinetuneConfig::load(&finetune_path).map_err(|e| FinetuneError::ConfigFile {
                path: finetune_path.clone(),
                detail: e.to_string(),
            })?,
        )
    } else {
        None
    };
    Ok(SavedClassifier {
        model,
        config,
        finetune,
    })
}

/// Predict every example of `dataset` in order (batches of `batch_size`, right-padded with
/// `pad_id`) and score the predictions against its labels.
///
/// The model must be on an inference backend (`model.valid()` of a trained one), where
/// dropout is off.
pub fn evaluate<B: Backend>(
    model: &LlamaEmbeddingClassifier<B>,
    dataset: &SentenceDataset,
    batch_size: usize,
    pad_id: u32,
    device: &B::Device,
) -> Result<Evaluation, FinetuneError> {
    evaluate_with_progress(model, dataset, batch_size, pad_id, device, |_| {})
}

/// [`evaluate`], calling `on_batch(sentences)` after each batch with the number of
/// sentences it held (for a progress bar).
pub fn evaluate_with_progress<B: Backend>(
    model: &LlamaEmbeddingClassifier<B>,
    dataset: &SentenceDataset,
    batch_size: usize,
    pad_id: u32,
    device: &B::Device,
    mut on_batch: impl FnMut(usize),
) -> Result<Evaluation, FinetuneError> {
    if B::ad_enabled(device) {
        return Err(FinetuneError::AutodiffModel);
    }
    if batch_size == 0 {
        return Err(FinetuneError::InvalidConfig(
            "batch_size must be at least 1".into(),
        ));
    }
    let items = dataset.items();
    if items.is_empty() {
        return Err(FinetuneError::EmptyDataset {
            which: "evaluation",
        });
    }
    let num_labels = model.num_labels();
    // Gathering the log-probability of a label the head does not have would index out of
    // bounds, so the loss is only computed when every label is a class.
    let with_loss = items.iter().all(|item| item.label < num_labels);
    let mut predictions = Vec::with_capacity(items.len());
    let mut loss_sum = 0.0;
    for chunk in items.chunks(batch_size) {
        let rows: Vec<&[u32]> = chunk.iter().map(|item| item.tokens.as_slice()).collect();
        let labels: Vec<usize> = chunk.iter().map(|item| item.label).collect();
        let batch = make_batch::<B, _>(&rows, &labels, pad_id, device);
        let log_probs = model.forward(batch.tokens, batch.lengths);
        if with_loss {
            let nll: f64 = nll_per_example(log_probs.clone(), batch.labels)
                .sum()
                .into_scalar()
                .elem();
            loss_sum += nll;
        }
        predictions.extend(class_ids(log_probs.argmax(1).reshape([chunk.len()])));
        on_batch(chunk.len());
    }
    let matrix = ConfusionMatrix::new(&dataset.labels(), &predictions)?;
    Ok(Evaluation {
        accuracy: matrix.accuracy(),
        macro_f1: matrix.macro_f1(),
        loss: with_loss.then(|| loss_sum / items.len() as f64),
        predictions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loading_from_an_empty_folder_names_the_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let err =
            load_classifier::<burn::backend::NdArray>(dir.path(), &Default::default()).unwrap_err();
        assert!(matches!(err, FinetuneError::ConfigFile { .. }), "{err}");
        assert!(err.to_string().contains(CLASSIFIER_CONFIG_FILE), "{err}");
    }
}
