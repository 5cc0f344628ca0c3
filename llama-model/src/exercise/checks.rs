//! The exercise's own checks of its hand-written parts, run against reference files: its
//! `rope_test.py` (RoPE on fixed query/key tensors) and `optimizer_test.py` (1000 AdamW steps
//! on a 2×3 least-squares problem). `llama-cli check` runs them and prints the exercise's
//! success lines; the unit tests below run them on `shared/fixtures/reference/`.
//!
//! The reference files are the portable JSON forms in `shared/fixtures/reference/`
//! (`rope.json`, `adamw.json`): the exercise's `.data`/`.npy` files converted, with their
//! provenance in each file's `description`.

use std::path::{Path, PathBuf};

use burn::module::{Module, Param};
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use serde_json::Value;

use crate::exercise::compare::{compare, Comparison};
use crate::model::rope::RotaryEmbeddingConfig;
use crate::train::adamw::{AdamWConfig, AdamWError};

/// Why a check could not run (not: why it failed). Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The reference file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not JSON.
    #[error("{path} is not a JSON reference file: {source}")]
    Json {
        /// The reference file.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// A field is missing or has the wrong form.
    #[error("{path}: {problem}")]
    Format {
        /// The reference file.
        path: PathBuf,
        /// What is wrong, naming the field.
        problem: String,
    },
    /// The file's hyperparameters are not valid for AdamW.
    #[error("{path}: {source}")]
    Hyperparameters {
        /// The reference file.
        path: PathBuf,
        /// The optimizer's complaint.
        #[source]
        source: AdamWError,
    },
}

/// One compared output of a check, with its tolerance.
#[derive(Debug, Clone)]
pub struct CheckedOutput {
    /// What was compared, e.g. `assignment_test: query`.
    pub name: String,
    /// Absolute tolerance used.
    pub atol: f64,
    /// Relative tolerance used.
    pub rtol: f64,
    /// The comparison.
    pub comparison: Comparison,
}

/// The outcome of a check: every compared output.
#[derive(Debug, Clone, Default)]
pub struct CheckOutcome {
    /// The compared outputs, in order.
    pub outputs: Vec<CheckedOutput>,
}

impl CheckOutcome {
    /// Whether every output is within its tolerance (and there was at least one).
    pub fn passed(&self) -> bool {
        !self.outputs.is_empty() && self.outputs.iter().all(|o| o.comparison.passed())
    }
}

/// A JSON reference file and the helpers that read its fields with errors naming them.
struct Reference {
    path: PathBuf,
    json: Value,
}

impl Reference {
    fn read(path: &Path) -> Result<Self, CheckError> {
        let text = std::fs::read_to_string(path).map_err(|source| CheckError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let json = serde_json::from_str(&text).map_err(|source| CheckError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            json,
        })
    }

    fn problem(&self, problem: String) -> CheckError {
        CheckError::Format {
            path: self.path.clone(),
            problem,
        }
    }

    /// The value at `pointer` (JSON pointer, e.g. `/hyperparameters/lr`).
    fn at(&self, pointer: &str) -> Result<&Value, CheckError> {
        self.json
            .pointer(pointer)
            .ok_or_else(|| self.problem(format!("no field `{pointer}`")))
    }

    fn number(&self, pointer: &str) -> Result<f64, CheckError> {
        self.at(pointer)?
            .as_f64()
            .ok_or_else(|| self.problem(format!("`{pointer}` is not a number")))
    }

