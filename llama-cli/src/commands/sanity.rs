//! `llama-cli sanity`: the exercise's sanity check. Runs the forward pass on the reference
//! file's `input_ids` and compares the last-position logits and the hidden states.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use clap::Args;
use llama_model::exercise::compare::{compare, Comparison};
use llama_model::{load_checkpoint, LoadOptions};
use safetensors::{Dtype, SafeTensors};

use crate::runtime::backend::{BackendKind, Job};

/// Arguments of `llama-cli sanity`.
#[derive(Debug, Args)]
pub struct SanityArgs {
    /// Model checkpoint (.pt, .bin or .safetensors).
    #[arg(long, default_value = "stories42M.pt")]
    pub checkpoint: PathBuf,
    /// Reference outputs: safetensors with `input_ids`, `logits` (last position) and
    /// `hidden_states` (the forward fixtures' `last_logits`/`final_hidden` are read too).
    #[arg(long, default_value = "sanity-stories42M.safetensors")]
    pub reference: PathBuf,
    /// JSON config for a safetensors checkpoint without one beside it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Absolute tolerance.
    #[arg(long, default_value_t = 1e-5)]
    pub atol: f64,
    /// Relative tolerance.
    #[arg(long, default_value_t = 1e-3)]
    pub rtol: f64,
}

struct Reference {
    ids: Vec<i64>,
    ids_shape: [usize; 2],
    logits: (String, Vec<f32>),
    hidden: (String, Vec<f32>),
}

fn read_reference(path: &Path) -> Result<Reference> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file = SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{} is not a safetensors file", path.display()))?;
    // -> (name, shape, values)
    let floats = |names: &[&str]| -> Result<(String, Vec<usize>, Vec<f32>)> {
        for name in names {
            if let Ok(view) = file.tensor(name) {
                if view.dtype() != Dtype::F32 {
                    bail!(
                        "{}: `{name}` is {:?}, expected F32",
                        path.display(),
                        view.dtype()
                    );
                }
                let values = view
                    .data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                return Ok((name.to_string(), view.shape().to_vec(), values));
            }
        }
        bail!("{}: no tensor named {}", path.display(), names.join(" or "))
    };
    let ids = file
        .tensor("input_ids")
        .with_context(|| format!("{}: no `input_ids` tensor", path.display()))?;
    let ids_shape: [usize; 2] = ids.shape().try_into().map_err(|_| {
        anyhow::anyhow!(
            "{}: `input_ids` must be 2-D, is {:?}",
            path.display(),
            ids.shape()
        )
    })?;
    let ids: Vec<i64> = match ids.dtype() {
        Dtype::I64 => ids
            .data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap_or_default()))
            .collect(),
        Dtype::I32 => ids
            .data()
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().unwrap_or_default()) as i64)
            .collect(),
        other => bail!("{}: `input_ids` is {other:?}, expected I64", path.display()),
    };
    // The exercise's file holds last-position logits `[b, 1, V]`; full `[b, s, V]` logits
    // (as in the forward fixtures) are cut to their last position.
    let (name, shape, values) = floats(&["last_logits", "logits"])?;
    let logits = match shape[..] {
        [b, s, v] if s > 1 && b * s * v == values.len() => values
            .chunks_exact(s * v)
            .flat_map(|row| row[(s - 1) * v..].to_vec())
            .collect(),
        _ => values,
    };
    let (hidden_name, _, hidden) = floats(&["hidden_states", "final_hidden"])?;
    Ok(Reference {
        ids,
        ids_shape,
        logits: (name, logits),
        hidden: (hidden_name, hidden),
    })
}

/// One line on a compared output: how many values are out of tolerance and the largest
/// difference.
pub fn describe(name: &str, c: &Comparison) -> String {
    let mut line = format!(
        "{name}: {} of {} values outside tolerance, largest |difference| {:.3e} at index {}",
        c.violations, c.len, c.max_abs_diff, c.max_abs_index
    );
    if let Some(i) = c.worst_violation {
        line.push_str(&format!(", worst relative to its tolerance at index {i}"));
    }
    line
}

impl Job for SanityArgs {
    type Output = ();

    fn run<B: AutodiffBackend>(self, device: B::Device, _backend: BackendKind) -> Result<()> {
        let tolerance = Tolerance {
            atol: self.atol,
            rtol: self.rtol,
        };
        if sanity_check::<B::InnerBackend>(
            &self.checkpoint,
            self.config.as_deref(),
            &self.reference,
            tolerance,
            &device,
        )? {
            Ok(())
        } else {
            bail!(
                "the outputs differ from {} beyond atol {} / rtol {}",
                self.reference.display(),
                self.atol,
                self.rtol
            )
        }
    }
}

/// The tolerance of the sanity check: `|actual - expected| <= atol + rtol * |expected|`.
#[derive(Debug, Clone, Copy)]
pub struct Tolerance {
    /// Absolute part.
    pub atol: f64,
    /// Relative part.
    pub rtol: f64,
}

/// The exercise's sanity check: the forward pass of `checkpoint` on the reference's
/// `input_ids`, its last-position logits and hidden states compared with the reference's.
/// Prints one line per output and, when both pass, the exercise's
/// `Your Llama implementation is correct!`; returns whether they passed.
pub fn sanity_check<B: Backend>(
    checkpoint: &Path,
    config: Option<&Path>,
    reference_path: &Path,
    tolerance: Tolerance,
    device: &B::Device,
) -> Result<bool> {
    if !checkpoint.exists() {
        bail!(crate::args::model::missing_checkpoint_help(checkpoint));
    }
    let options = LoadOptions {
        config: config.map(Path::to_path_buf),
    };
    let loaded = load_checkpoint::<B>(checkpoint, &options, device)?;
    let reference = read_reference(reference_path)?;
    let vocab = loaded.config.vocab_size as i64;
    if let Some(bad) = reference.ids.iter().find(|&&id| id < 0 || id >= vocab) {
        bail!(
            "{}: token id {bad} is outside the model's vocabulary of {vocab}",
            reference_path.display()
        );
    }
    let tokens = Tensor::<B, 2, Int>::from_data(
        TensorData::new(reference.ids.clone(), reference.ids_shape),
        device,
    );
    let out = loaded.model.forward_last(tokens);
    let to_vec = |t: Tensor<B, 3>| -> Result<Vec<f32>> {
        t.into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("reading model output: {e:?}"))
    };
    let Tolerance { atol, rtol } = tolerance;
    let logits = compare(&to_vec(out.logits)?, &reference.logits.1, atol, rtol);
    let hidden = compare(&to_vec(out.hidden)?, &reference.hidden.1, atol, rtol);
    println!("{}", describe(&reference.logits.0, &logits));
    println!("{}", describe(&reference.hidden.0, &hidden));
    let passed = logits.passed() && hidden.passed();
    if passed {
        println!("Your Llama implementation is correct!");
    }
    Ok(passed)
}
