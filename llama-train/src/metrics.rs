//! Classification metrics as the exercise computes them with scikit-learn:
//! `accuracy_score` and `f1_score(average='macro')`.
//!
//! Macro-F1 follows scikit-learn exactly: the classes are the union of the labels that occur
//! in the truth and in the predictions (a class that occurs in neither is not counted), each
//! class's F1 is `2·P·R / (P + R)` — equivalently `2·tp / (2·tp + fp + fn)` — and 0 when
//! `P + R = 0`, and the result is the unweighted mean over those classes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Int, Tensor};
use burn::train::metric::{
    Adaptor, Metric, MetricAttributes, MetricMetadata, MetricName, Numeric, NumericAttributes,
    NumericEntry, SerializedEntry,
};
use burn::train::ClassificationOutput;
use serde::{Deserialize, Serialize};

/// Why metrics could not be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricsError {
    /// Truth and predictions differ in length.
    #[error("{truth} true labels but {predictions} predictions")]
    LengthMismatch {
        /// Number of true labels.
        truth: usize,
        /// Number of predictions.
        predictions: usize,
    },
    /// No example at all (accuracy and F1 are undefined).
    #[error("no examples to score")]
    Empty,
}

/// Precision, recall and F1 of one class.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClassScores {
    /// The class id.
    pub class: usize,
    /// `tp / (tp + fp)`, 0 when the class is never predicted.
    pub precision: f64,
    /// `tp / (tp + fn)`, 0 when the class never occurs in the truth.
    pub recall: f64,
    /// `2 P R / (P + R)`, 0 when `P + R = 0`.
    pub f1: f64,
    /// Number of true examples of the class.
    pub support: usize,
}

/// Confusion matrix over the classes that occur in truth or predictions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfusionMatrix {
    /// The classes, ascending.
    classes: Vec<usize>,
    /// `counts[t][p]`: examples of class `classes[t]` predicted as `classes[p]`.
    counts: Vec<Vec<usize>>,
    total: usize,
}

impl ConfusionMatrix {
    /// Counts `(truth[i], predictions[i])` pairs.
    pub fn new(truth: &[usize], predictions: &[usize]) -> Result<Self, MetricsError> {
        if truth.len() != predictions.len() {
            return Err(MetricsError::LengthMismatch {
                truth: truth.len(),
                predictions: predictions.len(),
            });
        }
        if truth.is_empty() {
            return Err(MetricsError::Empty);
        }
        let classes: Vec<usize> = truth
            .iter()
            .chain(predictions)
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        // `classes` is sorted, so a class's row/column is its rank.
        let index = |class: usize| classes.binary_search(&class).unwrap_or_default();
        let mut counts = vec![vec![0; classes.len()]; classes.len()];
        for (&t, &p) in truth.iter().zip(predictions) {
            counts[index(t)][index(p)] += 1;
        }
        Ok(Self {
            classes,
            counts,
            total: truth.len(),
        })
    }

    /// The classes that occur in truth or predictions, ascending.
    pub fn classes(&self) -> &[usize] {
        &self.classes
    }

    /// Number of examples of class `truth` predicted as `predicted` (0 for unknown classes).
    pub fn count(&self, truth: usize, predicted: usize) -> usize {
        match (
            self.classes.binary_search(&truth),
            self.classes.binary_search(&predicted),
        ) {
            (Ok(t), Ok(p)) => self.counts[t][p],
            _ => 0,
        }
    }

    /// The matrix, rows = true class, columns = predicted class, both in [`classes`](Self::classes) order.
    pub fn counts(&self) -> &[Vec<usize>] {
        &self.counts
    }

    /// Number of examples.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Fraction of examples on the diagonal.
    pub fn accuracy(&self) -> f64 {
        let correct: usize = (0..self.classes.len()).map(|i| self.counts[i][i]).sum();
        correct as f64 / self.total as f64
    }

