//! PNG decoding: colour images as OpenCV's libpng reader with `IMREAD_COLOR`, label maps as
//! Pillow in `unchanged` mode (see the module docs of `image`).

use std::io::Cursor;
use std::path::Path;

use ndarray::{Array2, Array3};

use super::{decode_err, exif::exif_orientation, ImageError, MAX_PIXELS, MAX_SIDE};

type PngReader<'a> = png::Reader<Cursor<&'a [u8]>>;

/// The decoded rows of a PNG, `line` bytes each, after the reader's transformations. Images
/// above `max_pixels` (or a side above OpenCV's limit) are refused first; a non-interlaced image
/// is read row by row, so memory grows with the data actually present, not the header's size.
fn read_rows(reader: &mut PngReader, path: &Path, max_pixels: usize) -> Result<(Vec<u8>, usize), ImageError> {
    let (w, h) = (reader.info().width as usize, reader.info().height as usize);
    if w > MAX_SIDE || h > MAX_SIDE || w * h > max_pixels {
        return Err(decode_err(path, format!("image of {w}x{h} pixels is too large")));
    }
    let line = reader.output_line_size(reader.info().width).ok_or_else(|| decode_err(path, "image too large"))?;
    if reader.info().interlaced {
        let size = reader.output_buffer_size().ok_or_else(|| decode_err(path, "image too large"))?;
        let mut buf = vec![0u8; size];
        let out = reader.next_frame(&mut buf).map_err(|e| decode_err(path, e))?;
        return Ok((buf, out.line_size));
    }
    let mut buf = Vec::new();
    while let Some(row) = reader.next_row().map_err(|e| decode_err(path, e))? {
        buf.extend_from_slice(row.data());
    }
    if buf.len() != line * h {
        return Err(decode_err(path, format!("decoded {} bytes for {h} rows of {line}", buf.len())));
    }
    Ok((buf, line))
}

/// Decodes a PNG as OpenCV's libpng reader with `IMREAD_COLOR` (16-bit → high byte, palette
/// and low-bit grey expanded, grey replicated, alpha dropped; BGR H×W×3); also returns the EXIF
/// orientation of an `eXIf` chunk.
pub(super) fn decode_png_bgr(
    bytes: &[u8],
    path: &Path,
    max_pixels: usize,
) -> Result<(Array3<u8>, Option<u16>), ImageError> {
    let mut dec = png::Decoder::new(Cursor::new(bytes));
    dec.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = dec.read_info().map_err(|e| decode_err(path, e))?;
    let orientation = reader.info().exif_metadata.as_deref().and_then(exif_orientation);
    let (w, h) = (reader.info().width as usize, reader.info().height as usize);
    let (color_type, bit_depth) = reader.output_color_type();
    if bit_depth != png::BitDepth::Eight {
        return Err(decode_err(path, format!("unexpected bit depth {bit_depth:?} after expansion")));
    }
    let (buf, line_size) = read_rows(&mut reader, path, max_pixels)?;
    let grey = match color_type {
        png::ColorType::Grayscale | png::ColorType::GrayscaleAlpha => true,
        png::ColorType::Rgb | png::ColorType::Rgba => false,
        png::ColorType::Indexed => return Err(decode_err(path, "palette left unexpanded")),
    };
    let n = color_type.samples();
    let mut bgr = Vec::with_capacity(h * w * 3);
    for row in buf.chunks(line_size).take(h) {
        for s in row.get(..w * n).unwrap_or_default().chunks_exact(n) {
            bgr.extend_from_slice(&if grey { [s[0]; 3] } else { [s[2], s[1], s[0]] });
        }
    }
    let img = Array3::from_shape_vec((h, w, 3), bgr).map_err(|e| decode_err(path, e))?;
    Ok((img, orientation))
}

/// Decodes a label map (see [`super::read_label`]); `path` only names the source in errors.
pub(super) fn decode_label_png(bytes: &[u8], path: &Path) -> Result<Array2<u8>, ImageError> {
    let bad = |msg: String| ImageError::Label { path: path.to_path_buf(), msg };
    let dec = png::Decoder::new(Cursor::new(bytes)); // identity transformations: raw samples
    let mut reader = dec.read_info().map_err(|e| decode_err(path, e))?;
    let info = reader.info();
    let (w, h) = (info.width as usize, info.height as usize);
    let (ct, depth) = (info.color_type, info.bit_depth);
    let bits = match (ct, depth) {
        (png::ColorType::Grayscale, png::BitDepth::Eight) => 8,
        (png::ColorType::Indexed, d) => d as usize,
        (ct, d) => {
            return Err(bad(format!(
            "colour type {ct:?} with {} bits per sample; expected an 8-bit single-channel (greyscale or palette) PNG",
            d as u8
        )))
        }
    };
    let (buf, line_size) = read_rows(&mut reader, path, MAX_PIXELS)?;
    let mut lab = Array2::<u8>::zeros((h, w));
    for (mut dst, row) in lab.outer_iter_mut().zip(buf.chunks(line_size)) {
        if bits == 8 {
            dst.iter_mut().zip(row).for_each(|(d, &s)| *d = s);
        } else {
            let per = 8 / bits;
            let mask = (1u16 << bits) as u8 - 1;
            for (x, d) in dst.iter_mut().enumerate() {
                let byte = row.get(x / per).copied().unwrap_or(0);
                let shift = 8 - bits * (x % per + 1);
                *d = (byte >> shift) & mask;
            }
        }
    }
    if lab.is_empty() {
        return Err(bad("the label map is empty".into()));
    }
    Ok(lab)
}
