//! Element-wise activations and the row softmax: GELU, ReLU, softmax.

use ndarray::{Array, ArrayViewMut2, Dimension, Zip};

use super::sum_lanes;
use crate::Float;

/// Exact GELU, `torch.nn.GELU(approximate='none')`: `x · 0.5 · (1 + erf(x / √2))`.
///
/// Evaluated in f64 (libm `erf`) and rounded to `T` once: for f64 this is exactly
/// `x * 0.5 * (1 + T::erf(x * FRAC_1_SQRT_2))`; for f32 it is the correctly rounded value up to
/// the f64 evaluation error.
#[inline]
pub fn gelu<T: Float>(x: T) -> T {
    let v = x.to_f64_exact();
    T::from_f64_lossy(v * 0.5 * (1.0 + libm::erf(v * std::f64::consts::FRAC_1_SQRT_2)))
}

/// [`gelu`] applied element-wise in place (parallel).
pub fn gelu_inplace<T: Float, D: Dimension>(x: &mut Array<T, D>) {
    x.par_mapv_inplace(gelu);
}

/// `torch.relu` in place: `max(x, 0)`; NaN stays NaN (parallel).
pub fn relu_inplace<T: Float, D: Dimension>(x: &mut Array<T, D>) {
    x.par_mapv_inplace(|v| if v < T::zero() { T::zero() } else { v });
}

/// `torch.softmax(x, dim=-1)` in place on a 2-D view: per row, `e = exp(x - max(x))`,
/// `y = e / Σe`. A NaN anywhere in a row makes the whole row NaN, as in PyTorch. Parallel
/// over rows.
pub fn softmax_rows_inplace<T: Float>(mut x: ArrayViewMut2<T>) {
    Zip::from(x.rows_mut()).par_for_each(|mut row| {
        let max = row.fold(T::neg_infinity(), |m, &v| m.max(v));
        row.mapv_inplace(|v| (v - max).exp());
        let sum = sum_lanes(row.iter().copied());
        row.mapv_inplace(|v| v / sum);
    });
}
