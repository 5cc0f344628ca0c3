//! The report of a bench run: one row per figure, printed as a table and written as JSON
//! from the same rows, with the run's setting in the header.

use burn::module::Module;
use serde::Serialize;

use super::system::cpu_model;
use super::{BenchArgs, Model};
use crate::args::weight_dtype::WeightDtype;
use crate::runtime::backend::BackendKind;
use crate::runtime::output::write_atomic;

/// One figure of the table and of the JSON report: both are printed from the same rows.
pub(super) struct Row {
    /// `load`, `generate`, `prompt` or `train`.
    pub(super) phase: &'static str,
    /// What the table calls it.
    pub(super) label: String,
    /// Its key in the JSON report.
    pub(super) key: &'static str,
    pub(super) value: Option<f64>,
    /// Decimals in the table.
    pub(super) digits: usize,
}

/// The JSON report (`--json`): the run's setting, then every [`Row`] by key.
#[derive(Serialize)]
pub(super) struct Report<'a> {
    source: &'a str,
    backend: &'static str,
    threads: usize,
    decode_split: usize,
    huge_pages: bool,
    /// jemalloc's delay before freed pages go back to the kernel (-1: kept; see
    /// `allocator::freed_page_decay_ms`).
    freed_page_decay_ms: Option<isize>,
    weight_dtype: &'static str,
    machine: String,
    cores: usize,
    runs: u64,
    /// The largest peak RSS of the phases run.
    peak_rss_mb: Option<f64>,
    #[serde(flatten)]
    figures: std::collections::BTreeMap<&'static str, Option<f64>>,
}

/// Whether the table shows a phase's rows (`--only`).
pub(super) fn wants_row(args: &BenchArgs, phase: &str) -> bool {
    match args.only {
        None => true,
        Some(only) => phase == "load" || phase == only.name(),
    }
}

#[derive(Default)]
pub(super) struct Figures {
    pub(super) prefill_tokens_per_s: Option<f64>,
    pub(super) decode_tokens_per_s: Option<f64>,
    pub(super) time_to_first_token_s: Option<f64>,
    pub(super) generate_peak_rss_mb: Option<f64>,
    pub(super) prompt_sentences_per_s: Option<f64>,
    pub(super) prompt_peak_rss_mb: Option<f64>,
    pub(super) train_step_seconds: Option<f64>,
    pub(super) train_sentences_per_s: Option<f64>,
    pub(super) train_peak_rss_mb: Option<f64>,
}

impl Figures {
    /// Every figure as a row, in table order.
    fn rows(
        &self,
        args: &BenchArgs,
        load_seconds: f64,
        load_rss: Option<f64>,
        weight_bytes: f64,
    ) -> Vec<Row> {
        let row = |phase, label: String, key, value, digits| Row {
            phase,
            label,
            key,
            value,
            digits,
        };
        vec![
            row(
                "load",
                "seconds".into(),
                "load_seconds",
                Some(load_seconds),
                3,
            ),
            row(
                "load",
                "peak RSS MiB".into(),
                "load_peak_rss_mb",
                load_rss,
                0,
            ),
            row(
                "generate",
                format!("prefill tokens/s ({}-token prompt)", args.prompt_tokens),
                "prefill_tokens_per_s",
                self.prefill_tokens_per_s,
                1,
            ),
            row(
                "generate",
                format!("decode tokens/s ({} new, first excluded)", args.new_tokens),
                "decode_tokens_per_s",
                self.decode_tokens_per_s,
                1,
            ),
            row(
                "generate",
                format!(
                    "weights streamed GB/s (decode x {:.0} MB)",
                    weight_bytes / 1e6
                ),
                "decode_weight_gb_per_s",
                self.decode_tokens_per_s.map(|t| t * weight_bytes / 1e9),
                1,
            ),
            row(
                "generate",
                "time to first token s".into(),
                "time_to_first_token_s",
                self.time_to_first_token_s,
                4,
            ),
            row(
                "generate",
                "peak RSS MiB".into(),
                "generate_peak_rss_mb",
                self.generate_peak_rss_mb,
                0,
            ),
            row(
                "prompt",
                format!("sentences/s (batch {})", args.prompt_batch),
                "prompt_sentences_per_s",
                self.prompt_sentences_per_s,
                1,
            ),
            row(
                "prompt",
                "peak RSS MiB".into(),
                "prompt_peak_rss_mb",
                self.prompt_peak_rss_mb,
                0,
            ),
            row(
                "train",
                format!("seconds/step (batch {})", args.train_batch),
                "train_step_seconds",
                self.train_step_seconds,
                3,
            ),
            row(
                "train",
                "sentences/s".into(),
                "train_sentences_per_s",
                self.train_sentences_per_s,
                1,
            ),
            row(
                "train",
                "peak RSS MiB".into(),
                "train_peak_rss_mb",
                self.train_peak_rss_mb,
                0,
            ),
        ]
    }
}

