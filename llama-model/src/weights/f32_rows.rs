//! f32 products of a few activation rows by a weight held in PyTorch's `[out, in]` order:
//! decoding's products (one row per sequence, up to one per stream of a server step).
//!
//! A general matrix product packs its operands into blocks before multiplying, which pays
//! off when each weight value meets many rows; with 1–16 rows it costs more than the
//! product itself, and a decoded token is bound by how fast the weights stream from memory.
//! Here each weight row (one output) is read once, front to back, and dotted with every
//! activation row while it is in L1, as `run.c`'s `matmul` does. The outputs are cut into one
//! contiguous block of weight rows per thread, so each thread streams its own part of the
//! matrix.
//!
//! Every output is the same sum in the same order whatever the number of rows or threads:
//! eight 16-lane partial sums over `k` in steps of 16, added at the end. A request's
//! numbers therefore do not depend on the other requests of a batched step.
//!
//! The kernel is AVX-512 (chosen at run time); elsewhere, or with `LLAMA_F32_KERNEL=gemm`,
//! the products stay with the backend ([`crate::weights::split_matmul`]).

use std::sync::OnceLock;

use rayon::prelude::*;

/// The variable that turns the kernel off (`gemm`) or leaves the choice to the CPU
/// (`avx512`, the default where the CPU has it).
pub const KERNEL_VAR: &str = "LLAMA_F32_KERNEL";

/// Most activation rows a product here takes; more rows amortise a general product's packing.
pub const MAX_ROWS: usize = 16;

/// Weight rows per thread below which a second thread costs more than it saves.
const MIN_ROWS_PER_PART: usize = 64;

/// Whether `LLAMA_F32_KERNEL` lets the kernel run: `Ok(true)` unset or `avx512`,
/// `Ok(false)` for `gemm`, else why the value is not one of them.
pub fn kernel_allowed() -> Result<bool, String> {
    match std::env::var(KERNEL_VAR) {
        Err(_) => Ok(true),
        Ok(value) => match value.as_str() {
            "avx512" => Ok(true),
            "gemm" => Ok(false),
            _ => Err(format!(
                "{KERNEL_VAR}={value}: not a kernel (avx512 or gemm)"
            )),
        },
    }
}

/// Whether the kernel runs here: the CPU has AVX-512F and `LLAMA_F32_KERNEL` allows it (an
/// invalid value counts as allowing; the CLI refuses it first). Read once.
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| kernel_allowed().unwrap_or(true) && on_cpu())
}

