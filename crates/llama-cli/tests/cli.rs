//! The command-line front end: exit codes, messages and outputs, on the ndarray backend.

use std::path::PathBuf;
use std::process::{Command, Output};

use llama_model::fixtures::fixture;

fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_llama-cli"))
        .args(["--backend", "ndarray"])
        .args(args)
        .output()
        .expect("llama-cli runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn path(p: PathBuf) -> String {
    p.display().to_string()
}

#[test]
fn sanity_passes_for_every_stories260k_container() {
    let reference = path(fixture("reference/forward-stories260K.safetensors"));
    for file in [
        "stories260K.bin",
        "stories260K.pt",
        "stories260K-llama2c.pt",
        "stories260K.safetensors",
    ] {
        let checkpoint = path(fixture(&format!("models/stories260K/{file}")));
        let out = cli(&[
            "sanity",
            "--checkpoint",
            &checkpoint,
            "--reference",
            &reference,
        ]);
        let stdout = text(&out.stdout);
        assert!(
            out.status.success(),
            "{file}: {stdout}{}",
            text(&out.stderr)
        );
        assert!(
            stdout.contains("Your Llama implementation is correct!"),
            "{stdout}"
        );
    }
}

#[test]
fn sanity_fails_loudly_when_outputs_differ() {
    let reference = path(fixture("reference/forward-stories260K.safetensors"));
    let checkpoint = path(fixture("models/stories260K/stories260K.bin"));
    let out = cli(&[
        "sanity",
        "--checkpoint",
        &checkpoint,
        "--reference",
        &reference,
        "--atol",
        "0",
        "--rtol",
        "0",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("outside tolerance") && !stdout.contains("correct!"),
        "{stdout}"
    );
}

#[test]
fn bad_checkpoint_is_one_clear_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("half.bin");
    let bytes = std::fs::read(fixture("models/stories260K/stories260K.bin")).unwrap();
    std::fs::write(&bad, &bytes[..5000]).unwrap();
    let reference = path(fixture("reference/forward-stories260K.safetensors"));
    let out = cli(&[
        "sanity",
        "--checkpoint",
        &path(bad.clone()),
        "--reference",
        &reference,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with("error: ") && stderr.contains("half.bin"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn usage_errors_exit_with_2() {
    let out = cli(&["--backend", "cuda", "sanity"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = cli(&["no-such-command"]);
    assert_eq!(out.status.code(), Some(2));
}
