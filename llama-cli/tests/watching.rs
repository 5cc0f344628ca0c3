//! Watching a fine-tune run from a pipe (issue 17): plain lines without control characters,
//! `metrics.csv`, `curves.png` and the dev confusion matrix, checked against the predictions.

use std::path::Path;
use std::process::Output;

use crate::common::{head, text};
use llama_model::fixtures::fixture;
use llama_train::report::canvas::png_size;
use llama_train::report::curves::CURVES_SIZE;

/// The class ids in the first field (`id ||| …`) of each line of `path`.
fn first_fields(path: &Path) -> Vec<usize> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| l.split(" ||| ").next().unwrap().trim().parse().unwrap())
        .collect()
}

/// Decode a PNG file fully: its size and how many distinct colours it uses.
fn decode_png(path: &Path) -> ((u32, u32), usize) {
    let bytes = std::fs::read(path).unwrap();
    let header_size = png_size(&bytes).unwrap_or_else(|| panic!("{} is no PNG", path.display()));
    let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
        .read_info()
        .unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let frame = reader.next_frame(&mut pixels).unwrap();
    assert_eq!((frame.width, frame.height), header_size);
    let channels = frame.color_type.samples();
    let colours: std::collections::HashSet<&[u8]> =
        pixels[..frame.buffer_size()].chunks(channels).collect();
    (header_size, colours.len())
}

/// The rows of counts of the confusion table printed under `heading`: the last `n + 1`
/// numbers of each of the `n` class rows (the counts per predicted class, then the total).
fn printed_matrix(stdout: &str, heading: &str, n: usize) -> Vec<Vec<usize>> {
    let mut lines = stdout.lines().skip_while(|l| !l.starts_with(heading));
    assert!(lines.next().is_some(), "no {heading:?} in\n{stdout}");
    let mut lines = lines.skip(2); // "predicted →" and the "true ↓ names… total" header
    (0..n)
        .map(|_| {
            let line = lines.next().expect("a class row");
            let numbers: Vec<usize> = line
                .split_whitespace()
                .rev()
                .take(n + 1)
                .map(|w| w.parse().unwrap_or_else(|_| panic!("{line:?}")))
                .collect();
            numbers.into_iter().rev().collect()
        })
        .collect()
}

/// `metrics.csv` of a run at `--log-every 1`: a train row per step and a dev row per epoch,
/// each with plausible figures and a growing wall clock.
fn check_metrics_csv(path: &Path, steps_per_epoch: usize, epochs: usize, batch: usize) {
    let csv = std::fs::read_to_string(path).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("epoch,step,split,loss,accuracy,macro_f1,lr,perplexity,wall_seconds")
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    let mut expected = Vec::new();
    for epoch in 1..=epochs {
        for batch in 1..=steps_per_epoch {
            expected.push((epoch, (epoch - 1) * steps_per_epoch + batch, "train"));
        }
        expected.push((epoch, epoch * steps_per_epoch, "dev"));
    }
    let got: Vec<(usize, usize, &str)> = rows
        .iter()
        .map(|r| (r[0].parse().unwrap(), r[1].parse().unwrap(), r[2]))
        .collect();
    assert_eq!(got, expected, "{csv}");
    let number = |s: &str| {
        s.parse::<f64>()
            .unwrap_or_else(|_| panic!("{s:?} in\n{csv}"))
    };
    let mut last_wall = 0.0;
    for r in &rows {
        assert_eq!(r.len(), 9, "{csv}");
        let loss = number(r[3]);
        assert!(loss.is_finite() && loss > 0.0, "{csv}");
        for fraction in [number(r[4]), number(r[5])] {
            assert!((0.0..=1.0).contains(&fraction), "{csv}");
        }
        match r[2] {
            "train" => assert!(number(r[6]) > 0.0, "{csv}"),
            _ => assert!(r[6].is_empty(), "{csv}"),
        }
        assert!(r[7].is_empty(), "no perplexity for a classifier: {csv}");
        let wall = number(r[8]);
        assert!(wall >= last_wall, "{csv}");
        last_wall = wall;
    }
    // A train row's accuracy is over its own batch of 8 (24 sentences make 3 full batches).
    for r in rows.iter().filter(|r| r[2] == "train") {
        let correct = number(r[4]) * batch as f64;
        assert!((correct - correct.round()).abs() < 1e-9, "{csv}");
    }
}

