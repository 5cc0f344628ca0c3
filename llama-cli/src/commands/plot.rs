//! `llama-cli plot RUN_DIR [--out F.png|F.svg]`: redraw a training run's curves from its
//! `metrics.csv`, for an old run or in another format.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use llama_train::report::canvas::ImageFormat;
use llama_train::report::curves::{save_curves, CURVES_FILE};
use llama_train::report::metrics_log::{read_metrics, METRICS_FILE};

use crate::runtime::output::check_writable;

/// Arguments of `llama-cli plot`.
#[derive(Debug, Args)]
pub struct PlotArgs {
    /// Folder of a training run (`finetune --out-dir`), holding its metrics.csv.
    pub run_dir: PathBuf,
    /// Picture to write, PNG or SVG by its extension [default: RUN_DIR/curves.png].
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Draw the curves; no model or backend is involved.
pub fn run(args: &PlotArgs) -> Result<()> {
    let table = args.run_dir.join(METRICS_FILE);
    if !table.is_file() {
        bail!(
            "{}: no {METRICS_FILE} here; pass the folder of a training run (finetune --out-dir)",
            args.run_dir.display()
        );
    }
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| args.run_dir.join(CURVES_FILE));
    ImageFormat::from_path(&out)?;
    check_writable(&out)?;
    let rows = read_metrics(&table)?;
    save_curves(&rows, &out)?;
    println!(
        "wrote {} from the {} rows of {}",
        out.display(),
        rows.len(),
        table.display()
    );
    Ok(())
}