    /// A nested array of numbers: its values in row-major order and its shape.
    fn array(&self, pointer: &str) -> Result<(Vec<f32>, Vec<usize>), CheckError> {
        fn walk(v: &Value, depth: usize, shape: &mut Vec<usize>, out: &mut Vec<f32>) -> bool {
            match v {
                Value::Number(n) => {
                    depth == shape.len()
                        && n.as_f64().is_some_and(|x| {
                            out.push(x as f32);
                            true
                        })
                }
                Value::Array(items) => {
                    if depth == shape.len() {
                        shape.push(items.len());
                    } else if shape.get(depth) != Some(&items.len()) {
                        return false; // ragged
                    }
                    items.iter().all(|item| walk(item, depth + 1, shape, out))
                }
                _ => false,
            }
        }
        let (mut shape, mut values) = (vec![], vec![]);
        let walked = walk(self.at(pointer)?, 0, &mut shape, &mut values);
        if walked && values.len() == shape.iter().product::<usize>() {
            Ok((values, shape))
        } else {
            Err(self.problem(format!("`{pointer}` is not a rectangular array of numbers")))
        }
    }

    fn matrix(&self, pointer: &str) -> Result<(Vec<f32>, [usize; 2]), CheckError> {
        match self.array(pointer)? {
            (values, shape) if shape.len() == 2 => Ok((values, [shape[0], shape[1]])),
            (_, shape) => Err(self.problem(format!(
                "`{pointer}` has shape {shape:?}, expected a matrix"
            ))),
        }
    }
}

/// The exercise's `rope_test.py`: RoPE applied to the reference query and key, compared
/// with the expected outputs.
///
/// Runs the file's `assignment_test` case (the exercise's own data, at `torch.allclose`'s
/// default tolerances atol 1e-8 / rtol 1e-5, as `rope_test.py` uses) and, if present, its
/// `random_case` (atol 1e-6 / rtol 1e-5). Each case holds `head_dim`, `max_seq_len`,
/// `theta`, `query`/`key` `[batch, seq, heads, head_dim]` and `expected_query_out` /
/// `expected_key_out` of the same shapes.
pub fn rope_test<B: Backend>(path: &Path, device: &B::Device) -> Result<CheckOutcome, CheckError> {
    let reference = Reference::read(path)?;
    let mut outcome = CheckOutcome::default();
    for (case, atol, rtol) in [("assignment_test", 1e-8, 1e-5), ("random_case", 1e-6, 1e-5)] {
        if case != "assignment_test" && reference.json.get(case).is_none() {
            continue;
        }
        let dim = |field: &str| -> Result<usize, CheckError> {
            let value = reference.number(&format!("/{case}/{field}"))?;
            if value >= 1.0 && value.fract() == 0.0 {
                Ok(value as usize)
            } else {
                Err(reference.problem(format!("`/{case}/{field}` is not a positive integer")))
            }
        };
        let head_dim = dim("head_dim")?;
        if head_dim % 2 != 0 {
            return Err(reference.problem(format!("`/{case}/head_dim` {head_dim} is odd")));
        }
        let rope = RotaryEmbeddingConfig::new(head_dim, dim("max_seq_len")?)
            .with_theta(reference.number(&format!("/{case}/theta"))?)
            .init::<B>(device);
        for (input, expected) in [("query", "expected_query_out"), ("key", "expected_key_out")] {
            let (values, shape) = reference.array(&format!("/{case}/{input}"))?;
            let (expected, expected_shape) = reference.array(&format!("/{case}/{expected}"))?;
            let shape: [usize; 4] = match shape[..] {
                [b, s, h, d] if d == head_dim && shape == expected_shape => [b, s, h, d],
                _ => {
                    return Err(reference.problem(format!(
                        "`/{case}/{input}` has shape {shape:?} and its expected output \
                         {expected_shape:?}; expected equal 4-D shapes ending in head_dim \
                         {head_dim}"
                    )))
                }
            };
            let out = rope.apply(Tensor::from_data(TensorData::new(values, shape), device), 0);
            let actual = out
                .into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .map_err(|e| reference.problem(format!("reading RoPE output: {e:?}")))?;
            outcome.outputs.push(CheckedOutput {
                name: format!("{case}: {input}"),
                atol,
                rtol,
                comparison: compare(&actual, &expected, atol, rtol),
            });
        }
    }
    Ok(outcome)
}

