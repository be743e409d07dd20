//! Pooling: max pooling and adaptive average pooling.

use ndarray::{Array4, ArrayView4};

use super::{cast, par_planes, window_out_len};
use crate::Float;

/// `torch.nn.MaxPool2d(kernel, stride, padding)` (dilation 1, `ceil_mode=False`):
/// output `(H + 2p - k)/s + 1` (likewise W), `y[i,j] = max` over the window
/// `[i·s - p, i·s - p + k) × [j·s - p, j·s - p + k)` clipped to the input (the padding acts as
/// -inf). As PyTorch's CPU kernel: a NaN in the window makes the result NaN. Requires
/// `p ≤ k/2` (PyTorch's own check). Parallel over planes.
pub fn max_pool2d<T: Float>(
    x: ArrayView4<T>,
    kernel: (usize, usize),
    stride: (usize, usize),
    padding: (usize, usize),
) -> Array4<T> {
    let (b, c, h, w) = x.dim();
    assert!(
        padding.0 <= kernel.0 / 2 && padding.1 <= kernel.1 / 2,
        "max_pool2d: padding must be at most half of the kernel size"
    );
    let ho = window_out_len("max_pool2d", h, kernel.0, stride.0, padding.0, 1);
    let wo = window_out_len("max_pool2d", w, kernel.1, stride.1, padding.1, 1);
    let mut out = Array4::zeros((b, c, ho, wo));
    let x_std = x.as_standard_layout();
    let window = |o: usize, s: usize, p: usize, k: usize, n: usize| {
        let start = (o * s) as isize - p as isize;
        let end = (start + k as isize).min(n as isize);
        (start.max(0) as usize, end.max(0) as usize)
    };
    par_planes(x_std.view(), &mut out, |xp, mut op| {
        let xs = xp.as_slice().expect("standard-layout plane");
        for oh in 0..ho {
            let (ih0, ih1) = window(oh, stride.0, padding.0, kernel.0, h);
            for ow in 0..wo {
                let (iw0, iw1) = window(ow, stride.1, padding.1, kernel.1, w);
                let mut m = T::neg_infinity();
                for ih in ih0..ih1 {
                    for &v in &xs[ih * w + iw0..ih * w + iw1] {
                        if v > m || v.is_nan() {
                            m = v;
                        }
                    }
                }
                op[[oh, ow]] = m;
            }
        }
    });
    out
}

/// The adaptive pooling bins of an axis of length `n` pooled to `m`:
/// bin `i` is `[floor(i·n/m), ceil((i+1)·n/m))`.
pub(super) fn adaptive_bins(n: usize, m: usize) -> Vec<(usize, usize)> {
    (0..m).map(|i| ((i * n) / m, ((i + 1) * n).div_ceil(m))).collect()
}

/// `torch.nn.AdaptiveAvgPool2d(out)` on `x` (B, C, H, W) → (B, C, out.0, out.1).
///
/// Output `(i, j)` is the mean over the bin rows `[floor(i·H/Ho), ceil((i+1)·H/Ho))` × bin
/// columns (likewise): the sum accumulated in `T` in row-major order over the bin, then divided
/// by the bin height and then by the bin width (`sum / kh / kw`, exactly as PyTorch's CPU
/// kernel). Output sizes larger than the input repeat bins of size 1. Parallel over planes.
pub fn adaptive_avg_pool2d<T: Float>(x: ArrayView4<T>, out: (usize, usize)) -> Array4<T> {
    let (b, c, h, w) = x.dim();
    assert!((h > 0 || out.0 == 0) && (w > 0 || out.1 == 0), "adaptive_avg_pool2d: empty input plane");
    let rows = adaptive_bins(h, out.0);
    let colbins = adaptive_bins(w, out.1);
    let mut y = Array4::zeros((b, c, out.0, out.1));
    let x_std = x.as_standard_layout();
    par_planes(x_std.view(), &mut y, |xp, mut op| {
        let xs = xp.as_slice().expect("standard-layout plane");
        for (i, &(h0, h1)) in rows.iter().enumerate() {
            let kh: T = cast(h1 - h0);
            for (j, &(w0, w1)) in colbins.iter().enumerate() {
                let kw: T = cast(w1 - w0);
                let mut sum = T::zero();
                for ih in h0..h1 {
                    for &v in &xs[ih * w + w0..ih * w + w1] {
                        sum += v;
                    }
                }
                op[[i, j]] = sum / kh / kw;
            }
        }
    });
    y
}
