//! Parsers of flag values that clap cannot check by itself: each parses the number and hands
//! it to the library's own validation, so the CLI and the library refuse the same values with
//! the same words. Integer ranges use clap's own `RangedU64ValueParser`.

use clap::builder::{RangedU64ValueParser, TypedValueParser};
use llama_model::generation::controls::Controls;
use llama_model::generation::sampling::validate as validate_sampling;
use llama_model::train::adamw::validate_lr;
use llama_model::AdamWConfig;
use llama_train::classify::classifier::{validate_dropout, FinetuneOption};

/// A count of at least 1 (`--batch-size`, `--epochs`, `--max-sentence-len`, ...).
pub fn positive() -> RangedU64ValueParser<usize> {
    RangedU64ValueParser::new().range(1..)
}

/// A positive whole number of seconds, steps, and so on (`u64`).
pub fn positive_u64() -> RangedU64ValueParser<u64> {
    RangedU64ValueParser::new().range(1..)
}

pub fn number(s: &str) -> Result<f64, String> {
    s.parse().map_err(|_| format!("`{s}` is not a number"))
}

/// `--lr`: [`validate_lr`].
pub fn learning_rate(s: &str) -> Result<f64, String> {
    validate_lr(number(s)?).map_err(|e| e.to_string())
}

/// `--weight-decay`: [`AdamWConfig::validate`].
pub fn weight_decay(s: &str) -> Result<f64, String> {
    let decay = number(s)?;
    AdamWConfig::new()
        .with_weight_decay(decay)
        .validate()
        .map(|()| decay)
        .map_err(|e| e.to_string())
}

/// A finite number `>= 0` (`--min-lr`, `--grad-clip`).
pub fn non_negative(s: &str) -> Result<f64, String> {
    let v = number(s)?;
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(format!("expected a finite number >= 0, not {s}"))
    }
}

/// A share strictly between 0 and 1 (`--val-fraction`).
pub fn fraction(s: &str) -> Result<f64, String> {
    let v = number(s)?;
    if v > 0.0 && v < 1.0 {
        Ok(v)
    } else {
        Err(format!(
            "expected a fraction between 0 and 1 (exclusive), not {s}"
        ))
    }
}

/// `--hidden-dropout-prob`: [`validate_dropout`].
pub fn dropout(s: &str) -> Result<f64, String> {
    validate_dropout(number(s)?).map_err(|e| e.to_string())
}

/// `--temperature`: the sampler's own check.
pub fn temperature(s: &str) -> Result<f64, String> {
    let t = number(s)?;
    validate_sampling(t, None)
        .map(|()| t)
        .map_err(|e| e.to_string())
}

/// `--top-p`: the sampler's own check.
pub fn top_p(s: &str) -> Result<f64, String> {
    let p = number(s)?;
    validate_sampling(0.0, Some(p))
        .map(|()| p)
        .map_err(|e| e.to_string())
}

/// A sampling control's value, checked by the library ([`Controls::validate`]) with
/// `set` putting it into otherwise default controls.
fn control(s: &str, set: impl FnOnce(&mut Controls, f64)) -> Result<f64, String> {
    let value = number(s)?;
    let mut controls = Controls::default();
    set(&mut controls, value);
    controls
        .validate()
        .map(|()| value)
        .map_err(|e| e.to_string())
}

/// `--min-p`: in `[0, 1]`.
pub fn min_p(s: &str) -> Result<f64, String> {
    control(s, |c, v| c.min_p = Some(v))
}

/// `--repetition-penalty`: finite, `> 0`.
pub fn repetition_penalty(s: &str) -> Result<f64, String> {
    control(s, |c, v| c.repetition_penalty = v)
}

/// `--presence-penalty`: in `[-2, 2]`.
pub fn presence_penalty(s: &str) -> Result<f64, String> {
    control(s, |c, v| c.presence_penalty = v)
}

/// `--frequency-penalty`: in `[-2, 2]`.
pub fn frequency_penalty(s: &str) -> Result<f64, String> {
    control(s, |c, v| c.frequency_penalty = v)
}

/// `--option`: `pretrain` or `finetune`, listed in `--help` and parsed by the library.
pub fn finetune_option() -> impl TypedValueParser<Value = FinetuneOption> {
    clap::builder::PossibleValuesParser::new(["finetune", "pretrain"])
        .try_map(|s| s.parse::<FinetuneOption>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_checked_by_the_library() {
        assert_eq!(learning_rate("2e-5"), Ok(2e-5));
        assert!(learning_rate("-1").unwrap_err().contains("learning rate"));
        assert!(learning_rate("x").unwrap_err().contains("not a number"));
        assert_eq!(dropout("0.3"), Ok(0.3));
        assert!(dropout("1").is_err() && dropout("NaN").is_err());
        assert_eq!(weight_decay("0"), Ok(0.0));
        assert!(weight_decay("-0.1").is_err());
        assert_eq!(temperature("0"), Ok(0.0));
        assert!(temperature("-1")
            .unwrap_err()
            .contains("temperature must be"));
        assert!(top_p("1.5").is_err() && top_p("0.9").is_ok());
        assert!(min_p("1.5")
            .unwrap_err()
            .contains("min_p must be in [0, 1]"));
        assert_eq!(min_p("0.05"), Ok(0.05));
        assert!(repetition_penalty("0").is_err() && repetition_penalty("1.1").is_ok());
        assert!(presence_penalty("-2.5").is_err() && presence_penalty("-2").is_ok());
        assert!(frequency_penalty("NaN").is_err() && frequency_penalty("0.5").is_ok());
    }
}
