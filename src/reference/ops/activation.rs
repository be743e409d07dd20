//! Element-wise activations and the row softmax: GELU, ReLU, softmax.

use ndarray::{Array, ArrayViewMut2, Dimension, Zip};

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
/// `y = e · (1 / Σe)` (PyTorch's vectorised last-dim softmax also multiplies by the
/// reciprocal). A NaN anywhere in a row makes the whole row NaN, as in PyTorch. Parallel over
/// rows.
pub fn softmax_rows_inplace<T: Float>(x: ArrayViewMut2<T>) {
    if super::plain_kernels() {
        return super::plain::softmax_rows_inplace(x);
    }
    softmax_rows_lanes(x);
}

/// [`softmax_rows_inplace`] by the multiversioned 16-lane row kernel, in parallel over rows.
pub(super) fn softmax_rows_lanes<T: Float>(mut x: ArrayViewMut2<T>) {
    Zip::from(x.rows_mut()).par_for_each(|mut row| match row.as_slice_mut() {
        Some(r) => softmax_row(r, None),
        None => {
            let mut r = row.to_vec();
            softmax_row(&mut r, None);
            row.iter_mut().zip(r).for_each(|(d, v)| *d = v);
        }
    });
}

/// `torch.softmax(x + bias, dim=-1)` in place on a (N, N) attention matrix whose bias is
/// gathered from a table, `bias[i, j] = table[index[i·N + j]]` (BEiT's relative position bias,
/// `table` one head's column of `relative_position_bias_table`): `x + bias` is rounded first,
/// as in `attn = attn + bias; attn.softmax(dim=-1)`. On the calling thread (the attention runs
/// its heads in parallel). The kernel of [`attention`](super::attention). Panics if `index` is not N·N long; an index outside `table` (a bug of
/// the caller, checked in debug builds) reads the table's last entry.
pub(super) fn softmax_rows_biased_inplace<T: Float>(mut x: ArrayViewMut2<T>, table: &[T], index: &[u32]) {
    let (n, m) = x.dim();
    assert_eq!(index.len(), n * m, "softmax bias: index has {} entries for a {n}x{m} matrix", index.len());
    debug_assert!(index.iter().all(|&i| (i as usize) < table.len()), "softmax bias: index points outside the table");
    for (mut row, idx) in x.rows_mut().into_iter().zip(index.chunks_exact(m.max(1))) {
        let r = row.as_slice_mut().expect("attention rows are contiguous");
        softmax_row(r, Some((table, idx)));
    }
}

/// One softmax row (optionally after adding a gathered bias), in four passes over the row:
/// `x += table[idx]` with the running max, `e = exp(x - max)` with the running sum (16 lanes),
/// `e · (1/Σ)`. Compiled for AVX-512 and AVX2 besides the baseline, chosen at run time; no
/// fused multiply-add anywhere, so all three give the same bits.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+avx512dq+avx512vl", "x86_64+avx2+fma"))]
fn softmax_row<T: Float>(row: &mut [T], bias: Option<(&[T], &[u32])>) {
    const L: usize = 16;
    let mut lanes = [T::neg_infinity(); L];
    if let Some((table, idx)) = bias {
        // Indices were checked against the table; `min` lets the compiler drop the bounds check.
        let last = table.len().saturating_sub(1);
        for (c, ic) in row.chunks_mut(L).zip(idx.chunks(L)) {
            for ((v, &i), lane) in c.iter_mut().zip(ic).zip(lanes.iter_mut()) {
                *v += table[(i as usize).min(last)];
                *lane = if *v > *lane { *v } else { *lane };
            }
        }
    } else {
        for c in row.chunks(L) {
            for (&v, lane) in c.iter().zip(lanes.iter_mut()) {
                *lane = if v > *lane { v } else { *lane };
            }
        }
    }
    let max = lanes.iter().fold(T::neg_infinity(), |m, &v| if v > m { v } else { m });
    let mut sums = [T::zero(); L];
    for c in row.chunks_mut(L) {
        for (v, s) in c.iter_mut().zip(sums.iter_mut()) {
            *v = (*v - max).exp_vec();
            *s += *v;
        }
    }
    let sum = sums.iter().fold(T::zero(), |a, &b| a + b);
    let inv = T::one() / sum;
    for v in row.iter_mut() {
        *v *= inv;
    }
}
