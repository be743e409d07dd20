//! Normalisations: LayerNorm over the last dimension, BatchNorm2d in eval mode.

use ndarray::{Array, Array2, Array4, ArrayView1, ArrayView2, Axis, Zip};

use super::{cast, sum_lanes};
use crate::Float;

/// `torch.nn.LayerNorm` over the last dimension of `x` (N, C):
/// `mean = Σx/C`, `var = Σ(x-mean)²/C` (biased, two passes),
/// `y = (x - mean) · rstd · weight + bias` with `rstd = 1/sqrt(var + eps)`.
///
/// Like PyTorch's CPU kernel, the reciprocal standard deviation is computed once per row and
/// multiplied in (rather than dividing every element). `eps` is rounded to `T` first (as
/// PyTorch casts it to the opmath type). Parallel over rows.
pub fn layer_norm<T: Float>(
    x: ArrayView2<T>,
    weight: Option<ArrayView1<T>>,
    bias: Option<ArrayView1<T>>,
    eps: f64,
) -> Array2<T> {
    if super::plain_kernels() {
        return super::plain::layer_norm(x, weight, bias, eps);
    }
    layer_norm_lanes(x, weight, bias, eps)
}

/// [`layer_norm`] with 8-lane sums, in parallel over rows.
pub(super) fn layer_norm_lanes<T: Float>(
    x: ArrayView2<T>,
    weight: Option<ArrayView1<T>>,
    bias: Option<ArrayView1<T>>,
    eps: f64,
) -> Array2<T> {
    let (n, c) = x.dim();
    if let Some(w) = &weight {
        assert_eq!(w.len(), c, "layer_norm: weight length {} != {c}", w.len());
    }
    if let Some(b) = &bias {
        assert_eq!(b.len(), c, "layer_norm: bias length {} != {c}", b.len());
    }
    let eps = T::from_f64_lossy(eps);
    let count: T = cast(c);
    let mut y = Array2::zeros((n, c));
    Zip::from(y.rows_mut()).and(x.rows()).par_for_each(|mut yr, xr| {
        let mean = sum_lanes(xr.iter().copied()) / count;
        let var = sum_lanes(xr.iter().map(|&v| (v - mean) * (v - mean))) / count;
        let rstd = T::one() / (var + eps).sqrt();
        Zip::indexed(&mut yr).and(&xr).for_each(|j, yv, &xv| {
            let mut v = (xv - mean) * rstd;
            if let Some(w) = &weight {
                v *= w[j];
            }
            if let Some(b) = &bias {
                v += b[j];
            }
            *yv = v;
        });
    });
    y
}
/// `torch.nn.BatchNorm2d` in eval mode, in place on `x` (B, C, H, W):
/// `y = (x - running_mean)/sqrt(running_var + eps) · weight + bias` per channel (dim 1).
///
/// Computed as PyTorch's CPU eval kernel does, all in `T`: per channel
/// `invstd = 1/sqrt(var + eps)`, `alpha = weight · invstd`, `beta = bias - mean · alpha`, then
/// `y = x · alpha + beta`. `eps` is rounded to `T` first. Parallel over channels.
pub fn batch_norm_inplace<T: Float>(
    x: &mut Array4<T>,
    running_mean: ArrayView1<T>,
    running_var: ArrayView1<T>,
    weight: Option<ArrayView1<T>>,
    bias: Option<ArrayView1<T>>,
    eps: f64,
) {
    let c = x.len_of(Axis(1));
    assert_eq!(running_mean.len(), c, "batch_norm: running_mean length != {c}");
    assert_eq!(running_var.len(), c, "batch_norm: running_var length != {c}");
    if let Some(wv) = &weight {
        assert_eq!(wv.len(), c, "batch_norm: weight length != {c}");
    }
    if let Some(bv) = &bias {
        assert_eq!(bv.len(), c, "batch_norm: bias length != {c}");
    }
    let eps = T::from_f64_lossy(eps);
    let mut alpha = Array::zeros(c);
    let mut beta = Array::zeros(c);
    for ch in 0..c {
        let invstd = T::one() / (running_var[ch] + eps).sqrt();
        let wv = weight.as_ref().map_or(T::one(), |wv| wv[ch]);
        let bv = bias.as_ref().map_or(T::zero(), |bv| bv[ch]);
        alpha[ch] = invstd * wv;
        beta[ch] = bv - running_mean[ch] * alpha[ch];
    }
    Zip::from(x.axis_iter_mut(Axis(1)))
        .and(&alpha)
        .and(&beta)
        .par_for_each(|mut plane, &a, &b| plane.mapv_inplace(|v| v * a + b));
}
