//! Data files, label names, batching and label-name tokens on the shared fixtures.

use std::path::Path;

use burn::backend::NdArray;
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use llama_model::fixtures::fixture;
use llama_model::Tokenizer;
use llama_train::classify::prompting::ZeroShotClassifier;
use llama_train::data::sentences::{
    load_label_names, read_label_names, read_labelled_file, DataError, DataOptions, LineError,
    SentenceBatch, SentenceBatcher, SentenceDataset,
};

type B = NdArray;

fn tok512() -> Tokenizer {
    Tokenizer::from_file(fixture("models/stories260K/tok512.bin")).expect("tok512 loads")
}

/// The file's lines as an independent parse: `(label, stripped sentence)`.
fn naive_parse(path: &Path) -> Vec<(usize, String)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| {
            let (label, sentence) = line.split_once(" ||| ").unwrap();
            (label.trim().parse().unwrap(), sentence.trim().to_string())
        })
        .collect()
}

#[test]
fn sst_dev_has_1101_sentences_in_5_classes() {
    let tok = tok512();
    let path = fixture("data/sst-dev.txt");
    let data = SentenceDataset::from_file(&path, &tok, &DataOptions::default()).unwrap();
    assert_eq!(data.len(), 1101);
    assert_eq!(data.num_labels(), 5);
    assert_eq!(data.distinct_labels(), vec![0, 1, 2, 3, 4]);
    assert_eq!(data.path(), path.as_path());
    assert_eq!(data.num_truncated(), 0);

    let first = data.get(0).unwrap();
    assert_eq!(first.label, 3);
    assert_eq!(
        first.sentence,
        "It 's a lovely film with lovely performances by Buy and Accorsi ."
    );
    assert_eq!(first.text, first.sentence, "no lower-casing by default");
    assert_eq!(first.line, 1);
    assert!(data.get(1101).is_none());

    // Every item against an independent parse and a direct encode (BOS, no EOS).
    let expected = naive_parse(&path);
    for (item, (label, sentence)) in data.items().iter().zip(&expected) {
        assert_eq!(item.label, *label);
        assert_eq!(&item.sentence, sentence);
        assert_eq!(item.tokens, tok.encode(sentence, true, false).unwrap());
        assert_eq!(item.tokens[0], tok.bos_id());
        assert_ne!(item.tokens.last(), Some(&tok.eos_id()));
    }
    assert_eq!(data.labels().len(), 1101);
    assert_eq!(data.sentences()[1100], expected[1100].1);
}

#[test]
fn cfimdb_dev_has_245_sentences_in_2_classes_and_test_labels_are_placeholders() {
    let tok = tok512();
    let dev = SentenceDataset::from_file(
        fixture("data/cfimdb-dev.txt"),
        &tok,
        &DataOptions::default(),
    )
    .unwrap();
    assert_eq!(dev.len(), 245);
    assert_eq!(dev.num_labels(), 2);
    assert_eq!(dev.distinct_labels(), vec![0, 1]);
    dev.check_labels_below(2).unwrap();
    // Long reviews are kept whole by default, beyond stories260K's 512 positions.
    let longest = dev.items().iter().map(|i| i.tokens.len()).max().unwrap();
    assert!(longest > 512, "longest CFIMDB dev review: {longest} tokens");

    let test = read_labelled_file(fixture("data/cfimdb-test.txt")).unwrap();
    assert_eq!(test.len(), 488);
    assert!(test.iter().all(|r| r.label == 0));
}

