//! The order of a fine-tuning epoch: drawn from (seed, epoch), regrouped by length when
//! asked, and the training set seen through it.

use std::sync::{Arc, PoisonError, RwLock};

use burn::data::dataset::Dataset;

use crate::data::length_grouping::length_grouped_order;
use crate::data::sentences::{SentenceDataset, SentenceItem};
use crate::run::order::epoch_order;

/// Training order of epoch `epoch` over sentences of `lengths` tokens: [`epoch_order`],
/// regrouped into batches of similar lengths ([`length_grouped_order`]) when
/// `group_by_length`.
pub fn training_order(
    seed: u64,
    epoch: usize,
    lengths: &[usize],
    batch_size: usize,
    group_by_length: bool,
) -> Vec<usize> {
    let order = epoch_order(seed, epoch, lengths.len());
    if group_by_length {
        length_grouped_order(&order, lengths, batch_size)
    } else {
        order
    }
}

/// The training set in the current epoch's order (set by the loop before each epoch's
/// iteration starts; the data loader reads items lazily).
#[derive(Clone)]
pub(crate) struct EpochOrdered {
    items: SentenceDataset,
    order: Arc<RwLock<Vec<usize>>>,
}

impl EpochOrdered {
    pub(crate) fn new(items: SentenceDataset) -> Self {
        let order = (0..items.items().len()).collect();
        Self {
            items,
            order: Arc::new(RwLock::new(order)),
        }
    }

    /// The token count of every training sentence, in file order.
    pub(crate) fn lengths(&self) -> Vec<usize> {
        self.items.lengths()
    }

    pub(crate) fn set_order(&self, order: Vec<usize>) {
        *self.order.write().unwrap_or_else(PoisonError::into_inner) = order;
    }
}

impl Dataset<SentenceItem> for EpochOrdered {
    fn get(&self, index: usize) -> Option<SentenceItem> {
        let order = self.order.read().unwrap_or_else(PoisonError::into_inner);
        self.items.get(*order.get(index)?)
    }

    fn len(&self) -> usize {
        self.items.len()
    }
}
