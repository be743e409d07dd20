//! The plain twins: each optimised kernel of [`ops`](super) as the textbook loop of its formula,
//! single-threaded, no blocking, no lanes, no transforms, `exp` from the standard library.
//!
//! They are the oracles of the property tests (`tests/twins.rs`: every optimised kernel against
//! its twin on random shapes), and with `BEIT_SEG_PLAIN_KERNELS=1` the whole reference runs on
//! them ([`plain_kernels`](super::plain_kernels)), so the ground truth can be audited by reading
//! this file and the model files only. Sums run in index order (`Σ_k` for k = 0, 1, ...).

use ndarray::{s, Array2, Array4, ArrayView1, ArrayView2, ArrayView4, ArrayViewMut2};

use super::window_out_len;
use crate::Float;

/// `y = a · b`, (M, K) · (K, N) → (M, N): `y[i, j] = Σ_k a[i, k] · b[k, j]`.
pub fn matmul<T: Float>(a: ArrayView2<T>, b: ArrayView2<T>) -> Array2<T> {
    let (m, k) = a.dim();
    assert_eq!(k, b.nrows(), "matmul: ({m}, {k}) · ({}, {})", b.nrows(), b.ncols());
    let mut y = Array2::zeros((m, b.ncols()));
    for i in 0..m {
        for kk in 0..k {
            let aik = a[[i, kk]];
            let mut yr = y.row_mut(i);
            for (yv, &bv) in yr.iter_mut().zip(b.row(kk)) {
                *yv += aik * bv;
            }
        }
    }
    y
}

/// `y = x · weightᵀ + bias`: `y[n, o] = bias[o] + Σ_i x[n, i] · weight[o, i]`.
pub fn linear<T: Float>(x: ArrayView2<T>, weight: ArrayView2<T>, bias: Option<ArrayView1<T>>) -> Array2<T> {
    assert_eq!(x.ncols(), weight.ncols(), "linear: x has {} features but weight expects {}", x.ncols(), weight.ncols());
    let mut y = matmul(x, weight.t());
    if let Some(b) = bias {
        assert_eq!(b.len(), weight.nrows(), "linear: bias length {} != out_features {}", b.len(), weight.nrows());
        for mut row in y.rows_mut() {
            row += &b;
        }
    }
    y
}

/// `y[b,o,i,j] = bias[o] + Σ_{c,u,v} weight[o,c,u,v] · x[b,c, i·s + u·d - p, j·s + v·d - p]`
/// (zero outside the image).
pub fn conv2d<T: Float>(
    x: ArrayView4<T>,
    weight: ArrayView4<T>,
    bias: Option<ArrayView1<T>>,
    stride: (usize, usize),
    padding: (usize, usize),
    dilation: (usize, usize),
) -> Array4<T> {
    let (bn, cin, h, w) = x.dim();
    let (cout, w_cin, kh, kw) = weight.dim();
    assert_eq!(cin, w_cin, "conv2d: input has {cin} channels but weight expects {w_cin}");
    let ho = window_out_len("conv2d", h, kh, stride.0, padding.0, dilation.0);
    let wo = window_out_len("conv2d", w, kw, stride.1, padding.1, dilation.1);
    let tap =
        |i: usize, u: usize, s: usize, d: usize, p: usize, n: usize| (i * s + u * d).checked_sub(p).filter(|&r| r < n);
    Array4::from_shape_fn((bn, cout, ho, wo), |(b, o, i, j)| {
        let mut acc = bias.as_ref().map_or(T::zero(), |bv| bv[o]);
        for c in 0..cin {
            for u in 0..kh {
                let Some(r) = tap(i, u, stride.0, dilation.0, padding.0, h) else { continue };
                for v in 0..kw {
                    if let Some(q) = tap(j, v, stride.1, dilation.1, padding.1, w) {
                        acc += weight[[o, c, u, v]] * x[[b, c, r, q]];
                    }
                }
            }
        }
        acc
    })
}