#[test]
fn options_lowercase_truncate_and_append_the_prompt() {
    let tok = tok512();
    let path = fixture("data/sst-dev.txt");
    let plain = SentenceDataset::from_file(&path, &tok, &DataOptions::default()).unwrap();

    let lower =
        SentenceDataset::from_file(&path, &tok, &DataOptions::default().with_lowercase(true))
            .unwrap();
    let item = &lower.items()[0];
    assert_eq!(
        item.sentence,
        plain.items()[0].sentence,
        "output text keeps its case"
    );
    assert_eq!(item.text, item.sentence.to_lowercase());
    assert_eq!(item.tokens, tok.encode(&item.text, true, false).unwrap());

    // max_sentence_len keeps that many text tokens, then BOS goes in front: the exercise's
    // tokenizer (`t = sp.encode(s)[:max_len]; [bos] + t`), up to 6 ids for 5.
    let cut = SentenceDataset::from_file(
        &path,
        &tok,
        &DataOptions::default().with_max_sentence_len(Some(5)),
    )
    .unwrap();
    let mut longest = 0;
    for (short, full) in cut.items().iter().zip(plain.items()) {
        let text_tokens = full.tokens.len() - 1;
        assert_eq!(short.tokens.len(), 1 + text_tokens.min(5));
        assert_eq!(short.tokens[0], tok.bos_id());
        assert_eq!(short.tokens[..], full.tokens[..short.tokens.len()]);
        assert_eq!(
            short.tokens,
            tok.encode_truncated(&full.text, true, false, 5).unwrap()
        );
        assert_eq!(short.truncated, text_tokens > 5);
        longest = longest.max(short.tokens.len());
    }
    assert_eq!(longest, 6, "5 text tokens and BOS");
    assert_eq!(
        cut.num_truncated(),
        plain.items().iter().filter(|i| i.tokens.len() > 6).count()
    );
    assert!(matches!(
        SentenceDataset::from_file(
            &path,
            &tok,
            &DataOptions::default().with_max_sentence_len(Some(0))
        ),
        Err(DataError::ZeroMaxSentenceLen)
    ));

    let suffix = "Is this movie bad or good? This movie is ";
    let prompted = SentenceDataset::from_file(
        &path,
        &tok,
        &DataOptions::default().with_prompt_suffix(Some(suffix.into())),
    )
    .unwrap();
    let item = &prompted.items()[0];
    assert_eq!(item.text, format!("{} {suffix}", item.sentence));
    assert_eq!(item.tokens, tok.encode(&item.text, true, false).unwrap());
}

/// Writes `content` to `name` in a fresh temporary folder.
fn temp_file(content: &[u8], name: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, content).unwrap();
    (dir, path)
}

#[test]
fn malformed_files_name_the_file_and_line() {
    let cases: [(&[u8], usize, LineError); 4] = [
        (
            b"1 ||| fine\n2 ||| fine too\nno separator here\n",
            3,
            LineError::MissingSeparator,
        ),
        (
            b"1 ||| fine\ngood ||| the label is a word\n",
            2,
            LineError::BadLabel {
                label: "good".into(),
            },
        ),
        (b"0 ||| fine\n1 ||| \n", 2, LineError::EmptySentence),
        (b"0 ||| a ||| b\n", 1, LineError::ExtraSeparator),
    ];
    for (content, expected_line, expected_kind) in cases {
        let (_dir, path) = temp_file(content, "bad.txt");
        let err = read_labelled_file(&path).unwrap_err();
        let message = err.to_string();
        match err {
            DataError::Malformed {
                path: p,
                line,
                kind,
            } => {
                assert_eq!(p, path);
                assert_eq!(line, expected_line);
                assert_eq!(kind, expected_kind);
            }
            other => panic!("expected Malformed, got {other:?}"),
        }
        assert!(
            message.contains(&format!("{}:{expected_line}:", path.display())),
            "{message}"
        );
        // The dataset constructor reports the same error.
        let tok = tok512();
        assert!(matches!(
            SentenceDataset::from_file(&path, &tok, &DataOptions::default()),
            Err(DataError::Malformed { .. })
        ));
    }

    let (_dir, path) = temp_file(b"", "empty.txt");
    let err = read_labelled_file(&path).unwrap_err();
    assert!(matches!(&err, DataError::EmptyFile { path: p } if *p == path));
    assert!(err.to_string().contains(&path.display().to_string()));

    let missing = Path::new("/nonexistent/sst-dev.txt");
    let err = read_labelled_file(missing).unwrap_err();
    assert!(matches!(err, DataError::Io { .. }));
    assert!(err.to_string().contains("/nonexistent/sst-dev.txt"));
}

