//! Image files for evaluation: decoding colour images exactly as MMSegmentation's
//! `LoadImageFromFile` does (`cv2.imdecode(buf, cv2.IMREAD_COLOR)`: BGR, uint8, H×W×3, EXIF
//! orientation applied), reading label maps as its `LoadAnnotations` does (Pillow,
//! `flag='unchanged'`, no EXIF), and writing label / colour / overlay PNGs.
//!
//! # Colour images (`cv2.imdecode(IMREAD_COLOR)` semantics)
//! The format is chosen by the file's signature, not its name (as OpenCV does).
//! - JPEG: decoded to BGR. With the cargo feature `jpeg-turbo` the decoder is libjpeg-turbo
//!   (the system `libturbojpeg`, default settings: accurate integer IDCT, fancy upsampling),
//!   the same library and settings OpenCV uses, which gives bit-identical pixels. Without it
//!   the pure-Rust `zune-jpeg` decoder is used; it differs from libjpeg-turbo by a few levels
//!   on some pixels of chroma-subsampled images ([`jpeg_decoder_is_exact`] is then `false`, and
//!   the evaluation says so loudly). Greyscale JPEGs are replicated to three channels; CMYK /
//!   YCCK JPEGs are converted with OpenCV's `icvCvt_CMYK2BGR_8u_C4C3R` formula.
//! - PNG: 16-bit samples keep their high byte (`png_set_strip_16`), palettes and 1/2/4-bit
//!   grey are expanded, grey is replicated, alpha is dropped (not composited), as OpenCV's
//!   libpng reader does.
//! - EXIF orientation (JPEG APP1 `Exif`, PNG `eXIf`) values 2..8 are applied after decoding
//!   (OpenCV's `ApplyExifOrientation`); ADE20K's own images carry none.
//!
//! # Label maps (Pillow, `flag='unchanged'`)
//! 8-bit greyscale PNGs give their values; palette PNGs give their palette indices (as
//! `np.array(Image.open(f))` does). Anything else (RGB, 16-bit, grey+alpha, 1/2/4-bit grey, a
//! JPEG) is refused with an error naming the file, since MMSegmentation would silently
//! misread it. EXIF is ignored, as Pillow does in `unchanged` mode.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use ndarray::{Array2, Array3, ArrayView2, ArrayView3, Axis};

/// A problem with an image file; always names the file.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
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

/// The JPEG decoder of this build.
pub fn jpeg_decoder_name() -> &'static str {
    if cfg!(feature = "jpeg-turbo") {
        "libjpeg-turbo (system libturbojpeg, feature `jpeg-turbo`)"
    } else {
        "zune-jpeg (pure Rust)"
    }
}

/// Whether JPEG decoding is bit-identical to `cv2.imdecode` (libjpeg-turbo).
pub fn jpeg_decoder_is_exact() -> bool {
    cfg!(feature = "jpeg-turbo")
}

/// The warning to print when JPEG decoding is not exact (`None` when it is).
pub fn jpeg_decoder_warning() -> Option<String> {
    (!jpeg_decoder_is_exact()).then(|| {
        "WARNING: this build decodes JPEG with zune-jpeg (pure Rust), which is NOT bit-identical to \
         OpenCV's libjpeg-turbo (about a quarter of the values of chroma-subsampled images differ, by up to several levels), so \
         predictions and mIoU may differ slightly from MMSegmentation's. Build with \
         `--features jpeg-turbo` (needs the system libturbojpeg, e.g. Debian `libturbojpeg0-dev`) \
         for exact decoding."
            .to_string()
    })
}

fn read_file(path: &Path) -> Result<Vec<u8>, ImageError> {
    std::fs::read(path).map_err(|source| ImageError::Io { path: path.to_path_buf(), source })
}

/// Reads and decodes a colour image file as `cv2.imread(path, IMREAD_COLOR)`: BGR, H×W×3.
pub fn read_bgr(path: &Path) -> Result<Array3<u8>, ImageError> {
    decode_bgr(&read_file(path)?, path)
}