/// The model of the exercise's optimizer test: a bare weight matrix `W` `[rows, cols]`,
/// predicting `y_hat = W x` for a column `x` `[cols, 1]`.
#[derive(Module, Debug)]
pub struct WeightMatrix<B: Backend> {
    weight: Param<Tensor<B, 2>>,
}

impl<B: Backend> WeightMatrix<B> {
    /// `W` from row-major `values` of shape `shape`.
    pub fn new(values: Vec<f32>, shape: [usize; 2], device: &B::Device) -> Self {
        Self {
            weight: Param::from_tensor(Tensor::from_data(TensorData::new(values, shape), device)),
        }
    }

    /// `W` `[rows, cols]`.
    pub fn weight(&self) -> Tensor<B, 2> {
        self.weight.val()
    }

    /// `W`'s values, row-major.
    pub fn values(&self) -> Vec<f32> {
        self.weight
            .val()
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .unwrap_or_default()
    }
}

/// The trajectory of [`optimizer_run`]: `W` after every step, row-major.
pub type Trajectory = Vec<Vec<f32>>;

/// The exercise's `optimizer_test.py`: from `initial_weight`, for each of the file's `inputs`
/// `x`, the target is `[x0 + x1, -x2]`, the loss `sum((y - W x)^2)`, and one step of the
/// exercise's AdamW with the file's `hyperparameters` follows. Returns `W` after each step.
pub fn optimizer_run<B: AutodiffBackend>(
    path: &Path,
    device: &B::Device,
) -> Result<Trajectory, CheckError> {
    run_optimizer::<B>(&Reference::read(path)?, device)
}

/// [`optimizer_run`] on a file already read.
fn run_optimizer<B: AutodiffBackend>(
    reference: &Reference,
    device: &B::Device,
) -> Result<Trajectory, CheckError> {
    let hp = |name: &str| reference.number(&format!("/hyperparameters/{name}"));
    let correct_bias = reference
        .at("/hyperparameters/correct_bias")?
        .as_bool()
        .ok_or_else(|| {
            reference.problem("`/hyperparameters/correct_bias` is not a boolean".into())
        })?;
    let config = AdamWConfig::new()
        .with_beta_1(hp("betas/0")?)
        .with_beta_2(hp("betas/1")?)
        .with_epsilon(hp("eps")?)
        .with_weight_decay(hp("weight_decay")?)
        .with_correct_bias(correct_bias);
    let lr = hp("lr")?;
    let (initial, shape) = reference.matrix("/initial_weight")?;
    let (inputs, input_shape) = reference.matrix("/inputs")?;
    if shape != [2, 3] || input_shape[1] != 3 {
        return Err(reference.problem(format!(
            "`/initial_weight` is {shape:?} and `/inputs` {input_shape:?}; the test needs \
             [2, 3] and [steps, 3]"
        )));
    }
    let mut optim =
        config
            .init::<B, WeightMatrix<B>>()
            .map_err(|source| CheckError::Hyperparameters {
                path: reference.path.clone(),
                source,
            })?;
    let mut model = WeightMatrix::<B>::new(initial, shape, device);
    let mut trajectory = Vec::with_capacity(input_shape[0]);
    for x in inputs.chunks_exact(3) {
        let target = vec![x[0] + x[1], -x[2]];
        let x = Tensor::<B, 2>::from_data(TensorData::new(x.to_vec(), [3, 1]), device);
        let y = Tensor::<B, 2>::from_data(TensorData::new(target, [2, 1]), device);
        let loss = (y - model.weight().matmul(x)).powi_scalar(2).sum();
        let grads = GradientsParams::from_grads::<B, _>(loss.backward(), &model);
        model = optim.step(lr, model, grads);
        trajectory.push(model.values());
    }
    Ok(trajectory)
}

