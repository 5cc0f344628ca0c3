//! Training parts: the exercise's AdamW, global-norm gradient clipping, and seeded dropout.

pub mod adamw;
pub mod grad_clip;
pub mod seeded_dropout;
