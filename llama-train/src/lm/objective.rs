//! The language-model objective on packed windows, as llama2.c's `train.py` trains:
//!
//! * each document is encoded with BOS in front (no EOS) and the encodings are concatenated,
//!   in order, into one token stream;
//! * the stream is cut into consecutive, non-overlapping chunks of `seq_len + 1` tokens (a
//!   short tail is dropped); chunk `i` is `stream[(seq_len + 1) i .. (seq_len + 1) (i + 1)]`;
//! * a chunk's first `seq_len` tokens are the input and its last `seq_len` the targets, so
//!   position `t` predicts token `t + 1`; a document longer than a window simply continues
//!   in the next one;
//! * the loss is the mean cross-entropy over every position of every row of the batch.

use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use llama_model::Llama;

/// Windows of `seq_len + 1` tokens cut from the concatenation of `documents` (each already
/// encoded with its BOS), in order; the tail shorter than a window is dropped.
pub fn pack_documents<D: AsRef<[u32]>>(documents: &[D], seq_len: usize) -> Vec<Vec<u32>> {
    let stream: Vec<u32> = documents
        .iter()
        .flat_map(|d| d.as_ref().iter().copied())
        .collect();
    stream
        .chunks_exact(seq_len + 1)
        .map(<[u32]>::to_vec)
        .collect()
}

/// A batch of windows: inputs and targets, each `[batch, seq_len]`.
#[derive(Debug, Clone)]
pub struct LmBatch<B: Backend> {
    /// Tokens `0..seq_len` of each window.
    pub inputs: Tensor<B, 2, Int>,
    /// Tokens `1..=seq_len` of each window.
    pub targets: Tensor<B, 2, Int>,
}

impl<B: Backend> LmBatch<B> {
    /// The batch of `windows` (each of the same length `seq_len + 1`, at least 2).
    pub fn new<W: AsRef<[u32]>>(windows: &[W], device: &B::Device) -> Self {
        let width = windows.first().map_or(1, |w| w.as_ref().len()).max(2) - 1;
        let (mut inputs, mut targets) = (Vec::new(), Vec::new());
        for window in windows {
            let w = window.as_ref();
            inputs.extend(w[..width].iter().map(|&t| i64::from(t)));
            targets.extend(w[1..=width].iter().map(|&t| i64::from(t)));
        }
        let shape = [windows.len(), width];
        Self {
            inputs: Tensor::from_data(TensorData::new(inputs, shape), device),
            targets: Tensor::from_data(TensorData::new(targets, shape), device),
        }
    }
}

/// Mean next-token cross-entropy of `model` on `batch` over all `batch * seq_len`
/// positions: a `[1]` tensor.
pub fn lm_loss<B: Backend>(model: &Llama<B>, batch: &LmBatch<B>) -> Tensor<B, 1> {
    let [rows, seq] = batch.inputs.dims();
    let logits = model.forward(batch.inputs.clone()).logits; // [rows, seq, vocab]
    let vocab = logits.dims()[2];
    CrossEntropyLossConfig::new()
        .init(&logits.device())
        .forward(
            logits.reshape([rows * seq, vocab]),
            batch.targets.clone().reshape([rows * seq]),
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::tensor::activation::log_softmax;

    type B = NdArray;

    #[test]
    fn packing_concatenates_documents_and_cuts_whole_windows() {
        let docs = vec![vec![1, 10, 11, 12], vec![1, 20], vec![1, 30, 31, 32, 33]];
        let windows = pack_documents(&docs, 3);
        assert_eq!(
            windows,
            vec![vec![1, 10, 11, 12], vec![1, 20, 1, 30]] // 31, 32, 33: a short tail
        );
        let batch = LmBatch::<B>::new(&windows, &Default::default());
        assert_eq!(
            batch.inputs.into_data().to_vec::<i64>().unwrap(),
            vec![1, 10, 11, 1, 20, 1]
        );
        assert_eq!(
            batch.targets.into_data().to_vec::<i64>().unwrap(),
            vec![10, 11, 12, 20, 1, 30]
        );
    }

    #[test]
    fn the_loss_is_the_mean_negative_log_probability_of_the_targets() {
        let device = Default::default();
        let model = llama_model::LlamaConfig::new(16, 1, 2, 40)
            .with_max_seq_len(8)
            .init::<B>(&device);
        let batch = LmBatch::<B>::new(&[vec![1u32, 5, 9, 7], vec![1, 2, 3, 39]], &device);
        let loss: f32 = lm_loss(&model, &batch).into_scalar();
        // By hand: log-softmax, pick each target, average.
        let log_probs: Vec<f32> = log_softmax(model.forward(batch.inputs.clone()).logits, 2)
            .into_data()
            .to_vec()
            .unwrap();
        let targets: Vec<i64> = batch.targets.into_data().to_vec().unwrap();
        let mean = -targets
            .iter()
            .enumerate()
            .map(|(p, &t)| f64::from(log_probs[p * 40 + t as usize]))
            .sum::<f64>()
            / 6.0;
        assert!((f64::from(loss) - mean).abs() < 1e-6, "{loss} vs {mean}");
    }
}
