//! Chat: a model's chat template rendered over a conversation ([`template`]), and the
//! conversation's token ids for a model to reply to.

pub mod template;

pub use template::{ChatError, ChatTemplate, Message};
