//! What a run shows people: progress bars and lines, `metrics.csv`, the training curves,
//! confusion matrices, and the canvas they are drawn on.

pub mod canvas;
pub mod confusion;
pub mod curves;
pub mod metrics_log;
pub mod progress;
pub mod progress_bar;
