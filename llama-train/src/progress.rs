//! The terminal side of fine-tuning: a plain-text renderer of Burn's training events that
//! redraws one status line on a terminal and prints plain lines elsewhere, with the epoch
//! summaries.

use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};
use std::time::Instant;

use burn::train::metric::{MetricDefinition, MetricId, NumericEntry};
use burn::train::renderer::{
    EvaluationName, EvaluationProgress, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining, ProgressType, TrainingProgress,
};

use crate::metrics::{ACCURACY, ITERATION_SPEED, LEARNING_RATE, LOSS, MACRO_F1};

/// Count-weighted running means of one split's metrics over the current epoch, for display.
///
/// It averages the metric entries Burn's event processor reports (the learning rate and the
/// iteration speed among them, which no prediction gives); the epoch summaries that a run
/// returns and saves come from the loop's [`Tally`](crate::metrics::Tally) instead.
#[derive(Default)]
struct Running {
    /// name -> (sum of value * count, sum of count, latest value)
    values: HashMap<String, (f64, usize, f64)>,
    iterations: usize,
    items: (usize, usize),
}

impl Running {
    fn add(&mut self, name: &str, entry: &NumericEntry) {
        let (value, count) = match entry {
            NumericEntry::Value(v) => (*v, 1),
            NumericEntry::Aggregated {
                aggregated_value,
                count,
            } => (*aggregated_value, *count),
        };
        let slot = self
            .values
            .entry(name.to_string())
            .or_insert((0.0, 0, f64::NAN));
        if value.is_finite() {
            slot.0 += value * count as f64;
            slot.1 += count;
        }
        slot.2 = value;
    }

    /// Epoch means, except for the learning rate and speed, whose latest value is the one
    /// that matters (the speed metric is already an epoch average).
    fn summary(&self) -> BTreeMap<String, f64> {
        self.values
            .iter()
            .map(|(name, &(sum, count, latest))| {
                let value = if name == LEARNING_RATE || name == ITERATION_SPEED || count == 0 {
                    latest
                } else {
                    sum / count as f64
                };
                (name.clone(), value)
            })
            .collect()
    }
}

/// The order metrics are shown in.
fn metric_rank(name: &str) -> usize {
    [LOSS, ACCURACY, MACRO_F1, LEARNING_RATE, ITERATION_SPEED]
        .iter()
        .position(|n| *n == name)
        .unwrap_or(usize::MAX)
}

