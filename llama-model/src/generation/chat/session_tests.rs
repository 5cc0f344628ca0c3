//! The session against the uncached reference ([`generate_uncached`]): each turn's reply
//! equals a fresh generation from its whole prompt, while pre-filling only the new part.

use super::*;
use crate::generation::generate::generate_uncached;
use crate::generation::generate::tests::{tiny, B};

fn uncached(model: &Llama<B>, prompt: &[u32], config: &GenerateConfig) -> Vec<u32> {
    generate_uncached(model, prompt, config).unwrap().tokens
}

#[test]
fn turns_reuse_the_cached_prefix_and_reply_as_a_fresh_generation() {
    let model = tiny(64);
    let config = GenerateConfig::greedy(5);
    let mut session = ChatSession::new(&model, 1);
    let first: Vec<u32> = vec![1, 7, 3, 9, 12, 4];
    let mut streamed = Vec::new();
    let reply = session
        .reply(&first, &config, |t| streamed.push(t))
        .unwrap();
    assert_eq!(reply.tokens, uncached(&model, &first, &config));
    assert_eq!((reply.prefilled, &streamed), (first.len(), &reply.tokens));

    // The next turn: the conversation so far, the reply, a new message.
    let mut second = first.clone();
    second.extend(&reply.tokens);
    second.extend([5, 8, 2]);
    let cached = session.cached().len();
    assert!(second.starts_with(session.cached()));
    let reply = session.reply(&second, &config, |_| {}).unwrap();
    assert_eq!(reply.tokens, uncached(&model, &second, &config));
    assert_eq!(reply.prefilled, second.len() - cached);
    assert!(reply.prefilled < second.len());

    // A prompt that departs from the cache early: the cache is cut back to the shared part.
    let shared = 3;
    let third: Vec<u32> = first[..shared].iter().copied().chain([30, 31, 2]).collect();
    let reply = session.reply(&third, &config, |_| {}).unwrap();
    assert_eq!(reply.tokens, uncached(&model, &third, &config));
    assert_eq!(reply.prefilled, third.len() - shared);

    // The same prompt again re-feeds its last token only.
    let again = session.reply(&third, &config, |_| {}).unwrap();
    assert_eq!((again.tokens, again.prefilled), (reply.tokens, 1));

    session.reset();
    let fresh = session.reply(&third, &config, |_| {}).unwrap();
    assert_eq!(fresh.prefilled, third.len());
}

#[test]
fn a_full_context_ends_the_reply_and_a_prompt_without_room_is_refused() {
    let context = 12;
    let model = tiny(context);
    let mut session = ChatSession::new(&model, 1);
    let config = GenerateConfig::greedy(10);
    let prompt: Vec<u32> = (1..context as u32 - 1).collect();
    let reply = session.reply(&prompt, &config, |_| {}).unwrap();
    // Room for the tokens whose inputs fit the context, then the sample after a full cache.
    let fits = context - prompt.len() + 1;
    assert_eq!(
        reply.tokens,
        uncached(&model, &prompt, &GenerateConfig::greedy(fits))
    );
    let full: Vec<u32> = (0..context as u32).map(|i| i % 40).collect();
    assert!(matches!(
        session.reply(&full, &config, |_| {}),
        Err(GenerateError::ContextFull { tokens, context: c }) if tokens == context && c == context
    ));
}
