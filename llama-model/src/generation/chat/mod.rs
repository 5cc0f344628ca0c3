//! Chat: a model's chat template rendered over a conversation ([`template`]), and the
//! conversation's token ids for a model to reply to.

pub mod conversation;
pub mod session;
pub mod template;

pub use conversation::Conversation;
pub use session::{ChatSession, Reply};
pub use template::{ChatError, ChatTemplate, Message};
