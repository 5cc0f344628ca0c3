//! The terminal side of fine-tuning: a renderer of Burn's training events that draws
//! `indicatif` bars on a terminal and prints plain lines elsewhere, with the epoch
//! summaries.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::time::Instant;

use burn::train::metric::{MetricDefinition, MetricId, NumericEntry};
use burn::train::renderer::{
    EvaluationName, EvaluationProgress, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining, ProgressType, TrainingProgress,
};

use indicatif::{ProgressBar, ProgressDrawTarget};

use crate::metrics::{ACCURACY, ITERATION_SPEED, LEARNING_RATE, LOSS, MACRO_F1};
pub use crate::report::progress_bar::ProgressMode;

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

/// Boxed maker of a bar's draw target (standard error, or a test's screen).
type TargetMaker = Box<dyn Fn() -> ProgressDrawTarget + Send + Sync>;

/// Burn's training events shown as people expect them (Burn's own renderer prints a Debug
/// line per batch without its `tui` feature): with bars on (see [`ProgressMode`]), an
/// `indicatif` bar per pass (each epoch's training, then its dev evaluation) with elapsed
/// time, time left, rate and running figures; otherwise a plain line every `log_every`
/// training iterations. Either way, after each split of each epoch a summary line of the
/// epoch means goes to standard output.
pub struct ProgressRenderer {
    num_epochs: usize,
    log_every: usize,
    /// Where bars are drawn; `None` for plain lines.
    target: Option<TargetMaker>,
    /// The bar of the pass being shown.
    bar: Option<ProgressBar>,
    names: HashMap<MetricId, String>,
    train: Running,
    valid: Running,
    /// Epoch being trained / validated, and whether its summary was already printed.
    train_epoch: Option<usize>,
    valid_epoch: Option<usize>,
    train_started: Option<Instant>,
    train_seconds: f64,
}

impl ProgressRenderer {
    /// A renderer for `num_epochs` epochs, drawing bars on standard error when `mode` says
    /// so, else printing a line every `log_every` iterations (0: summaries only).
    pub fn new(num_epochs: usize, log_every: usize, mode: ProgressMode) -> Self {
        let target: Option<TargetMaker> = if mode.bars() {
            Some(Box::new(ProgressDrawTarget::stderr))
        } else {
            None
        };
        Self::with_target(num_epochs, log_every, target)
    }

    /// A renderer drawing its bars to the targets `target` makes (a test's screen).
    pub fn with_draw_target(
        num_epochs: usize,
        log_every: usize,
        target: impl Fn() -> ProgressDrawTarget + Send + Sync + 'static,
    ) -> Self {
        Self::with_target(num_epochs, log_every, Some(Box::new(target)))
    }

    fn with_target(num_epochs: usize, log_every: usize, target: Option<TargetMaker>) -> Self {
        Self {
            num_epochs,
            log_every,
            target,
            bar: None,
            names: HashMap::new(),
            train: Running::default(),
            valid: Running::default(),
            train_epoch: None,
            valid_epoch: None,
            train_started: None,
            train_seconds: 0.0,
        }
    }

    fn name(&self, id: &MetricId) -> String {
        self.names
            .get(id)
            .cloned()
            .unwrap_or_else(|| format!("{id:?}"))
    }

    /// A line on standard output, above the bar if one is drawn.
    fn print_line(&self, line: &str) {
        let print = || {
            let mut out = std::io::stdout().lock();
            // Errors writing progress (a closed pipe) must not stop training.
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        };
        match &self.bar {
            Some(bar) => bar.suspend(print),
            None => print(),
        }
    }

    /// Show `(done, total)` of the pass `prefix` on its bar, starting the bar if the pass is
    /// new.
    fn draw_bar(&mut self, prefix: String, (done, total): (usize, usize), message: String) {
        let Some(target) = &self.target else {
            return;
        };
        let bar = self.bar.get_or_insert_with(|| {
            crate::report::progress_bar::styled_bar(total, prefix.clone(), "sentences", target())
        });
        if bar.prefix() != prefix {
            bar.finish_and_clear();
            *bar = crate::report::progress_bar::styled_bar(total, prefix, "sentences", target());
        }
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        bar.set_message(message);
    }

