//! Flag groups that several commands share, and parsers of flag values that clap cannot check
//! by itself.

pub mod classify;
pub mod collective;
pub mod data_files;
pub mod lora;
pub mod model;
pub mod sampling;
pub mod text_format;
pub mod values;
pub mod weight_dtype;
