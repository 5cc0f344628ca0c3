//! Model hyper-parameters: [`LlamaConfig`], read from a `.pt`'s `model_args`, a llama2.c
//! `.bin` header, or JSON (our presets in `configs/`, or a `{"model_args": …}` file as the
//! fixtures' `stories260K.config.json`).

use std::path::{Path, PathBuf};

use burn::config::Config;
use serde::Deserialize;

use super::rope_scaling::{FrequencyPrecision, RopeScaling};

/// Why a configuration could not be read or is not usable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a JSON Llama config.
    #[error("{path} is not a Llama config: {detail}")]
    Parse { path: PathBuf, detail: String },
    /// A value is missing or out of range.
    #[error("invalid Llama config: {0}")]
    Invalid(String),
}

/// Largest vocabulary a config may name (2^20; Llama 2 has 32000, Llama 3 128256).
pub const MAX_VOCAB_SIZE: usize = 1 << 20;
/// Largest model width (2^16; Llama 2 70B is 8192).
pub const MAX_DIM: usize = 1 << 16;
/// Largest feed-forward width (4 × [`MAX_DIM`]; Llama 2 70B is 28672).
pub const MAX_HIDDEN_DIM: usize = 1 << 18;
/// Most layers (1024; Llama 2 70B has 80).
pub const MAX_LAYERS: usize = 1024;
/// Longest context (2^21 positions). The bound can stay loose because nothing is sized by
/// it up front: the RoPE tables and the KV cache grow with the positions in use.
pub const MAX_SEQ_LEN: usize = 1 << 21;

/// Hyper-parameters of a Llama 2 model, with the names of the exercise's `model_args`.
#[derive(Config, Debug, PartialEq)]
pub struct LlamaConfig {
    /// Model width (embedding size).
    pub dim: usize,
    /// Number of transformer layers.
    pub n_layers: usize,
    /// Number of query heads.
    pub n_heads: usize,
    /// Number of key/value heads (grouped-query attention); `None` means `n_heads`.
    #[config(default = "None")]
    pub n_kv_heads: Option<usize>,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Feed-forward width; `None` derives it from `dim` and `multiple_of` (see [`Self::hidden_dim`]).
    #[config(default = "None")]
    pub hidden_dim: Option<usize>,
    /// The feed-forward width is rounded up to a multiple of this.
    #[config(default = 32)]
    pub multiple_of: usize,
    /// Context length the model was trained for.
    #[config(default = 2048)]
    pub max_seq_len: usize,
    /// RMSNorm epsilon.
    #[config(default = 1e-5)]
    pub norm_eps: f64,
    /// Dropout probability (embeddings, attention, residual and feed-forward).
    #[config(default = 0.0)]
    pub dropout: f64,
    /// RoPE base frequency.
    #[config(default = 10000.0)]
    pub rope_theta: f64,
    /// RoPE frequency scaling (Llama 3.x's `llama3`, or `linear`); `None` for none.
    #[config(default = "None")]
    pub rope_scaling: Option<RopeScaling>,
    /// Precision the RoPE inverse frequencies are rounded to (a Hugging Face model stored in
    /// bf16/f16, as `transformers` runs it cast to that dtype); `None` keeps f32.
    #[config(default = "None")]
    pub rope_frequency_precision: Option<FrequencyPrecision>,
    /// Whether the output projection shares the token-embedding matrix.
    #[config(default = true)]
    pub tie_embeddings: bool,
}

/// The `model_args` dict as checkpoints write it: every field optional, unknown keys ignored
/// (llama2.c's train.py writes no `hidden_dim`, the exercise's checkpoints no `norm_eps`).
#[derive(Debug, Default, Deserialize)]
pub struct ModelArgs {
    pub dim: Option<usize>,
    pub n_layers: Option<usize>,
    pub n_heads: Option<usize>,
    pub n_kv_heads: Option<usize>,
    pub vocab_size: Option<usize>,
    pub hidden_dim: Option<usize>,
    pub multiple_of: Option<usize>,
    pub max_seq_len: Option<usize>,
    pub norm_eps: Option<f64>,
    pub dropout: Option<f64>,
    pub rope_theta: Option<f64>,
    pub rope_scaling: Option<RopeScaling>,
    pub rope_frequency_precision: Option<FrequencyPrecision>,
}

