//! Test-time image transforms of MMSegmentation's ADE20K pipeline, bit-exact.
//!
//! * [`rescale_size`] — mmcv's keep-ratio size rule (`Resize(scale=(2560, 640), keep_ratio=True)`).
//! * [`resize_bilinear_u8`]: OpenCV's fixed-point `cv2.resize(..., INTER_LINEAR)` on uint8.
//! * [`normalize`] — `SegDataPreProcessor` (BGR→RGB flip, then `(x - mean) / std` in float32).
//!
//! See docs/mmseg-beit-upernet.md §5.1, §5.2 and §9.1.

use ndarray::{Array3, ArrayView3};

/// `Resize(scale=...)` of the ADE20K 640x640 configs: the long side at most 2560, the short
/// side at most 640 (in either order; only max and min matter).
pub const ADE20K_SCALE: (usize, usize) = (2560, 640);

/// `SegDataPreProcessor.mean` of the ADE20K configs, RGB order, as the float32 buffer torch
/// makes from the Python floats (`torch.tensor([123.675, ...])`: float64 → float32).
pub const ADE20K_MEAN: [f32; 3] = [123.675f64 as f32, 116.28f64 as f32, 103.53f64 as f32];

/// `SegDataPreProcessor.std` of the ADE20K configs, RGB order, float32 as torch stores it.
pub const ADE20K_STD: [f32; 3] = [58.395f64 as f32, 57.12f64 as f32, 57.375f64 as f32];

/// The keep-ratio output size of mmcv's `rescale_size` (`mmcv/image/geometric.py`), which
/// `mmcv.imrescale` and MMSegmentation's `Resize(scale, keep_ratio=True)` use.
///
/// With `long = max(scale)`, `short = min(scale)` (Python float64 throughout):
/// `sf = min(long / max(h, w), short / min(h, w))`, then `new = int(x * sf + 0.5)` for each
/// side (truncation toward zero). Takes and returns `(h, w)` (mmcv's own order is `(w, h)`;
/// the rule is symmetric). Example: `(512, 683)` with `(2560, 640)` → sf 1.25 → `(640, 854)`.
///
/// # Panics
/// If a side of `hw` or `scale` is zero.
pub fn rescale_size(hw: (usize, usize), scale: (usize, usize)) -> (usize, usize) {
    let (h, w) = hw;
    assert!(h > 0 && w > 0, "rescale_size: empty image size {h}x{w}");
    assert!(scale.0 > 0 && scale.1 > 0, "rescale_size: invalid scale {scale:?}");
    let max_long = scale.0.max(scale.1) as f64;
    let max_short = scale.0.min(scale.1) as f64;
    let sf = f64::min(max_long / h.max(w) as f64, max_short / h.min(w) as f64);
    let side = |x: usize| (x as f64 * sf + 0.5) as usize;
    (side(h), side(w))
}

/// One output index of one axis: the two source taps and their 2048-scaled weights.
#[derive(Debug, Clone, Copy)]
struct Tap {
    s0: usize,
    s1: usize,
    w0: i32,
    w1: i32,
}

/// OpenCV's coefficients of one axis (`cv::resize`, `resize.cpp`, `INTER_LINEAR`, fixed point):
/// `scale = 1 / (dst / src)` (double); `f = float((d + 0.5) * scale - 0.5)`; `s = floor(f)`;
/// `f = f - s` (float32); weights `saturate_cast<short>((1 - f) * 2048)` and
/// `saturate_cast<short>(f * 2048)` (round half to even). On the x axis an index left of the
/// image (`s < 0`) or at/after its last pixel (`s >= src - 1`) is reset to that edge with
/// `f = 0`; on the y axis the weights are kept and the two rows are clipped to `[0, src - 1]`.
fn axis_taps(src: usize, dst: usize, x_axis: bool) -> Vec<Tap> {
    let scale = 1.0f64 / (dst as f64 / src as f64);
    let last = src as i64 - 1;
    (0..dst)
        .map(|d| {
            let fx = ((d as f64 + 0.5) * scale - 0.5) as f32;
            let mut s = fx.floor() as i64;
            let mut f = fx - s as f32;
            let (s0, s1) = if x_axis {
                if s < 0 {
                    s = 0;
                    f = 0.0;
                }
                if s >= last {
                    s = last;
                    f = 0.0;
                }
                (s, (s + 1).min(last))
            } else {
                (s.clamp(0, last), (s + 1).clamp(0, last))
            };
            let w0 = ((1.0f32 - f) * 2048.0f32).round_ties_even() as i32;
            let w1 = (f * 2048.0f32).round_ties_even() as i32;
            Tap { s0: s0 as usize, s1: s1 as usize, w0, w1 }
        })
        .collect()
}

