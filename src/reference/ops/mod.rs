//! Pure numerical operators of the reference, each matching one PyTorch function.
//!
//! Every op is generic over [`Float`] and computes in the tensor's own dtype `T` (PyTorch's
//! CPU "opmath" type is the dtype itself for `float32` and `float64`) unless its doc says
//! otherwise. Matrix products go through the `gemm` crate (or OpenBLAS with feature `blas`,
//! see [`gemm`]), convolutions through im2col + GEMM or, for 3x3 kernels at stride 1, Winograd's
//! F(2x2, 3x3) (`winograd.rs`, behind [`Conv2d`]), and the large loops are parallelised with rayon over batch
//! images, channels, planes, rows or GEMM blocks. Every split is a function of the shapes, never
//! of the thread count, so results do not depend on the number of threads (tests/threads.rs).
//!
//! Shape contracts are checked with `assert!` (with a message): callers validate user data
//! before calling, so a failed assertion is a bug in the caller.

mod activation;
mod attention;
mod conv;
mod gemm;
mod norm;
pub mod plain;
mod pool;
mod resize;
mod winograd;

pub use activation::{gelu, gelu_inplace, relu_inplace, softmax_rows_inplace};
pub use attention::{attention, GatheredBias};
pub use conv::{conv2d, conv_transpose2d, Conv2d};
pub use gemm::{linear, matmul};
#[cfg(feature = "blas")]
pub use gemm::{openblas_better_core, openblas_core};
pub use norm::{batch_norm_inplace, layer_norm};
pub use pool::{adaptive_avg_pool2d, max_pool2d};
pub use resize::resize;

use ndarray::parallel::prelude::*;
use ndarray::{s, Array3, Array4, ArrayView1, ArrayView2, ArrayView4, ArrayViewMut2, Axis, Zip};

use crate::Float;

/// Whether the reference runs on the plain twins ([`plain`]) instead of the optimised kernels:
/// `BEIT_SEG_PLAIN_KERNELS=1` in the environment, read once per process.
pub fn plain_kernels() -> bool {
    static PLAIN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PLAIN.get_or_init(|| std::env::var_os("BEIT_SEG_PLAIN_KERNELS").is_some_and(|v| v == "1"))
}

/// `n` converted to `T` (exact for every size a tensor can have in practice).
#[inline]
fn cast<T: Float>(n: usize) -> T {
    T::from_f64_lossy(n as f64)
}

/// Sum of a sequence with eight interleaved partial sums (combined pairwise), the way
/// vectorised reductions accumulate; more accurate than one running sum.
#[inline]
fn sum_lanes<T: Float>(values: impl Iterator<Item = T>) -> T {
    let mut acc = [T::zero(); 8];
    for (i, v) in values.enumerate() {
        acc[i & 7] += v;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

/// Runs `f(input_plane, output_plane)` for every (batch, channel) plane, in parallel.
fn par_planes<T: Float, F>(x: ArrayView4<T>, out: &mut Array4<T>, f: F)
where
    F: Fn(ArrayView2<T>, ArrayViewMut2<T>) + Sync + Send,
{
    debug_assert_eq!(x.dim().0, out.dim().0);
    debug_assert_eq!(x.dim().1, out.dim().1);
    out.outer_iter_mut().into_par_iter().zip(x.outer_iter().into_par_iter()).for_each(|(mut ob, xb)| {
        ob.outer_iter_mut().into_par_iter().zip(xb.outer_iter().into_par_iter()).for_each(|(op, xp)| f(xp, op));
    });
}

/// A zero (B, C, H, W) array whose channel planes are filled with `bias[c]` when given.
fn channel_filled<T: Float>(shape: (usize, usize, usize, usize), bias: Option<ArrayView1<T>>) -> Array4<T> {
    let mut out = Array4::zeros(shape);
    if let Some(bias) = bias {
        Zip::from(out.axis_iter_mut(Axis(1))).and(&bias).par_for_each(|mut plane, &bv| plane.fill(bv));
    }
    out
}
/// Output length of a convolution/pooling window sweep along one axis:
/// `(n + 2p - d(k-1) - 1)/s + 1`, asserting that the (dilated) kernel fits the padded input.
fn window_out_len(op: &str, n: usize, k: usize, s: usize, p: usize, d: usize) -> usize {
    assert!(k > 0 && s > 0 && d > 0, "{op}: kernel, stride and dilation must be positive");
    let ek = d * (k - 1) + 1;
    assert!(n + 2 * p >= ek, "{op}: kernel extent {ek} is larger than the padded input size {}", n + 2 * p);
    (n + 2 * p - ek) / s + 1
}
/// `logits.argmax(dim=1)`: (B, C, H, W) → (B, H, W) class indices. Ties pick the first
/// maximal channel; a NaN counts as the maximum (the first NaN wins), as in PyTorch.
/// Requires C ≥ 1. Parallel over images and rows.
pub fn argmax_channels<T: Float>(x: ArrayView4<T>) -> Array3<i64> {
    let (b, c, h, w) = x.dim();
    assert!(c > 0, "argmax_channels: no channels");
    let mut out = Array3::<i64>::zeros((b, h, w));
    out.outer_iter_mut().into_par_iter().zip(x.outer_iter().into_par_iter()).for_each(|(mut ob, xb)| {
        ob.outer_iter_mut().into_par_iter().enumerate().for_each(|(row, mut orow)| {
            let mut best = xb.slice(s![0, row, ..]).to_vec();
            for ch in 1..c {
                let xrow = xb.slice(s![ch, row, ..]);
                for ((bv, o), &v) in best.iter_mut().zip(orow.iter_mut()).zip(xrow) {
                    if !bv.is_nan() && (v > *bv || v.is_nan()) {
                        *bv = v;
                        *o = ch as i64;
                    }
                }
            }
        });
    });
    out
}

#[cfg(test)]
mod tests;