    fn clear_bar(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }

    /// Close the training pass of the current epoch: print and record its summary.
    fn finish_train(&mut self) {
        let Some(epoch) = self.train_epoch.take() else {
            return;
        };
        self.clear_bar();
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
        self.clear_bar();
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

impl Drop for ProgressRenderer {
    /// A run that stops early (Ctrl-C, a step budget) leaves its bar where it stopped.
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.abandon();
        }
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
        let metrics = format_metrics(&self.train.summary());
        if self.target.is_some() {
            let prefix = format!("epoch {epoch}/{} train", self.num_epochs);
            self.draw_bar(prefix, self.train.items, metrics);
        } else if self.log_every > 0 && iteration.is_multiple_of(self.log_every) {
            let (done, total) = self.train.items;
            self.print_line(&format!(
                "epoch {epoch}/{} iter {iteration} ({done}/{total}) {metrics}",
                self.num_epochs
            ));
        }
    }

    fn render_valid(&mut self, item: TrainingProgress, _indicators: Vec<ProgressType>) {
        let epoch = item.global_progress.items_processed;
        if self.valid_epoch != Some(epoch) {
            // Dev evaluation starts after the epoch's training pass.
            self.finish_train();
            self.valid_epoch = Some(epoch);
        }
        if self.target.is_some() {
            let items = item
                .progress
                .as_ref()
                .map_or((0, 0), |p| (p.items_processed, p.items_total));
            let prefix = format!("epoch {epoch}/{} dev  ", self.num_epochs);
            let metrics = format_metrics(&self.valid.summary());
            self.draw_bar(prefix, items, metrics);
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

    /// A terminal that records what is written to it.
    #[derive(Debug, Clone, Default)]
    struct Screen(std::sync::Arc<std::sync::Mutex<String>>);

    impl indicatif::TermLike for Screen {
        fn width(&self) -> u16 {
            160
        }
        fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> std::io::Result<()> {
            self.write_str(&format!("{s}\n"))
        }
        fn write_str(&self, s: &str) -> std::io::Result<()> {
            self.0.lock().unwrap().push_str(s);
            Ok(())
        }
        fn clear_line(&self) -> std::io::Result<()> {
            self.write_str("<clear>")
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn progress(done: usize, total: usize) -> burn::data::dataloader::Progress {
        burn::data::dataloader::Progress {
            items_processed: done,
            items_total: total,
        }
    }

    #[test]
    fn on_a_terminal_each_pass_gets_a_bar_with_time_left_rate_and_figures() {
        let screen = Screen::default();
        let target = screen.clone();
        let mut renderer = ProgressRenderer::with_draw_target(2, 50, move || {
            ProgressDrawTarget::term_like_with_hz(Box::new(target.clone()), 200)
        });
        renderer.train.add(LOSS, &NumericEntry::Value(1.5));
        let item = |done, iteration| TrainingProgress {
            progress: Some(progress(done, 80)),
            global_progress: progress(1, 2),
            iteration: Some(iteration),
        };
        renderer.render_train(item(40, 5), vec![]);
        std::thread::sleep(std::time::Duration::from_millis(20));
        renderer.render_train(item(80, 10), vec![]);
        std::thread::sleep(std::time::Duration::from_millis(20));
        // The dev pass closes the training bar and opens its own.
        renderer.render_valid(
            TrainingProgress {
                progress: Some(progress(8, 16)),
                global_progress: progress(1, 2),
                iteration: Some(1),
            },
            vec![],
        );
        drop(renderer);
        let text = screen.0.lock().unwrap().clone();
        let train = text
            .lines()
            .flat_map(|l| l.split("<clear>"))
            .find(|l| l.contains("80/80"))
            .unwrap_or_else(|| panic!("no finished training bar in {text:?}"));
        assert!(train.starts_with("epoch 1/2 train ["), "{train}");
        assert!(
            train.contains("=] 80/80 sentences [00:00:00<00:00:00, "),
            "{train}"
        );
        assert!(train.contains("/s] loss 1.5000"), "{train}");
        assert!(
            text.contains("epoch 1/2 dev   [") && text.contains("8/16 sentences"),
            "{text}"
        );
    }
}
