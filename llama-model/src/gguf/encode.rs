//! f32 values to ggml payloads, as llama.cpp (and gguf-py's `quants.py`, which matches it
//! bit for bit) stores them: F32, F16 and BF16 rounded to nearest (ties to even), Q8_0 as
//! ggml's `quantize_row_q8_0_ref`.

use half::{bf16, f16};

use super::GgmlType;

/// `values` stored as `kind` (F32, F16, BF16 or Q8_0; Q8_0 needs whole blocks of 32), or
/// `None` for a type we do not write.
pub fn encode(kind: GgmlType, values: &[f32]) -> Option<Vec<u8>> {
    Some(match kind {
        GgmlType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        GgmlType::F16 => values
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_le_bytes())
            .collect(),
        GgmlType::BF16 => values
            .iter()
            .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
            .collect(),
        GgmlType::Q8_0 if values.len().is_multiple_of(32) => quantize_q8_0(values),
        _ => return None,
    })
}

/// Q8_0 blocks of `values` (a multiple of 32 long): per 32 values, the f16 scale
/// `d = amax / 127` and the int8 quants `round(x · (1 / d))`, rounded half away from zero
/// (C's `roundf`), each step in f32 as in ggml.
pub fn quantize_q8_0(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() / 32 * 34);
    for block in values.chunks_exact(32) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        out.extend(block.iter().map(|&x| (x * id).round() as i8 as u8));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_scales_by_the_largest_magnitude_and_rounds_half_away() {
        let mut block = [0f32; 32];
        block[0] = -2.54;
        block[1] = 0.01;
        block[2] = -0.01;
        let bytes = quantize_q8_0(&block);
        assert_eq!(bytes.len(), 34);
        let d = 2.54f32 / 127.0;
        assert_eq!(&bytes[..2], &f16::from_f32(d).to_le_bytes());
        assert_eq!(bytes[2] as i8, -127);
        let id = 1.0 / d;
        assert_eq!(bytes[3] as i8, (0.01f32 * id).round() as i8);
        assert_eq!(bytes[4] as i8, -(bytes[3] as i8));
        assert!(bytes[5..].iter().all(|&q| q == 0));
    }

    #[test]
    fn an_all_zero_block_has_a_zero_scale() {
        assert_eq!(quantize_q8_0(&[0.0; 32]), vec![0u8; 34]);
    }

    #[test]
    fn q8_0_needs_whole_blocks() {
        assert!(encode(GgmlType::Q8_0, &[1.0; 31]).is_none());
        assert_eq!(encode(GgmlType::F16, &[1.0]).unwrap(), vec![0x00, 0x3c]);
        assert_eq!(encode(GgmlType::BF16, &[1.0]).unwrap(), vec![0x80, 0x3f]);
    }
}
