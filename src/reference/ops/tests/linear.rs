//! `linear` against a naive f64 dot product.

use ndarray::Array2;

use super::{assert_close, dot_tol, f64s, Rng};
use crate::reference::ops::linear;
use crate::Float;

fn check_linear<T: Float>() {
    let mut rng = Rng::new(1);
    for &(n, i, o, with_bias) in &[
        (5, 7, 3, true),
        (1, 1, 1, false),
        (70, 50, 90, true),   // parallel split over columns
        (300, 40, 33, false), // parallel split over rows
        (4, 0, 3, true),      // no input features: y = bias
    ] {
        let x = rng.mat::<T>((n, i));
        let w = rng.mat::<T>((o, i));
        let b = rng.vec::<T>(o);
        let y = linear(x.view(), w.view(), with_bias.then(|| b.view()));
        let (xf, wf, bf) = (f64s(&x), f64s(&w), f64s(&b));
        let mut want = Array2::zeros((n, o));
        let mut mag = Array2::zeros((n, o));
        for r in 0..n {
            for c in 0..o {
                let mut acc = if with_bias { bf[c] } else { 0.0 };
                let mut m = acc.abs();
                for k in 0..i {
                    acc += xf[[r, k]] * wf[[c, k]];
                    m += (xf[[r, k]] * wf[[c, k]]).abs();
                }
                want[[r, c]] = acc;
                mag[[r, c]] = m;
            }
        }
        assert_close(&y, &want, &mag, dot_tol::<T>(i + 1), "linear");
    }
    // Non-contiguous input (a transposed view) gives the same result.
    let xt = rng.mat::<T>((6, 9));
    let w = rng.mat::<T>((4, 6));
    let y1 = linear(xt.t(), w.view(), None);
    let y2 = linear(xt.t().as_standard_layout().view(), w.view(), None);
    assert_eq!(y1, y2);
}

#[test]
fn linear_matches_naive() {
    check_linear::<f32>();
    check_linear::<f64>();
}
