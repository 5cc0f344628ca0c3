//! int8 weight matrices in llama2.c's Q8_0 scheme (`runq.c`, `export.py --version 2`).
//!
//! A row of `cols` values is cut into groups of `group` consecutive values. Each group keeps
//! one f32 scale `s = max|w| / 127` and its values as `q = round(w / s)` in int8, so
//! `w ≈ q · s` with an error of at most `s / 2` per value (symmetric: -128 never occurs).
//! The same function quantizes weights at load time and a product's input activations at
//! run time ([`quantize_groups`]), as `runq.c` does with one `quantize()`.

use std::fmt;

use crate::weights::q8_cpu::{self, Kernel};
use crate::weights::q8_vnni::VnniPacked;

/// Why a matrix cannot be quantized or assembled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Q8Error {
    #[error("group size {group} must be positive and divide the row length {cols}")]
    Group { cols: usize, group: usize },
    #[error("a {rows}x{cols} int8 matrix with group {group} needs {expected} {what}, got {found}")]
    Length {
        rows: usize,
        cols: usize,
        group: usize,
        what: &'static str,
        expected: usize,
        found: usize,
    },
}

/// The default group size of llama2.c's export.
pub const DEFAULT_GROUP: usize = 64;

/// The group size for rows of these lengths: [`DEFAULT_GROUP`], or the largest power of two
/// dividing every length when that is smaller (stories260K's hidden width 172 allows 4, the
/// 42M model's 1376 allows 32). A group never straddles two rows.
pub fn group_size_for(lengths: impl IntoIterator<Item = usize>) -> usize {
    lengths.into_iter().fold(DEFAULT_GROUP, |group, len| {
        // The largest power of two dividing `len` (0 divides by anything).
        let pow2 = if len == 0 {
            group
        } else {
            1 << len.trailing_zeros()
        };
        group.min(pow2)
    })
}

/// Quantize `x` group by group into `values` (same length) and `scales` (one per group):
/// `runq.c`'s `quantize()`. A group of zeros gets scale 0 and values 0 (`runq.c` divides by
/// zero there; the values it stores are then undefined, but they are multiplied by 0).
///
/// `x.len()` must be a multiple of `group`.
pub fn quantize_groups(x: &[f32], group: usize, values: &mut [i8], scales: &mut [f32]) {
    for ((xs, qs), s) in x
        .chunks_exact(group)
        .zip(values.chunks_exact_mut(group))
        .zip(scales.iter_mut())
    {
        let max = xs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let scale = max / 127.0;
        *s = scale;
        for (q, &v) in qs.iter_mut().zip(xs) {
            // Division, not a multiplication by 1/scale, as runq.c does: the two round
            // differently. `round` rounds half away from zero, like C's round().
            *q = if scale == 0.0 {
                0
            } else {
                (v / scale).round() as i8
            };
        }
    }
}

/// A `rows x cols` matrix in Q8_0: row-major int8 values (PyTorch's `[out, in]` order: one
/// output's weights are one row) and one f32 scale per group of `group` values of a row.
#[derive(Clone, PartialEq)]
pub struct Q8Matrix {
    rows: usize,
    cols: usize,
    group: usize,
    values: Vec<i8>,
    scales: Vec<f32>,
    /// The AVX-512 VNNI kernel's copy, where it runs ([`crate::weights::q8_vnni`]): a byte per value
    /// more, for a product several times faster than the AVX2 kernel's.
    vnni: Option<VnniPacked>,
}

impl fmt::Debug for Q8Matrix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Q8Matrix({}x{}, group {})",
            self.rows, self.cols, self.group
        )
    }
}

impl Q8Matrix {
    /// Quantize `weights` (`rows x cols`, row-major) in groups of `group`.
    pub fn quantize(
        weights: &[f32],
        rows: usize,
        cols: usize,
        group: usize,
    ) -> Result<Self, Q8Error> {
        check_group(cols, group)?;
        check_len(rows, cols, group, "values", rows * cols, weights.len())?;
        let mut values = vec![0i8; rows * cols];
        let mut scales = vec![0f32; rows * cols / group];
        quantize_groups(weights, group, &mut values, &mut scales);
        Ok(Self::assemble(rows, cols, group, values, scales))
    }