/// `y[b,o, i·s + u - p, j·s + v - p] += Σ_c x[b,c,i,j] · weight[c,o,u,v]` (positions in the
/// cropped padding dropped), then `+ bias[o]`; output `(H - 1)·s - 2p + kh` (likewise W).
pub fn conv_transpose2d<T: Float>(
    x: ArrayView4<T>,
    weight: ArrayView4<T>,
    bias: Option<ArrayView1<T>>,
    stride: (usize, usize),
    padding: (usize, usize),
) -> Array4<T> {
    let (bn, cin, h, w) = x.dim();
    let (w_cin, cout, kh, kw) = weight.dim();
    assert_eq!(cin, w_cin, "conv_transpose2d: input has {cin} channels but weight expects {w_cin}");
    let ho = ((h - 1) * stride.0 + kh).checked_sub(2 * padding.0).expect("conv_transpose2d: no output");
    let wo = ((w - 1) * stride.1 + kw).checked_sub(2 * padding.1).expect("conv_transpose2d: no output");
    let mut y = Array4::zeros((bn, cout, ho, wo));
    for b in 0..bn {
        for o in 0..cout {
            for u in 0..kh {
                for v in 0..kw {
                    for i in 0..h {
                        let Some(r) = (i * stride.0 + u).checked_sub(padding.0).filter(|&r| r < ho) else { continue };
                        for j in 0..w {
                            let Some(q) = (j * stride.1 + v).checked_sub(padding.1).filter(|&q| q < wo) else {
                                continue;
                            };
                            let mut acc = T::zero();
                            for c in 0..cin {
                                acc += x[[b, c, i, j]] * weight[[c, o, u, v]];
                            }
                            y[[b, o, r, q]] += acc;
                        }
                    }
                }
            }
            if let Some(bv) = &bias {
                y.slice_mut(s![b, o, .., ..]).mapv_inplace(|t| t + bv[o]);
            }
        }
    }
    y
}

/// `softmax(x, dim=-1)` per row: `e = exp(x - max(x))`, `y = e / Σe`.
pub fn softmax_rows_inplace<T: Float>(mut x: ArrayViewMut2<T>) {
    for mut row in x.rows_mut() {
        let max = row.iter().fold(T::neg_infinity(), |m, &v| if v > m || v.is_nan() { v } else { m });
        row.mapv_inplace(|v| (v - max).exp());
        let sum = row.iter().fold(T::zero(), |a, &v| a + v);
        row.mapv_inplace(|v| v / sum);
    }
}

/// LayerNorm over the last axis of (N, C): `mean = Σx/C`, `var = Σ(x - mean)²/C`,
/// `y = (x - mean) / sqrt(var + eps) · weight + bias`.
pub fn layer_norm<T: Float>(
    x: ArrayView2<T>,
    weight: Option<ArrayView1<T>>,
    bias: Option<ArrayView1<T>>,
    eps: f64,
) -> Array2<T> {
    let eps = T::from_f64_lossy(eps);
    let count = T::from_f64_lossy(x.ncols() as f64);
    let mut y = x.to_owned();
    for mut row in y.rows_mut() {
        let mean = row.iter().fold(T::zero(), |a, &v| a + v) / count;
        let var = row.iter().fold(T::zero(), |a, &v| a + (v - mean) * (v - mean)) / count;
        let std = (var + eps).sqrt();
        for (j, v) in row.iter_mut().enumerate() {
            let mut t = (*v - mean) / std;
            if let Some(w) = &weight {
                t *= w[j];
            }
            if let Some(b) = &bias {
                t += b[j];
            }
            *v = t;
        }
    }
    y
}

/// Attention per (batch, head): `softmax(q · kᵀ + bias[h]) · v`, with
/// `bias[h][i, j] = table[h, index[i, j]]` materialised first.
pub fn attention<T: Float>(
    q: ArrayView4<T>,
    k: ArrayView4<T>,
    v: ArrayView4<T>,
    table: ArrayView2<T>,
    index: ArrayView2<usize>,
) -> Array4<T> {
    let (b, nh, n, hd) = q.dim();
    let mut out = Array4::zeros((b, nh, n, v.dim().3));
    for bi in 0..b {
        for h in 0..nh {
            let mut scores = matmul(q.slice(s![bi, h, .., ..]), k.slice(s![bi, h, .., ..]).t());
            debug_assert_eq!(scores.dim(), (n, n), "q · kᵀ of ({n}, {hd})");
            scores.zip_mut_with(&index, |sc, &t| *sc += table[[h, t]]);
            softmax_rows_inplace(scores.view_mut());
            out.slice_mut(s![bi, h, .., ..]).assign(&matmul(scores.view(), v.slice(s![bi, h, .., ..])));
        }
    }
    out
}
