//! A classifier's confusion matrix for people: a text table with the label names, and a
//! picture (`confusion-<split>.png`) with each cell shaded by its share of the true class.
//!
//! The counting is [`ConfusionMatrix`]'s; this file only lays the counts out over every
//! class `0..n` (a class that neither occurs nor is predicted still gets its row and column).

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::metrics::{ConfusionMatrix, MetricsError};
use crate::report::canvas::{save_picture, Picture, PlotError, FONT};

/// `counts[t][p]`: examples of true class `t` predicted as `p`, over classes `0..n`, with
/// the classes' names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfusionReport {
    names: Vec<String>,
    counts: Vec<Vec<usize>>,
}

impl ConfusionReport {
    /// The matrix of `(truth[i], predictions[i])` pairs. Class `c` is called `names[c]`; a
    /// class beyond the names (a placeholder label) is called by its number.
    pub fn new<S: AsRef<str>>(
        truth: &[usize],
        predictions: &[usize],
        names: &[S],
    ) -> Result<Self, MetricsError> {
        let matrix = ConfusionMatrix::new(truth, predictions)?;
        let n = matrix
            .classes()
            .last()
            .map_or(0, |&c| c + 1)
            .max(names.len());
        let names = (0..n)
            .map(|c| {
                names
                    .get(c)
                    .map_or_else(|| c.to_string(), |s| s.as_ref().to_string())
            })
            .collect();
        let counts = (0..n)
            .map(|t| (0..n).map(|p| matrix.count(t, p)).collect())
            .collect();
        Ok(Self { names, counts })
    }

    /// The counts, rows = true class, columns = predicted class.
    pub fn counts(&self) -> &[Vec<usize>] {
        &self.counts
    }

    /// The class names, in class order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Number of examples.
    pub fn total(&self) -> usize {
        self.counts.iter().flatten().sum()
    }

    /// Fraction on the diagonal.
    pub fn accuracy(&self) -> f64 {
        let correct: usize = (0..self.counts.len()).map(|i| self.counts[i][i]).sum();
        correct as f64 / self.total().max(1) as f64
    }

    /// The matrix as an aligned text table: a header line of predicted names, then one line
    /// per true class with its counts and its total.
    ///
    /// ```text
    ///               predicted →
    /// true ↓        negative  positive  total
    /// negative            40         5     45
    /// positive             3        52     55
    /// ```
    pub fn table(&self) -> String {
        let width = self
            .names
            .iter()
            .map(|n| n.chars().count())
            .chain(self.counts.iter().flatten().map(|c| c.to_string().len()))
            .chain(std::iter::once(5))
            .max()
            .unwrap_or(5);
        let first = self
            .names
            .iter()
            .map(|n| n.chars().count())
            .chain(std::iter::once("true ↓".chars().count()))
            .max()
            .unwrap_or(6);
        let mut out = format!("{:first$}  predicted →\n", "");
        out.push_str(&format!("{:first$}", "true ↓"));
        for name in &self.names {
            out.push_str(&format!("  {name:>width$}"));
        }
        out.push_str(&format!("  {:>width$}\n", "total"));
        for (name, row) in self.names.iter().zip(&self.counts) {
            out.push_str(&format!("{name:first$}"));
            for count in row {
                out.push_str(&format!("  {count:>width$}"));
            }
            out.push_str(&format!("  {:>width$}\n", row.iter().sum::<usize>()));
        }
        out
    }

    /// Draw the matrix to `path` (`.png` or `.svg`) under the title `title`.
    pub fn save_picture(&self, title: &str, path: &Path) -> Result<(), PlotError> {
        let layout = Layout::for_classes(self.names.len());
        save_picture(
            &ConfusionPicture {
                report: self,
                title,
                layout,
            },
            path,
            layout.size(self.names.len()),
        )
    }
}

/// Pixel geometry of the picture.
#[derive(Debug, Clone, Copy)]
struct Layout {
    left: i32,
    top: i32,
    cell: i32,
}

impl Layout {
    fn for_classes(n: usize) -> Self {
        Self {
            left: 170,
            top: 90,
            cell: if n <= 6 { 96 } else { (600 / n as i32).max(36) },
        }
    }

    fn size(&self, n: usize) -> (u32, u32) {
        let grid = self.cell * n as i32;
        (
            (self.left + grid + 40) as u32,
            (self.top + grid + 50) as u32,
        )
    }
}

struct ConfusionPicture<'a> {
    report: &'a ConfusionReport,
    title: &'a str,
    layout: Layout,
}

/// Text of `size` pixels in `colour`, anchored at `pos`.
fn label_style(size: u32, colour: RGBColor, pos: Pos) -> TextStyle<'static> {
    TextStyle {
        font: (FONT, size).into_font(),
        color: colour.to_backend_color(),
        pos,
    }
}

