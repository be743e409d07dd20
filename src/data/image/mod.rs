//! Image files for evaluation: decoding colour images exactly as MMSegmentation's
//! `LoadImageFromFile` does (`cv2.imdecode(buf, cv2.IMREAD_COLOR)`: BGR, uint8, H×W×3, EXIF
//! orientation applied), reading label maps as its `LoadAnnotations` does (Pillow,
//! `flag='unchanged'`, no EXIF), and writing label / colour / overlay PNGs.
//!
//! # Colour images (`cv2.imdecode(IMREAD_COLOR)` semantics)
//! The format is chosen by the file's signature, not its name (as OpenCV does).
//! - JPEG ([`jpeg`]): libjpeg-turbo's decoder built from source (the `mozjpeg-sys` crate), with
//!   OpenCV's settings (accurate integer IDCT, fancy upsampling, BGR output), which gives
//!   pixels bit-identical to OpenCV 4.11's. Greyscale JPEGs are replicated to three channels;
//!   CMYK / YCCK JPEGs are converted with OpenCV's `icvCvt_CMYK2BGR_8u_C4C3R` formula. A JPEG
//!   whose compressed data is cut short or garbled (where libjpeg would fill in grey and
//!   OpenCV would only print a warning) is an error.
//! - PNG: 16-bit samples keep their high byte (`png_set_strip_16`), palettes and 1/2/4-bit
//!   grey are expanded, grey is replicated, alpha is dropped (not composited), as OpenCV's
//!   libpng reader does.
//! - EXIF orientation (JPEG: the first `APP1` segment starting with `Exif\0\0`; PNG: `eXIf`)
//!   values 2..8 are applied after decoding (OpenCV's `ApplyExifOrientation`); ADE20K's own
//!   images carry none.
//! - Images larger than OpenCV accepts (2^30 pixels, or a side above 2^20) are refused.
//!
//! # Label maps (Pillow, `flag='unchanged'`)
//! 8-bit greyscale PNGs give their values; palette PNGs give their palette indices (as
//! `np.array(Image.open(f))` does). Anything else (RGB, 16-bit, grey+alpha, 1/2/4-bit grey, a
//! JPEG) is refused with an error naming the file, since MMSegmentation would silently
//! misread it. EXIF is ignored, as Pillow does in `unchanged` mode.

mod exif;
mod jpeg;
mod png;
mod write;

use std::path::{Path, PathBuf};

use ndarray::{Array2, Array3};

pub use exif::{apply_orientation, exif_orientation};
pub use jpeg::{jpeg_decoder_is_exact, jpeg_decoder_name, jpeg_decoder_warning, MAX_PIXELS, MAX_SIDE};
pub use write::{
    colorize, labels_to_png_values, overlay, palette, write_label_png, write_label_png_to, write_rgb_png,
    write_rgb_png_to, ADE20K_PALETTE,
};

/// A problem with an image file; always names the file.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: cannot read: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error("{path}: cannot decode image: {msg}")]
    Decode { path: PathBuf, msg: String },
    #[error("{path}: not a usable label map: {msg}")]
    Label { path: PathBuf, msg: String },
    #[error("{path}: cannot write: {msg}")]
    Write { path: PathBuf, msg: String },
}

fn decode_err(path: &Path, msg: impl std::fmt::Display) -> ImageError {
    ImageError::Decode { path: path.to_path_buf(), msg: msg.to_string() }
}

/// Image container formats recognised by signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Jpeg,
    Png,
}

/// The format from the first bytes (`None` for anything else).
pub fn sniff(bytes: &[u8]) -> Option<Format> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(Format::Jpeg)
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(Format::Png)
    } else {
        None
    }
}

/// The largest image file read: 2 GiB (OpenCV's pixel limit bounds the decoded size).
pub const MAX_IMAGE_FILE_BYTES: u64 = 2 << 30;

fn read_file(path: &Path) -> Result<Vec<u8>, ImageError> {
    crate::files::read_regular(path, MAX_IMAGE_FILE_BYTES)
        .map_err(|err| ImageError::Io { path: path.to_path_buf(), err })
}

/// Reads and decodes a colour image file as `cv2.imread(path, IMREAD_COLOR)`: BGR, H×W×3.
pub fn read_bgr(path: &Path) -> Result<Array3<u8>, ImageError> {
    decode_bgr(&read_file(path)?, path)
}

/// Decodes an encoded colour image as `cv2.imdecode(buf, IMREAD_COLOR)`: BGR, H×W×3 uint8,
/// EXIF orientation applied. `path` only names the source in errors.
pub fn decode_bgr(bytes: &[u8], path: &Path) -> Result<Array3<u8>, ImageError> {
    decode_bgr_limited(bytes, path, MAX_PIXELS)
}

/// [`decode_bgr`] refusing images of more than `max_pixels` pixels before decoding them (the fuzz
/// target keeps memory small with it).
pub fn decode_bgr_limited(bytes: &[u8], path: &Path, max_pixels: usize) -> Result<Array3<u8>, ImageError> {
    let (img, orientation) = match sniff(bytes) {
        Some(Format::Jpeg) => {
            let (img, exif) = jpeg::decode_jpeg(bytes, path, max_pixels.min(MAX_PIXELS))?;
            (img, exif.as_deref().and_then(exif_orientation))
        }
        Some(Format::Png) => png::decode_png_bgr(bytes, path, max_pixels.min(MAX_PIXELS))?,
        None if bytes.is_empty() => return Err(decode_err(path, "the file is empty")),
        None => return Err(decode_err(path, "not a JPEG or PNG file (unknown signature)")),
    };
    if img.is_empty() {
        return Err(decode_err(path, "the image is empty"));
    }
    Ok(match orientation {
        Some(o) => apply_orientation(img, o),
        None => img,
    })
}

/// Reads a label map as MMSegmentation's `LoadAnnotations` (Pillow, `unchanged`): see the
/// module docs. H×W uint8, values as stored (before `reduce_zero_label`).
pub fn read_label(path: &Path) -> Result<Array2<u8>, ImageError> {
    decode_label(&read_file(path)?, path)
}

/// Decodes a label map (see [`read_label`]); `path` only names the source in errors.
pub fn decode_label(bytes: &[u8], path: &Path) -> Result<Array2<u8>, ImageError> {
    let bad = |msg: &str| ImageError::Label { path: path.to_path_buf(), msg: msg.to_string() };
    match sniff(bytes) {
        Some(Format::Png) => png::decode_label_png(bytes, path),
        Some(Format::Jpeg) => Err(bad("a JPEG cannot hold exact labels; expected an 8-bit single-channel PNG")),
        None if bytes.is_empty() => Err(bad("the file is empty; expected an 8-bit single-channel PNG")),
        None => Err(bad("not a PNG file (unknown signature); expected an 8-bit single-channel PNG")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_png_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.png");
        let lab = Array2::from_shape_fn((5, 7), |(y, x)| (y * 7 + x) as u8 * 7);
        write_label_png(&p, lab.view()).unwrap();
        assert_eq!(read_label(&p).unwrap(), lab);
        let rgb = Array3::from_shape_fn((5, 7, 3), |(y, x, c)| (y * 7 + x + c) as u8);
        let q = dir.path().join("c.png");
        write_rgb_png(&q, rgb.view()).unwrap();
        let bgr = read_bgr(&q).unwrap();
        assert_eq!(bgr[[1, 2, 0]], rgb[[1, 2, 2]]);
        let e = read_label(&q).unwrap_err().to_string();
        assert!(e.contains("c.png") && e.contains("8-bit single-channel"), "{e}");
    }
}