    /// A matrix from stored values and scales (a Q8_0 file).
    pub fn from_parts(
        rows: usize,
        cols: usize,
        group: usize,
        values: Vec<i8>,
        scales: Vec<f32>,
    ) -> Result<Self, Q8Error> {
        check_group(cols, group)?;
        check_len(rows, cols, group, "values", rows * cols, values.len())?;
        check_len(
            rows,
            cols,
            group,
            "scales",
            rows * cols / group,
            scales.len(),
        )?;
        Ok(Self::assemble(rows, cols, group, values, scales))
    }

    /// The matrix of checked parts, with the kernel's copy where the CPU runs it.
    fn assemble(rows: usize, cols: usize, group: usize, values: Vec<i8>, scales: Vec<f32>) -> Self {
        let mut m = Self {
            rows,
            cols,
            group,
            values,
            scales,
            vnni: None,
        };
        if q8_cpu::runs(Kernel::Vnni, group) {
            m.vnni = Some(VnniPacked::pack(&m));
        }
        m
    }

    /// The AVX-512 VNNI kernel's copy, if this CPU runs it.
    pub(crate) fn vnni(&self) -> Option<&VnniPacked> {
        self.vnni.as_ref()
    }

    /// The f32 matrix the values stand for, `q · s`, row-major `rows x cols`.
    pub fn dequantize(&self) -> Vec<f32> {
        self.values
            .chunks_exact(self.group)
            .zip(&self.scales)
            .flat_map(|(qs, &s)| qs.iter().map(move |&q| f32::from(q) * s))
            .collect()
    }

    /// Number of rows (outputs of a product).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Row length (inputs of a product).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Values per scale.
    pub fn group(&self) -> usize {
        self.group
    }

    /// The int8 values, row-major.
    pub fn values(&self) -> &[i8] {
        &self.values
    }

    /// One scale per group, row-major (`cols / group` per row).
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }

    /// Bytes of storage: one per value and four per scale, and the kernel's copy.
    pub fn bytes(&self) -> usize {
        self.values.len() + 4 * self.scales.len() + self.vnni.as_ref().map_or(0, VnniPacked::bytes)
    }
}

fn check_group(cols: usize, group: usize) -> Result<(), Q8Error> {
    if group == 0 || !cols.is_multiple_of(group) {
        return Err(Q8Error::Group { cols, group });
    }
    Ok(())
}

fn check_len(
    rows: usize,
    cols: usize,
    group: usize,
    what: &'static str,
    expected: usize,
    found: usize,
) -> Result<(), Q8Error> {
    if expected != found {
        return Err(Q8Error::Length {
            rows,
            cols,
            group,
            what,
            expected,
            found,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_size_is_64_or_the_largest_power_of_two_dividing_every_row() {
        assert_eq!(group_size_for([512, 512, 2048]), 64);
        assert_eq!(group_size_for([512, 1376]), 32); // the 42M shape
        assert_eq!(group_size_for([64, 172]), 4); // stories260K
        assert_eq!(group_size_for([288, 768]), 32);
        assert_eq!(group_size_for([7]), 1);
    }

    #[test]
    fn quantization_follows_runq() {
        // Group 1: scale max|x|/127, its largest value becomes 127. Group 2: zeros.
        let x = [2.54f32, -1.27, 0.004, 0.011, 0.0, 0.0, 0.0, -0.0];
        let m = Q8Matrix::quantize(&x, 2, 4, 4).unwrap();
        let scale = 2.54f32 / 127.0;
        assert_eq!(m.scales(), &[scale, 0.0]);
        let expected: Vec<i8> = x[..4]
            .iter()
            .map(|v| (v / scale).round() as i8)
            .chain([0; 4])
            .collect();
        assert_eq!(m.values(), &expected[..]);
        assert_eq!(m.values()[0], 127);
        // Dequantized values are within half a step of the originals.
        for (d, v) in m.dequantize().iter().zip(x) {
            assert!((d - v).abs() <= scale / 2.0 + f32::EPSILON, "{d} vs {v}");
        }
    }

    #[test]
    fn shapes_are_checked() {
        assert_eq!(
            Q8Matrix::quantize(&[0.0; 6], 1, 6, 4),
            Err(Q8Error::Group { cols: 6, group: 4 })
        );
        assert!(matches!(
            Q8Matrix::from_parts(2, 4, 4, vec![0; 8], vec![1.0]),
            Err(Q8Error::Length {
                what: "scales",
                expected: 2,
                found: 1,
                ..
            })
        ));
    }
}
