//! FNV-1a, the 64-bit hash behind the run fingerprints (training data, settings, weights):
//! stable across runs, machines and Rust versions, unlike `std`'s hasher.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// A running FNV-1a hash.
#[derive(Debug, Clone, Copy)]
pub struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv1a {
    /// Hash `bytes` in.
    pub fn bytes(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    /// Hash a value's little-endian bytes in.
    pub fn u64(&mut self, value: u64) {
        self.bytes(&value.to_le_bytes());
    }

    /// The hash so far.
    pub fn finish(self) -> u64 {
        self.0
    }
}

/// The FNV-1a of `value`'s JSON: a digest of a run's settings (the ranks of a
/// data-parallel run compare theirs).
pub fn json_digest<T: serde::Serialize>(value: &T) -> u64 {
    let mut hash = Fnv1a::default();
    hash.bytes(serde_json::to_string(value).unwrap_or_default().as_bytes());
    hash.finish()
}

/// The FNV-1a of every float parameter's f32 bits, in the module's visiting order: equal
/// for two modules exactly when (barring collisions) their weights are bit-identical.
pub fn weights_digest<B: Backend, M: Module<B>>(module: &M) -> u64 {
    struct Digest(Fnv1a);
    impl<B: Backend> ModuleVisitor<B> for Digest {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let data = param.val().into_data().convert::<f32>();
            for value in data.iter::<f32>() {
                self.0.bytes(&value.to_bits().to_le_bytes());
            }
        }
    }
    let mut digest = Digest(Fnv1a::default());
    module.visit(&mut digest);
    digest.0.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_published_fnv1a_vectors() {
        // From the FNV reference (http://www.isthe.com/chongo/tech/comp/fnv/): "" and "a".
        assert_eq!(Fnv1a::default().finish(), 0xcbf2_9ce4_8422_2325);
        let mut h = Fnv1a::default();
        h.bytes(b"a");
        assert_eq!(h.finish(), 0xaf63_dc4c_8601_ec8c);
    }
}