/// Decodes an encoded colour image as `cv2.imdecode(buf, IMREAD_COLOR)`: BGR, H×W×3 uint8,
/// EXIF orientation applied. `path` only names the source in errors.
pub fn decode_bgr(bytes: &[u8], path: &Path) -> Result<Array3<u8>, ImageError> {
    let (img, orientation) = match sniff(bytes) {
        Some(Format::Jpeg) => (decode_jpeg_bgr(bytes, path)?, jpeg_exif(bytes).and_then(exif_orientation)),
        Some(Format::Png) => decode_png_bgr(bytes, path)?,
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

/// OpenCV's CMYK (as stored by Adobe, inverted) → BGR conversion.
fn cmyk_to_bgr(cmyk: &[u8], h: usize, w: usize) -> Array3<u8> {
    let mut out = Array3::<u8>::zeros((h, w, 3));
    for (o, p) in out.as_slice_mut().expect("standard").chunks_exact_mut(3).zip(cmyk.chunks_exact(4)) {
        let (c, m, y, k) = (p[0] as i32, p[1] as i32, p[2] as i32, p[3] as i32);
        o[2] = (k - (((255 - c) * k) >> 8)) as u8;
        o[1] = (k - (((255 - m) * k) >> 8)) as u8;
        o[0] = (k - (((255 - y) * k) >> 8)) as u8;
    }
    out
}

#[cfg(feature = "jpeg-turbo")]
fn decode_jpeg_bgr(bytes: &[u8], path: &Path) -> Result<Array3<u8>, ImageError> {
    use turbojpeg::{Colorspace, PixelFormat};
    let header = turbojpeg::read_header(bytes).map_err(|e| decode_err(path, e))?;
    let cmyk = matches!(header.colorspace, Colorspace::CMYK | Colorspace::YCCK);
    let fmt = if cmyk { PixelFormat::CMYK } else { PixelFormat::BGR };
    let img = turbojpeg::decompress(bytes, fmt).map_err(|e| decode_err(path, e))?;
    let (h, w, ch) = (img.height, img.width, fmt.size());
    let mut packed = Vec::with_capacity(h * w * ch);
    for row in img.pixels.chunks(img.pitch).take(h) {
        packed.extend_from_slice(&row[..w * ch]);
    }
    if cmyk {
        return Ok(cmyk_to_bgr(&packed, h, w));
    }
    Array3::from_shape_vec((h, w, 3), packed).map_err(|e| decode_err(path, e))
}

#[cfg(not(feature = "jpeg-turbo"))]
fn decode_jpeg_bgr(bytes: &[u8], path: &Path) -> Result<Array3<u8>, ImageError> {
    use zune_core::bytestream::ZCursor;
    use zune_core::colorspace::ColorSpace;
    use zune_core::options::DecoderOptions;
    let opts = DecoderOptions::default()
        .jpeg_set_out_colorspace(ColorSpace::BGR)
        .set_max_width(1 << 16)
        .set_max_height(1 << 16);
    let mut dec = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), opts);
    dec.decode_headers().map_err(|e| decode_err(path, format!("{e:?}")))?;
    match dec.input_colorspace() {
        Some(ColorSpace::CMYK | ColorSpace::YCCK) => dec.set_options(opts.jpeg_set_out_colorspace(ColorSpace::CMYK)),
        Some(ColorSpace::Luma) => dec.set_options(opts.jpeg_set_out_colorspace(ColorSpace::Luma)),
        _ => {}
    }
    let pixels = dec.decode().map_err(|e| decode_err(path, format!("{e:?}")))?;
    let info = dec.info().ok_or_else(|| decode_err(path, "no image header"))?;
    let (h, w) = (info.height as usize, info.width as usize);
    let cs = dec.output_colorspace().unwrap_or(ColorSpace::BGR);
    let n = cs.num_components();
    if pixels.len() != h * w * n {
        return Err(decode_err(path, format!("decoder returned {} bytes for {h}x{w}x{n}", pixels.len())));
    }
    let mut out = Array3::<u8>::zeros((h, w, 3));
    let o = out.as_slice_mut().expect("standard");
    match cs {
        ColorSpace::BGR => o.copy_from_slice(&pixels),
        ColorSpace::RGB => {
            for (d, s) in o.chunks_exact_mut(3).zip(pixels.chunks_exact(3)) {
                d.copy_from_slice(&[s[2], s[1], s[0]]);
            }
        }
        ColorSpace::CMYK => o.copy_from_slice(cmyk_to_bgr(&pixels, h, w).as_slice().expect("standard")),
        ColorSpace::Luma => {
            for (d, &s) in o.chunks_exact_mut(3).zip(pixels.iter()) {
                d.fill(s);
            }
        }
        other => return Err(decode_err(path, format!("unsupported JPEG output colour space {other:?}"))),
    }
    Ok(out)
}