/// White for 0, dark blue for 1.
fn shade(fraction: f64) -> RGBColor {
    let f = fraction.clamp(0.0, 1.0);
    let mix = |from: f64, to: f64| (from + (to - from) * f).round() as u8;
    RGBColor(mix(255.0, 8.0), mix(255.0, 48.0), mix(255.0, 107.0))
}

impl Picture for ConfusionPicture<'_> {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let text = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
        let Layout { left, top, cell } = self.layout;
        let n = self.report.names.len() as i32;
        let grid = cell * n;
        area.fill(&WHITE).map_err(text)?;
        let centred = Pos::new(HPos::Center, VPos::Center);
        let right = Pos::new(HPos::Right, VPos::Center);
        let title = format!(
            "{} (accuracy {:.1}%, {} examples)",
            self.title,
            100.0 * self.report.accuracy(),
            self.report.total()
        );
        area.draw(&Text::new(
            title,
            (left + grid / 2, 24),
            label_style(20, BLACK, centred),
        ))
        .map_err(text)?;
        area.draw(&Text::new(
            "predicted label →",
            (left + grid / 2, top - 40),
            label_style(16, BLACK, centred),
        ))
        .map_err(text)?;
        area.draw(&Text::new(
            "true label ↓",
            (left - 10, top - 14),
            label_style(16, BLACK, right),
        ))
        .map_err(text)?;
        let font_size = if cell >= 80 { 18 } else { 13 };
        for (t, row) in self.report.counts.iter().enumerate() {
            let row_total = row.iter().sum::<usize>().max(1) as f64;
            let y = top + cell * t as i32;
            area.draw(&Text::new(
                self.report.names[t].clone(),
                (left - 10, y + cell / 2),
                label_style(14, BLACK, right),
            ))
            .map_err(text)?;
            for (p, &count) in row.iter().enumerate() {
                let x = left + cell * p as i32;
                let fraction = count as f64 / row_total;
                area.draw(&Rectangle::new(
                    [(x, y), (x + cell, y + cell)],
                    shade(fraction).filled(),
                ))
                .map_err(text)?;
                area.draw(&Rectangle::new(
                    [(x, y), (x + cell, y + cell)],
                    BLACK.mix(0.25),
                ))
                .map_err(text)?;
                let ink = if fraction > 0.5 { WHITE } else { BLACK };
                area.draw(&Text::new(
                    count.to_string(),
                    (x + cell / 2, y + cell / 2),
                    label_style(font_size, ink, centred),
                ))
                .map_err(text)?;
            }
        }
        for (p, name) in self.report.names.iter().enumerate() {
            let x = left + cell * p as i32 + cell / 2;
            // Alternate the heights of long names so that neighbours do not overlap.
            let dy = if name.chars().count() > 10 && p % 2 == 1 {
                34
            } else {
                14
            };
            area.draw(&Text::new(
                name.clone(),
                (x, top + grid + dy),
                label_style(14, BLACK, centred),
            ))
            .map_err(text)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::canvas::png_size;

    #[test]
    fn counts_cover_every_named_class_and_the_table_lines_up() {
        // Class 2 ("c") never occurs and is never predicted; class 3 has no name.
        let truth = [0, 0, 1, 1, 1, 3];
        let predicted = [0, 1, 1, 1, 0, 0];
        let report = ConfusionReport::new(&truth, &predicted, &["a", "bb", "c"]).unwrap();
        assert_eq!(report.names(), ["a", "bb", "c", "3"]);
        assert_eq!(
            report.counts(),
            [
                vec![1, 1, 0, 0],
                vec![1, 2, 0, 0],
                vec![0, 0, 0, 0],
                vec![1, 0, 0, 0]
            ]
        );
        assert_eq!(report.total(), 6);
        assert!((report.accuracy() - 0.5).abs() < 1e-12);
        let table = report.table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[1], "true ↓      a     bb      c      3  total");
        assert_eq!(lines[3], "bb          1      2      0      0      3");
        assert_eq!(lines.len(), 6);
    }

    #[test]
    fn the_picture_grows_with_the_classes() {
        let dir = tempfile::tempdir().unwrap();
        let names = [
            "very negative",
            "negative",
            "neutral",
            "positive",
            "very positive",
        ];
        let report =
            ConfusionReport::new(&[0, 1, 2, 3, 4, 4], &[0, 1, 2, 4, 4, 3], &names).unwrap();
        let path = dir.path().join("confusion-dev.png");
        report.save_picture("dev", &path).unwrap();
        let size = png_size(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(size, Layout::for_classes(5).size(5));
        assert!(size.0 >= 600 && size.1 >= 600, "{size:?}");
    }
}
