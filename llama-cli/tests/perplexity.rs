//! `llama-cli perplexity`: its figures, and a bad `--text` refused with one line.

use std::process::Output;

use crate::common::text;
use llama_model::fixtures::fixture;

fn cli(args: &[&str]) -> Output {
    crate::common::llama_cli()
        .args(["--backend", "ndarray", "perplexity", "--checkpoint"])
        .arg(fixture("models/stories260K/stories260K.bin"))
        .args(args)
        .output()
        .expect("llama-cli runs")
}

fn reference() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture("reference/lm-stories260K.json")).unwrap();
    serde_json::from_str::<serde_json::Value>(&text).unwrap()["perplexity"].clone()
}

#[test]
fn perplexity_prints_the_token_count_mean_nll_and_perplexity() {
    // The fixture's first five documents, whose figures it lists.
    let reference = reference();
    let docs: Vec<&str> = reference["documents"].as_array().unwrap()[..5]
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    let per_doc = &reference["per_document_predicted_tokens_and_nll"]
        .as_array()
        .unwrap()[..5];
    let tokens: u64 = per_doc.iter().map(|d| d[0].as_u64().unwrap()).sum();
    let nll: f64 = per_doc.iter().map(|d| d[1].as_f64().unwrap()).sum();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("five.txt");
    std::fs::write(&path, docs.join("\n") + "\n").unwrap();
    let out = cli(&["--text", path.to_str().unwrap(), "--batch-size", "2"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!("5 documents, {tokens} predicted tokens")),
        "{stdout}"
    );
    // Printed with 4 decimals; ours is within 1e-5 relative of the reference (the library
    // test checks that), far below the printed digits here (perplexity ~ 80).
    let printed: f64 = stdout
        .rsplit("perplexity ")
        .next()
        .and_then(|v| v.trim().parse().ok())
        .expect("a perplexity figure");
    let expected = (nll / tokens as f64).exp();
    assert!(
        (printed - expected).abs() <= 1e-5 * expected + 5e-5,
        "{printed} vs {expected}"
    );
    assert!(
        !text(&out.stderr).contains('\r'),
        "no redrawing off a terminal"
    );
}

#[test]
fn a_bad_text_file_is_one_error_line() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "\n\n").unwrap();
    let binary = dir.path().join("binary.txt");
    std::fs::write(&binary, b"ok\n\xff\n").unwrap();
    let missing = dir.path().join("missing.txt");
    for (path, problem) in [
        (&empty, "holds no text"),
        (&binary, ":2: not UTF-8 text"),
        (&missing, "cannot read"),
    ] {
        let out = cli(&["--text", path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{}", path.display());
        let stderr = text(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains(path.to_str().unwrap()) && stderr.contains(problem),
            "{stderr}"
        );
    }
}
