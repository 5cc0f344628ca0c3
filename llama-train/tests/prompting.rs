//! Zero-shot prompting on stories260K against a direct forward-pass computation, and the
//! prediction files it produces.

use burn::backend::NdArray;
use burn::tensor::{Int, Tensor, TensorData};
use llama_model::fixtures::fixture;
use llama_model::generation::sampling::argmax;
use llama_model::{Llama, Tokenizer};
use llama_train::classify::prompting::{PromptingConfig, PromptingError, ZeroShotClassifier};
use llama_train::data::predictions::{
    read_predictions, write_predictions, Prediction, PredictionsError,
};
use llama_train::data::sentences::{read_label_names, DataOptions, SentenceDataset, SentenceItem};

type B = NdArray;

const TOLERANCE: f64 = 1e-4;
/// Relative part of the tolerance: a padded batch and a single unpadded sentence run
/// different matrix shapes that round differently; scores are sums of log-probabilities of
/// magnitude ~10-50 (up to 3e-4 apart with ndarray's optional SIMD kernels, which the
/// workspace keeps off).
const RELATIVE: f64 = 2e-5;

fn tok512() -> Tokenizer {
    Tokenizer::from_file(fixture("models/stories260K/tok512.bin")).expect("tok512 loads")
}

fn stories260k() -> Llama<B> {
    llama_model::load_checkpoint::<B>(
        &fixture("models/stories260K/stories260K.bin"),
        &Default::default(),
        &Default::default(),
    )
    .expect("stories260K loads")
    .model
}

fn classifier(tok: &Tokenizer, mapping: &str) -> ZeroShotClassifier {
    let names = read_label_names(fixture(mapping)).unwrap();
    ZeroShotClassifier::new(tok, names).unwrap()
}

/// The first `n` examples of a dev file, prompted with the classifier's suffix.
fn dev_items(
    tok: &Tokenizer,
    classifier: &ZeroShotClassifier,
    file: &str,
    n: usize,
) -> Vec<SentenceItem> {
    let data = classifier
        .load_dataset(fixture(file), tok, &DataOptions::default())
        .unwrap();
    data.items()[..n.min(data.items().len())].to_vec()
}

/// Label scores computed directly: the model's full forward pass on one row `[1, len]`
/// (no batching, no padding unless the row holds pads), log-softmax of the last position's
/// logits in f64 on the host, summed over each label's ids.
fn direct_scores(model: &Llama<B>, row: &[u32], label_ids: &[Vec<u32>]) -> Vec<f64> {
    let n = row.len();
    let ids: Vec<i64> = row.iter().map(|&t| t as i64).collect();
    let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, n]), &Default::default());
    let logits = model.forward(tokens).logits; // [1, n, vocab]
    let last: Vec<f32> = logits
        .narrow(1, n - 1, 1)
        .into_data()
        .convert::<f32>()
        .into_vec()
        .unwrap();
    let max = last.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
    let log_z = max
        + last
            .iter()
            .map(|&x| (x as f64 - max).exp())
            .sum::<f64>()
            .ln();
    label_ids
        .iter()
        .map(|ids| ids.iter().map(|&id| last[id as usize] as f64 - log_z).sum())
        .collect()
}

fn assert_close(actual: &[f32], expected: &[f64], what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}");
    for (a, e) in actual.iter().zip(expected) {
        assert!(
            (*a as f64 - e).abs() <= TOLERANCE + RELATIVE * e.abs(),
            "{what}: got {actual:?}, expected {expected:?}"
        );
    }
}

#[test]
fn prompts_are_sentence_space_suffix_with_bos() {
    let tok = tok512();
    let sst = classifier(&tok, "data/sst-label-mapping.json");
    assert_eq!(
        sst.suffix(),
        "Is this movie awful, bad, average, good, or excellent? This movie is "
    );
    for item in dev_items(&tok, &sst, "data/sst-dev.txt", 20) {
        let prompt = format!("{} {}", item.sentence, sst.suffix());
        assert_eq!(item.text, prompt);
        assert_eq!(item.tokens, tok.encode(&prompt, true, false).unwrap());
    }
}

