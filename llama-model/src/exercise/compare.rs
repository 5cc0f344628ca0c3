//! Elementwise comparison with the tolerance rule of the reference tests:
//! `|actual - expected| <= atol + rtol * |expected|` (as `torch.allclose`).

/// The result of comparing two float arrays.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// Number of elements compared.
    pub len: usize,
    /// Largest `|actual - expected|`.
    pub max_abs_diff: f64,
    /// Index of the largest difference.
    pub max_abs_index: usize,
    /// Number of elements outside the tolerance.
    pub violations: usize,
    /// Index of the element that exceeds its tolerance by the most, if any.
    pub worst_violation: Option<usize>,
}

impl Comparison {
    /// Whether every element is within tolerance (and the lengths matched).
    pub fn passed(&self) -> bool {
        self.violations == 0
    }
}

/// Compare `actual` with `expected`; a length mismatch counts every element as a violation.
pub fn compare(actual: &[f32], expected: &[f32], atol: f64, rtol: f64) -> Comparison {
    let mut out = Comparison {
        len: expected.len(),
        max_abs_diff: 0.0,
        max_abs_index: 0,
        violations: 0,
        worst_violation: None,
    };
    if actual.len() != expected.len() {
        out.violations = actual.len().max(expected.len());
        out.max_abs_diff = f64::INFINITY;
        return out;
    }
    let mut worst_excess = 0.0f64;
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        let (a, e) = (a as f64, e as f64);
        let diff = (a - e).abs();
        // NaN never compares as within tolerance.
        let diff = if diff.is_nan() { f64::INFINITY } else { diff };
        if diff > out.max_abs_diff {
            out.max_abs_diff = diff;
            out.max_abs_index = i;
        }
        let excess = diff - (atol + rtol * e.abs());
        if excess > 0.0 {
            out.violations += 1;
            if out.worst_violation.is_none() || excess > worst_excess {
                worst_excess = excess;
                out.worst_violation = Some(i);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::compare;

    #[test]
    fn applies_atol_plus_rtol_times_expected() {
        let c = compare(&[1.0, 10.05, 0.0], &[1.0, 10.0, 0.0], 0.01, 0.01);
        assert!(c.passed(), "{c:?}");
        let c = compare(&[1.0, 10.2, 0.0], &[1.0, 10.0, 0.0], 0.01, 0.01);
        assert_eq!(
            (c.violations, c.worst_violation, c.max_abs_index),
            (1, Some(1), 1)
        );
        assert!((c.max_abs_diff - 0.2).abs() < 1e-5);
        assert!(!compare(&[f32::NAN], &[0.0], 1.0, 1.0).passed());
        assert!(!compare(&[1.0], &[1.0, 2.0], 1.0, 1.0).passed());
    }
}
