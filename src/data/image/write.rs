//! Writing label / colour / overlay PNGs and colouring predictions.

use std::path::Path;

use ndarray::{Array2, Array3, ArrayView2, ArrayView3};

use super::ImageError;

fn write_png(
    path: &Path,
    w: usize,
    h: usize,
    color: png::ColorType,
    data: &[u8],
    force: bool,
    inputs: &[&Path],
) -> Result<(), ImageError> {
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
    // Atomic, never over a device / FIFO or an input (crate::files::write_output).
    crate::files::write_output_bytes(path, force, inputs, &bytes).map_err(|e| werr(&e))
}

/// Writes an 8-bit greyscale PNG (a label map; read back identically by Pillow and
/// [`read_label`]), replacing an existing regular file.
pub fn write_label_png(path: &Path, labels: ArrayView2<u8>) -> Result<(), ImageError> {
    write_label_png_to(path, labels, true, &[])
}

/// [`write_label_png`] as a command's output: an existing file only with `force`, never one of
/// `inputs` (see [`crate::files::write_output`]).
pub fn write_label_png_to(
    path: &Path,
    labels: ArrayView2<u8>,
    force: bool,
    inputs: &[&Path],
) -> Result<(), ImageError> {
    let (h, w) = labels.dim();
    let data: Vec<u8> = labels.iter().copied().collect();
    write_png(path, w, h, png::ColorType::Grayscale, &data, force, inputs)
}

/// Writes an H×W×3 RGB image as an 8-bit PNG, replacing an existing regular file.
pub fn write_rgb_png(path: &Path, rgb: ArrayView3<u8>) -> Result<(), ImageError> {
    write_rgb_png_to(path, rgb, true, &[])
}

/// [`write_rgb_png`] as a command's output (see [`write_label_png_to`]).
pub fn write_rgb_png_to(path: &Path, rgb: ArrayView3<u8>, force: bool, inputs: &[&Path]) -> Result<(), ImageError> {
    let (h, w, c) = rgb.dim();
    if c != 3 {
        return Err(ImageError::Write { path: path.to_path_buf(), msg: format!("expected 3 channels, got {c}") });
    }
    let data: Vec<u8> = rgb.iter().copied().collect();
    write_png(path, w, h, png::ColorType::Rgb, &data, force, inputs)
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