/// Decodes a PNG as OpenCV's libpng reader with `IMREAD_COLOR`; also returns the EXIF
/// orientation of an `eXIf` chunk.
fn decode_png_bgr(bytes: &[u8], path: &Path) -> Result<(Array3<u8>, Option<u16>), ImageError> {
    let mut dec = png::Decoder::new(Cursor::new(bytes));
    dec.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = dec.read_info().map_err(|e| decode_err(path, e))?;
    let orientation = reader.info().exif_metadata.as_deref().and_then(exif_orientation);
    let (w, h) = (reader.info().width as usize, reader.info().height as usize);
    let size = reader.output_buffer_size().ok_or_else(|| decode_err(path, "image too large"))?;
    let mut buf = vec![0u8; size];
    let out = reader.next_frame(&mut buf).map_err(|e| decode_err(path, e))?;
    if out.bit_depth != png::BitDepth::Eight {
        return Err(decode_err(path, format!("unexpected bit depth {:?} after expansion", out.bit_depth)));
    }
    let n = out.color_type.samples();
    let mut img = Array3::<u8>::zeros((h, w, 3));
    let o = img.as_slice_mut().expect("standard");
    for (y, row) in buf.chunks(out.line_size).take(h).enumerate() {
        let dst = &mut o[y * w * 3..(y + 1) * w * 3];
        for (d, s) in dst.chunks_exact_mut(3).zip(row[..w * n].chunks_exact(n)) {
            match out.color_type {
                png::ColorType::Grayscale | png::ColorType::GrayscaleAlpha => d.fill(s[0]),
                png::ColorType::Rgb | png::ColorType::Rgba => d.copy_from_slice(&[s[2], s[1], s[0]]),
                png::ColorType::Indexed => unreachable!("EXPAND turns palettes into RGB"),
            }
        }
    }
    Ok((img, orientation))
}

/// The TIFF payload of the first `APP1` segment that starts with `Exif\0\0`, scanning the
/// markers before the first scan.
pub fn jpeg_exif(bytes: &[u8]) -> Option<&[u8]> {
    let mut i = 2;
    while i + 4 <= bytes.len() {
        if bytes[i] != 0xFF {
            return None;
        }
        let marker = bytes[i + 1];
        if marker == 0xFF {
            i += 1; // fill byte
            continue;
        }
        if marker == 0xDA || marker == 0xD9 {
            return None; // start of scan / end of image
        }
        if (0xD0..=0xD7).contains(&marker) || marker == 0x01 {
            i += 2;
            continue;
        }
        let len = u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]) as usize;
        if len < 2 || i + 2 + len > bytes.len() {
            return None;
        }
        let seg = &bytes[i + 4..i + 2 + len];
        if marker == 0xE1 && seg.starts_with(b"Exif\0\0") {
            return Some(&seg[6..]);
        }
        i += 2 + len;
    }
    None
}

/// The orientation tag (0x0112) of IFD0 of a TIFF-structured EXIF block, if it is 1..=8.
pub fn exif_orientation(tiff: &[u8]) -> Option<u16> {
    let le = match tiff.get(..4)? {
        [b'I', b'I', 42, 0] => true,
        [b'M', b'M', 0, 42] => false,
        _ => return None,
    };
    let u16_at = |o: usize| -> Option<u16> {
        let b: [u8; 2] = tiff.get(o..o + 2)?.try_into().ok()?;
        Some(if le { u16::from_le_bytes(b) } else { u16::from_be_bytes(b) })
    };
    let u32_at = |o: usize| -> Option<u32> {
        let b: [u8; 4] = tiff.get(o..o + 4)?.try_into().ok()?;
        Some(if le { u32::from_le_bytes(b) } else { u32::from_be_bytes(b) })
    };
    let ifd = u32_at(4)? as usize;
    let n = u16_at(ifd)? as usize;
    for k in 0..n {
        let e = ifd + 2 + 12 * k;
        if u16_at(e)? == 0x0112 {
            let ty = u16_at(e + 2)?;
            let v = match ty {
                3 => u16_at(e + 8)?,                    // SHORT
                4 => u32_at(e + 8)?.min(0xFFFF) as u16, // LONG (non-standard)
                _ => return None,
            };
            return (1..=8).contains(&v).then_some(v);
        }
    }
    None
}