    /// Precision, recall and F1 of every class, in [`classes`](Self::classes) order.
    pub fn per_class(&self) -> Vec<ClassScores> {
        let n = self.classes.len();
        (0..n)
            .map(|i| {
                let tp = self.counts[i][i];
                let support: usize = self.counts[i].iter().sum();
                let predicted: usize = (0..n).map(|t| self.counts[t][i]).sum();
                let ratio = |num: usize, den: usize| {
                    if den == 0 {
                        0.0
                    } else {
                        num as f64 / den as f64
                    }
                };
                let precision = ratio(tp, predicted);
                let recall = ratio(tp, support);
                let f1 = if precision + recall == 0.0 {
                    0.0
                } else {
                    2.0 * precision * recall / (precision + recall)
                };
                ClassScores {
                    class: self.classes[i],
                    precision,
                    recall,
                    f1,
                    support,
                }
            })
            .collect()
    }

    /// Unweighted mean of the per-class F1 scores (scikit-learn's `average='macro'`).
    pub fn macro_f1(&self) -> f64 {
        let scores = self.per_class();
        scores.iter().map(|s| s.f1).sum::<f64>() / scores.len() as f64
    }
}

/// Fraction of predictions equal to the truth (`sklearn.metrics.accuracy_score`).
pub fn accuracy(truth: &[usize], predictions: &[usize]) -> Result<f64, MetricsError> {
    Ok(ConfusionMatrix::new(truth, predictions)?.accuracy())
}

/// Macro-averaged F1 (`sklearn.metrics.f1_score(truth, predictions, average='macro')`).
pub fn macro_f1(truth: &[usize], predictions: &[usize]) -> Result<f64, MetricsError> {
    Ok(ConfusionMatrix::new(truth, predictions)?.macro_f1())
}

/// Name of the loss metric (mean NLL per sentence) in epoch summaries.
pub const LOSS: &str = "Loss";
/// Name of the accuracy metric (percent) in epoch summaries.
pub const ACCURACY: &str = "Accuracy";
/// Name of the macro-F1 metric (percent) in epoch summaries.
pub const MACRO_F1: &str = "Macro-F1";
/// Name of the learning-rate metric in epoch summaries.
pub const LEARNING_RATE: &str = "Learning Rate";
/// Name of the iteration-speed metric (iterations per second) in epoch summaries.
pub const ITERATION_SPEED: &str = "Iteration Speed";

/// Class ids of an `Int` tensor `[n]` (argmax results are never negative).
pub fn class_ids<B: Backend>(ids: Tensor<B, 1, Int>) -> Vec<usize> {
    ids.into_data()
        .iter::<i64>()
        .map(|id| usize::try_from(id).unwrap_or_default())
        .collect()
}

/// Running totals of an epoch's classification: the summed loss and every prediction and
/// target, from which the epoch's mean loss, accuracy and macro-F1 follow exactly. The one
/// aggregator of predictions: the training loop's epoch summaries (saved in `resume.json`),
/// its dev pass and [`MacroF1Metric`] all keep one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Tally {
    /// Sum of per-sentence losses.
    pub loss_sum: f64,
    /// Predicted classes, in training order.
    pub predictions: Vec<usize>,
    /// True classes, in training order.
    pub targets: Vec<usize>,
}

impl Tally {
    /// Add a batch's losses `[batch]`, log-probabilities `[batch, classes]` and targets.
    pub fn add<Bk: Backend>(&mut self, output: &ClassificationOutput<Bk>) {
        let loss: f64 = output.loss.clone().sum().into_scalar().elem();
        self.loss_sum += loss;
        self.add_classes(&Adaptor::<ClassPredictions>::adapt(output));
    }

    /// Add predicted and true classes (no loss).
    pub fn add_classes(&mut self, batch: &ClassPredictions) {
        self.predictions.extend(&batch.predictions);
        self.targets.extend(&batch.targets);
    }

    /// Number of examples added.
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// Macro-F1 (percent) of what was added; NaN when nothing was.
    pub fn macro_f1_percent(&self) -> f64 {
        ConfusionMatrix::new(&self.targets, &self.predictions)
            .map(|m| 100.0 * m.macro_f1())
            .unwrap_or(f64::NAN)
    }

    /// Mean loss, accuracy and macro-F1 (fractions) of what was added; `None` when nothing
    /// was.
    pub fn scores(&self) -> Option<TallyScores> {
        let matrix = ConfusionMatrix::new(&self.targets, &self.predictions).ok()?;
        Some(TallyScores {
            loss: self.loss_sum / self.targets.len() as f64,
            accuracy: matrix.accuracy(),
            macro_f1: matrix.macro_f1(),
        })
    }

