//! Weight storage for fast decoding: half-precision and int8 (Q8_0) matrices, their products,
//! and row products split across threads.

pub mod f32_rows;
#[cfg(feature = "flex")]
pub mod flex_rows;
pub mod half;
pub mod held_bytes;
pub mod q8_cpu;
pub mod q8_kernel;
pub mod q8_matrix;
pub mod q8_product;
mod q8_vnni;
pub mod q8_weights;
pub mod split_matmul;
