//! The exercise's own checks (RoPE, AdamW, the sanity check) and the tolerance rule they
//! compare with.

pub mod checks;
pub mod compare;