#[test]
fn label_names_must_match_the_number_of_classes() {
    let sst = fixture("data/sst-label-mapping.json");
    assert_eq!(
        load_label_names(&sst, 5).unwrap(),
        ["awful", "bad", "average", "good", "excellent"]
    );
    assert_eq!(
        read_label_names(fixture("data/cfimdb-label-mapping.json")).unwrap(),
        ["bad", "good"]
    );
    let err = load_label_names(&sst, 2).unwrap_err();
    match &err {
        DataError::LabelCount {
            path,
            found,
            expected,
        } => {
            assert_eq!(path, &sst);
            assert_eq!((*found, *expected), (5, 2));
        }
        other => panic!("expected LabelCount, got {other:?}"),
    }
    assert!(err.to_string().contains("sst-label-mapping.json"));

    let (_dir, path) = temp_file(br#"{"not": "a list"}"#, "labels.json");
    assert!(matches!(
        read_label_names(&path),
        Err(DataError::LabelNamesJson { .. })
    ));
}

#[test]
fn labels_outside_the_classes_are_reported() {
    let (_dir, path) = temp_file(b"0 ||| a\n2 ||| b\n", "gap.txt");
    let data = SentenceDataset::from_file(&path, &tok512(), &DataOptions::default()).unwrap();
    assert_eq!(data.num_labels(), 2);
    assert!(matches!(
        data.check_labels_below(2),
        Err(DataError::LabelOutOfRange {
            line: 2,
            label: 2,
            num_classes: 2,
            ..
        })
    ));
}

#[test]
fn batches_are_right_padded_with_the_pad_id() {
    let tok = tok512();
    assert_eq!(tok.pad_id(), 3);
    let data =
        SentenceDataset::from_file(fixture("data/sst-dev.txt"), &tok, &DataOptions::default())
            .unwrap();
    let items: Vec<_> = (0..4).map(|i| data.get(i).unwrap()).collect();
    let lengths: Vec<usize> = items.iter().map(|i| i.tokens.len()).collect();
    let width = *lengths.iter().max().unwrap();
    assert!(
        lengths.iter().any(|&l| l < width),
        "want rows of different length"
    );

    let batcher = SentenceBatcher::from_tokenizer(&tok);
    let batch: SentenceBatch<B> = batcher.batch(items.clone(), &Default::default());
    assert_eq!(batch.tokens.dims(), [4, width]);
    let tokens: Vec<i64> = batch
        .tokens
        .into_data()
        .convert::<i64>()
        .into_vec()
        .unwrap();
    for (r, item) in items.iter().enumerate() {
        let row = &tokens[r * width..(r + 1) * width];
        let n = item.tokens.len();
        let real: Vec<i64> = item.tokens.iter().map(|&t| t as i64).collect();
        assert_eq!(row[..n], real[..]);
        assert!(row[n..].iter().all(|&t| t == 3), "row {r}: {row:?}");
    }
    let got_lengths: Vec<i64> = batch
        .lengths
        .into_data()
        .convert::<i64>()
        .into_vec()
        .unwrap();
    assert_eq!(
        got_lengths,
        lengths.iter().map(|&l| l as i64).collect::<Vec<_>>()
    );
    let labels: Vec<i64> = batch
        .labels
        .into_data()
        .convert::<i64>()
        .into_vec()
        .unwrap();
    assert_eq!(labels, vec![3, 2, 3, 4]);
}

/// tok512 ids of a string as llama2.c's `encode()` gives them, from the reference fixture.
fn llama2c_ids(cases: &serde_json::Value, text: &str) -> Option<Vec<u32>> {
    let case = cases["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["text"] == text)?;
    Some(serde_json::from_value(case["tok512"]["llama2c_encode_ids"].clone()).unwrap())
}

#[test]
fn label_names_split_into_several_tok512_tokens() {
    let tok = tok512();
    let cases: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("reference/tokenizer-cases.json")).unwrap())
            .unwrap();
    let mut suffixes_checked = 0;
    for mapping in [
        "data/sst-label-mapping.json",
        "data/cfimdb-label-mapping.json",
    ] {
        let names = read_label_names(fixture(mapping)).unwrap();
        let classifier = ZeroShotClassifier::new(&tok, names.clone()).unwrap();
        for (name, ids) in names.iter().zip(classifier.label_token_ids()) {
            // Against llama2.c's encode() of the word (computed by the reference tools).
            let reference = llama2c_ids(&cases, name).expect("every label word is a case");
            assert_eq!(ids, &reference, "{name}");
            assert_eq!(ids, &tok.encode(name, false, false).unwrap());
            assert_eq!(tok.decode(ids).unwrap(), *name);
            assert!((2..=5).contains(&ids.len()), "{name}: {ids:?}");
        }
        // The prompt suffix also tokenizes like llama2.c (the fixture has SST's suffix).
        if let Some(reference) = llama2c_ids(&cases, classifier.suffix()) {
            assert_eq!(
                tok.encode(classifier.suffix(), false, false).unwrap(),
                reference
            );
            suffixes_checked += 1;
        }
    }
    assert_eq!(suffixes_checked, 1);
}
