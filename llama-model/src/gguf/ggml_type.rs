//! The ggml tensor types we read, with their block layout.

use std::fmt;

/// A ggml storage type (the `u32` of a GGUF tensor info).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    /// 32 values: an f16 scale and 16 bytes of 4-bit quants (offset 8).
    Q4_0,
    /// 32 values: an f16 scale and 32 int8 quants.
    Q8_0,
    /// 256 values: f16 `d` and `dmin`, 12 bytes of 6-bit scales and mins, 128 bytes of
    /// 4-bit quants.
    Q4K,
    /// 256 values: 128 bytes of low 4 bits, 64 of high 2 bits, 16 int8 scales, f16 `d`.
    Q6K,
}

impl GgmlType {
    /// The type of ggml id `id`, if we read it.
    pub fn from_id(id: u32) -> Option<Self> {
        [
            Self::F32,
            Self::F16,
            Self::Q4_0,
            Self::Q8_0,
            Self::Q4K,
            Self::Q6K,
            Self::BF16,
        ]
        .into_iter()
        .find(|kind| kind.id() == id)
    }

    /// The ggml id of the type.
    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q8_0 => 8,
            Self::Q4K => 12,
            Self::Q6K => 14,
            Self::BF16 => 30,
        }
    }

    /// (values per block, bytes per block).
    pub fn block(self) -> (u64, u64) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::BF16 => (1, 2),
            Self::Q4_0 => (32, 18),
            Self::Q8_0 => (32, 34),
            Self::Q4K => (256, 144),
            Self::Q6K => (256, 210),
        }
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::Q4_0 => "Q4_0",
            Self::Q8_0 => "Q8_0",
            Self::Q4K => "Q4_K",
            Self::Q6K => "Q6_K",
        })
    }
}