fn format_metrics(values: &BTreeMap<String, f64>) -> String {
    let mut names: Vec<&String> = values.keys().collect();
    names.sort_by_key(|name| (metric_rank(name), name.as_str()));
    names
        .into_iter()
        .map(|name| {
            let v = values[name];
            match name.as_str() {
                ACCURACY | MACRO_F1 => format!("{} {v:.2}%", name.to_lowercase()),
                LEARNING_RATE => format!("lr {v:.1e}"),
                ITERATION_SPEED => format!("{v:.2} it/s"),
                LOSS => format!("loss {v:.4}"),
                other => format!("{} {v:.4}", other.to_lowercase()),
            }
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

/// A plain-text [`MetricsRenderer`] (Burn's own prints a Debug line per batch without the
/// `tui` feature): on a terminal it redraws one status line; otherwise it prints a line
/// every `log_every` training iterations. After each split of each epoch it prints a summary
/// line of the epoch means.
pub struct ProgressRenderer {
    num_epochs: usize,
    log_every: usize,
    terminal: bool,
    names: HashMap<MetricId, String>,
    train: Running,
    valid: Running,
    /// Epoch being trained / validated, and whether its summary was already printed.
    train_epoch: Option<usize>,
    valid_epoch: Option<usize>,
    train_started: Option<Instant>,
    train_seconds: f64,
    last_draw: Option<Instant>,
}

impl ProgressRenderer {
    /// A renderer for `num_epochs` epochs printing a line every `log_every` iterations
    /// (when stdout is not a terminal).
    pub fn new(num_epochs: usize, log_every: usize) -> Self {
        Self {
            num_epochs,
            log_every,
            terminal: std::io::stdout().is_terminal(),
            names: HashMap::new(),
            train: Running::default(),
            valid: Running::default(),
            train_epoch: None,
            valid_epoch: None,
            train_started: None,
            train_seconds: 0.0,
            last_draw: None,
        }
    }

    fn name(&self, id: &MetricId) -> String {
        self.names
            .get(id)
            .cloned()
            .unwrap_or_else(|| format!("{id:?}"))
    }

    fn print_line(&mut self, line: &str) {
        let mut out = std::io::stdout().lock();
        // Errors writing progress (a closed pipe) must not stop training.
        if self.terminal {
            let _ = write!(out, "\r\x1b[2K{line}\n");
        } else {
            let _ = writeln!(out, "{line}");
        }
        let _ = out.flush();
    }

    fn draw_status(&mut self, line: &str) {
        let now = Instant::now();
        // Redraw at most ten times a second.
        if self
            .last_draw
            .is_some_and(|t| now.duration_since(t).as_millis() < 100)
        {
            return;
        }
        self.last_draw = Some(now);
        let mut out = std::io::stdout().lock();
        let _ = write!(out, "\r\x1b[2K{line}");
        let _ = out.flush();
    }

    /// Close the training pass of the current epoch: print and record its summary.
    fn finish_train(&mut self) {
        let Some(epoch) = self.train_epoch.take() else {
            return;
        };
        self.train_seconds = self
            .train_started
            .map_or(0.0, |t| t.elapsed().as_secs_f64());
        let summary = self.train.summary();
        let line = format!(
            "epoch {epoch}/{} train: {} ({:.1} s)",
            self.num_epochs,
            format_metrics(&summary),
            self.train_seconds
        );
        self.print_line(&line);
        self.train = Running::default();
    }

    /// Close the dev evaluation of the current epoch: print and record its summary.
    fn finish_valid(&mut self) {
        let Some(epoch) = self.valid_epoch.take() else {
            return;
        };
        let summary = self.valid.summary();
        let line = format!(
            "epoch {epoch}/{} dev:   {}",
            self.num_epochs,
            format_metrics(&summary)
        );
        self.print_line(&line);
        self.valid = Running::default();
    }
}

impl MetricsRendererTraining for ProgressRenderer {
    fn update_train(&mut self, state: MetricState) {
        if let MetricState::Numeric(entry, value) = state {
            let name = self.name(&entry.metric_id);
            self.train.add(&name, &value);
        }
    }

    fn update_valid(&mut self, state: MetricState) {
        if let MetricState::Numeric(entry, value) = state {
            let name = self.name(&entry.metric_id);
            self.valid.add(&name, &value);
        }
    }

    fn render_train(&mut self, item: TrainingProgress, _indicators: Vec<ProgressType>) {
        let epoch = item.global_progress.items_processed;
        if self.train_epoch != Some(epoch) {
            // A new epoch: the previous one's dev evaluation is complete.
            self.finish_valid();
            self.train_epoch = Some(epoch);
            self.train_started = Some(Instant::now());
        }
        self.train.iterations = item.iteration.unwrap_or(self.train.iterations + 1);
        if let Some(p) = &item.progress {
            self.train.items = (p.items_processed, p.items_total);
        }
        let iteration = self.train.iterations;
        let (done, total) = self.train.items;
        let line = format!(
            "epoch {epoch}/{} iter {iteration} ({done}/{total}) {}",
            self.num_epochs,
            format_metrics(&self.train.summary())
        );
        if self.terminal {
            self.draw_status(&line);
        } else if self.log_every > 0 && iteration.is_multiple_of(self.log_every) {
            self.print_line(&line);
        }
    }

    fn render_valid(&mut self, item: TrainingProgress, _indicators: Vec<ProgressType>) {
        let epoch = item.global_progress.items_processed;
        if self.valid_epoch != Some(epoch) {
            // Dev evaluation starts after the epoch's training pass.
            self.finish_train();
            self.valid_epoch = Some(epoch);
        }
        if self.terminal {
            let (done, total) = item
                .progress
                .as_ref()
                .map_or((0, 0), |p| (p.items_processed, p.items_total));
            let line = format!("epoch {epoch}/{} dev ({done}/{total})", self.num_epochs);
            self.draw_status(&line);
        }
    }

    fn on_train_end(
        &mut self,
        _summary: Option<burn::train::LearnerSummary>,
    ) -> Result<(), Box<dyn std::error::Error>> {
        self.finish_train();
        self.finish_valid();
        Ok(())
    }
}

impl MetricsRendererEvaluation for ProgressRenderer {
    fn update_test(&mut self, _name: EvaluationName, _state: MetricState) {}

    fn render_test(&mut self, _item: EvaluationProgress, _indicators: Vec<ProgressType>) {}
}

impl MetricsRenderer for ProgressRenderer {
    fn manual_close(&mut self) {}

    fn register_metric(&mut self, definition: MetricDefinition) {
        self.names.insert(definition.metric_id, definition.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_means_weight_by_count_but_keep_the_latest_rate() {
        let mut running = Running::default();
        let agg = |v: f64, n: usize| NumericEntry::Aggregated {
            aggregated_value: v,
            count: n,
        };
        running.add(LOSS, &agg(2.0, 8));
        running.add(LOSS, &agg(1.0, 2));
        running.add(LEARNING_RATE, &agg(1e-3, 1));
        running.add(LEARNING_RATE, &agg(5e-4, 1));
        let summary = running.summary();
        assert!((summary[LOSS] - 1.8).abs() < 1e-12);
        assert_eq!(summary[LEARNING_RATE], 5e-4);
        let line = format_metrics(&summary);
        assert_eq!(line, "loss 1.8000 | lr 5.0e-4");
    }
}