/// [`optimizer_run`], its final `W` compared with the file's `expected_final_weight` at
/// `optimizer_test.py`'s tolerances (atol 1e-5, rtol 1e-3).
pub fn optimizer_test<B: AutodiffBackend>(
    path: &Path,
    device: &B::Device,
) -> Result<CheckOutcome, CheckError> {
    let reference = Reference::read(path)?;
    let trajectory = run_optimizer::<B>(&reference, device)?;
    let (expected, _) = reference.matrix("/expected_final_weight")?;
    let actual = trajectory.last().cloned().unwrap_or_default();
    let (atol, rtol) = (1e-5, 1e-3);
    Ok(CheckOutcome {
        outputs: vec![CheckedOutput {
            name: format!("weight after {} steps", trajectory.len()),
            atol,
            rtol,
            comparison: compare(&actual, &expected, atol, rtol),
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::fixture;
    use burn::backend::{Autodiff, NdArray};

    #[test]
    fn the_exercise_rope_test_passes() {
        let outcome = rope_test::<NdArray>(&fixture("reference/rope.json"), &Default::default())
            .expect("readable reference");
        assert_eq!(outcome.outputs.len(), 4, "two cases, query and key each");
        for o in &outcome.outputs {
            println!("{}: max |diff| {:e}", o.name, o.comparison.max_abs_diff);
        }
        assert!(outcome.passed(), "{outcome:?}");
    }

    #[test]
    fn the_exercise_optimizer_test_passes_and_follows_the_reference_trajectory() {
        let path = fixture("reference/adamw.json");
        let outcome =
            optimizer_test::<Autodiff<NdArray>>(&path, &Default::default()).expect("reference");
        assert!(outcome.passed(), "{outcome:?}");

        // The reference implementation runs the same float32 algorithm, so its trajectory is
        // matched far more tightly than the exercise's tolerance.
        let trajectory =
            optimizer_run::<Autodiff<NdArray>>(&path, &Default::default()).expect("reference");
        assert_eq!(trajectory.len(), 1000);
        let reference = Reference::read(&path).unwrap();
        let steps = reference.json["reference_impl_weight_after_steps"]
            .as_object()
            .expect("checkpoints");
        assert!(!steps.is_empty());
        for step in steps.keys() {
            let n: usize = step.parse().unwrap();
            let (expected, _) = reference
                .matrix(&format!("/reference_impl_weight_after_steps/{step}"))
                .unwrap();
            let c = compare(&trajectory[n - 1], &expected, 1e-6, 0.0);
            assert!(c.passed(), "step {n}: {c:?}");
        }
        let (expected, _) = reference.matrix("/reference_impl_final_weight").unwrap();
        let c = compare(&trajectory[999], &expected, 1e-6, 0.0);
        println!("final W vs reference impl: max |diff| {:e}", c.max_abs_diff);
        assert!(c.passed(), "{c:?}");
    }

    #[test]
    fn a_broken_reference_is_an_error_naming_the_file_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rope.json");
        std::fs::write(&path, r#"{"assignment_test": {"head_dim": 4}}"#).unwrap();
        let err = rope_test::<NdArray>(&path, &Default::default()).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("rope.json"), "{message}");
        assert!(
            message.contains("/assignment_test/max_seq_len"),
            "{message}"
        );

        std::fs::write(&path, "not json").unwrap();
        assert!(matches!(
            rope_test::<NdArray>(&path, &Default::default()),
            Err(CheckError::Json { .. })
        ));
        let ragged = r#"{"hyperparameters": {"lr": 0.001, "betas": [0.9, 0.999], "eps": 1e-6,
            "weight_decay": 0.0, "correct_bias": true},
            "initial_weight": [[1, 2, 3], [4, 5]], "inputs": [[1, 2, 3]]}"#;
        std::fs::write(&path, ragged).unwrap();
        let err = optimizer_run::<Autodiff<NdArray>>(&path, &Default::default()).unwrap_err();
        assert!(err.to_string().contains("/initial_weight"), "{err}");
    }
}