/// Applies an EXIF orientation (1..=8) as OpenCV's `ApplyExifOrientation`: 2 flips
/// horizontally, 3 rotates by 180°, 4 flips vertically, 5 transposes, 6 transposes + flips
/// horizontally (90° clockwise), 7 transposes + rotates by 180°, 8 transposes + flips
/// vertically (90° counter-clockwise).
pub fn apply_orientation(img: Array3<u8>, orientation: u16) -> Array3<u8> {
    let transpose = |a: Array3<u8>| a.permuted_axes([1, 0, 2]);
    let mut a = match orientation {
        5..=8 => transpose(img),
        _ => img,
    };
    match orientation {
        2 | 6 => a.invert_axis(Axis(1)),
        3 | 7 => {
            a.invert_axis(Axis(0));
            a.invert_axis(Axis(1));
        }
        4 | 8 => a.invert_axis(Axis(0)),
        _ => {}
    }
    a.as_standard_layout().into_owned()
}

/// Reads a label map as MMSegmentation's `LoadAnnotations` (Pillow, `unchanged`): see the
/// module docs. H×W uint8, values as stored (before `reduce_zero_label`).
pub fn read_label(path: &Path) -> Result<Array2<u8>, ImageError> {
    decode_label(&read_file(path)?, path)
}

/// Decodes a label map (see [`read_label`]); `path` only names the source in errors.
pub fn decode_label(bytes: &[u8], path: &Path) -> Result<Array2<u8>, ImageError> {
    let bad = |msg: String| ImageError::Label { path: path.to_path_buf(), msg };
    match sniff(bytes) {
        Some(Format::Png) => {}
        Some(Format::Jpeg) => {
            return Err(bad("a JPEG cannot hold exact labels; expected an 8-bit single-channel PNG".into()))
        }
        None => return Err(bad("not a PNG file (unknown signature); expected an 8-bit single-channel PNG".into())),
    }
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
    let size = reader.output_buffer_size().ok_or_else(|| decode_err(path, "image too large"))?;
    let mut buf = vec![0u8; size];
    let out = reader.next_frame(&mut buf).map_err(|e| decode_err(path, e))?;
    let mut lab = Array2::<u8>::zeros((h, w));
    for (mut dst, row) in lab.outer_iter_mut().zip(buf.chunks(out.line_size)) {
        if bits == 8 {
            dst.iter_mut().zip(row).for_each(|(d, &s)| *d = s);
        } else {
            let per = 8 / bits;
            let mask = (1u16 << bits) as u8 - 1;
            for (x, d) in dst.iter_mut().enumerate() {
                let byte = row[x / per];
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

fn write_png(path: &Path, w: usize, h: usize, color: png::ColorType, data: &[u8]) -> Result<(), ImageError> {
    let werr = |e: &dyn std::fmt::Display| ImageError::Write { path: path.to_path_buf(), msg: e.to_string() };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| werr(&e))?;
    }
    let mut bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut bytes, w as u32, h as u32);
        enc.set_color(color);
        enc.set_depth(png::BitDepth::Eight);
        let mut wr = enc.write_header().map_err(|e| werr(&e))?;
        wr.write_image_data(data).map_err(|e| werr(&e))?;
        wr.finish().map_err(|e| werr(&e))?;
    }
    // Atomic: a temporary file beside the target, then a rename.
    let tmp = path.with_extension("png.tmp-beit-seg");
    std::fs::write(&tmp, &bytes).map_err(|e| werr(&e))?;
    std::fs::rename(&tmp, path).map_err(|e| werr(&e))
}

/// Writes an 8-bit greyscale PNG (a label map; read back identically by Pillow and
/// [`read_label`]).
pub fn write_label_png(path: &Path, labels: ArrayView2<u8>) -> Result<(), ImageError> {
    let (h, w) = labels.dim();
    let data: Vec<u8> = labels.iter().copied().collect();
    write_png(path, w, h, png::ColorType::Grayscale, &data)
}

/// Writes an H×W×3 RGB image as an 8-bit PNG.
pub fn write_rgb_png(path: &Path, rgb: ArrayView3<u8>) -> Result<(), ImageError> {
    let (h, w, c) = rgb.dim();
    assert_eq!(c, 3, "write_rgb_png: expected 3 channels");
    let data: Vec<u8> = rgb.iter().copied().collect();
    write_png(path, w, h, png::ColorType::Rgb, &data)
}

/// Predicted class indices as saved label PNGs: class `c` is stored as `c + 1` when
/// `reduce_zero_label` was used (the ADE20K annotation convention: 0 = "other"), else `c`.
/// Values that do not fit in a byte are an error of the caller (more than 255 classes).
pub fn labels_to_png_values(pred: ArrayView2<i64>, reduce_zero_label: bool) -> Array2<u8> {
    let off = i64::from(reduce_zero_label);
    pred.mapv(|c| (c + off).clamp(0, 255) as u8)
}

