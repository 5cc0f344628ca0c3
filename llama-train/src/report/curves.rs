//! `curves.png`: a run's training curves at a glance, drawn from its `metrics.csv` rows.
//!
//! Left, the training loss per step (each point the mean since the previous logged row) with
//! the dev loss at each evaluation, and a dashed line where every epoch ends. Right, the dev
//! figures: accuracy and macro-F1 per epoch for a classifier (higher is better), perplexity
//! per evaluation step for a language model (lower is better), with the best evaluation
//! marked: the one a run keeps (the first of equals, as the training loops choose).

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::report::canvas::{save_picture, Picture, PlotError, FONT};
use crate::report::metrics_log::{MetricsRow, Split};

/// Size of `curves.png` in pixels.
pub const CURVES_SIZE: (u32, u32) = (1200, 460);

/// File name of the curves picture in a run folder.
pub const CURVES_FILE: &str = "curves.png";

const TRAIN_COLOUR: RGBColor = RGBColor(31, 119, 180);
const DEV_COLOUR: RGBColor = RGBColor(214, 39, 40);
const F1_COLOUR: RGBColor = RGBColor(44, 160, 44);
const BEST_COLOUR: RGBColor = RGBColor(255, 127, 14);

fn text<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// A range `lo..hi` around `values` with a 5% margin, never empty.
fn padded_range(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        return 0.0..1.0;
    }
    let pad = ((hi - lo) * 0.05).max(1e-3 * hi.abs().max(1.0));
    (lo - pad)..(hi + pad)
}

/// What the right-hand panel shows for each dev evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DevFigure {
    /// Accuracy and macro-F1, in percent; best = highest accuracy.
    Classification,
    /// Perplexity; best = lowest.
    Perplexity,
}

impl DevFigure {
    /// Where a dev value sits on the panel's vertical axis: percent as it is; perplexity on
    /// a log axis (its step-0 value can be tens of times the later ones, which a linear
    /// axis would flatten against the floor).
    fn plotted(self, value: f64) -> f64 {
        match self {
            Self::Classification => value,
            Self::Perplexity => value.log10(),
        }
    }

    /// The label of the vertical axis at position `v`.
    fn label(self, v: f64) -> String {
        match self {
            Self::Classification => format!("{v:.0}"),
            Self::Perplexity => {
                let value = 10f64.powf(v);
                if value >= 100.0 {
                    format!("{value:.0}")
                } else {
                    format!("{value:.1}")
                }
            }
        }
    }
}

/// A named line of the dev panel: name, colour, `(epoch, value)` points.
type Series = (&'static str, RGBColor, Vec<(f64, f64)>);

/// The curves of one run.
pub(crate) struct Curves<'a> {
    rows: &'a [MetricsRow],
}