#[test]
fn label_scores_equal_a_direct_forward_pass() {
    let tok = tok512();
    let model = stories260k();
    let device = Default::default();
    for (mapping, file, n) in [
        ("data/sst-label-mapping.json", "data/sst-dev.txt", 7),
        ("data/cfimdb-label-mapping.json", "data/cfimdb-dev.txt", 3),
    ] {
        let classifier = classifier(&tok, mapping);
        // The n shortest sentences (CFIMDB reviews run to ~800 tokens, slow in a debug
        // build), in file order.
        let mut items = dev_items(&tok, &classifier, file, usize::MAX);
        let mut by_length: Vec<usize> = (0..items.len()).collect();
        by_length.sort_by_key(|&i| items[i].tokens.len());
        let mut keep = by_length[..n].to_vec();
        keep.sort_unstable();
        items = keep.iter().map(|&i| items[i].clone()).collect();
        let rows: Vec<&[u32]> = items.iter().map(|i| i.tokens.as_slice()).collect();
        let lengths: Vec<usize> = rows.iter().map(|r| r.len()).collect();
        assert!(
            lengths.iter().any(|&l| l != lengths[0]),
            "{file}: {lengths:?}"
        );

        let expected: Vec<Vec<f64>> = rows
            .iter()
            .map(|row| direct_scores(&model, row, classifier.label_token_ids()))
            .collect();

        // One padded batch, pad-aware.
        let batched = classifier
            .score_rows(&model, &rows, false, &device)
            .unwrap();
        for (r, (got, want)) in batched.iter().zip(&expected).enumerate() {
            assert_close(got, want, &format!("{file} row {r} (score_rows)"));
        }

        // Through classify_items with a batch size that splits the rows (and sorts them by
        // length internally): same scores, in input order.
        let config = PromptingConfig {
            batch_size: 3,
            pad_position_scoring: false,
        };
        let out = classifier
            .classify_items(&model, &items, &config, &device)
            .unwrap();
        for (r, (got, want)) in out.scores.iter().zip(&expected).enumerate() {
            assert_close(got, want, &format!("{file} row {r} (classify_items)"));
        }
        let want_predictions: Vec<usize> = expected
            .iter()
            .map(|s| {
                let s: Vec<f32> = s.iter().map(|&x| x as f32).collect();
                argmax(&s).expect("scores")
            })
            .collect();
        assert_eq!(out.predictions, want_predictions, "{file}");
        let labels: Vec<usize> = items.iter().map(|i| i.label).collect();
        assert_eq!(out.labels, labels);
        let correct = labels
            .iter()
            .zip(&out.predictions)
            .filter(|(a, b)| a == b)
            .count();
        assert!((out.accuracy - correct as f64 / n as f64).abs() < 1e-12);
    }
}

#[test]
fn pad_position_scoring_reads_the_batch_last_position() {
    let tok = tok512();
    let model = stories260k();
    let device = Default::default();
    let classifier = classifier(&tok, "data/sst-label-mapping.json");
    let items = dev_items(&tok, &classifier, "data/sst-dev.txt", 5);
    let rows: Vec<&[u32]> = items.iter().map(|i| i.tokens.as_slice()).collect();
    let width = rows.iter().map(|r| r.len()).max().unwrap();

    // Direct: each row padded to the batch width with the pad id, on its own (rows of a
    // batch do not interact), read at the last position.
    let expected: Vec<Vec<f64>> = rows
        .iter()
        .map(|row| {
            let mut padded = row.to_vec();
            padded.resize(width, tok.pad_id());
            direct_scores(&model, &padded, classifier.label_token_ids())
        })
        .collect();

    let got = classifier.score_rows(&model, &rows, true, &device).unwrap();
    for (r, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert_close(g, e, &format!("pad-position row {r}"));
    }
    let config = PromptingConfig {
        batch_size: 5,
        pad_position_scoring: true,
    };
    let out = classifier
        .classify_items(&model, &items, &config, &device)
        .unwrap();
    for (r, (g, e)) in out.scores.iter().zip(&expected).enumerate() {
        assert_close(g, e, &format!("pad-position row {r} (classify_items)"));
    }

    // The longest row has no pad: both modes agree on it, and differ on padded rows.
    let aware = classifier
        .score_rows(&model, &rows, false, &device)
        .unwrap();
    let longest = rows.iter().position(|r| r.len() == width).unwrap();
    let aware_expected = direct_scores(&model, rows[longest], classifier.label_token_ids());
    assert_close(&got[longest], &aware_expected, "longest row");
    let shorter = rows.iter().position(|r| r.len() < width).unwrap();
    assert_ne!(got[shorter], aware[shorter]);
}

