//! One file per command: its flags (a clap `Args`) and its run function.

pub mod bench;
pub mod chat;
pub mod check;
pub mod coordinator;
pub mod eval;
pub mod export;
pub mod finetune;
pub mod generate;
pub mod init;
pub mod launch;
pub mod merge_lora;
pub mod perplexity;
pub mod plot;
pub mod pretrain;
pub mod prompt;
pub mod sanity;
pub mod serve;
