//! A conversation's messages, fitted to a model's context by dropping its oldest turns.

use crate::tokenizer::Tokenizer;

use super::template::{ChatError, ChatTemplate, Message};

/// The system message, if any, and the turns after it (user, assistant, user, …).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Conversation {
    system: Option<Message>,
    turns: Vec<Message>,
}

impl Conversation {
    /// An empty conversation with this system message.
    pub fn new(system: Option<&str>) -> Self {
        Self {
            system: system.map(|s| Message::new("system", s)),
            turns: Vec::new(),
        }
    }

    /// Adds a message.
    pub fn push(&mut self, message: Message) {
        self.turns.push(message);
    }

    /// Removes the last message (a user message that cannot be answered).
    pub fn pop(&mut self) -> Option<Message> {
        self.turns.pop()
    }

    /// Forgets every turn; the system message stays.
    pub fn reset(&mut self) {
        self.turns.clear();
    }

    /// Every message, the system message first.
    pub fn messages(&self) -> Vec<Message> {
        self.system.iter().chain(&self.turns).cloned().collect()
    }

    /// The ids a model replies after ([`ChatTemplate::prompt_ids`]), leaving at least
    /// `reserve` of `context` tokens for the reply: while they do not, the oldest turn (a
    /// user message and the reply to it) is dropped; the system message never is. Returns
    /// the ids and the number of messages dropped. When only the last message is left and
    /// it still does not fit, [`ChatError::TooLong`].
    pub fn fit(
        &mut self,
        template: &ChatTemplate,
        tokenizer: &Tokenizer,
        context: usize,
        reserve: usize,
    ) -> Result<(Vec<u32>, usize), ChatError> {
        let mut dropped = 0;
        loop {
            let ids = template.prompt_ids(tokenizer, &self.messages())?;
            if ids.len() + reserve <= context {
                return Ok((ids, dropped));
            }
            if self.turns.len() <= 1 {
                return Err(ChatError::TooLong {
                    tokens: ids.len(),
                    context,
                    reserve,
                });
            }
            // A user message and the assistant's reply to it, keeping the roles alternating.
            let turn = self.turns.len().min(2).min(self.turns.len() - 1);
            self.turns.drain(..turn);
            dropped += turn;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::fixture;

    #[test]
    fn the_oldest_turns_go_first_and_the_system_message_stays() {
        let folder = fixture("real-models/hf/tiny-llama3");
        let template = ChatTemplate::from_folder(&folder).unwrap();
        let tokenizer = Tokenizer::from_file(folder.join("tokenizer.json")).unwrap();
        let mut conversation = Conversation::new(Some("Be kind."));
        for (role, text) in [
            ("user", "Once upon a time?"),
            ("assistant", "There was a dog."),
            ("user", "And then?"),
            ("assistant", "It ran away."),
            ("user", "Why?"),
        ] {
            conversation.push(Message::new(role, text));
        }
        let whole = template
            .prompt_ids(&tokenizer, &conversation.messages())
            .unwrap();
        let (ids, dropped) = conversation
            .fit(&template, &tokenizer, whole.len(), 0)
            .unwrap();
        assert_eq!((ids, dropped), (whole.clone(), 0));

        // One token short: the first exchange goes, the system message stays.
        let (ids, dropped) = conversation
            .fit(&template, &tokenizer, whole.len(), 1)
            .unwrap();
        assert_eq!(dropped, 2);
        let messages = conversation.messages();
        assert_eq!(messages[0], Message::new("system", "Be kind."));
        assert_eq!(messages[1], Message::new("user", "And then?"));
        assert_eq!(ids, template.prompt_ids(&tokenizer, &messages).unwrap());
        assert!(ids.len() < whole.len());

        // No room even for the last message alone.
        let err = conversation.fit(&template, &tokenizer, 4, 1).unwrap_err();
        assert!(matches!(err, ChatError::TooLong { .. }), "{err}");
        assert_eq!(conversation.messages().len(), 2);
        conversation.reset();
        assert_eq!(conversation.messages().len(), 1);
    }
}