impl Curves<'_> {
    fn train(&self) -> Vec<(f64, f64)> {
        self.rows
            .iter()
            .filter(|r| r.split == Split::Train)
            .filter_map(|r| Some((r.step as f64, r.loss?)))
            .collect()
    }

    fn dev(&self) -> Vec<&MetricsRow> {
        self.rows.iter().filter(|r| r.split == Split::Dev).collect()
    }

    fn dev_figure(&self) -> Option<DevFigure> {
        let dev = self.dev();
        if dev.iter().any(|r| r.accuracy.is_some()) {
            Some(DevFigure::Classification)
        } else if dev.iter().any(|r| r.perplexity.is_some()) {
            Some(DevFigure::Perplexity)
        } else {
            None
        }
    }

    /// Index in [`dev`](Self::dev) of the best evaluation: the first of equals.
    fn best(&self, figure: DevFigure) -> Option<usize> {
        let mut best: Option<(usize, f64)> = None;
        for (i, row) in self.dev().iter().enumerate() {
            let (value, better) = match figure {
                DevFigure::Classification => (row.accuracy, 1.0),
                DevFigure::Perplexity => (row.perplexity, -1.0),
            };
            let Some(value) = value.filter(|v| v.is_finite()) else {
                continue;
            };
            if best.is_none_or(|(_, b)| better * value > better * b) {
                best = Some((i, value));
            }
        }
        best.map(|(i, _)| i)
    }

    fn draw_loss<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let train = self.train();
        let dev: Vec<(f64, f64)> = self
            .dev()
            .iter()
            .filter_map(|r| Some((r.step as f64, r.loss?)))
            .collect();
        let last_step = self.rows.iter().map(|r| r.step).max().unwrap_or(1).max(1) as f64;
        let y = padded_range(train.iter().chain(&dev).map(|p| p.1));
        let mut chart = ChartBuilder::on(area)
            .caption("Loss", (FONT, 22))
            .margin(12)
            .x_label_area_size(42)
            .y_label_area_size(62)
            .build_cartesian_2d(0.0..last_step * 1.02, y.clone())
            .map_err(text)?;
        chart
            .configure_mesh()
            .x_desc("optimizer step")
            .y_desc("loss")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 16))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(text)?;
        // Epoch ends: a dashed line, the epoch's number at its foot on the left (clear of the
        // legend and of the frame's right edge).
        let foot = y.start + (y.end - y.start) * 0.02;
        let epoch_font = (FONT, 13)
            .into_font()
            .color(&BLACK.mix(0.6))
            .pos(Pos::new(HPos::Right, VPos::Bottom));
        // The last evaluation of each epoch is at its end (a language model is also evaluated
        // within epochs, and before training, as epoch 0).
        let dev_rows = self.dev();
        let epoch_ends = dev_rows.iter().enumerate().filter(|(i, r)| {
            r.epoch > 0 && dev_rows.get(i + 1).is_none_or(|next| next.epoch != r.epoch)
        });
        for (_, row) in epoch_ends {
            let x = row.step as f64;
            chart
                .draw_series(DashedLineSeries::new(
                    vec![(x, y.start), (x, y.end)],
                    6,
                    4,
                    BLACK.mix(0.35).stroke_width(1),
                ))
                .map_err(text)?;
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("epoch {} ", row.epoch),
                    (x, foot),
                    epoch_font.clone(),
                )))
                .map_err(text)?;
        }
        chart
            .draw_series(LineSeries::new(
                train.iter().copied(),
                TRAIN_COLOUR.stroke_width(2),
            ))
            .map_err(text)?
            .label("train (mean since the previous point)")
            .legend(|(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], TRAIN_COLOUR.stroke_width(2))
            });
        if !dev.is_empty() {
            chart
                .draw_series(dev.iter().map(|&p| Circle::new(p, 5, DEV_COLOUR.filled())))
                .map_err(text)?
                .label("dev, at each evaluation")
                .legend(|(x, y)| Circle::new((x + 10, y), 5, DEV_COLOUR.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .label_font((FONT, 14))
            .draw()
            .map_err(text)
    }

    /// The dev panel's lines: accuracy and macro-F1 per epoch, or perplexity per step.
    fn dev_series(&self, figure: DevFigure) -> Vec<Series> {
        let dev = self.dev();
        match figure {
            DevFigure::Classification => vec![
                (
                    "dev accuracy",
                    DEV_COLOUR,
                    dev.iter()
                        .filter_map(|r| Some((r.epoch as f64, 100.0 * r.accuracy?)))
                        .collect(),
                ),
                (
                    "dev macro-F1",
                    F1_COLOUR,
                    dev.iter()
                        .filter_map(|r| Some((r.epoch as f64, 100.0 * r.macro_f1?)))
                        .collect(),
                ),
            ],
            DevFigure::Perplexity => vec![(
                "dev perplexity",
                DEV_COLOUR,
                dev.iter()
                    .filter_map(|r| Some((r.step as f64, figure.plotted(r.perplexity?))))
                    .collect(),
            )],
        }
    }

    fn draw_dev<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let dev = self.dev();
        let Some(figure) = self.dev_figure() else {
            return area
                .draw(&Text::new(
                    "no dev evaluation yet",
                    (40, 200),
                    (FONT, 18).into_font(),
                ))
                .map_err(text);
        };
        let series = self.dev_series(figure);
        // A classifier is evaluated once per epoch; a language model every so many steps.
        let x_of = |r: &MetricsRow| match figure {
            DevFigure::Classification => r.epoch as f64,
            DevFigure::Perplexity => r.step as f64,
        };
        let first = dev.first().map_or(1.0, |r| x_of(r));
        let last = dev.last().map_or(1.0, |r| x_of(r));
        let x = match figure {
            DevFigure::Classification => (first - 0.5)..(last + 0.5),
            DevFigure::Perplexity => {
                let pad = ((last - first) * 0.04).max(0.5);
                (first - pad)..(last + pad)
            }
        };
        let y = padded_range(series.iter().flat_map(|s| s.2.iter().map(|p| p.1)));
        let (caption, y_desc) = match figure {
            DevFigure::Classification => ("Dev accuracy and macro-F1", "percent"),
            DevFigure::Perplexity => ("Dev perplexity", "perplexity (log scale)"),
        };
        let mut chart = ChartBuilder::on(area)
            .caption(caption, (FONT, 22))
            .margin(12)
            .x_label_area_size(42)
            .y_label_area_size(62)
            .build_cartesian_2d(x, y.clone())
            .map_err(text)?;
        let epochs = (last - first) as usize + 1;
        let (x_desc, x_labels) = match figure {
            DevFigure::Classification => ("epoch", epochs.min(12) + 1),
            DevFigure::Perplexity => ("step", 8),
        };
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .x_labels(x_labels)
            .y_label_formatter(&|v| figure.label(*v))
            .x_label_formatter(&|v| {
                if (v - v.round()).abs() < 1e-6 {
                    format!("{}", v.round())
                } else {
                    String::new()
                }
            })
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 16))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(text)?;
        if let Some(best) = self.best(figure).map(|i| dev[i]) {
            let bx = x_of(best);
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(bx, y.start), (bx, y.end)],
                    BEST_COLOUR.stroke_width(3),
                )))
                .map_err(text)?
                .label(match figure {
                    DevFigure::Classification => format!("best: epoch {}", best.epoch),
                    DevFigure::Perplexity => format!("best: step {}", best.step),
                })
                .legend(|(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], BEST_COLOUR.stroke_width(3))
                });
        }
        for (name, colour, points) in series {
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    colour.stroke_width(2),
                ))
                .map_err(text)?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                });
            chart
                .draw_series(points.iter().map(|&p| Circle::new(p, 4, colour.filled())))
                .map_err(text)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .label_font((FONT, 14))
            .draw()
            .map_err(text)
    }
}