    /// Loss, accuracy and macro-F1 (percent) of what was added.
    pub fn summary(&self) -> BTreeMap<String, f64> {
        let n = self.targets.len().max(1) as f64;
        let (accuracy, f1) = ConfusionMatrix::new(&self.targets, &self.predictions)
            .map(|m| (m.accuracy(), m.macro_f1()))
            .unwrap_or((f64::NAN, f64::NAN));
        [
            (LOSS, self.loss_sum / n),
            (ACCURACY, 100.0 * accuracy),
            (MACRO_F1, 100.0 * f1),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

/// The scores of a [`Tally`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TallyScores {
    /// Mean loss per example.
    pub loss: f64,
    /// Fraction of correct predictions.
    pub accuracy: f64,
    /// Macro-averaged F1, a fraction.
    pub macro_f1: f64,
}

/// Predicted and true classes of a batch, the input of [`MacroF1Metric`].
#[derive(Debug, Clone, Default)]
pub struct ClassPredictions {
    /// Predicted class of each row.
    pub predictions: Vec<usize>,
    /// True class of each row.
    pub targets: Vec<usize>,
}

impl<B: Backend> Adaptor<ClassPredictions> for ClassificationOutput<B> {
    fn adapt(&self) -> ClassPredictions {
        let batch = self.output.dims()[0];
        ClassPredictions {
            predictions: class_ids(self.output.clone().argmax(1).reshape([batch])),
            targets: class_ids(self.targets.clone()),
        }
    }
}

/// Macro-F1 (percent) over everything seen in the epoch, scikit-learn's definition.
///
/// Burn's `FBetaScoreMetric` averages per-batch scores, which for macro-F1 on small batches
/// is far from the epoch's score. This metric keeps the epoch's predictions instead, and
/// reports each batch as the increment `(F1_k N_k - F1_{k-1} N_{k-1}) / n_k` with weight
/// `n_k` (`F1_k` the score after `k` batches, `N_k` the sentences so far, `n_k` the batch
/// size): Burn's count-weighted epoch mean of those entries telescopes to exactly the epoch's
/// macro-F1, so logs, summaries and the checkpoint store all see the true value.
#[derive(Clone, Default)]
pub struct MacroF1Metric {
    /// The epoch's classes so far.
    tally: Tally,
    /// `F1_{k-1} N_{k-1}`.
    weighted: f64,
    /// Latest increment and batch size.
    last: (f64, usize),
}

impl MacroF1Metric {
    /// An empty metric.
    pub fn new() -> Self {
        Self::default()
    }

    /// Macro-F1 (percent) of everything seen so far.
    pub fn epoch_value(&self) -> f64 {
        self.tally.macro_f1_percent()
    }
}

impl Metric for MacroF1Metric {
    type Input = ClassPredictions;

    fn name(&self) -> MetricName {
        Arc::new(MACRO_F1.to_string())
    }

    fn attributes(&self) -> MetricAttributes {
        NumericAttributes {
            unit: Some("%".to_string()),
            higher_is_better: true,
        }
        .into()
    }

    fn update(&mut self, item: &ClassPredictions, _metadata: &MetricMetadata) -> SerializedEntry {
        self.tally.add_classes(item);
        let n = item.predictions.len();
        let f1 = self.epoch_value();
        let weighted = f1 * self.tally.len() as f64;
        let increment = if n == 0 {
            0.0
        } else {
            (weighted - self.weighted) / n as f64
        };
        self.weighted = weighted;
        self.last = (increment, n);
        SerializedEntry::new(
            format!("epoch {f1:.2} %"),
            NumericEntry::Aggregated {
                aggregated_value: increment,
                count: n,
            }
            .serialize(),
        )
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

impl Numeric for MacroF1Metric {
    fn value(&self) -> NumericEntry {
        NumericEntry::Aggregated {
            aggregated_value: self.last.0,
            count: self.last.1,
        }
    }

    fn running_value(&self) -> NumericEntry {
        NumericEntry::Aggregated {
            aggregated_value: self.epoch_value(),
            count: self.tally.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn accuracy_counts_matches() {
        assert!(close(accuracy(&[0, 1, 2, 1], &[0, 2, 2, 1]).unwrap(), 0.75));
        assert!(close(accuracy(&[1], &[0]).unwrap(), 0.0));
    }

    #[test]
    fn macro_f1_by_hand() {
        // truth  0 0 1 1 2 2
        // pred   0 1 1 1 0 2
        // class 0: tp 1, fp 1 (a 2 predicted 0), fn 1 -> P 1/2, R 1/2, F1 1/2
        // class 1: tp 2, fp 1, fn 0 -> P 2/3, R 1, F1 0.8
        // class 2: tp 1, fp 0, fn 1 -> P 1, R 1/2, F1 2/3
        let truth = [0, 0, 1, 1, 2, 2];
        let pred = [0, 1, 1, 1, 0, 2];
        let expected = (0.5 + 0.8 + 2.0 / 3.0) / 3.0;
        assert!(close(macro_f1(&truth, &pred).unwrap(), expected));

        let m = ConfusionMatrix::new(&truth, &pred).unwrap();
        assert_eq!(m.classes(), &[0, 1, 2]);
        assert_eq!(m.counts(), &[vec![1, 1, 0], vec![0, 2, 0], vec![1, 0, 1]]);
        assert_eq!(m.count(2, 0), 1);
        assert_eq!(m.count(7, 0), 0);
        let per = m.per_class();
        assert!(close(per[1].precision, 2.0 / 3.0) && close(per[1].recall, 1.0));
        assert_eq!(per[2].support, 2);
    }

    #[test]
    fn macro_f1_uses_the_union_of_labels() {
        // Class 3 is only predicted: it counts with F1 0. Class 1 (never seen) is not counted.
        // classes {0, 2, 3}: class 0 F1 1, class 2 tp 1 fn 1 -> P 1 R 1/2 F1 2/3, class 3 F1 0.
        let truth = [0, 2, 2];
        let pred = [0, 2, 3];
        assert!(close(
            macro_f1(&truth, &pred).unwrap(),
            (1.0 + 2.0 / 3.0) / 3.0
        ));
        // All predictions one class, truth another: every F1 is 0.
        assert!(close(macro_f1(&[1, 1], &[0, 0]).unwrap(), 0.0));
        // Perfect on a single class.
        assert!(close(macro_f1(&[4, 4], &[4, 4]).unwrap(), 1.0));
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(
            accuracy(&[0, 1], &[0]),
            Err(MetricsError::LengthMismatch {
                truth: 2,
                predictions: 1
            })
        );
        assert_eq!(macro_f1(&[], &[]), Err(MetricsError::Empty));
    }

    fn entry(serialized: &SerializedEntry) -> (f64, usize) {
        match NumericEntry::deserialize(&serialized.serialized) {
            Ok(NumericEntry::Aggregated {
                aggregated_value,
                count,
            }) => (aggregated_value, count),
            other => panic!("unexpected entry {other:?}"),
        }
    }

    #[test]
    fn macro_f1_entries_average_to_the_epoch_score() {
        let batches = [
            (vec![0, 1, 1], vec![0, 1, 2]),
            (vec![2, 2], vec![2, 0]),
            (vec![3, 0, 1, 1], vec![3, 1, 1, 0]),
        ];
        let mut metric = MacroF1Metric::new();
        let metadata = MetricMetadata {
            progress: burn::data::dataloader::Progress::new(0, 0),
            global_progress: burn::data::dataloader::Progress::new(0, 0),
            iteration: None,
            lr: None,
        };
        let (mut sum, mut count) = (0.0, 0);
        let (mut truth, mut predicted) = (Vec::new(), Vec::new());
        for (p, t) in batches {
            truth.extend(&t);
            predicted.extend(&p);
            let input = ClassPredictions {
                predictions: p,
                targets: t,
            };
            let (value, n) = entry(&metric.update(&input, &metadata));
            sum += value * n as f64;
            count += n;
            // Burn's count-weighted mean of the entries so far is the score so far.
            let expected = 100.0 * macro_f1(&truth, &predicted).unwrap();
            assert!((sum / count as f64 - expected).abs() < 1e-9);
            assert!((metric.epoch_value() - expected).abs() < 1e-12);
        }
        metric.clear();
        assert!(metric.epoch_value().is_nan());
    }
}
