//! Tests of [`Tokenizer`] against the reference cases in
//! `shared/fixtures/reference/tokenizer-cases.json` (sentencepiece and llama2.c outputs).

use std::sync::OnceLock;

use serde_json::Value;

use super::*;
use crate::fixtures::fixture;

const LLAMA2_MODEL: &str = "tokenizers/llama2-tokenizer.model";
const LLAMA2_BIN: &str = "tokenizers/llama2-tokenizer.bin";
const TOK512_MODEL: &str = "models/stories260K/tok512.model";
const TOK512_BIN: &str = "models/stories260K/tok512.bin";
const CASES: &str = "reference/tokenizer-cases.json";
const EXPECTED_CASES: usize = 49;

/// Which expected ids / decode text of a case a tokenizer file must reproduce.
struct Expectation {
    file: &'static str,
    group: &'static str,
    ids_key: &'static str,
    decode_key: &'static str,
    vocab_size: usize,
}

const EXPECTATIONS: [Expectation; 4] = [
    Expectation {
        file: LLAMA2_MODEL,
        group: "llama2_32k",
        ids_key: "sentencepiece_ids",
        decode_key: "sentencepiece_decode",
        vocab_size: 32000,
    },
    Expectation {
        file: LLAMA2_BIN,
        group: "llama2_32k",
        ids_key: "llama2c_encode_ids",
        decode_key: "sentencepiece_decode",
        vocab_size: 32000,
    },
    Expectation {
        file: TOK512_MODEL,
        group: "tok512",
        ids_key: "sentencepiece_ids",
        decode_key: "decode",
        vocab_size: 512,
    },
    Expectation {
        file: TOK512_BIN,
        group: "tok512",
        ids_key: "llama2c_encode_ids",
        decode_key: "decode",
        vocab_size: 512,
    },
];

