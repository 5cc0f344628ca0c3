//! RoPE frequency scaling (`rope_scaling` in a Hugging Face config): how a model trained on a
//! short context stretches its rotary frequencies for a longer one.
//!
//! The frequencies are computed exactly as `transformers` computes them
//! (`modeling_rope_utils`: `_compute_linear_scaling_rope_parameters`,
//! `_compute_llama3_parameters`), in f32 as it does.

use serde::{Deserialize, Serialize};

/// A supported `rope_scaling` / `rope_parameters` scheme, tagged by `rope_type` as in a
/// Hugging Face config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rope_type", rename_all = "lowercase")]
pub enum RopeScaling {
    /// Every frequency divided by `factor` (position interpolation).
    Linear { factor: f64 },
    /// Llama 3.1's scheme: long wavelengths (beyond `original_max_position_embeddings /
    /// low_freq_factor`) divided by `factor`, short ones (below
    /// `original_max_position_embeddings / high_freq_factor`) kept, those between blended.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
    /// Pair j's inverse frequency divided by `factors[j]`: Llama 3.x's scaling as llama.cpp's
    /// GGUF files carry it (the `rope_freqs.weight` tensor, one divisor per pair).
    Factors { factors: Vec<f32> },
}

impl RopeScaling {
    /// Why these values cannot be used, if they cannot (one line).
    pub fn check(&self) -> Result<(), String> {
        let positive = |name: &str, v: f64| {
            if v > 0.0 && v.is_finite() {
                Ok(())
            } else {
                Err(format!("rope scaling `{name}` {v} must be positive"))
            }
        };
        match *self {
            Self::Factors { ref factors } => factors
                .iter()
                .try_for_each(|&f| positive("factors", f64::from(f))),
            Self::Linear { factor } => positive("factor", factor),
            Self::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                positive("factor", factor)?;
                positive("low_freq_factor", low_freq_factor)?;
                positive("high_freq_factor", high_freq_factor)?;
                if high_freq_factor <= low_freq_factor {
                    return Err(format!(
                        "rope scaling `high_freq_factor` {high_freq_factor} must exceed \
                         `low_freq_factor` {low_freq_factor}"
                    ));
                }
                if original_max_position_embeddings == 0 {
                    return Err(
                        "rope scaling `original_max_position_embeddings` must be positive".into(),
                    );
                }
                Ok(())
            }
        }
    }

    /// Scale the inverse frequencies `inv_freq` (one per rotated pair) in place.
    pub fn apply(&self, inv_freq: &mut [f32]) {
        match *self {
            Self::Factors { ref factors } => {
                // One per pair (checked with the head size by the config).
                for (f, divisor) in inv_freq.iter_mut().zip(factors) {
                    *f /= divisor;
                }
            }
            Self::Linear { factor } => {
                let factor = factor as f32;
                for f in inv_freq {
                    *f /= factor;
                }
            }
            Self::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                // The Python floats stay f64 where transformers keeps them as Python scalars;
                // every tensor value is f32, as in torch.
                let old_context = original_max_position_embeddings as f64;
                let low_freq_wavelen = (old_context / low_freq_factor) as f32;
                let high_freq_wavelen = (old_context / high_freq_factor) as f32;
                let (factor, low) = (factor as f32, low_freq_factor as f32);
                let spread = (high_freq_factor - low_freq_factor) as f32;
                let two_pi = (2.0 * std::f64::consts::PI) as f32;
                for f in inv_freq {
                    // torch computes `scalar / tensor` as `tensor.reciprocal() * scalar`.
                    let wavelen = f.recip() * two_pi;
                    let scaled = if wavelen > low_freq_wavelen {
                        *f / factor
                    } else {
                        *f
                    };
                    // Neither short nor long (no NaN here: every frequency is positive).
                    let medium = (high_freq_wavelen..=low_freq_wavelen).contains(&wavelen);
                    *f = if medium {
                        let smooth = (wavelen.recip() * old_context as f32 - low) / spread;
                        (1.0 - smooth) * scaled / factor + smooth * scaled
                    } else {
                        scaled
                    };
                }
            }
        }
    }
}

/// The precision RoPE's inverse frequencies are held in. `transformers` computes them in f32,
/// but a model cast to bf16 or f16 (`model.to(dtype)`) casts that buffer too, and its
/// forward pass then uses the rounded values (`inv_freq.float()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FrequencyPrecision {
    Bf16,
    F16,
}

impl FrequencyPrecision {
    /// Round every value to this precision (and back to f32).
    pub fn round(self, values: &mut [f32]) {
        for v in values {
            *v = match self {
                Self::Bf16 => half::bf16::from_f32(*v).to_f32(),
                Self::F16 => half::f16::from_f32(*v).to_f32(),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_hugging_face_spelling() {
        let s: RopeScaling = serde_json::from_str(
            r#"{"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 64}"#,
        )
        .unwrap();
        assert_eq!(
            s,
            RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 64
            }
        );
        let s: RopeScaling =
            serde_json::from_str(r#"{"rope_type": "linear", "factor": 2.0}"#).unwrap();
        assert_eq!(s, RopeScaling::Linear { factor: 2.0 });
    }

    #[test]
    fn llama3_keeps_high_divides_low_and_blends_between() {
        let s = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 64,
        };
        // Wavelengths 2π (kept), 2π·100 > 64 (divided), 2π·5 ≈ 31.4 in [16, 64] (blended).
        let mut f = [1.0f32, 0.01, 0.2];
        s.apply(&mut f);
        assert_eq!(f[0], 1.0);
        assert_eq!(f[1], 0.01 / 8.0);
        let wavelen = 0.2f32.recip() * (2.0 * std::f64::consts::PI) as f32;
        let smooth = (wavelen.recip() * 64.0 - 1.0) / 3.0;
        assert_eq!(f[2], (1.0 - smooth) * 0.2 / 8.0 + smooth * 0.2);
        let mut f = [1.0f32, 0.5];
        RopeScaling::Linear { factor: 4.0 }.apply(&mut f);
        assert_eq!(f, [0.25, 0.125]);
    }
}