fn on_cpu() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `x · wᵀ` for `x` `[rows, k]` and `w` `[n, k]` (both row-major): `[rows, n]`, with the
/// outputs cut into `parts` blocks run on rayon's pool. `None` when the kernel does not run
/// on this CPU ([`available`]).
///
/// # Panics
/// If the slices' lengths are not `rows·k` and `n·k`.
pub fn product(x: &[f32], rows: usize, w: &[f32], n: usize, parts: usize) -> Option<Vec<f32>> {
    if !available() || rows == 0 || n == 0 {
        return None;
    }
    let k = x.len() / rows;
    assert_eq!(x.len(), rows * k, "x is not [rows, k]");
    assert_eq!(w.len(), n * k, "w is not [n, k]");
    // Outputs computed as [n, rows] so that each thread writes one contiguous block.
    let mut by_output = vec![0f32; n * rows];
    let parts = parts.clamp(1, n.div_ceil(MIN_ROWS_PER_PART));
    let block = n.div_ceil(parts);
    let run = |(b, out): (usize, &mut [f32])| {
        let first = b * block;
        let count = out.len() / rows;
        // SAFETY: `available()` checked that the CPU has AVX-512F; the slices' bounds are
        // those the kernel reads and writes (`count` rows of `w` from `first`, all of `x`).
        unsafe { avx512::rows(x, rows, k, &w[first * k..(first + count) * k], out) };
    };
    if parts == 1 {
        run((0, &mut by_output));
    } else {
        by_output
            .par_chunks_mut(block * rows)
            .enumerate()
            .for_each(run);
    }
    if rows == 1 {
        return Some(by_output);
    }
    let mut out = vec![0f32; rows * n];
    for (j, values) in by_output.chunks_exact(rows).enumerate() {
        for (r, &v) in values.iter().enumerate() {
            out[r * n + j] = v;
        }
    }
    Some(out)
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::{
        __mmask16, _mm512_add_ps, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_maskz_loadu_ps,
        _mm512_reduce_add_ps, _mm512_setzero_ps,
    };

    /// Partial sums per output: step `s` of 16 values goes to sum `s % SUMS`, so that eight
    /// independent multiply-adds are in flight while one weight row streams through (as
    /// gemm's matrix-vector loop keeps; four streamed a model's weights measurably slower
    /// on one thread).
    const SUMS: usize = 8;

    /// `out[j·rows + r] = Σ_i x[r·k + i] · w[j·k + i]` for every weight row `j` of `w` and
    /// activation row `r` of `x`: one weight row at a time, front to back (one sequential
    /// stream per thread, as the hardware prefetcher likes), against up to two activation
    /// rows at once (2 × [`SUMS`] sums fill most of the 32 vector registers).
    ///
    /// # Safety
    /// The CPU has AVX-512F; `x` holds `rows·k` values, `w` a whole number of rows of `k`,
    /// `out` `rows` values per row of `w`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn rows(x: &[f32], rows: usize, k: usize, w: &[f32], out: &mut [f32]) {
        let n = out.len() / rows;
        assert!(x.len() == rows * k && w.len() == n * k);
        for j in 0..n {
            let row = &w[j * k..(j + 1) * k];
            let sums = &mut out[j * rows..(j + 1) * rows];
            let mut r = 0;
            // SAFETY (each call): the CPU has AVX-512F (this function's contract); rows
            // r..r + NX of x exist.
            while r + 2 <= rows {
                unsafe { dots::<2>(row, &x[r * k..(r + 2) * k], &mut sums[r..r + 2]) };
                r += 2;
            }
            if r < rows {
                unsafe { dots::<1>(row, &x[r * k..], &mut sums[r..]) };
            }
        }
    }

    /// The dot products of one weight row `w` (`k` values) with the `NX` activation rows of
    /// `x` (`NX·k` values), into `out[..NX]`. Each is [`SUMS`] lane-wise partial sums over
    /// steps of 16 (the last step masked), added pairwise and then across lanes: an order
    /// that depends on `k` alone.
    #[target_feature(enable = "avx512f")]
    unsafe fn dots<const NX: usize>(w: &[f32], x: &[f32], out: &mut [f32]) {
        let k = w.len();
        assert!(x.len() == NX * k && out.len() == NX);
        let (wp, xp) = (w.as_ptr(), x.as_ptr());
        let mut acc = [[_mm512_setzero_ps(); SUMS]; NX];
        let steps = k / 16;
        let mut step = 0;
        while step + SUMS <= steps {
            for s in 0..SUMS {
                let i = (step + s) * 16;
                // SAFETY: i + 16 <= k: within w and within each of x's rows.
                let wv = unsafe { _mm512_loadu_ps(wp.add(i)) };
                for (b, lanes) in acc.iter_mut().enumerate() {
                    let xv = unsafe { _mm512_loadu_ps(xp.add(b * k + i)) };
                    lanes[s] = _mm512_fmadd_ps(wv, xv, lanes[s]);
                }
            }
            step += SUMS;
        }
        let mut s = 0;
        while step < steps {
            let i = step * 16;
            // SAFETY: as above.
            let wv = unsafe { _mm512_loadu_ps(wp.add(i)) };
            for (b, lanes) in acc.iter_mut().enumerate() {
                let xv = unsafe { _mm512_loadu_ps(xp.add(b * k + i)) };
                lanes[s] = _mm512_fmadd_ps(wv, xv, lanes[s]);
            }
            step += 1;
            s += 1;
        }
        let i = steps * 16;
        if i < k {
            let mask: __mmask16 = (1u16 << (k - i)) - 1;
            // SAFETY: masked loads touch only the k - i values left in each row.
            let wv = unsafe { _mm512_maskz_loadu_ps(mask, wp.add(i)) };
            for (b, lanes) in acc.iter_mut().enumerate() {
                let xv = unsafe { _mm512_maskz_loadu_ps(mask, xp.add(b * k + i)) };
                lanes[s] = _mm512_fmadd_ps(wv, xv, lanes[s]);
            }
        }
        for (value, [a, b, c, d, e, f, g, h]) in out.iter_mut().zip(acc) {
            let low = _mm512_add_ps(_mm512_add_ps(a, b), _mm512_add_ps(c, d));
            let high = _mm512_add_ps(_mm512_add_ps(e, f), _mm512_add_ps(g, h));
            *value = _mm512_reduce_add_ps(_mm512_add_ps(low, high));
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod avx512 {
    /// Never called: [`super::available`] is false off x86-64.
    pub(super) unsafe fn rows(_: &[f32], _: usize, _: usize, _: &[f32], _: &mut [f32]) {
        unreachable!("the AVX-512 kernel runs on x86-64 only")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn random(len: usize, rng: &mut StdRng) -> Vec<f32> {
        (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    /// Each output in f64, an independent reference.
    fn reference(x: &[f32], rows: usize, w: &[f32], n: usize) -> Vec<f64> {
        let k = x.len() / rows;
        let mut out = vec![0f64; rows * n];
        for r in 0..rows {
            for j in 0..n {
                out[r * n + j] = (0..k)
                    .map(|i| f64::from(x[r * k + i]) * f64::from(w[j * k + i]))
                    .sum();
            }
        }
        out
    }

    #[test]
    fn products_match_an_f64_reference_for_every_tail_and_split() {
        if !available() {
            eprintln!("no AVX-512F here: the kernel does not run, nothing to test");
            return;
        }
        let mut rng = StdRng::seed_from_u64(3);
        // k: whole steps, a masked tail, shorter than a step; n: whole and partial 4-row
        // tiles; rows: every tile width.
        for (k, n) in [(64, 130), (172, 67), (5, 9), (512, 257)] {
            let w = random(n * k, &mut rng);
            for rows in [1, 2, 3, 4, 5, 7, 16] {
                let x = random(rows * k, &mut rng);
                let expected = reference(&x, rows, &w, n);
                for parts in [1, 2, 3, 8] {
                    let got = product(&x, rows, &w, n, parts).expect("kernel available");
                    // f32 sums of k products of values in ±1: error ≤ k·ε·Σ|terms| ≲ 1e-4·k/512.
                    let tolerance = 1e-5 * k as f64;
                    for (g, e) in got.iter().zip(&expected) {
                        assert!(
                            (f64::from(*g) - e).abs() <= tolerance,
                            "k {k} n {n} rows {rows} parts {parts}: {g} vs {e}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_row_gets_the_same_bits_alone_or_among_others_on_any_split() {
        if !available() {
            return;
        }
        let mut rng = StdRng::seed_from_u64(5);
        let (k, n, rows) = (200, 70, 13);
        let w = random(n * k, &mut rng);
        let x = random(rows * k, &mut rng);
        let together = product(&x, rows, &w, n, 3).expect("kernel available");
        for r in 0..rows {
            let alone = product(&x[r * k..(r + 1) * k], 1, &w, n, 1).expect("kernel available");
            assert_eq!(alone, together[r * n..(r + 1) * n], "row {r}");
        }
    }
}
