//! The text of a language-model training run: training documents packed into windows
//! ([`crate::lm::objective::pack_documents`]) and validation documents scored as
//! `llama-cli perplexity` scores a file (each cut to the model's context).

use crate::lm::pretrain::error::PretrainError;
use crate::run::order::epoch_order;

/// Where the validation documents come from.
#[derive(Debug, Clone)]
pub enum Validation {
    /// Their own documents (BOS + ids each), from `--val-text`.
    Documents(Vec<Vec<u32>>),
    /// A share of the training documents, in `(0, 1)`, drawn from the seed (`--val-fraction`).
    Fraction(f64),
}

/// Training windows and validation rows.
#[derive(Debug, Clone, PartialEq)]
pub struct LmCorpus {
    /// Windows of `seq_len + 1` tokens, in text order.
    pub windows: Vec<Vec<u32>>,
    /// Validation documents, BOS + ids, each at most the context long.
    pub val_rows: Vec<Vec<u32>>,
    /// Training documents.
    pub train_documents: usize,
    /// Tokens of the training documents (BOS included); the windows hold all but a tail.
    pub train_tokens: usize,
    /// Validation documents longer than the context, cut to it.
    pub val_cut: usize,
}

impl LmCorpus {
    /// Packs `train` (documents as BOS + ids, uncut) into windows of `seq_len + 1` tokens
    /// and sets aside the validation documents, cut to `max_seq_len` tokens. With a
    /// [`Validation::Fraction`], `round(fraction · documents)` documents (at least one) are
    /// drawn from `seed` and left out of training.
    pub fn new(
        mut train: Vec<Vec<u32>>,
        validation: Validation,
        seq_len: usize,
        max_seq_len: usize,
        seed: u64,
    ) -> Result<Self, PretrainError> {
        let val = match validation {
            Validation::Documents(rows) => rows,
            Validation::Fraction(fraction) => {
                if !(fraction > 0.0 && fraction < 1.0) {
                    return Err(PretrainError::InvalidConfig(format!(
                        "the validation fraction must be between 0 and 1 (exclusive), not {fraction}"
                    )));
                }
                let n = train.len();
                let take = ((fraction * n as f64).round() as usize).max(1);
                if take >= n {
                    return Err(PretrainError::NoValidation(format!(
                        "{n} training document(s) cannot spare {take} for validation; pass --val-text"
                    )));
                }
                let mut held = vec![false; n];
                for &i in &epoch_order(seed, 0, n)[..take] {
                    held[i] = true;
                }
                let (val, kept): (Vec<_>, Vec<_>) =
                    train.drain(..).zip(held).partition(|(_, held)| *held);
                train = kept.into_iter().map(|(doc, _)| doc).collect();
                val.into_iter().map(|(doc, _)| doc).collect()
            }
        };
        if val.is_empty() {
            return Err(PretrainError::NoValidation(
                "the validation text is empty".into(),
            ));
        }
        let train_tokens = train.iter().map(Vec::len).sum();
        let windows = crate::lm::objective::pack_documents(&train, seq_len);
        if windows.is_empty() {
            return Err(PretrainError::TooLittleText {
                tokens: train_tokens,
                window: seq_len + 1,
            });
        }
        let val_cut = val.iter().filter(|d| d.len() > max_seq_len).count();
        let val_rows = val
            .into_iter()
            .map(|mut d| {
                d.truncate(max_seq_len);
                d
            })
            .collect();
        Ok(Self {
            windows,
            val_rows,
            train_documents: train.len(),
            train_tokens,
            val_cut,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs(n: usize) -> Vec<Vec<u32>> {
        (0..n)
            .map(|i| vec![1, 10 + i as u32, 20 + i as u32])
            .collect()
    }

    #[test]
    fn a_held_out_share_leaves_training_and_keeps_file_order() {
        let corpus = LmCorpus::new(docs(10), Validation::Fraction(0.2), 2, 512, 7).unwrap();
        assert_eq!(corpus.val_rows.len(), 2);
        assert_eq!(corpus.train_documents, 8);
        // Every document is in exactly one part.
        let train: Vec<u32> = corpus.windows.iter().flatten().copied().collect();
        for doc in &corpus.val_rows {
            assert!(!train.contains(&doc[1]), "{doc:?} is also trained on");
        }
        assert_eq!(corpus.windows.len(), 8); // 24 tokens in windows of 3
        let again = LmCorpus::new(docs(10), Validation::Fraction(0.2), 2, 512, 7).unwrap();
        assert_eq!(corpus, again);
    }

    #[test]
    fn validation_documents_are_cut_to_the_context() {
        let val = vec![vec![1, 2, 3, 4, 5], vec![1, 2]];
        let corpus = LmCorpus::new(docs(3), Validation::Documents(val), 2, 4, 0).unwrap();
        assert_eq!(corpus.val_rows, vec![vec![1, 2, 3, 4], vec![1, 2]]);
        assert_eq!(corpus.val_cut, 1);
    }

    #[test]
    fn too_little_text_or_no_validation_is_an_error() {
        let err = LmCorpus::new(docs(1), Validation::Documents(docs(1)), 8, 512, 0).unwrap_err();
        assert!(
            err.to_string()
                .contains("3 tokens, fewer than one window of 9"),
            "{err}"
        );
        let err = LmCorpus::new(docs(1), Validation::Fraction(0.1), 2, 512, 0).unwrap_err();
        assert!(err.to_string().contains("pass --val-text"), "{err}");
        assert!(LmCorpus::new(docs(4), Validation::Fraction(1.5), 2, 512, 0).is_err());
        assert!(LmCorpus::new(docs(4), Validation::Documents(vec![]), 2, 512, 0).is_err());
    }
}
