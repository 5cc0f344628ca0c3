//! Where the run's pictures are drawn: a `plotters` canvas in memory, PNG or SVG by the
//! file's extension, saved with the workspace's atomic writer (a picture is whole or absent).
//!
//! The text font is DejaVu Sans, embedded (the `dejavu` crate) and rendered by `ab_glyph`,
//! so pictures come out the same on a machine without fonts or fontconfig.

use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::{BitMapBackend, DrawingArea, DrawingBackend, IntoDrawingArea, SVGBackend};
use plotters::style::FontStyle;

/// The font family name the pictures ask for.
pub(crate) const FONT: &str = "sans-serif";

/// Errors drawing or saving a picture.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// The output name has no known picture extension.
    #[error("{}: the picture's name must end in .png or .svg", path.display())]
    UnknownFormat {
        /// The requested output.
        path: PathBuf,
    },
    /// Nothing to draw.
    #[error("{}: nothing to plot: {detail}", path.display())]
    NoData {
        /// The picture that was not written.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// `plotters` failed to draw.
    #[error("{}: drawing failed: {detail}", path.display())]
    Draw {
        /// The picture.
        path: PathBuf,
        /// The cause.
        detail: String,
    },
    /// Writing the file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The picture.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// The picture formats, by file extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// A PNG bitmap.
    Png,
    /// An SVG drawing.
    Svg,
}

impl ImageFormat {
    /// The format named by `path`'s extension (`.png`, `.svg`, any case).
    pub fn from_path(path: &Path) -> Result<Self, PlotError> {
        let extension = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match extension.as_deref() {
            Some("png") => Ok(Self::Png),
            Some("svg") => Ok(Self::Svg),
            _ => Err(PlotError::UnknownFormat {
                path: path.to_path_buf(),
            }),
        }
    }
}

/// Something that draws itself on any `plotters` backend.
pub(crate) trait Picture {
    /// Draw on `area`, the whole canvas. Errors are `plotters`' own, as text.
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<(), String>;
}

/// Register the embedded font once per process.
fn register_font() {
    static FONT_ONCE: Once = Once::new();
    FONT_ONCE.call_once(|| {
        // The bytes are a valid TrueType font shipped by the `dejavu` crate; should they ever
        // not be, text is left out and the rest of the picture is still drawn.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
        let _ = plotters::style::register_font(FONT, FontStyle::Bold, dejavu::sans::bold());
    });
}

/// Draw `picture` on a `width` × `height` canvas and write it to `path`, PNG or SVG by its
/// extension.
pub(crate) fn save_picture(
    picture: &impl Picture,
    path: &Path,
    (width, height): (u32, u32),
) -> Result<(), PlotError> {
    let format = ImageFormat::from_path(path)?;
    register_font();
    let draw_error = |detail: String| PlotError::Draw {
        path: path.to_path_buf(),
        detail,
    };
    let bytes = match format {
        ImageFormat::Png => {
            let mut pixels = vec![0u8; width as usize * height as usize * 3];
            {
                let area =
                    BitMapBackend::with_buffer(&mut pixels, (width, height)).into_drawing_area();
                picture.draw(&area).map_err(draw_error)?;
                area.present().map_err(|e| draw_error(e.to_string()))?;
            }
            encode_png(&pixels, width, height).map_err(|e| draw_error(e.to_string()))?
        }
        ImageFormat::Svg => {
            let mut text = String::new();
            {
                let area = SVGBackend::with_string(&mut text, (width, height)).into_drawing_area();
                picture.draw(&area).map_err(draw_error)?;
                area.present().map_err(|e| draw_error(e.to_string()))?;
            }
            text.into_bytes()
        }
    };
    llama_model::atomic_file::write_atomic(path, &bytes).map_err(|source| PlotError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// An 8-bit RGB PNG of `pixels` (`[height, width, 3]`, row-major).
fn encode_png(pixels: &[u8], width: u32, height: u32) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_compression(png::Compression::High);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(pixels)?;
        writer.finish()?;
    }
    Ok(out)
}

/// Width and height of a PNG file's image, from its signature and `IHDR` chunk; `None` for
/// anything else. (For checking what was written: a test reads its pictures back with it.)
pub fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    if bytes.len() < 24 || &bytes[..8] != SIGNATURE || &bytes[12..16] != b"IHDR" {
        return None;
    }
    let be =
        |at: usize| u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    Some((be(16), be(20)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use plotters::prelude::*;

    struct Square;

    impl Picture for Square {
        fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<(), String> {
            area.fill(&WHITE).map_err(|e| e.to_string())?;
            area.draw(&Rectangle::new([(10, 10), (30, 30)], RED.filled()))
                .map_err(|e| e.to_string())?;
            area.draw(&Text::new("x", (40, 10), (FONT, 14)))
                .map_err(|e| e.to_string())
        }
    }

    #[test]
    fn pictures_are_written_as_png_or_svg_by_extension() {
        let dir = tempfile::tempdir().unwrap();
        let png_path = dir.path().join("a.png");
        save_picture(&Square, &png_path, (64, 48)).unwrap();
        let bytes = std::fs::read(&png_path).unwrap();
        assert_eq!(png_size(&bytes), Some((64, 48)));
        // Decode it back: the red square is where it was drawn, the rest is white.
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
        reader.next_frame(&mut pixels).unwrap();
        let at = |x: usize, y: usize| &pixels[(y * 64 + x) * 3..(y * 64 + x) * 3 + 3];
        assert_eq!(at(20, 20), [255, 0, 0]);
        assert_eq!(at(2, 2), [255, 255, 255]);

        let svg_path = dir.path().join("a.SVG");
        save_picture(&Square, &svg_path, (64, 48)).unwrap();
        let text = std::fs::read_to_string(&svg_path).unwrap();
        assert!(text.starts_with("<svg") && text.contains("<rect"), "{text}");

        let err = save_picture(&Square, &dir.path().join("a.jpg"), (8, 8)).unwrap_err();
        assert!(matches!(err, PlotError::UnknownFormat { .. }), "{err}");
        assert!(!dir.path().join("a.jpg").exists());
    }
}
