//! `llama-cli check`: the exercise's three checks in one command, printed as the exercise
//! prints them: its `rope_test.py` (`Rotary embedding test passed!`), `optimizer_test.py`
//! (`Optimizer test passed!`) and `sanity_check.py` (`Your Llama implementation is correct!`).

use std::path::PathBuf;

use anyhow::{bail, Result};
use burn::tensor::backend::AutodiffBackend;
use clap::{Args, ValueEnum};
use llama_model::exercise::checks::{optimizer_test, rope_test, CheckOutcome};

use crate::args::data_files::fixture_or;
use crate::commands::sanity::{describe, sanity_check, Tolerance};
use crate::runtime::backend::{BackendKind, Job};

/// One of the exercise's checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CheckKind {
    /// RoPE against the reference query/key outputs (rope_test.py).
    Rope,
    /// 1000 AdamW steps against the reference weights (optimizer_test.py).
    Optimizer,
    /// The model's forward pass against the reference logits and hidden states
    /// (sanity_check.py).
    Sanity,
}

/// The sanity check's reference file (the exercise's model's outputs).
const SANITY_FILE: &str = "sanity-stories42M.safetensors";

/// Arguments of `llama-cli check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Run only these checks (repeat the flag, or separate with commas); default: all three.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<CheckKind>,
    /// RoPE reference (JSON); default: `reference/rope.json` of the fixtures folder
    /// (`LLAMA_FIXTURES`, else ../shared/fixtures).
    #[arg(long)]
    pub rope: Option<PathBuf>,
    /// Optimizer reference (JSON); default: `reference/adamw.json` of the fixtures folder.
    #[arg(long)]
    pub optimizer: Option<PathBuf>,
    /// Sanity reference (safetensors with `input_ids`, logits and hidden states); default:
    /// `sanity-stories42M.safetensors` here, else in the fixtures folder's `reference/`.
    #[arg(long)]
    pub sanity: Option<PathBuf>,
    /// Checkpoint of the sanity check.
    #[arg(
        long,
        alias = "pretrained-model-path",
        alias = "pretrained_model_path",
        default_value = "stories42M.pt"
    )]
    pub checkpoint: PathBuf,
    /// JSON config for a safetensors checkpoint without one beside it.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// Prints each compared output; returns whether all passed.
fn report(outcome: &CheckOutcome) -> bool {
    for output in &outcome.outputs {
        println!(
            "{} (atol {:e}, rtol {:e})",
            describe(&output.name, &output.comparison),
            output.atol,
            output.rtol
        );
    }
    outcome.passed()
}

impl Job for CheckArgs {
    type Output = ();

    fn run<B: AutodiffBackend>(self, device: B::Device, _backend: BackendKind) -> Result<()> {
        let all = [CheckKind::Rope, CheckKind::Optimizer, CheckKind::Sanity];
        let selected: Vec<CheckKind> = all
            .into_iter()
            .filter(|k| self.only.is_empty() || self.only.contains(k))
            .collect();
        // Resolve every file first: a missing one fails before anything runs.
        let rope = selected
            .contains(&CheckKind::Rope)
            .then(|| fixture_or(&self.rope, "reference/rope.json", "--rope"))
            .transpose()?;
        let optimizer = selected
            .contains(&CheckKind::Optimizer)
            .then(|| fixture_or(&self.optimizer, "reference/adamw.json", "--optimizer"))
            .transpose()?;
        let sanity = selected
            .contains(&CheckKind::Sanity)
            .then(|| {
                // The exercise's file in the current folder first, as `sanity` reads it.
                let here = PathBuf::from(SANITY_FILE);
                let given = self.sanity.clone().or(here.is_file().then_some(here));
                fixture_or(&given, &format!("reference/{SANITY_FILE}"), "--sanity")
            })
            .transpose()?;

        let mut failed = vec![];
        if let Some(path) = rope {
            println!("== RoPE ({})", path.display());
            if report(&rope_test::<B::InnerBackend>(&path, &device)?) {
                println!("Rotary embedding test passed!");
            } else {
                failed.push("RoPE");
            }
        }
        if let Some(path) = optimizer {
            println!("== optimizer ({})", path.display());
            if report(&optimizer_test::<B>(&path, &device)?) {
                println!("Optimizer test passed!");
            } else {
                failed.push("optimizer");
            }
        }
        if let Some(path) = sanity {
            println!(
                "== sanity ({} against {})",
                self.checkpoint.display(),
                path.display()
            );
            // sanity_check.py's tolerance.
            let tolerance = Tolerance {
                atol: 1e-5,
                rtol: 1e-3,
            };
            let config = self.config.as_deref();
            if !sanity_check::<B::InnerBackend>(
                &self.checkpoint,
                config,
                &path,
                tolerance,
                &device,
            )? {
                failed.push("sanity");
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            bail!("failed: {}", failed.join(", "))
        }
    }
}
