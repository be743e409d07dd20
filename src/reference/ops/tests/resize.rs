//! Bilinear resizing: hand-computed values and the documented formula.

use ndarray::{arr2, s, Array2, Array4};

use super::Rng;
use crate::reference::ops::resize;
use crate::reference::ops::resize::linear_taps;
use crate::Float;

#[test]
fn bilinear_hand_computed() {
    let x = arr2(&[[1.0f64, 2.0], [3.0, 4.0]]).into_shape_with_order((1, 1, 2, 2)).unwrap();
    let y = resize(x.view(), (4, 4), false);
    let want = arr2(&[[1.0, 1.25, 1.75, 2.0], [1.5, 1.75, 2.25, 2.5], [2.5, 2.75, 3.25, 3.5], [3.0, 3.25, 3.75, 4.0]]);
    assert_eq!(y.slice(s![0, 0, .., ..]), want);
    let y32 = resize(x.mapv(|v| v as f32).view(), (4, 4), false);
    assert_eq!(y32.slice(s![0, 0, .., ..]), want.mapv(|v| v as f32));

    let y = resize(x.view(), (4, 4), true);
    let want = Array2::from_shape_fn((4, 4), |(i, j)| 1.0 + 2.0 * i as f64 / 3.0 + j as f64 / 3.0);
    for (a, b) in y.iter().zip(&want) {
        assert!((a - b).abs() < 1e-15, "{a} vs {b}");
    }
    let y32 = resize(x.mapv(|v| v as f32).view(), (4, 4), true);
    for (a, b) in y32.iter().zip(&want) {
        assert!((*a as f64 - b).abs() < 1e-6, "{a} vs {b}");
    }
    // Corners are preserved exactly with align_corners.
    assert_eq!(y[[0, 0, 0, 0]], 1.0);
    assert_eq!(y[[0, 0, 3, 3]], 4.0);
    assert_eq!(y[[0, 0, 0, 3]], 2.0);
    assert_eq!(y[[0, 0, 3, 0]], 3.0);
}

/// The documented formula, written out directly in `T`.
fn naive_bilinear<T: Float>(x: &Array4<T>, out: (usize, usize), ac: bool) -> Array4<T> {
    let (bn, c, h, w) = x.dim();
    let coord = |d: usize, n: usize, m: usize| -> (usize, usize, T, T) {
        let nt = T::from_f64_lossy(n as f64);
        let mt = T::from_f64_lossy(m as f64);
        let dt = T::from_f64_lossy(d as f64);
        let half = T::from_f64_lossy(0.5);
        let src = if ac {
            let scale = if m > 1 { (nt - T::one()) / (mt - T::one()) } else { T::zero() };
            scale * dt
        } else {
            let v = nt / mt * (dt + half) - half;
            if v < T::zero() {
                T::zero()
            } else {
                v
            }
        };
        let i0 = (src.floor().to_f64_exact() as usize).min(n - 1);
        let i1 = if i0 < n - 1 { i0 + 1 } else { i0 };
        let l1 = (src - T::from_f64_lossy(i0 as f64)).max(T::zero()).min(T::one());
        (i0, i1, T::one() - l1, l1)
    };
    Array4::from_shape_fn((bn, c, out.0, out.1), |(n, ch, i, j)| {
        let (h0, h1, a0, a1) = coord(i, h, out.0);
        let (w0, w1, b0, b1) = coord(j, w, out.1);
        a0 * (b0 * x[[n, ch, h0, w0]] + b1 * x[[n, ch, h0, w1]])
            + a1 * (b0 * x[[n, ch, h1, w0]] + b1 * x[[n, ch, h1, w1]])
    })
}

fn check_bilinear<T: Float>() {
    let mut rng = Rng::new(9);
    for &(shape, out) in &[
        ((2, 3, 5, 7), (11, 13)),
        ((1, 2, 40, 40), (160, 160)),
        ((1, 2, 17, 23), (4, 5)),
        ((1, 1, 6, 6), (1, 1)),
        ((1, 1, 1, 1), (3, 2)),
        ((1, 2, 8, 9), (8, 20)), // one axis unchanged
    ] {
        let x = rng.t4::<T>(shape);
        for ac in [false, true] {
            let y = resize(x.view(), out, ac);
            let want = naive_bilinear(&x, out, ac);
            assert_eq!(y, want, "bilinear {shape:?} -> {out:?}, align_corners={ac}");
            let xf = x.view().reversed_axes().to_owned();
            let yt = resize(xf.view().reversed_axes(), out, ac);
            assert_eq!(yt, y);
            let yt = resize(xf.view().reversed_axes(), (shape.2, shape.3), ac);
            assert!(yt.is_standard_layout());
            assert_eq!(yt, x);
        }
        // Same size is the identity (both modes).
        for ac in [false, true] {
            let y = resize(x.view(), (shape.2, shape.3), ac);
            assert_eq!(y, x);
        }
    }
    // Identity also via the general formula when only the other axis changes.
    let x = rng.t4::<T>((1, 1, 4, 6));
    let y = resize(x.view(), (4, 12), false);
    let back = resize(y.view(), (4, 6), false);
    assert_eq!(back.shape(), x.shape());
    let y2 = resize(x.view(), (9, 6), false);
    for i in 0..9 {
        let tap = linear_taps::<T>(4, 9, false)[i];
        for j in 0..6 {
            assert_eq!(
                y2[[0, 0, i, j]],
                tap.2 * (T::one() * x[[0, 0, tap.0, j]] + T::zero() * x[[0, 0, tap.0, j]])
                    + tap.3 * (T::one() * x[[0, 0, tap.1, j]] + T::zero() * x[[0, 0, tap.1, j]])
            );
        }
    }
}

#[test]
fn bilinear_matches_formula() {
    check_bilinear::<f32>();
    check_bilinear::<f64>();
}
