//! Bilinear resizing (`F.interpolate(mode='bilinear')`).

use ndarray::{Array4, ArrayView4};

use super::{cast, par_planes};
use crate::Float;

/// One entry of a bilinear index/weight table: `(i0, i1, l0, l1)`.
type LinearTap<T> = (usize, usize, T, T);

/// PyTorch's `compute_indices_weights_linear` for one axis (input length `n`, output `m`),
/// all in `T`.
pub(super) fn linear_taps<T: Float>(n: usize, m: usize, align_corners: bool) -> Vec<LinearTap<T>> {
    let scale: T = if align_corners {
        if m > 1 {
            cast::<T>(n - 1) / cast::<T>(m - 1)
        } else {
            T::zero()
        }
    } else {
        cast::<T>(n) / cast::<T>(m)
    };
    let half = T::from_f64_lossy(0.5);
    (0..m)
        .map(|d| {
            let src = if align_corners {
                scale * cast::<T>(d)
            } else {
                let s = scale * (cast::<T>(d) + half) - half;
                if s < T::zero() {
                    T::zero()
                } else {
                    s
                }
            };
            let i0 = src.floor().to_usize().unwrap_or(0).min(n - 1);
            let i1 = i0 + usize::from(i0 < n - 1);
            let l1 = (src - cast::<T>(i0)).max(T::zero()).min(T::one());
            (i0, i1, T::one() - l1, l1)
        })
        .collect()
}

/// `F.interpolate(x, size=out, mode='bilinear', align_corners=...)` (no antialias), as
/// PyTorch's CPU kernel computes it, with all coordinate math in `T`. Per axis
/// (input `n`, output `m`):
/// `scale = align_corners ? (m > 1 ? (n-1)/(m-1) : 0) : n/m`;
/// `src = align_corners ? scale·d : max(scale·(d + 0.5) - 0.5, 0)`;
/// `i0 = min(floor(src), n-1)`, `i1 = i0 + (i0 < n-1)`, `l1 = clamp(src - i0, 0, 1)`,
/// `l0 = 1 - l1`; value `l0h·(l0w·x[i0,j0] + l1w·x[i0,j1]) + l1h·(l0w·x[i1,j0] + l1w·x[i1,j1])`.
///
/// Equal input and output sizes return a copy of `x` (the formula is the identity there).
/// Parallel over planes.
pub fn resize<T: Float>(x: ArrayView4<T>, out: (usize, usize), align_corners: bool) -> Array4<T> {
    let (b, c, h, w) = x.dim();
    if (h, w) == out {
        return x.as_standard_layout().into_owned();
    }
    assert!((h > 0 || out.0 == 0) && (w > 0 || out.1 == 0), "resize: empty input plane");
    let th = linear_taps::<T>(h, out.0, align_corners);
    let tw = linear_taps::<T>(w, out.1, align_corners);
    let mut y = Array4::zeros((b, c, out.0, out.1));
    let x_std = x.as_standard_layout();
    par_planes(x_std.view(), &mut y, |xp, mut op| {
        let xs = xp.as_slice().expect("standard-layout plane");
        for (mut orow, &(h0, h1, a0, a1)) in op.outer_iter_mut().zip(&th) {
            let r0 = &xs[h0 * w..(h0 + 1) * w];
            let r1 = &xs[h1 * w..(h1 + 1) * w];
            for (o, &(w0, w1, b0, b1)) in orow.iter_mut().zip(&tw) {
                *o = a0 * (b0 * r0[w0] + b1 * r0[w1]) + a1 * (b0 * r1[w0] + b1 * r1[w1]);
            }
        }
    });
    y
}