impl ModelArgs {
    /// Turn checkpoint arguments into a validated config; missing optional values take
    /// the exercise's defaults, and `hidden_dim` is derived with the checkpoint's own
    /// `multiple_of` when absent.
    pub fn into_config(self) -> Result<LlamaConfig, ConfigError> {
        let need = |v: Option<usize>, name: &str| {
            v.ok_or_else(|| ConfigError::Invalid(format!("`{name}` is missing")))
        };
        let mut config = LlamaConfig::new(
            need(self.dim, "dim")?,
            need(self.n_layers, "n_layers")?,
            need(self.n_heads, "n_heads")?,
            need(self.vocab_size, "vocab_size")?,
        )
        .with_n_kv_heads(self.n_kv_heads)
        .with_hidden_dim(self.hidden_dim);
        if let Some(v) = self.multiple_of {
            config.multiple_of = v;
        }
        if let Some(v) = self.max_seq_len {
            config.max_seq_len = v;
        }
        if let Some(v) = self.norm_eps {
            config.norm_eps = v;
        }
        if let Some(v) = self.dropout {
            config.dropout = v;
        }
        if let Some(v) = self.rope_theta {
            config.rope_theta = v;
        }
        config.rope_scaling = self.rope_scaling;
        config.rope_frequency_precision = self.rope_frequency_precision;
        config.validate()?;
        Ok(config)
    }
}

/// A JSON config file: either a flat [`LlamaConfig`]/`model_args` object, or the fixtures'
/// form `{"model_args": {...}, "layer_norm_eps": …, "rope_theta": …, "tie_word_embeddings": …}`.
#[derive(Deserialize)]
struct WrappedConfig {
    model_args: ModelArgs,
    layer_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    tie_word_embeddings: Option<bool>,
}

#[derive(Deserialize)]
struct FlatConfig {
    #[serde(flatten)]
    args: ModelArgs,
    tie_embeddings: Option<bool>,
}

impl LlamaConfig {
    /// Number of key/value heads.
    pub fn n_kv_heads(&self) -> usize {
        self.n_kv_heads.unwrap_or(self.n_heads)
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.dim / self.n_heads
    }

    /// Feed-forward width: the given value, else llama2.c's rule
    /// `multiple_of * ceil((2 * 4 * dim / 3) / multiple_of)`.
    pub fn hidden_dim(&self) -> usize {
        self.hidden_dim.unwrap_or_else(|| {
            let hidden = 2 * (4 * self.dim) / 3;
            let m = self.multiple_of.max(1);
            m * hidden.div_ceil(m)
        })
    }

