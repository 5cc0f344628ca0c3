//! Data files and their batches: labelled sentence files, padded sentence batches, text
//! documents, prediction files, length-grouped order.

pub mod documents;
pub mod labelled_file;
pub mod length_grouping;
pub mod predictions;
pub mod sentences;