/// The loaded weights' bytes, and the loading peak as a multiple of them.
fn held_rows(load_rss: Option<f64>, held_mb: Option<f64>) -> [Row; 2] {
    [
        Row {
            phase: "load",
            label: "weights held MiB".into(),
            key: "weights_held_mb",
            value: held_mb,
            digits: 0,
        },
        Row {
            phase: "load",
            label: "peak RSS / weights held".into(),
            key: "load_peak_over_weights",
            value: load_rss.zip(held_mb).map(|(peak, held)| peak / held),
            digits: 3,
        },
    ]
}

pub(super) fn fmt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
}

/// How the bench ran: the header of the table and of the JSON report.
pub(super) struct Setting<'a> {
    pub(super) backend: BackendKind,
    pub(super) threads: usize,
    pub(super) split: usize,
    pub(super) huge_pages: bool,
    pub(super) decay: Option<isize>,
    pub(super) dtype: WeightDtype,
    pub(super) weights: &'a str,
    /// The decoding weights' int8 group, if they are int8.
    pub(super) group: Option<usize>,
    /// Peak resident memory after loading, in MiB.
    pub(super) load_rss: Option<f64>,
    /// The bytes of the weights held in MiB (`--only generate`: the decoding weights).
    pub(super) held_mb: Option<f64>,
}

/// Prints the table (the rows `--only` asks for) and writes the JSON report (`--json`).
pub(super) fn print_report<B: burn::tensor::backend::Backend>(
    args: &BenchArgs,
    model: &Model<B>,
    f: &Figures,
    setting: &Setting<'_>,
) -> anyhow::Result<()> {
    let Setting {
        backend,
        threads,
        split,
        huge_pages,
        decay,
        dtype,
        weights,
        group,
        load_rss,
        held_mb,
    } = *setting;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    // A decoded token reads every weight once (norms are f32 either way, a rounding error).
    let group = group.unwrap_or_else(|| model.llama.q8_group_size());
    let weight_bytes = model.llama.num_params() as f64 * dtype.bytes(group);
    let mut rows = f.rows(args, model.load_seconds, load_rss, weight_bytes);
    rows.splice(2..2, held_rows(load_rss, held_mb));
    println!("llama-cli bench: {}", model.source);
    println!(
            "machine: {} ({cores} cores); backend {backend}; {threads} threads; decode split {split}; huge pages {}; freed pages {}; decode weights {}; median of {} runs after a warm-up",
            cpu_model(),
            if huge_pages { "advised" } else { "off" },
            match decay {
                Some(-1) => "kept".to_string(),
                Some(ms) => format!("returned after {ms} ms"),
                None => "system allocator's".to_string(),
            },
            weights,
            args.runs
        );
    println!("| phase | figure | value |");
    println!("|---|---|---|");
    for row in rows.iter().filter(|r| wants_row(args, r.phase)) {
        println!(
            "| {} | {} | {} |",
            row.phase,
            row.label,
            fmt(row.value, row.digits)
        );
    }

    if let Some(path) = &args.json {
        let peak = rows
            .iter()
            .filter(|r| r.key.ends_with("peak_rss_mb"))
            .filter_map(|r| r.value)
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
        let report = Report {
            source: &model.source,
            backend: backend.name(),
            threads,
            decode_split: split,
            huge_pages,
            freed_page_decay_ms: decay,
            weight_dtype: dtype.name(),
            machine: cpu_model(),
            cores,
            runs: args.runs,
            peak_rss_mb: peak,
            figures: rows.iter().map(|r| (r.key, r.value)).collect(),
        };
        write_atomic(path, serde_json::to_string_pretty(&report)?.as_bytes())?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