/// Colours class indices with a palette (RGB, H×W×3); indices outside it are black.
pub fn colorize(pred: ArrayView2<i64>, palette: &[[u8; 3]]) -> Array3<u8> {
    let (h, w) = pred.dim();
    let mut out = Array3::<u8>::zeros((h, w, 3));
    for ((y, x), &c) in pred.indexed_iter() {
        if let Some(p) = usize::try_from(c).ok().and_then(|c| palette.get(c)) {
            out[[y, x, 0]] = p[0];
            out[[y, x, 1]] = p[1];
            out[[y, x, 2]] = p[2];
        }
    }
    out
}

/// Blends a BGR image with an RGB colour mask: `img * (1 - opacity) + mask * opacity`,
/// truncated to uint8 (as MMSegmentation's `show_result_pyplot`, opacity 0.5). Returns RGB.
pub fn overlay(bgr: ArrayView3<u8>, color_rgb: ArrayView3<u8>, opacity: f32) -> Array3<u8> {
    assert_eq!(bgr.dim(), color_rgb.dim(), "overlay: image and mask sizes differ");
    let (h, w, _) = bgr.dim();
    Array3::from_shape_fn((h, w, 3), |(y, x, c)| {
        let img = bgr[[y, x, 2 - c]] as f32;
        let m = color_rgb[[y, x, c]] as f32;
        (img * (1.0 - opacity) + m * opacity) as u8
    })
}

/// A deterministic palette for `n` classes: ADE20K's (MMSegmentation's `ADE20KDataset`
/// palette) for the first 150, then a simple hash colouring.
pub fn palette(n: usize) -> Vec<[u8; 3]> {
    (0..n)
        .map(|i| {
            ADE20K_PALETTE.get(i).copied().unwrap_or_else(|| {
                let v = (i as u32).wrapping_mul(2_654_435_761);
                [(v >> 24) as u8, (v >> 16) as u8, (v >> 8) as u8]
            })
        })
        .collect()
}