    /// Check the shape constraints the model relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |msg: String| Err(ConfigError::Invalid(msg));
        if self.dim == 0 || self.n_layers == 0 || self.n_heads == 0 || self.vocab_size == 0 {
            return bad(format!(
                "dim ({}), n_layers ({}), n_heads ({}) and vocab_size ({}) must be positive",
                self.dim, self.n_layers, self.n_heads, self.vocab_size
            ));
        }
        // Before any size is derived from them (hidden_dim() multiplies dim).
        for (name, value, limit) in [
            ("vocab_size", self.vocab_size, MAX_VOCAB_SIZE),
            ("dim", self.dim, MAX_DIM),
            ("n_layers", self.n_layers, MAX_LAYERS),
            ("max_seq_len", self.max_seq_len, MAX_SEQ_LEN),
        ] {
            if value > limit {
                return bad(format!(
                    "{name} {value} is above the supported maximum of {limit}"
                ));
            }
        }
        if !self.dim.is_multiple_of(self.n_heads) {
            return bad(format!(
                "dim {} is not divisible by n_heads {}",
                self.dim, self.n_heads
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return bad(format!(
                "head dim {} must be even for rotary embeddings",
                self.head_dim()
            ));
        }
        let kv = self.n_kv_heads();
        if kv == 0 || !self.n_heads.is_multiple_of(kv) {
            return bad(format!(
                "n_heads {} is not a multiple of n_kv_heads {kv}",
                self.n_heads
            ));
        }
        if self.hidden_dim() == 0 || self.max_seq_len == 0 {
            return bad("hidden_dim and max_seq_len must be positive".into());
        }
        if self.hidden_dim() > MAX_HIDDEN_DIM {
            return bad(format!(
                "hidden_dim {} is above the supported maximum of {MAX_HIDDEN_DIM}",
                self.hidden_dim()
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout {} is not in [0, 1)", self.dropout));
        }
        if !(self.norm_eps > 0.0 && self.norm_eps.is_finite()) {
            return bad(format!("norm_eps {} must be positive", self.norm_eps));
        }
        if !(self.rope_theta > 0.0 && self.rope_theta.is_finite()) {
            return bad(format!("rope_theta {} must be positive", self.rope_theta));
        }
        if let Some(scaling) = &self.rope_scaling {
            scaling.check().map_err(ConfigError::Invalid)?;
            if let RopeScaling::Factors { factors } = scaling {
                if factors.len() != self.head_dim() / 2 {
                    return bad(format!(
                        "{} rope frequency factors for {} rotated pairs per head",
                        factors.len(),
                        self.head_dim() / 2
                    ));
                }
            }
        }
        Ok(())
    }

    /// Read a JSON config (flat, or wrapped in `model_args`) and validate it.
    pub fn from_json_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json_str(&text).map_err(|e| match e {
            ConfigError::Parse { detail, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                detail,
            },
            other => other,
        })
    }

    /// Parse a JSON config (flat, or wrapped in `model_args`) and validate it.
    pub fn from_json_str(text: &str) -> Result<Self, ConfigError> {
        let parse_err = |e: serde_json::Error| ConfigError::Parse {
            path: PathBuf::from("<json>"),
            detail: e.to_string(),
        };
        let value: serde_json::Value = serde_json::from_str(text).map_err(parse_err)?;
        if value.get("model_args").is_some() {
            let w: WrappedConfig = serde_json::from_value(value).map_err(parse_err)?;
            let mut args = w.model_args;
            args.norm_eps = args.norm_eps.or(w.layer_norm_eps);
            args.rope_theta = args.rope_theta.or(w.rope_theta);
            let mut config = args.into_config()?;
            config.tie_embeddings = w.tie_word_embeddings.unwrap_or(true);
            Ok(config)
        } else {
            let f: FlatConfig = serde_json::from_value(value).map_err(parse_err)?;
            let mut config = f.args.into_config()?;
            config.tie_embeddings = f.tie_embeddings.unwrap_or(true);
            Ok(config)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preset(name: &str) -> LlamaConfig {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../configs")
            .join(format!("{name}.json"));
        LlamaConfig::from_json_file(&path).expect("preset loads")
    }

    #[test]
    fn presets_have_the_published_shapes() {
        let c = preset("stories260K");
        assert_eq!(
            (c.dim, c.n_layers, c.n_heads, c.n_kv_heads(), c.vocab_size),
            (64, 5, 8, 4, 512)
        );
        assert_eq!((c.hidden_dim(), c.max_seq_len), (172, 512));

        let c = preset("stories15M");
        assert_eq!(
            (c.dim, c.n_layers, c.n_heads, c.n_kv_heads()),
            (288, 6, 6, 6)
        );
        assert_eq!(
            (c.vocab_size, c.hidden_dim(), c.max_seq_len),
            (32000, 768, 256)
        );

        let c = preset("stories42M");
        assert_eq!(
            (c.dim, c.n_layers, c.n_heads, c.n_kv_heads()),
            (512, 8, 8, 8)
        );
        assert_eq!(
            (c.vocab_size, c.hidden_dim(), c.max_seq_len),
            (32000, 1376, 1024)
        );

        let c = preset("stories110M");
        assert_eq!(
            (c.dim, c.n_layers, c.n_heads, c.n_kv_heads()),
            (768, 12, 12, 12)
        );
        assert_eq!(
            (c.vocab_size, c.hidden_dim(), c.max_seq_len),
            (32000, 2048, 1024)
        );

        // TinyLlama 1.1B's shape, with its own head.
        let c = preset("tinyllama-1.1b");
        assert_eq!(
            (c.dim, c.n_layers, c.n_heads, c.n_kv_heads()),
            (2048, 22, 32, 4)
        );
        assert_eq!(
            (c.vocab_size, c.hidden_dim(), c.max_seq_len),
            (32000, 5632, 2048)
        );
        assert_eq!((c.norm_eps, c.rope_theta), (1e-5, 10000.0));
        assert!(!c.tie_embeddings);
    }

    #[test]
    fn hidden_dim_uses_the_given_multiple() {
        let c = LlamaConfig::new(64, 5, 8, 512).with_multiple_of(4);
        assert_eq!(c.hidden_dim(), 172);
        let c = LlamaConfig::new(64, 5, 8, 512);
        assert_eq!(
            c.hidden_dim(),
            192,
            "the exercise's default multiple_of is 32"
        );
        let c = LlamaConfig::new(64, 5, 8, 512).with_hidden_dim(Some(100));
        assert_eq!(c.hidden_dim(), 100);
    }

    #[test]
    fn fixture_config_json_reads_wrapped_form() {
        let c = LlamaConfig::from_json_file(&crate::fixtures::fixture(
            "models/stories260K/stories260K.config.json",
        ))
        .unwrap();
        assert_eq!(c, preset("stories260K"));
    }

    #[test]
    fn invalid_configs_are_rejected() {
        let err = LlamaConfig::from_json_str(
            r#"{"dim": 64, "n_layers": 1, "n_heads": 5, "vocab_size": 10}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("not divisible"), "{err}");
        let err = LlamaConfig::from_json_str(r#"{"dim": 64, "n_heads": 8, "vocab_size": 10}"#)
            .unwrap_err();
        assert!(err.to_string().contains("n_layers"), "{err}");
        let err = LlamaConfig::from_json_str("not json").unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }));
        let err = LlamaConfig::from_json_str(
            r#"{"dim": 64, "n_layers": 1, "n_heads": 8, "n_kv_heads": 3, "vocab_size": 10}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("n_kv_heads"), "{err}");
    }

    /// Header sizes from a stranger's file are bounded before anything is sized by them,
    /// while real models (Llama 2 70B, a 2^20 vocabulary, a 2^21 context) pass.
    #[test]
    fn sizes_beyond_real_models_are_rejected() {
        let real = LlamaConfig::new(8192, 80, 64, 32000)
            .with_n_kv_heads(Some(8))
            .with_hidden_dim(Some(28672))
            .with_max_seq_len(4096);
        real.validate().unwrap();
        let limits = LlamaConfig::new(MAX_DIM, MAX_LAYERS, 512, MAX_VOCAB_SIZE)
            .with_hidden_dim(Some(MAX_HIDDEN_DIM))
            .with_max_seq_len(MAX_SEQ_LEN);
        limits.validate().unwrap();
        let huge = (1usize << 31) - 1;
        for (name, config) in [
            (
                "vocab_size",
                LlamaConfig {
                    vocab_size: MAX_VOCAB_SIZE + 1,
                    ..limits.clone()
                },
            ),
            (
                "dim",
                LlamaConfig {
                    dim: 2 * MAX_DIM,
                    ..limits.clone()
                },
            ),
            ("hidden_dim", limits.clone().with_hidden_dim(Some(huge))),
            (
                "n_layers",
                LlamaConfig {
                    n_layers: huge,
                    ..limits.clone()
                },
            ),
            ("max_seq_len", limits.clone().with_max_seq_len(huge)),
        ] {
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(name) && err.contains("maximum"), "{err}");
        }
        let err = LlamaConfig::from_json_str(
            r#"{"dim": 64, "n_layers": 1, "n_heads": 8, "vocab_size": 10, "max_seq_len": 2147483647}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("max_seq_len 2147483647"), "{err}");
    }
}