/// Each fixture tokenizer is loaded once for all tests (the 32k BPE takes a moment to build).
fn load(file: &'static str) -> &'static Tokenizer {
    static CACHE: [OnceLock<Tokenizer>; 4] = [
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
    ];
    let index = EXPECTATIONS
        .iter()
        .position(|e| e.file == file)
        .expect("a fixture tokenizer");
    CACHE[index].get_or_init(|| {
        Tokenizer::from_file(fixture(file)).unwrap_or_else(|e| panic!("loading {file}: {e}"))
    })
}

fn cases() -> Vec<Value> {
    let text = std::fs::read_to_string(fixture(CASES)).expect("cases readable");
    let json: Value = serde_json::from_str(&text).expect("cases are JSON");
    json["cases"].as_array().expect("a cases array").clone()
}

fn ids_of(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .expect("an id list")
        .iter()
        .map(|v| u32::try_from(v.as_u64().expect("an id")).expect("a u32 id"))
        .collect()
}

/// Runs every case through `tokenizer` and returns (cases checked, failure descriptions).
fn check_cases(tokenizer: &Tokenizer, e: &Expectation) -> (usize, Vec<String>) {
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in cases() {
        let text = case["text"].as_str().expect("case text");
        let expected = ids_of(&case[e.group][e.ids_key]);
        let expected_text = case[e.group][e.decode_key]
            .as_str()
            .expect("expected decode");
        checked += 1;

        match tokenizer.encode(text, false, false) {
            Ok(ids) if ids == expected => {}
            Ok(ids) => failures.push(format!("{text:?}: ids {ids:?} != expected {expected:?}")),
            Err(err) => failures.push(format!("{text:?}: encode error {err}")),
        }
        match tokenizer.decode(&expected) {
            Ok(decoded) if decoded == expected_text && decoded == text => {}
            Ok(decoded) => failures.push(format!("{text:?}: decode gave {decoded:?}")),
            Err(err) => failures.push(format!("{text:?}: decode error {err}")),
        }
        // The `tokenizers` decoder chain (used by `inner()` and saved JSON) agrees as well.
        match tokenizer.inner().decode(&expected, true) {
            Ok(decoded) if decoded == text => {}
            Ok(decoded) => failures.push(format!("{text:?}: inner decode gave {decoded:?}")),
            Err(err) => failures.push(format!("{text:?}: inner decode error {err}")),
        }
        // Streaming one id at a time gives the same text.
        let mut stream = tokenizer.stream_decoder();
        let mut streamed = String::new();
        for &id in &expected {
            streamed.push_str(&stream.push(id).expect("valid id"));
        }
        streamed.push_str(&stream.finish());
        if streamed != text {
            failures.push(format!("{text:?}: streamed decode gave {streamed:?}"));
        }
    }
    (checked, failures)
}

fn assert_all_cases(tokenizer: &Tokenizer, e: &Expectation) {
    assert_eq!(tokenizer.vocab_size(), e.vocab_size, "{}", e.file);
    let (checked, failures) = check_cases(tokenizer, e);
    assert_eq!(
        checked, EXPECTED_CASES,
        "{}: number of reference cases",
        e.file
    );
    assert!(
        failures.is_empty(),
        "{}: {} of {checked} cases failed:\n{}",
        e.file,
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn llama2_model_matches_sentencepiece_on_all_cases() {
    let tokenizer = load(LLAMA2_MODEL);
    assert_eq!(tokenizer.format(), TokenizerFormat::SentencePiece);
    assert_all_cases(tokenizer, &EXPECTATIONS[0]);
}

#[test]
fn llama2_bin_matches_llama2c_on_all_cases() {
    let tokenizer = load(LLAMA2_BIN);
    assert_eq!(tokenizer.format(), TokenizerFormat::Llama2c);
    assert_all_cases(tokenizer, &EXPECTATIONS[1]);
}

#[test]
fn tok512_model_matches_sentencepiece_on_all_cases() {
    let tokenizer = load(TOK512_MODEL);
    assert_eq!(tokenizer.format(), TokenizerFormat::SentencePiece);
    assert_all_cases(tokenizer, &EXPECTATIONS[2]);
}

#[test]
fn tok512_bin_matches_llama2c_on_all_cases() {
    let tokenizer = load(TOK512_BIN);
    assert_eq!(tokenizer.format(), TokenizerFormat::Llama2c);
    assert_all_cases(tokenizer, &EXPECTATIONS[3]);
}

#[test]
fn saved_tokenizer_json_reloads_and_matches_all_cases() {
    let dir = tempfile::tempdir().expect("temp dir");
    for e in &EXPECTATIONS {
        let path = dir.path().join("tokenizer.json");
        load(e.file).save_json(&path, false).expect("saved");
        let reloaded = Tokenizer::from_file(&path).expect("reloaded");
        assert_eq!(reloaded.format(), TokenizerFormat::HuggingFaceJson);
        assert_eq!(
            (reloaded.bos_id(), reloaded.eos_id(), reloaded.pad_id()),
            (1, 2, 3)
        );
        assert_eq!(reloaded.unk_id(), Some(0));
        assert_eq!(reloaded.piece_kind(1), Some(PieceKind::Control));
        assert_eq!(reloaded.piece_kind(3), Some(PieceKind::Byte(0)));
        assert_all_cases(&reloaded, e);
    }
}

#[test]
fn pieces_match_sentencepiece_pieces() {
    let cases = cases();
    assert_eq!(cases.len(), EXPECTED_CASES);
    let llama = load(LLAMA2_BIN);
    let tok512 = load(TOK512_MODEL);
    for case in &cases {
        let ids = ids_of(&case["llama2_32k"]["sentencepiece_ids"]);
        let pieces: Vec<&str> = ids
            .iter()
            .map(|&id| llama.id_to_piece(id).unwrap())
            .collect();
        let expected: Vec<&str> = case["llama2_32k"]["sentencepiece_pieces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        assert_eq!(pieces, expected);
        for (&id, piece) in ids.iter().zip(&expected) {
            assert_eq!(llama.piece_to_id(piece), Some(id));
        }

        // tok512's `pieces` are llama2.c spellings: a space instead of `▁`.
        let ids = ids_of(&case["tok512"]["sentencepiece_ids"]);
        for (&id, piece) in ids.iter().zip(case["tok512"]["pieces"].as_array().unwrap()) {
            let expected = piece.as_str().unwrap().replace(' ', "▁");
            assert_eq!(tok512.id_to_piece(id), Some(expected.as_str()));
        }
    }
}

#[test]
fn special_ids_match_the_assignment() {
    for e in &EXPECTATIONS {
        let t = load(e.file);
        assert_eq!(
            (t.bos_id(), t.eos_id(), t.pad_id()),
            (1, 2, 3),
            "{}",
            e.file
        );
        assert_eq!(t.unk_id(), Some(0), "{}", e.file);
        assert_eq!(t.id_to_piece(1), Some("<s>"));
        assert_eq!(t.id_to_piece(2), Some("</s>"));
        assert_eq!(t.id_to_piece(3), Some("<0x00>"));
        assert_eq!(t.piece_kind(2), Some(PieceKind::Control));
        assert_eq!(t.piece_kind(0x0A + 3), Some(PieceKind::Byte(0x0A)));
        assert_eq!(t.id_to_piece(e.vocab_size as u32), None);
    }
    // tok512: the dummy-prefix space is its own piece.
    assert_eq!(load(TOK512_BIN).piece_to_id("▁"), Some(410));
}

#[test]
fn bos_and_eos_are_added_around_the_text() {
    let t = load(LLAMA2_MODEL);
    assert_eq!(
        t.encode("Hello world", true, false).unwrap(),
        [1, 15043, 3186]
    );
    assert_eq!(
        t.encode("Hello world", false, true).unwrap(),
        [15043, 3186, 2]
    );
    assert_eq!(
        t.encode("Hello world", true, true).unwrap(),
        [1, 15043, 3186, 2]
    );
    assert_eq!(t.encode("", true, true).unwrap(), [1, 2]);
    assert!(t.encode("", false, false).unwrap().is_empty());
    // Decoding drops them again.
    assert_eq!(t.decode(&[1, 15043, 3186, 2]).unwrap(), "Hello world");
    // The text "<s>" is text, not BOS (as in sentencepiece).
    let ids = t.encode("<s>", false, false).unwrap();
    assert!(!ids.contains(&1), "{ids:?}");
    assert_eq!(t.decode(&ids).unwrap(), "<s>");
}

#[test]
fn truncation_keeps_the_first_text_tokens_then_adds_bos_eos() {
    // tok512 "Once upon a time, there was a little" -> BOS + the forward fixture's row 0.
    let t = load(TOK512_BIN);
    let text = "Once upon a time, there was a little girl named Lily.";
    let full = t.encode(text, false, false).unwrap();
    assert_eq!(full.len(), 15);
    let cut = t.encode_truncated(text, true, false, 7).unwrap();
    assert_eq!(cut, [1, 403, 407, 261, 378, 432, 383, 286]);
    let cut = t.encode_truncated(text, true, true, 3).unwrap();
    assert_eq!(cut, [1, 403, 407, 261, 2]);
    assert!(t
        .encode_truncated(text, false, false, 0)
        .unwrap()
        .is_empty());
    assert_eq!(t.encode_truncated(text, false, false, 100).unwrap(), full);

    let limited = t.clone().with_max_len(Some(4));
    assert_eq!(limited.max_len(), Some(4));
    assert_eq!(
        limited.encode(text, true, true).unwrap(),
        [1, 403, 407, 261, 378, 2]
    );
    assert_eq!(t.max_len(), None);
}

#[test]
fn decode_piece_works_like_llama2c() {
    let t = load(LLAMA2_MODEL);
    // "▁Hello" after BOS loses its space, elsewhere keeps it.
    assert_eq!(t.decode_piece(1, 15043).unwrap(), b"Hello");
    assert_eq!(t.decode_piece(15043, 3186).unwrap(), b" world");
    assert_eq!(t.decode_piece(3186, 13).unwrap(), b"\n");
    assert_eq!(t.decode_piece(3186, 2).unwrap(), b"");
    // "🤗" = four byte pieces.
    let ids = t.encode("🤗", false, false).unwrap();
    let bytes: Vec<u8> = ids
        .windows(2)
        .flat_map(|w| t.decode_piece(w[0], w[1]).unwrap())
        .collect();
    let first = t.decode_piece(1, ids[0]).unwrap();
    assert_eq!([first, bytes].concat(), "🤗".as_bytes());
}

#[test]
fn invalid_ids_and_unknown_pieces() {
    let t = load(LLAMA2_MODEL);
    assert!(matches!(
        t.decode(&[15043, 32000]),
        Err(TokenizerError::InvalidId {
            id: 32000,
            vocab_size: 32000
        })
    ));
    assert!(t.decode_piece(1, u32::MAX).is_err());
    assert!(t.stream_decoder().push(32000).is_err());
    // `<unk>` decodes to sentencepiece's surface.
    assert_eq!(t.decode(&[15043, 0]).unwrap(), "Hello \u{2047} ");
    // A lone continuation byte is one replacement character.
    assert_eq!(t.decode(&[0x80 + 3]).unwrap(), "\u{FFFD}");
}

#[test]
fn garbage_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("tokenizer.model");
    std::fs::write(&garbage, b"this is definitely not a tokenizer\n").unwrap();
    let err = Tokenizer::from_file(&garbage).unwrap_err();
    assert!(matches!(err, TokenizerError::UnknownFormat { .. }), "{err}");
    assert!(err.to_string().contains("tokenizer.model"), "{err}");

    // Protobuf-looking garbage goes to the sentencepiece reader, which refuses it.
    assert!(Tokenizer::from_bytes(&[0x0A, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F, 1, 2]).is_err());
    // Random bytes.
    let noise: Vec<u8> = (0u32..4096)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    assert!(Tokenizer::from_bytes(&noise).is_err());

    let empty = dir.path().join("empty.bin");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(
        Tokenizer::from_file(&empty),
        Err(TokenizerError::EmptyFile { .. })
    ));

    let missing = dir.path().join("missing.model");
    let err = Tokenizer::from_file(&missing).unwrap_err();
    assert!(matches!(err, TokenizerError::Io { .. }));
    assert!(err.to_string().contains("missing.model"), "{err}");
}

#[test]
fn truncated_files_are_errors() {
    let bin = std::fs::read(fixture(LLAMA2_BIN)).unwrap();
    // Cut in the middle of the last entry's text.
    let cut = &bin[..bin.len() - 1];
    let err = Tokenizer::from_bytes(cut).unwrap_err();
    assert!(matches!(err, TokenizerError::TruncatedBin { .. }), "{err}");
    // Cut inside the header of an entry.
    let err = Tokenizer::from_bytes(&bin[..4 + 6]).unwrap_err();
    assert!(matches!(err, TokenizerError::TruncatedBin { .. }), "{err}");
    // Cut between two entries: well-formed, but `<0x00>` (id 3) is missing.
    let entry = |len: usize| 8 + len;
    let three = 4 + entry(5) + entry(5) + entry(6);
    let err = Tokenizer::from_bytes(&bin[..three]).unwrap_err();
    match err {
        TokenizerError::MissingPiece { piece, .. } => assert_eq!(piece, "<0x00>"),
        other => panic!("expected MissingPiece, got {other}"),
    }
    // Only the header.
    assert!(matches!(
        Tokenizer::from_bytes(&bin[..4]),
        Err(TokenizerError::EmptyVocab { .. })
    ));

    let model = std::fs::read(fixture(LLAMA2_MODEL)).unwrap();
    let err = Tokenizer::from_bytes(&model[..model.len() - 3]).unwrap_err();
    assert!(matches!(err, TokenizerError::InvalidModel { .. }), "{err}");
}

#[test]
fn format_comes_from_content_not_extension() {
    let dir = tempfile::tempdir().unwrap();
    let misnamed = dir.path().join("tokenizer.json");
    std::fs::copy(fixture(TOK512_BIN), &misnamed).unwrap();
    let t = Tokenizer::from_file(&misnamed).unwrap();
    assert_eq!(t.format(), TokenizerFormat::Llama2c);
    assert_eq!(t.vocab_size(), 512);
}

#[test]
fn agrees_with_the_llama2c_algorithm_on_sst_sentences() {
    // The reference found no disagreement on any SST/CFIMDB sentence; SST-dev keeps it quick.
    let mut checked = 0;
    for data in ["data/sst-dev.txt"] {
        let text = std::fs::read_to_string(fixture(data)).unwrap();
        let sentences: Vec<&str> = text
            .lines()
            .filter_map(|line| line.split_once(" ||| ").map(|(_, s)| s))
            .collect();
        assert!(sentences.len() > 1000, "{data}");
        for file in [LLAMA2_MODEL, TOK512_MODEL] {
            let t = load(file);
            let oracle = reference::Llama2cEncoder::new(&t.vocab);
            for sentence in &sentences {
                let expected = oracle.encode(sentence);
                let ids = t.encode(sentence, false, false).unwrap();
                assert_eq!(ids, expected, "{file}: {sentence:?}");
                assert_eq!(t.decode(&ids).unwrap(), *sentence, "{file}");
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 2 * 1101);
}

#[test]
fn tokenizer_can_be_shared_between_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Tokenizer>();
    let t = load(TOK512_BIN);
    let ids = std::thread::scope(|s| {
        s.spawn(|| t.encode("Lily and Tom", true, false).unwrap())
            .join()
            .unwrap()
    });
    assert_eq!(ids, [1, 317, 269, 274, 287]);
}
