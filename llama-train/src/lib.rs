//! Sentence classification with Llama 2 on Burn: the exercise's SST-5 and CFIMDB tasks,
//! by zero-shot prompting and by fine-tuning a classifier head with Burn's Learner; and the
//! language model itself: its perplexity on text, and training it on text (`pretrain`).

pub mod artifacts;
pub mod classifier;
pub mod collective;
pub mod collective_settings;
pub mod config;
pub mod confusion_report;
pub mod coordinator;
pub mod curves;
pub mod data;
pub mod documents;
pub mod error;
pub mod evaluate;
pub mod finetune;
pub mod fnv;
pub mod labelled_file;
pub mod length_grouping;
pub mod lm_corpus;
pub mod lm_objective;
pub mod lr_schedule;
pub mod metrics;
pub mod metrics_log;
pub mod perplexity;
pub mod plot_canvas;
pub mod predictions;
pub mod pretrain;
pub mod pretrain_config;
pub mod pretrain_error;
pub mod pretrain_run;
pub mod pretrain_state;
pub mod progress;
pub mod progress_bar;
pub mod prompting;
pub mod rank_exchange;
pub mod resume;
pub mod train_backend;
pub mod training_loop;

pub use train_backend::TrainBackend;
