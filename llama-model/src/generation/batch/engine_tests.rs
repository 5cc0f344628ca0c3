//! Tests of [`super`]: slots that join and leave between steps get what they get alone.

use std::collections::HashMap;

use super::*;
use crate::generation::generate::generate;
use crate::generation::generate::tests::tiny;

/// Runs the engine until it is empty, `joins[k]` joining before step `k` and slot
/// `leave` (the `k`-th joined) leaving after step 2; the tokens of each joined slot.
fn run(
    engine: &mut BatchEngine<'_, crate::generation::generate::tests::B>,
    joins: &[Vec<(Vec<u32>, GenerateConfig)>],
    leave: Option<usize>,
) -> Vec<Vec<u32>> {
    let mut ids = Vec::new();
    let mut tokens: HashMap<SlotId, Vec<u32>> = HashMap::new();
    let mut step = 0;
    while step < joins.len() || !engine.is_empty() {
        for (prompt, config) in joins.get(step).into_iter().flatten() {
            ids.push(engine.join(prompt, config, 0).unwrap());
        }
        for sampled in engine.step().unwrap() {
            tokens.entry(sampled.id).or_default().extend(sampled.token);
        }
        if step == 2 {
            if let Some(k) = leave {
                assert!(engine.leave(ids[k]));
                assert!(!engine.leave(ids[k]));
            }
        }
        step += 1;
    }
    ids.iter()
        .map(|id| tokens.remove(id).unwrap_or_default())
        .collect()
}

#[test]
fn slots_joining_between_steps_decode_as_they_would_alone() {
    let model = tiny(64);
    let sampled = |seed| {
        GenerateConfig::new()
            .with_max_new_tokens(12)
            .with_seed(seed)
            .with_top_k(Some(20))
    };
    let joins = vec![
        vec![(vec![1, 5, 7], GenerateConfig::greedy(10))],
        vec![],
        vec![(vec![1, 9], sampled(4)), (vec![3, 3, 3, 3, 3], sampled(5))],
        vec![],
        vec![],
        vec![(vec![2], sampled(6).with_max_new_tokens(3))],
    ];
    let mut engine = BatchEngine::new(&model, 1);
    let got = run(&mut engine, &joins, None);
    for ((prompt, config), tokens) in joins.iter().flatten().zip(&got) {
        let alone = generate(&model, prompt, config, |_| {}).unwrap();
        assert_eq!(tokens, &alone.tokens, "{prompt:?}");
        assert_eq!(tokens.len(), config.max_new_tokens);
    }
    assert!(engine.is_empty());
}

#[test]
fn a_slot_that_leaves_stops_and_the_others_go_on() {
    let model = tiny(64);
    let joins = vec![vec![
        (vec![1, 4], GenerateConfig::greedy(8)),
        (vec![1, 6], GenerateConfig::greedy(8)),
    ]];
    let mut engine = BatchEngine::new(&model, 1);
    let got = run(&mut engine, &joins, Some(0));
    // Steps 0..=2 ran before it left: three tokens.
    assert_eq!(got[0].len(), 3);
    let alone = generate(&model, &[1, 6], &GenerateConfig::greedy(8), |_| {}).unwrap();
    assert_eq!(got[1], alone.tokens);
}

#[test]
fn a_full_context_refills_its_window_as_a_lone_generation_does() {
    let model = tiny(6);
    let config = GenerateConfig::greedy(9);
    let joins = vec![vec![
        (vec![1, 5, 7], config.clone()),
        (vec![4], config.clone()),
    ]];
    let mut engine = BatchEngine::new(&model, 1);
    let got = run(&mut engine, &joins, None);
    for ((prompt, config), tokens) in joins.iter().flatten().zip(&got) {
        let reference =
            crate::generation::generate::generate_uncached(&model, prompt, config).unwrap();
        assert_eq!(tokens, &reference.tokens, "{prompt:?}");
    }
}