/// `cv2.resize(img, (out_w, out_h), interpolation=cv2.INTER_LINEAR)` on a uint8 `H×W×C` image,
/// bit-exact with OpenCV 4.x (verified against opencv-python 4.10 and 4.11, x86-64): the
/// fixed-point path of `resizeGeneric_` with `HResizeLinear` + `VResizeLinearVec_32s8u`.
///
/// Per axis the taps and int16 weights of `axis_taps` (`a0 + a1` may be 2047..2049). Then
/// * horizontal pass, per source row and channel (int32): `h = P[s0]·a0 + P[s1]·a1`;
/// * vertical pass, the SIMD formula (which OpenCV applies to every pixel):
///   `out = clamp((mulhi16(h0 >> 4, b0) + mulhi16(h1 >> 4, b1) + 2) >> 2, 0, 255)` with
///   `mulhi16(x, y) = (x·y) >> 16` and arithmetic shifts — *not* the textbook
///   `(h0·b0 + h1·b1 + 2^21) >> 22`, which differs by one on ~10 % of pixels.
///
/// Any channel count works (each channel independently); an exact 2x downscale gives the
/// 2x2 box average `(a + b + c + d + 2) >> 2`, as OpenCV's INTER_AREA shortcut for that case.
///
/// # Panics
/// If the input or the output size is empty.
pub fn resize_bilinear_u8(img: ArrayView3<u8>, out_hw: (usize, usize)) -> Array3<u8> {
    let (h, w, c) = img.dim();
    let (oh, ow) = out_hw;
    assert!(h > 0 && w > 0 && c > 0, "resize_bilinear_u8: empty input {h}x{w}x{c}");
    assert!(oh > 0 && ow > 0, "resize_bilinear_u8: empty output size {oh}x{ow}");
    let xs = axis_taps(w, ow, true);
    let ys = axis_taps(h, oh, false);
    let row_len = ow * c;
    // Horizontal pass of one source row into `buf` (int32, ow*c values).
    let hpass = |r: usize, buf: &mut Vec<i32>| {
        buf.clear();
        let row = img.index_axis(ndarray::Axis(0), r);
        for t in &xs {
            for ch in 0..c {
                buf.push(row[[t.s0, ch]] as i32 * t.w0 + row[[t.s1, ch]] as i32 * t.w1);
            }
        }
    };
    let mut out = Array3::<u8>::zeros((oh, ow, c));
    let mut h0 = Vec::with_capacity(row_len);
    let mut h1 = Vec::with_capacity(row_len);
    // (row index held in h0, row index held in h1): rows are reused between output rows.
    let mut held: (Option<usize>, Option<usize>) = (None, None);
    let mulhi = |x: i32, b: i32| (x * b) >> 16;
    for (oy, t) in ys.iter().enumerate() {
        if held.0 != Some(t.s0) {
            if held.1 == Some(t.s0) {
                std::mem::swap(&mut h0, &mut h1);
                held = (held.1, held.0);
            } else {
                hpass(t.s0, &mut h0);
                held.0 = Some(t.s0);
            }
        }
        if held.1 != Some(t.s1) {
            hpass(t.s1, &mut h1);
            held.1 = Some(t.s1);
        }
        let mut orow = out.index_axis_mut(ndarray::Axis(0), oy);
        let flat = orow.as_slice_mut().expect("a fresh array is contiguous");
        for ((o, &a), &b) in flat.iter_mut().zip(&h0).zip(&h1) {
            let v = (mulhi(a >> 4, t.w0) + mulhi(b >> 4, t.w1) + 2) >> 2;
            *o = v.clamp(0, 255) as u8;
        }
    }
    out
}

/// MMSegmentation's `SegDataPreProcessor` on one image (`mmseg/models/data_preprocessor.py`):
/// HWC uint8 (BGR as cv2 decodes it) → CHW float32. If `bgr_to_rgb` and the image has 3
/// channels, the channels are flipped (`[2, 1, 0]`) first; then, per channel `c` of the
/// (flipped) image, `(float(x) - mean[c]) / std[c]` in float32 with a true division (not a
/// multiplication by the reciprocal). `mean`/`std` are in the flipped (RGB) order, e.g.
/// [`ADE20K_MEAN`], [`ADE20K_STD`].
///
/// # Panics
/// If `mean` or `std` does not have one value per channel.
pub fn normalize(img_bgr: ArrayView3<u8>, mean: &[f32], std: &[f32], bgr_to_rgb: bool) -> Array3<f32> {
    let (h, w, c) = img_bgr.dim();
    assert!(
        mean.len() == c && std.len() == c,
        "normalize: {c} channels but {} means and {} stds",
        mean.len(),
        std.len()
    );
    let flip = bgr_to_rgb && c == 3;
    Array3::from_shape_fn((c, h, w), |(ch, y, x)| {
        let src = if flip { 2 - ch } else { ch };
        (img_bgr[[y, x, src]] as f32 - mean[ch]) / std[ch]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taps_of_2x_upscale() {
        // d=0: f = -0.25 → s = -1, f = 0.75 (y keeps it, x resets to s = 0, f = 0).
        let y = axis_taps(4, 8, false);
        assert_eq!((y[0].s0, y[0].s1, y[0].w0, y[0].w1), (0, 0, 512, 1536));
        let x = axis_taps(4, 8, true);
        assert_eq!((x[0].s0, x[0].s1, x[0].w0, x[0].w1), (0, 1, 2048, 0));
        assert_eq!((x[7].s0, x[7].s1, x[7].w0, x[7].w1), (3, 3, 2048, 0));
        assert_eq!((x[1].s0, x[1].s1, x[1].w0, x[1].w1), (0, 1, 1536, 512));
    }
}
