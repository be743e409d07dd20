//! Max pooling and adaptive average pooling against naive f64 windows.

use ndarray::{s, Array4};

use super::{assert_close, dot_tol, f64s, Rng};
use crate::reference::ops::pool::adaptive_bins;
use crate::reference::ops::{adaptive_avg_pool2d, cast, max_pool2d};
use crate::Float;

fn naive_max_pool(x: &Array4<f64>, k: (usize, usize), s: (usize, usize), p: (usize, usize)) -> Array4<f64> {
    let (bn, c, h, w) = x.dim();
    let ho = (h + 2 * p.0 - k.0) / s.0 + 1;
    let wo = (w + 2 * p.1 - k.1) / s.1 + 1;
    Array4::from_shape_fn((bn, c, ho, wo), |(n, ch, i, j)| {
        let mut m = f64::NEG_INFINITY;
        for u in 0..k.0 {
            for v in 0..k.1 {
                let ih = (i * s.0 + u) as isize - p.0 as isize;
                let iw = (j * s.1 + v) as isize - p.1 as isize;
                if ih >= 0 && iw >= 0 && (ih as usize) < h && (iw as usize) < w {
                    let val = x[[n, ch, ih as usize, iw as usize]];
                    if val.is_nan() || m.is_nan() {
                        m = f64::NAN;
                    } else {
                        m = m.max(val);
                    }
                }
            }
        }
        m
    })
}

fn check_max_pool<T: Float>() {
    let mut rng = Rng::new(7);
    for &(shape, k, s, p) in &[
        ((2, 3, 9, 8), (3, 3), (2, 2), (1, 1)),
        ((1, 2, 7, 10), (2, 3), (2, 3), (1, 0)),
        ((1, 1, 5, 5), (5, 5), (1, 1), (2, 2)),
        ((1, 2, 6, 6), (1, 1), (1, 1), (0, 0)),
    ] {
        let mut x = rng.t4::<T>(shape);
        x[[0, 0, 1, 1]] = T::nan();
        let y = max_pool2d(x.view(), k, s, p);
        let want = naive_max_pool(&f64s(&x), k, s, p);
        assert_eq!(y.shape(), want.shape());
        for (a, b) in y.iter().zip(&want) {
            assert!(a.to_f64_exact() == *b || (a.is_nan() && b.is_nan()), "max_pool {a} vs {b}");
        }
    }
}

#[test]
fn max_pool2d_matches_naive() {
    check_max_pool::<f32>();
    check_max_pool::<f64>();
}

#[test]
fn adaptive_bins_match_pytorch() {
    assert_eq!(adaptive_bins(20, 3), vec![(0, 7), (6, 14), (13, 20)]);
    assert_eq!(adaptive_bins(20, 6), vec![(0, 4), (3, 7), (6, 10), (10, 14), (13, 17), (16, 20)]);
    assert_eq!(adaptive_bins(40, 1), vec![(0, 40)]);
    assert_eq!(adaptive_bins(3, 5), vec![(0, 1), (0, 2), (1, 2), (1, 3), (2, 3)]);
    assert_eq!(adaptive_bins(2, 4), vec![(0, 1), (0, 1), (1, 2), (1, 2)]);
}

fn check_adaptive_avg_pool<T: Float>() {
    let mut rng = Rng::new(8);
    for &(shape, out) in &[
        ((2, 3, 20, 20), (3, 6)),
        ((1, 2, 40, 40), (1, 1)),
        ((1, 2, 40, 40), (2, 2)),
        ((1, 2, 40, 40), (6, 6)),
        ((1, 1, 3, 2), (5, 4)), // larger than the input
        ((1, 1, 7, 9), (7, 9)), // identity
    ] {
        let x = rng.t4::<T>(shape);
        let y = adaptive_avg_pool2d(x.view(), out);
        let xf = f64s(&x);
        let (bh, bw) = (adaptive_bins(shape.2, out.0), adaptive_bins(shape.3, out.1));
        let mut want = Array4::zeros((shape.0, shape.1, out.0, out.1));
        let mut mag = Array4::zeros(want.dim());
        for ((n, c, i, j), v) in want.indexed_iter_mut() {
            let win = xf.slice(s![n, c, bh[i].0..bh[i].1, bw[j].0..bw[j].1]);
            *v = win.sum() / win.len() as f64;
            mag[[n, c, i, j]] = win.mapv(f64::abs).sum() / win.len() as f64;
        }
        assert_close(&y, &want, &mag, dot_tol::<T>(shape.2 * shape.3), "adaptive_avg_pool2d");
        if (shape.2, shape.3) == out {
            assert_eq!(y, x);
        }
    }
    // A one-hot input lands in every bin that covers it.
    let mut x = Array4::<T>::zeros((1, 1, 20, 1));
    x[[0, 0, 6, 0]] = T::one();
    let y = adaptive_avg_pool2d(x.view(), (3, 1));
    assert_eq!(y[[0, 0, 0, 0]], T::one() / cast(7));
    assert_eq!(y[[0, 0, 1, 0]], T::one() / cast(8));
    assert_eq!(y[[0, 0, 2, 0]], T::zero());
}

#[test]
fn adaptive_avg_pool2d_means_over_bins() {
    check_adaptive_avg_pool::<f32>();
    check_adaptive_avg_pool::<f64>();
}