#[test]
fn a_piped_finetune_logs_plain_lines_metrics_curves_and_a_confusion_matrix() {
    const TRAIN: usize = 24;
    const DEV: usize = 12;
    const BATCH: usize = 8;
    const EPOCHS: usize = 2;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let train = head(d, "cfimdb-train.txt", TRAIN);
    let dev = head(d, "cfimdb-dev.txt", DEV);
    let run = d.join("run");
    let dev_out = d.join("dev-out.txt");
    // `--progress auto` with stdout and stderr on pipes: the plain lines.
    let out: Output = crate::common::llama_cli()
        .args(["--backend", "ndarray", "--progress", "auto", "finetune"])
        .args([
            "--checkpoint",
            &fixture("models/stories260K/stories260K.pt")
                .display()
                .to_string(),
        ])
        .args(["--train", &train, "--dev", &dev])
        .args([
            "--label-names",
            &fixture("data/cfimdb-label-mapping.json")
                .display()
                .to_string(),
        ])
        .args([
            "--epochs",
            &EPOCHS.to_string(),
            "--batch-size",
            &BATCH.to_string(),
        ])
        .args(["--max-sentence-len", "16", "--log-every", "1"])
        .args(["--dev-out", &dev_out.display().to_string()])
        .args(["--out-dir", &run.display().to_string()])
        .output()
        .unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}{stderr}");

    // Plain lines only: no escape, carriage return or other control character.
    for (name, log) in [("stdout", &stdout), ("stderr", &stderr)] {
        let bad: Vec<char> = log
            .chars()
            .filter(|c| c.is_control() && *c != '\n')
            .collect();
        assert!(bad.is_empty(), "{name} holds {bad:?}:\n{log}");
    }
    assert!(stdout.contains("epoch 2/2"), "{stdout}");

    check_metrics_csv(
        &run.join("metrics.csv"),
        TRAIN.div_ceil(BATCH),
        EPOCHS,
        BATCH,
    );

    // The pictures: whole PNGs of the documented / a readable size, not blank.
    let (size, colours) = decode_png(&run.join("curves.png"));
    assert_eq!(size, CURVES_SIZE);
    assert!(colours > 8, "curves.png has {colours} colours");
    let ((w, h), colours) = decode_png(&run.join("confusion-dev.png"));
    assert!(
        (200..=2000).contains(&w) && (200..=2000).contains(&h),
        "{w}×{h}"
    );
    assert!(colours > 8, "confusion-dev.png has {colours} colours");

    // The printed matrix adds up to the dev set and agrees with the predictions file.
    let truth = first_fields(Path::new(&dev));
    let predicted = first_fields(&dev_out);
    assert_eq!((truth.len(), predicted.len()), (DEV, DEV));
    let matrix = printed_matrix(&stdout, "dev confusion matrix", 2);
    let mut expected = vec![vec![0; 3]; 2];
    for (&t, &p) in truth.iter().zip(&predicted) {
        expected[t][p] += 1;
        expected[t][2] += 1;
    }
    assert_eq!(matrix, expected, "{stdout}");
    assert_eq!(matrix.iter().map(|r| r[2]).sum::<usize>(), DEV);
    // The printed best-epoch accuracy is the matrix's diagonal.
    let diagonal = matrix[0][0] + matrix[1][1];
    let accuracy = format!("dev accuracy {:.3}", diagonal as f64 / DEV as f64);
    assert!(stdout.contains(&accuracy), "{accuracy:?} not in\n{stdout}");
}
