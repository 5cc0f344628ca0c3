//! The int8 product with AVX-512 VNNI (`vpdpbusd`), on weights repacked once at load.
//!
//! `vpdpbusd` multiplies four unsigned bytes by four signed bytes and adds the four
//! products to a 32-bit lane, sixteen lanes at a time. The weights are laid out so that
//! those sixteen lanes are sixteen *outputs*: for each block of 16 weight rows and each
//! quad of 4 columns, the 16 rows' 4 bytes sit next to each other (64 bytes). One
//! instruction with the activation quad broadcast then advances 16 dot products by 4 terms,
//! and a group's 16 integer sums come out in one register with no horizontal reduction.
//!
//! The unsigned operand is the weight shifted by 128 (`w ^ 0x80` as `u8`), so a lane holds
//! `Σ (w + 128) · x = Σ w · x + 128 · Σ x`; subtracting `128 · Σ x` (one sum per activation
//! group, taken once per product) leaves the exact integer sum. The float part is the same
//! per-lane sequence as every other kernel (`(ival · ws) · xs`, groups added in order), so
//! the bits are the same ([`super::q8_kernel`]).

use std::ops::Range;

use crate::weights::q8_matrix::Q8Matrix;

/// Outputs per packed block: one per 32-bit lane of a 512-bit register.
pub(crate) const LANES: usize = 16;

/// A [`Q8Matrix`] in the kernel's layout.
#[derive(Clone, PartialEq)]
pub(crate) struct VnniPacked {
    /// `[blocks, cols / 4, 16 lanes, 4]` bytes: `w ^ 0x80` of row `16·block + lane`,
    /// columns `4·quad..4·quad + 4`; the rows past the matrix's last are zero weights.
    values: Vec<u8>,
    /// `[blocks, groups, 16 lanes]`: the scales of those rows (zero past the last row).
    scales: Vec<f32>,
}

impl VnniPacked {
    /// The kernel's copy of `w` (`group` a multiple of 4).
    pub(crate) fn pack(w: &Q8Matrix) -> Self {
        let (rows, cols, group) = (w.rows(), w.cols(), w.group());
        let (quads, groups) = (cols / 4, cols / group);
        let blocks = rows.div_ceil(LANES);
        let mut values = vec![0x80u8; blocks * quads * LANES * 4];
        let mut scales = vec![0f32; blocks * groups * LANES];
        for row in 0..rows {
            let (block, lane) = (row / LANES, row % LANES);
            let weights = &w.values()[row * cols..(row + 1) * cols];
            for (quad, bytes) in weights.chunks_exact(4).enumerate() {
                let at = ((block * quads + quad) * LANES + lane) * 4;
                for (slot, &v) in values[at..at + 4].iter_mut().zip(bytes) {
                    *slot = (v as u8) ^ 0x80;
                }
            }
            for g in 0..groups {
                scales[(block * groups + g) * LANES + lane] = w.scales()[row * groups + g];
            }
        }
        Self { values, scales }
    }

    /// Bytes of the packed copy.
    pub(crate) fn bytes(&self) -> usize {
        self.values.len() + 4 * self.scales.len()
    }
}

/// Outputs `range` (a multiple of [`LANES`] at its start) of every activation row into
/// `block` (`[range.len(), rows]`), as [`super::q8_kernel`]'s other kernels do.
///
/// # Safety
/// The CPU has AVX-512F and AVX-512 VNNI ([`applies`]), and `packed` is `w`'s.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vnni")]
pub(crate) unsafe fn rows(
    xq: &[i8],
    xs: &[f32],
    w: &Q8Matrix,
    packed: &VnniPacked,
    range: Range<usize>,
    block: &mut [f32],
) {
    use std::arch::x86_64::*;

    let (cols, group) = (w.cols(), w.group());
    let (quads, groups, group_quads) = (cols / 4, cols / group, group / 4);
    let rows = xq.len() / cols;
    // 128 · Σ x per activation group, the offset every lane's sum carries.
    let offsets: Vec<i32> = xq
        .chunks_exact(group)
        .map(|g| 128 * g.iter().map(|&v| i32::from(v)).sum::<i32>())
        .collect();
    debug_assert!(range.start.is_multiple_of(LANES));
    let mut lanes = [0f32; LANES];
    for b in range.start / LANES..range.end.div_ceil(LANES) {
        let weights = packed.values.as_ptr().add(b * quads * LANES * 4);
        let scales = packed.scales.as_ptr().add(b * groups * LANES);
        for r in 0..rows {
            let x = xq.as_ptr().add(r * cols).cast::<i32>();
            let mut val = _mm512_setzero_ps();
            for g in 0..groups {
                // Four accumulators, so that consecutive `vpdpbusd`s do not wait on each
                // other; integer sums are exact in any order.
                let mut acc = [_mm512_setzero_si512(); 4];
                for q in 0..group_quads {
                    let quad = g * group_quads + q;
                    let xv = _mm512_set1_epi32(x.add(quad).read_unaligned());
                    let wv = _mm512_loadu_si512(weights.add(quad * LANES * 4).cast());
                    acc[q % 4] = _mm512_dpbusd_epi32(acc[q % 4], wv, xv);
                }
                let sum = _mm512_add_epi32(
                    _mm512_add_epi32(acc[0], acc[1]),
                    _mm512_add_epi32(acc[2], acc[3]),
                );
                let ival = _mm512_sub_epi32(sum, _mm512_set1_epi32(offsets[r * groups + g]));
                let ws = _mm512_loadu_ps(scales.add(g * LANES));
                let term = _mm512_mul_ps(
                    _mm512_mul_ps(_mm512_cvtepi32_ps(ival), ws),
                    _mm512_set1_ps(xs[r * groups + g]),
                );
                val = _mm512_add_ps(val, term);
            }
            _mm512_storeu_ps(lanes.as_mut_ptr(), val);
            for (lane, &v) in lanes.iter().enumerate() {
                let o = b * LANES + lane;
                if o < range.end {
                    block[(o - range.start) * rows + r] = v;
                }
            }
        }
    }
}