/// MMSegmentation 1.2.2 `ADE20KDataset.METAINFO['palette']` (RGB), class order.
pub const ADE20K_PALETTE: [[u8; 3]; 150] = [
    [120, 120, 120],
    [180, 120, 120],
    [6, 230, 230],
    [80, 50, 50],
    [4, 200, 3],
    [120, 120, 80],
    [140, 140, 140],
    [204, 5, 255],
    [230, 230, 230],
    [4, 250, 7],
    [224, 5, 255],
    [235, 255, 7],
    [150, 5, 61],
    [120, 120, 70],
    [8, 255, 51],
    [255, 6, 82],
    [143, 255, 140],
    [204, 255, 4],
    [255, 51, 7],
    [204, 70, 3],
    [0, 102, 200],
    [61, 230, 250],
    [255, 6, 51],
    [11, 102, 255],
    [255, 7, 71],
    [255, 9, 224],
    [9, 7, 230],
    [220, 220, 220],
    [255, 9, 92],
    [112, 9, 255],
    [8, 255, 214],
    [7, 255, 224],
    [255, 184, 6],
    [10, 255, 71],
    [255, 41, 10],
    [7, 255, 255],
    [224, 255, 8],
    [102, 8, 255],
    [255, 61, 6],
    [255, 194, 7],
    [255, 122, 8],
    [0, 255, 20],
    [255, 8, 41],
    [255, 5, 153],
    [6, 51, 255],
    [235, 12, 255],
    [160, 150, 20],
    [0, 163, 255],
    [140, 140, 140],
    [250, 10, 15],
    [20, 255, 0],
    [31, 255, 0],
    [255, 31, 0],
    [255, 224, 0],
    [153, 255, 0],
    [0, 0, 255],
    [255, 71, 0],
    [0, 235, 255],
    [0, 173, 255],
    [31, 0, 255],
    [11, 200, 200],
    [255, 82, 0],
    [0, 255, 245],
    [0, 61, 255],
    [0, 255, 112],
    [0, 255, 133],
    [255, 0, 0],
    [255, 163, 0],
    [255, 102, 0],
    [194, 255, 0],
    [0, 143, 255],
    [51, 255, 0],
    [0, 82, 255],
    [0, 255, 41],
    [0, 255, 173],
    [10, 0, 255],
    [173, 255, 0],
    [0, 255, 153],
    [255, 92, 0],
    [255, 0, 255],
    [255, 0, 245],
    [255, 0, 102],
    [255, 173, 0],
    [255, 0, 20],
    [255, 184, 184],
    [0, 31, 255],
    [0, 255, 61],
    [0, 71, 255],
    [255, 0, 204],
    [0, 255, 194],
    [0, 255, 82],
    [0, 10, 255],
    [0, 112, 255],
    [51, 0, 255],
    [0, 194, 255],
    [0, 122, 255],
    [0, 255, 163],
    [255, 153, 0],
    [0, 255, 10],
    [255, 112, 0],
    [143, 255, 0],
    [82, 0, 255],
    [163, 255, 0],
    [255, 235, 0],
    [8, 184, 170],
    [133, 0, 255],
    [0, 255, 92],
    [184, 0, 255],
    [255, 0, 31],
    [0, 184, 255],
    [0, 214, 255],
    [255, 0, 112],
    [92, 255, 0],
    [0, 224, 255],
    [112, 224, 255],
    [70, 184, 160],
    [163, 0, 255],
    [153, 0, 255],
    [71, 255, 0],
    [255, 0, 163],
    [255, 204, 0],
    [255, 0, 143],
    [0, 255, 235],
    [133, 255, 0],
    [255, 0, 235],
    [245, 0, 255],
    [255, 0, 122],
    [255, 245, 0],
    [10, 190, 212],
    [214, 255, 0],
    [0, 204, 255],
    [20, 0, 255],
    [255, 255, 0],
    [0, 153, 255],
    [0, 41, 255],
    [0, 255, 204],
    [41, 0, 255],
    [41, 255, 0],
    [173, 0, 255],
    [0, 245, 255],
    [71, 0, 255],
    [122, 0, 255],
    [0, 255, 184],
    [0, 92, 255],
    [184, 255, 0],
    [0, 133, 255],
    [255, 214, 0],
    [25, 194, 194],
    [102, 255, 0],
    [92, 0, 255],
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orientation_matches_opencv_geometry() {
        // 2x3 image with distinct pixels.
        let img = Array3::from_shape_fn((2, 3, 3), |(y, x, c)| (y * 10 + x) as u8 + c as u8 * 100);
        let px = |a: &Array3<u8>, y: usize, x: usize| a[[y, x, 0]];
        let r6 = apply_orientation(img.clone(), 6); // 90° clockwise
        assert_eq!(r6.dim(), (3, 2, 3));
        assert_eq!(px(&r6, 0, 0), 10); // bottom-left goes to top-left
        assert_eq!(px(&r6, 0, 1), 0);
        let r8 = apply_orientation(img.clone(), 8); // 90° counter-clockwise
        assert_eq!(px(&r8, 0, 0), 2);
        let r3 = apply_orientation(img.clone(), 3);
        assert_eq!(px(&r3, 0, 0), 12);
        let r1 = apply_orientation(img.clone(), 1);
        assert_eq!(r1, img);
    }

    #[test]
    fn exif_orientation_parses_both_byte_orders() {
        let le = [b'I', b'I', 42, 0, 8, 0, 0, 0, 1, 0, 0x12, 0x01, 3, 0, 1, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(exif_orientation(&le), Some(6));
        let be = [b'M', b'M', 0, 42, 0, 0, 0, 8, 0, 1, 0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 3, 0, 0, 0, 0, 0, 0];
        assert_eq!(exif_orientation(&be), Some(3));
        assert_eq!(exif_orientation(b"garbage"), None);
    }

    #[test]
    fn label_png_roundtrip() {
        let dir = std::env::temp_dir().join(format!("beit-seg-img-{}", std::process::id()));
        let p = dir.join("l.png");
        let lab = Array2::from_shape_fn((5, 7), |(y, x)| (y * 7 + x) as u8 * 7);
        write_label_png(&p, lab.view()).unwrap();
        assert_eq!(read_label(&p).unwrap(), lab);
        let rgb = Array3::from_shape_fn((5, 7, 3), |(y, x, c)| (y * 7 + x + c) as u8);
        let q = dir.join("c.png");
        write_rgb_png(&q, rgb.view()).unwrap();
        let bgr = read_bgr(&q).unwrap();
        assert_eq!(bgr[[1, 2, 0]], rgb[[1, 2, 2]]);
        let e = read_label(&q).unwrap_err().to_string();
        assert!(e.contains("c.png") && e.contains("8-bit single-channel"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