impl Picture for Curves<'_> {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<(), String> {
        area.fill(&WHITE).map_err(text)?;
        let (left, right) = area.split_horizontally(CURVES_SIZE.0 * 11 / 20);
        self.draw_loss(&left)?;
        self.draw_dev(&right)
    }
}

/// Draw the curves of `rows` to `path` (`.png` or `.svg`).
pub fn save_curves(rows: &[MetricsRow], path: &Path) -> Result<(), PlotError> {
    if !rows.iter().any(|r| r.loss.is_some()) {
        return Err(PlotError::NoData {
            path: path.to_path_buf(),
            detail: "the metrics have no loss yet".into(),
        });
    }
    save_picture(&Curves { rows }, path, CURVES_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::canvas::png_size;

    fn row(epoch: usize, step: usize, split: Split, loss: f64, accuracy: f64) -> MetricsRow {
        MetricsRow {
            epoch,
            step,
            split,
            loss: Some(loss),
            accuracy: Some(accuracy),
            macro_f1: Some(accuracy * 0.8),
            lr: None,
            perplexity: None,
            wall_seconds: 0.0,
        }
    }

    #[test]
    fn perplexity_is_drawn_on_a_log_axis_and_labelled_in_its_own_units() {
        let figure = DevFigure::Perplexity;
        // A pretraining run's step-0 perplexity and two later ones: on a linear axis the
        // descent from 45 to 15 would be 6% of the panel's height; on a log axis it is 31%.
        let (start, later, last) = (
            figure.plotted(507.0),
            figure.plotted(45.0),
            figure.plotted(15.0),
        );
        let share = (later - last) / (start - last);
        assert!((share - 3f64.log10() / (507f64 / 15.0).log10()).abs() < 1e-12);
        assert!(share > 0.3, "{share}");
        assert_eq!(figure.label(figure.plotted(507.0)), "507");
        assert_eq!(figure.label(figure.plotted(15.0)), "15.0");
        let classes = DevFigure::Classification;
        assert_eq!(classes.plotted(42.5), 42.5);
        assert_eq!(classes.label(42.0), "42");
    }

    #[test]
    fn the_best_epoch_is_the_first_highest_accuracy_or_the_lowest_perplexity() {
        let rows = [
            row(1, 10, Split::Train, 2.0, 0.3),
            row(1, 20, Split::Dev, 1.8, 0.40),
            row(2, 40, Split::Dev, 1.7, 0.45),
            row(3, 60, Split::Dev, 1.6, 0.45),
        ];
        let curves = Curves { rows: &rows };
        assert_eq!(curves.dev_figure(), Some(DevFigure::Classification));
        assert_eq!(curves.best(DevFigure::Classification), Some(1));

        let lm: Vec<MetricsRow> = [30.0, 12.0, 15.0]
            .iter()
            .enumerate()
            .map(|(i, &p)| MetricsRow {
                accuracy: None,
                macro_f1: None,
                perplexity: Some(p),
                ..row(i + 1, 10 * (i + 1), Split::Dev, f64::ln(p), 0.0)
            })
            .collect();
        let curves = Curves { rows: &lm };
        assert_eq!(curves.dev_figure(), Some(DevFigure::Perplexity));
        assert_eq!(curves.best(DevFigure::Perplexity), Some(1));
    }

    #[test]
    fn curves_are_drawn_even_before_the_first_dev_evaluation_but_not_from_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CURVES_FILE);
        save_curves(&[row(1, 10, Split::Train, 2.0, 0.3)], &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(png_size(&bytes), Some(CURVES_SIZE));

        let err = save_curves(&[], &dir.path().join("none.png")).unwrap_err();
        assert!(matches!(err, PlotError::NoData { .. }), "{err}");
        assert!(!dir.path().join("none.png").exists());
    }
}