#[test]
fn misuse_is_reported() {
    let tok = tok512();
    let model = stories260k();
    let device = Default::default();
    let sst = classifier(&tok, "data/sst-label-mapping.json");

    let plain =
        SentenceDataset::from_file(fixture("data/sst-dev.txt"), &tok, &DataOptions::default())
            .unwrap();
    assert!(matches!(
        sst.classify(&model, &plain, &PromptingConfig::default(), &device),
        Err(PromptingError::WrongSuffix { found: None, .. })
    ));

    let items = dev_items(&tok, &sst, "data/sst-dev.txt", 2);
    let zero = PromptingConfig {
        batch_size: 0,
        pad_position_scoring: false,
    };
    assert!(matches!(
        sst.classify_items(&model, &items, &zero, &device),
        Err(PromptingError::ZeroBatchSize)
    ));
    let empty: [Vec<u32>; 2] = [vec![1, 5], vec![]];
    assert!(matches!(
        sst.score_rows(&model, &empty, false, &device),
        Err(PromptingError::EmptyRow { index: 1 })
    ));
    assert!(matches!(
        ZeroShotClassifier::new(&tok, vec![]),
        Err(PromptingError::NoLabels)
    ));
    assert!(matches!(
        ZeroShotClassifier::new(&tok, vec!["good".into(), String::new()]),
        Err(PromptingError::EmptyLabel { .. })
    ));

    // The Llama 2 tokenizer's ids do not fit stories260K's 512-entry vocabulary.
    let llama2 = Tokenizer::from_file(fixture("tokenizers/llama2-tokenizer.model")).unwrap();
    let wrong = ZeroShotClassifier::new(&llama2, vec!["awful".into(), "excellent".into()]).unwrap();
    let rows = [llama2.encode("A fine film", true, false).unwrap()];
    let err = wrong.score_rows(&model, &rows, false, &device).unwrap_err();
    assert!(
        matches!(
            err,
            PromptingError::TokenOutOfRange {
                vocab_size: 512,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn predictions_are_written_atomically_one_line_per_sentence() {
    let tok = tok512();
    let model = stories260k();
    let device = Default::default();
    let sst = classifier(&tok, "data/sst-label-mapping.json");
    let items = dev_items(&tok, &sst, "data/sst-dev.txt", 6);
    let out = sst
        .classify_items(&model, &items, &PromptingConfig::default(), &device)
        .unwrap();
    let sentences: Vec<&str> = items.iter().map(|i| i.sentence.as_str()).collect();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sst-dev-prompting-output.txt");
    std::fs::write(&path, "stale content that must disappear\n".repeat(50)).unwrap();
    write_predictions(&path, &out.predictions, &sentences).unwrap();

    let expected: String = out
        .predictions
        .iter()
        .zip(&sentences)
        .map(|(p, s)| format!("{p} ||| {s}\n"))
        .collect();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), expected);
    assert_eq!(
        read_predictions(&path).unwrap(),
        out.predictions
            .iter()
            .zip(&sentences)
            .map(|(&label, s)| Prediction {
                label,
                sentence: s.to_string()
            })
            .collect::<Vec<_>>()
    );
    // Only the target remains in the folder (no temporary file).
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        vec![std::ffi::OsString::from("sst-dev-prompting-output.txt")]
    );

    // A folder that does not exist: an error naming the path, nothing created.
    let missing = dir.path().join("no-such-folder").join("out.txt");
    let err = write_predictions(&missing, &out.predictions, &sentences).unwrap_err();
    assert!(matches!(err, PredictionsError::Write { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );
    assert!(!dir.path().join("no-such-folder").exists());

    // A failure after the temporary file was written (the target is a folder, so the
    // rename fails): the error names the path and no temporary file is left behind.
    let target_dir = dir.path().join("a-folder");
    std::fs::create_dir(&target_dir).unwrap();
    let err = write_predictions(&target_dir, &out.predictions, &sentences).unwrap_err();
    assert!(
        err.to_string().contains(&target_dir.display().to_string()),
        "{err}"
    );
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["a-folder", "sst-dev-prompting-output.txt"]);
    assert_eq!(std::fs::read_dir(&target_dir).unwrap().count(), 0);
}

/// Zero-shot accuracy and macro-F1 of stories260K on a full dev set, in both scoring modes,
/// batch size 10 (a report, not a check).
fn report_dev_prompting(name: &str, mapping: &str, file: &str) {
    let tok = tok512();
    let model = stories260k();
    let device = Default::default();
    let classifier = classifier(&tok, mapping);
    let data = classifier
        .load_dataset(fixture(file), &tok, &DataOptions::default())
        .unwrap();
    // PROMPT_REPORT_MODE=last|pad runs one mode only (each takes minutes in a debug build).
    let mode = std::env::var("PROMPT_REPORT_MODE").unwrap_or_default();
    for pad_position_scoring in [false, true] {
        if (mode == "last" && pad_position_scoring) || (mode == "pad" && !pad_position_scoring) {
            continue;
        }
        let config = PromptingConfig {
            batch_size: 10,
            pad_position_scoring,
        };
        let start = std::time::Instant::now();
        let out = classifier
            .classify(&model, &data, &config, &device)
            .unwrap();
        let mut counts = vec![0usize; classifier.label_names().len()];
        for &p in &out.predictions {
            counts[p] += 1;
        }
        println!(
            "{name} ({} sentences), {}: accuracy {:.4}, macro-F1 {:.4}, predicted per class {counts:?} ({:.1} s)",
            data.items().len(),
            if pad_position_scoring {
                "pad-position scoring (exercise)"
            } else {
                "last-real-token scoring"
            },
            out.accuracy,
            out.macro_f1,
            start.elapsed().as_secs_f64()
        );
    }
}

/// `cargo test -p llama-train --test prompting report_sst -- --ignored --nocapture`
#[test]
#[ignore = "slow report over the full SST dev set"]
fn report_sst_dev_prompting() {
    report_dev_prompting("SST dev", "data/sst-label-mapping.json", "data/sst-dev.txt");
}

/// `cargo test -p llama-train --test prompting report_cfimdb -- --ignored --nocapture`
#[test]
#[ignore = "slow report over the full CFIMDB dev set"]
fn report_cfimdb_dev_prompting() {
    report_dev_prompting(
        "CFIMDB dev",
        "data/cfimdb-label-mapping.json",
        "data/cfimdb-dev.txt",
    );
}
