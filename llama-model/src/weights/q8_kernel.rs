//! The int8 product of `runq.c`: activations `x` `[rows, k]` quantized per group, times a
//! [`Q8Matrix`] `[n, k]`, giving `[rows, n]` in f32:
//!
//! ```text
//! out[r][o] = Σ_g  (ival(r, o, g) · ws[o][g]) · xs[r][g]      summed over the groups g in order
//! ival(r, o, g) = Σ_{j in group g}  xq[r][j] · wq[o][j]        exact, in i32
//! ```
//!
//! The integer sums are exact whatever their order, and the float sum runs over the groups
//! in order with the two scale products in `runq.c`'s order, so every implementation here
//! gives the same bits:
//! * AVX-512 VNNI (groups of a multiple of 4), on weights repacked at load: see
//!   [`crate::weights::q8_vnni`].
//! * AVX2 (groups of a multiple of 32): `maddubs` of |x| (u8) with w carrying x's sign (i8)
//!   gives pairs of products in i16 without saturation (2·127² < 2¹⁵), `madd` widens them to
//!   i32. Four weight rows go at once, so their four float sums are one SSE vector: each lane
//!   still adds its own row's groups in order.
//! * portable: the formula above, for any group size (stories260K's is 4).
//!
//! The kernel is chosen at run time by the CPU's features ([`crate::weights::q8_cpu`]).

use rayon::prelude::*;

use crate::weights::q8_cpu::{self, Kernel};
use crate::weights::q8_matrix::Q8Matrix;
#[cfg(target_arch = "x86_64")]
use crate::weights::q8_vnni;

/// Outputs per parallel block: fewer cost more in scheduling than they save.
const MIN_BLOCK: usize = 64;

/// Which implementation [`q8_matmul`] uses for groups of `group` here.
pub fn kernel_name(group: usize) -> &'static str {
    q8_cpu::best(group).name()
}

/// The fastest kernel that runs for `w`. VNNI reads the packed copy made at load where
/// that kernel runs, so every matrix has one when it is the best.
fn kernel_for(w: &Q8Matrix) -> Kernel {
    match q8_cpu::best(w.group()) {
        Kernel::Vnni if w.vnni().is_none() => Kernel::Portable,
        kernel => kernel,
    }
}

/// `out` `[rows, n] = x · wᵀ` for activations already quantized: `xq` `[rows, k]` int8 and
/// `xs` `[rows, k / group]` scales, `w` `[n, k]` with the same group size. The outputs are
/// cut into up to `parts` column blocks run on rayon's pool.
///
/// Panics if the lengths disagree (the callers build them from `w`'s shape).
pub fn q8_matmul(xq: &[i8], xs: &[f32], w: &Q8Matrix, parts: usize) -> Vec<f32> {
    q8_matmul_with(kernel_for(w), xq, xs, w, parts)
}

fn q8_matmul_with(kernel: Kernel, xq: &[i8], xs: &[f32], w: &Q8Matrix, parts: usize) -> Vec<f32> {
    let (n, k, group) = (w.rows(), w.cols(), w.group());
    let rows = xq.len() / k;
    assert_eq!(xq.len(), rows * k, "activations are not whole rows of {k}");
    assert_eq!(xs.len(), rows * k / group, "one activation scale per group");
    let parts = parts.clamp(1, (n / MIN_BLOCK).max(1));
    // The VNNI kernel computes whole blocks of 16 outputs: cut at multiples of 16.
    let unit = if kernel == Kernel::Vnni { 16 } else { 1 };
    let units = n.div_ceil(unit);
    let bounds = |p: usize| ((p * units / parts) * unit).min(n);
    let blocks: Vec<Vec<f32>> = (0..parts)
        .into_par_iter()
        .map(|p| {
            let (start, end) = (bounds(p), bounds(p + 1));
            // Block-major: `[end - start, rows]`.
            let mut block = vec![0f32; (end - start) * rows];
            run_kernel(kernel, xq, xs, w, start..end, &mut block);
            block
        })
        .collect();
    let mut out = vec![0f32; rows * n];
    let mut start = 0;
    for block in blocks {
        let width = block.len() / rows.max(1);
        for (o, column) in block.chunks_exact(rows.max(1)).enumerate() {
            for (r, &v) in column.iter().enumerate() {
                out[r * n + start + o] = v;
            }
        }
        start += width;
    }
    out
}

