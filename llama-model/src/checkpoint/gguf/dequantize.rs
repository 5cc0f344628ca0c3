//! ggml payloads to f32, exactly as llama.cpp's `dequantize_row_*` (and gguf-py's
//! `quants.py`) compute them: each product in f32, in the same order.

use half::{bf16, f16};

use crate::gguf::GgmlType;

/// The f32 values of `bytes`, a whole number of `kind` blocks (checked by the container).
pub fn dequantize(kind: GgmlType, bytes: &[u8]) -> Vec<f32> {
    let (block, block_bytes) = kind.block();
    let mut out = Vec::with_capacity(bytes.len() / block_bytes as usize * block as usize);
    for b in bytes.chunks_exact(block_bytes as usize) {
        match kind {
            GgmlType::F32 => out.push(f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            GgmlType::F16 => out.push(half(b, 0)),
            GgmlType::BF16 => out.push(bf16::from_le_bytes([b[0], b[1]]).to_f32()),
            GgmlType::Q4_0 => q4_0(b, &mut out),
            GgmlType::Q8_0 => q8_0(b, &mut out),
            GgmlType::Q4K => q4_k(b, &mut out),
            GgmlType::Q6K => q6_k(b, &mut out),
        }
    }
    out
}

/// The f16 at byte `at` of `b`, as f32.
fn half(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// `d · q` for 32 int8 quants.
fn q8_0(b: &[u8], out: &mut Vec<f32>) {
    let d = half(b, 0);
    out.extend(b[2..34].iter().map(|&q| d * f32::from(q as i8)));
}

/// A Q8_0 payload as its int8 quants and one f32 scale (the block's f16 `d`) per 32, the
/// form of [`crate::weights::q8_matrix::Q8Matrix`]; [`dequantize`] gives their products.
pub fn q8_0_parts(bytes: &[u8]) -> (Vec<i8>, Vec<f32>) {
    let blocks = bytes.chunks_exact(34);
    let scales = blocks.clone().map(|b| half(b, 0)).collect();
    let values = blocks
        .flat_map(|b| b[2..34].iter().map(|&q| q as i8))
        .collect();
    (values, scales)
}

/// `d · (q − 8)`: the low nibbles are values 0..16, the high nibbles 16..32.
fn q4_0(b: &[u8], out: &mut Vec<f32>) {
    let d = half(b, 0);
    let qs = &b[2..18];
    out.extend(qs.iter().map(|&q| d * f32::from((q & 0xF) as i8 - 8)));
    out.extend(qs.iter().map(|&q| d * f32::from((q >> 4) as i8 - 8)));
}

/// The 6-bit scale and min of sub-block `j` (llama.cpp's `get_scale_min_k4`).
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Q4_K: eight sub-blocks of 32, each `d·scale · q − dmin·min`.
fn q4_k(b: &[u8], out: &mut Vec<f32>) {
    let d = half(b, 0);
    let dmin = half(b, 2);
    let scales = &b[4..16];
    let qs = &b[16..144];
    for (chunk, q) in qs.chunks_exact(32).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * chunk, scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (d1, min1) = (d * f32::from(sc1), dmin * f32::from(m1));
        let (d2, min2) = (d * f32::from(sc2), dmin * f32::from(m2));
        out.extend(q.iter().map(|&v| d1 * f32::from(v & 0xF) - min1));
        out.extend(q.iter().map(|&v| d2 * f32::from(v >> 4) - min2));
    }
}

/// Q6_K: sixteen sub-blocks of 16, each `(d·scale) · (q − 32)` with 6-bit `q` split
/// over `ql` (low 4 bits) and `qh` (high 2 bits).
fn q6_k(b: &[u8], out: &mut Vec<f32>) {
    let (ql, qh, sc) = (&b[..128], &b[128..192], &b[192..208]);
    let d = half(b, 208);
    let mut y = [0f32; 256];
    for half_block in 0..2 {
        let (ql, qh) = (&ql[64 * half_block..], &qh[32 * half_block..]);
        let sc = &sc[8 * half_block..];
        let y = &mut y[128 * half_block..];
        for l in 0..32 {
            let is = l / 16;
            let q =
                |low: u8, shift: u8| f32::from(((low | (((qh[l] >> shift) & 3) << 4)) as i8) - 32);
            let scale = |k: usize| d * f32::from(sc[is + k] as i8);
            y[l] = scale(0) * q(ql[l] & 0xF, 0);
            y[l + 32] = scale(2) * q(ql[l + 32] & 0xF, 2);
            y[l + 64] = scale(4) * q(ql[l] >> 4, 4);
            y[l + 96] = scale(6) * q(ql[l + 32] >> 4, 6);
        }
    }
    out.extend_from_slice(&y);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_scales_signed_quants() {
        let mut block = f16::from_f32(0.5).to_le_bytes().to_vec();
        block.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let v = dequantize(GgmlType::Q8_0, &block);
        assert_eq!(v.len(), 32);
        assert_eq!(v[0], -8.0);
        assert_eq!(v[31], 7.5);
    }

    #[test]
    fn q4_0_puts_low_nibbles_first() {
        let mut block = f16::from_f32(2.0).to_le_bytes().to_vec();
        block.extend([0xF0u8; 16]);
        let v = dequantize(GgmlType::Q4_0, &block);
        assert_eq!(v[..16], [-16.0; 16]);
        assert_eq!(v[16..], [14.0; 16]);
    }
}