/// Outputs `range` of every activation row into `block` (`[range.len(), rows]`) with
/// `kernel`, which runs here for `w` ([`kernel_for`]).
fn run_kernel(
    kernel: Kernel,
    xq: &[i8],
    xs: &[f32],
    w: &Q8Matrix,
    range: std::ops::Range<usize>,
    block: &mut [f32],
) {
    if range.is_empty() {
        return;
    }
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Vnni => {
            let packed = w
                .vnni()
                .expect("the VNNI kernel is chosen for packed matrices");
            // SAFETY: `packed` exists only where the CPU has AVX-512F and VNNI
            // (`q8_cpu::runs`), and it is `w`'s.
            unsafe { q8_vnni::rows(xq, xs, w, packed, range, block) }
        }
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => {
            // SAFETY: the CPU has AVX2 and the group is a multiple of 32 (`q8_cpu::runs`).
            unsafe { avx2::rows(xq, xs, w, range, block) }
        }
        _ => portable_rows(xq, xs, w, range, block),
    }
}

/// One output: weight row `o` against activation row `r` (see the module's formula).
fn dot(xq: &[i8], xs: &[f32], wq: &[i8], ws: &[f32], group: usize) -> f32 {
    let mut val = 0.0f32;
    for (((xg, wg), &xscale), &wscale) in xq
        .chunks_exact(group)
        .zip(wq.chunks_exact(group))
        .zip(xs)
        .zip(ws)
    {
        let ival: i32 = xg
            .iter()
            .zip(wg)
            .map(|(&a, &b)| i32::from(a) * i32::from(b))
            .sum();
        val += ival as f32 * wscale * xscale;
    }
    val
}

/// Outputs `range` of every activation row into `block` (`[range.len(), rows]`).
fn portable_rows(
    xq: &[i8],
    xs: &[f32],
    w: &Q8Matrix,
    range: std::ops::Range<usize>,
    block: &mut [f32],
) {
    let (k, group) = (w.cols(), w.group());
    let groups = k / group;
    let rows = xq.len() / k;
    for (i, o) in range.enumerate() {
        let wq = &w.values()[o * k..(o + 1) * k];
        let ws = &w.scales()[o * groups..(o + 1) * groups];
        for r in 0..rows {
            block[i * rows + r] = dot(
                &xq[r * k..(r + 1) * k],
                &xs[r * groups..(r + 1) * groups],
                wq,
                ws,
                group,
            );
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::{dot, Q8Matrix};

    /// [`super::portable_rows`] with AVX2, four weight rows at a time; `w.group()` is a
    /// multiple of 32.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn rows(
        xq: &[i8],
        xs: &[f32],
        w: &Q8Matrix,
        range: Range<usize>,
        block: &mut [f32],
    ) {
        let (k, group) = (w.cols(), w.group());
        let groups = k / group;
        let rows = xq.len() / k;
        let (values, scales) = (w.values(), w.scales());
        let ones = _mm256_set1_epi16(1);
        let mut o = range.start;
        while o + 4 <= range.end {
            let i = o - range.start;
            for r in 0..rows {
                let x = &xq[r * k..(r + 1) * k];
                let mut val = _mm_setzero_ps();
                for g in 0..groups {
                    let mut acc = [_mm256_setzero_si256(); 4];
                    for c in (g * group..(g + 1) * group).step_by(32) {
                        let xv = _mm256_loadu_si256(x.as_ptr().add(c).cast());
                        let ax = _mm256_sign_epi8(xv, xv); // |x| as u8
                        for (lane, acc) in acc.iter_mut().enumerate() {
                            let wv =
                                _mm256_loadu_si256(values.as_ptr().add((o + lane) * k + c).cast());
                            // w · sign(x), so that |x| · (w · sign(x)) = x · w.
                            let sw = _mm256_sign_epi8(wv, xv);
                            let pairs = _mm256_maddubs_epi16(ax, sw);
                            *acc = _mm256_add_epi32(*acc, _mm256_madd_epi16(pairs, ones));
                        }
                    }
                    // [a b c d]: each lane one row's exact integer group sum.
                    let ab = _mm256_hadd_epi32(acc[0], acc[1]);
                    let cd = _mm256_hadd_epi32(acc[2], acc[3]);
                    let abcd = _mm256_hadd_epi32(ab, cd);
                    let sums = _mm_add_epi32(
                        _mm256_castsi256_si128(abcd),
                        _mm256_extracti128_si256(abcd, 1),
                    );
                    let ws = _mm_set_ps(
                        scales[(o + 3) * groups + g],
                        scales[(o + 2) * groups + g],
                        scales[(o + 1) * groups + g],
                        scales[o * groups + g],
                    );
                    let term = _mm_mul_ps(
                        _mm_mul_ps(_mm_cvtepi32_ps(sums), ws),
                        _mm_set1_ps(xs[r * groups + g]),
                    );
                    val = _mm_add_ps(val, term);
                }
                let mut lanes = [0f32; 4];
                _mm_storeu_ps(lanes.as_mut_ptr(), val);
                for (lane, v) in lanes.into_iter().enumerate() {
                    block[(i + lane) * rows + r] = v;
                }
            }
            o += 4;
        }
        // The last 0–3 outputs.
        for o in o..range.end {
            let i = o - range.start;
            for r in 0..rows {
                block[i * rows + r] = dot(
                    &xq[r * k..(r + 1) * k],
                    &xs[r * groups..(r + 1) * groups],
                    &values[o * k..(o + 1) * k],
                    &scales[o * groups..(o + 1) * groups],
                    group,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::q8_matrix::quantize_groups;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn random(len: usize, rng: &mut StdRng) -> Vec<f32> {
        (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    fn quantized(x: &[f32], group: usize) -> (Vec<i8>, Vec<f32>) {
        let mut q = vec![0; x.len()];
        let mut s = vec![0.0; x.len() / group];
        quantize_groups(x, group, &mut q, &mut s);
        (q, s)
    }

    /// The module's formula written out in f64 for the integer part (exact either way) and
    /// f32 for the float part, independent of the kernels' loops.
    fn reference(xq: &[i8], xs: &[f32], w: &Q8Matrix, r: usize, o: usize) -> f32 {
        let (k, g) = (w.cols(), w.group());
        let mut val = 0.0f32;
        for group in 0..k / g {
            let mut ival = 0i64;
            for j in group * g..(group + 1) * g {
                ival += i64::from(xq[r * k + j]) * i64::from(w.values()[o * k + j]);
            }
            val += ival as f32 * w.scales()[o * (k / g) + group] * xs[r * (k / g) + group];
        }
        val
    }

    #[test]
    fn every_kernel_gives_the_formulas_bits_for_any_block_split() {
        let mut rng = StdRng::seed_from_u64(3);
        // (rows, n, k, group): group 4 (portable), 32 and 64 (AVX2 where present), n not a
        // multiple of 4 so the tail path runs too.
        for (rows, n, k, group) in [(1, 70, 16, 4), (3, 131, 128, 32), (2, 203, 192, 64)] {
            let w = Q8Matrix::quantize(&random(n * k, &mut rng), n, k, group).unwrap();
            let (xq, xs) = quantized(&random(rows * k, &mut rng), group);
            for (kernel, parts) in kernels(&w)
                .into_iter()
                .flat_map(|k| [(k, 1), (k, 2), (k, 3)])
            {
                let out = q8_matmul_with(kernel, &xq, &xs, &w, parts);
                for r in 0..rows {
                    for o in 0..n {
                        let expected = reference(&xq, &xs, &w, r, o);
                        assert_eq!(
                            out[r * n + o].to_bits(),
                            expected.to_bits(),
                            "{kernel:?}, group {group}, parts {parts}, row {r}, output {o}"
                        );
                    }
                }
            }
        }
    }

    /// Every kernel this CPU runs for `w` (the fastest is what [`q8_matmul`] uses).
    fn kernels(w: &Q8Matrix) -> Vec<Kernel> {
        let mut kernels = vec![Kernel::Portable];
        if q8_cpu::runs(Kernel::Avx2, w.group()) {
            kernels.push(Kernel::Avx2);
        }
        if w.vnni().is_some() {
            kernels.push(Kernel::Vnni);
        }
        eprintln!("kernels on this CPU for group {}: {kernels:?}", w.group());
        kernels
    }

    #[test]
    fn extreme_values_do_not_saturate() {
        // Every product 127 · ±127: the i16 pair sums are at their largest.
        let k = 64;
        for wv in [-127i8, 127] {
            let w = Q8Matrix::from_parts(4, k, 64, vec![wv; 4 * k], vec![1.0; 4]).unwrap();
            for kernel in kernels(&w) {
                for xv in [-127i8, 127] {
                    let out = q8_matmul_with(kernel, &vec![xv; k], &[1.0], &w, 1);
                    let expected = (i32::from(xv) * i32::from(wv)) as f32 * k as f32;
                    assert_eq!(out, vec![expected; 4], "{kernel:?}, w {wv}, x {xv}");
                }
            }
        }
    }
}
