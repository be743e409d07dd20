//! `layer_norm` and `batch_norm_inplace` against their formulas.

use ndarray::{Array2, Array4};

use super::{assert_close, f64s, Rng};
use crate::reference::ops::{batch_norm_inplace, layer_norm};
use crate::Float;

fn check_layer_norm<T: Float>() {
    let mut rng = Rng::new(2);
    let (n, c) = (13, 768);
    let x = rng.mat::<T>((n, c)).mapv(|v| v * T::from_f64_lossy(3.0) + T::one());
    // Plain normalisation: mean 0, variance 1 (up to eps).
    let y = layer_norm(x.view(), None, None, 0.0);
    for row in y.rows() {
        let r = row.mapv(|v| v.to_f64_exact());
        let mean = r.sum() / c as f64;
        let var = r.mapv(|v| (v - mean) * (v - mean)).sum() / c as f64;
        let tol = 1e3 * T::epsilon().to_f64_exact();
        assert!(mean.abs() < tol, "layer_norm mean {mean}");
        assert!((var - 1.0).abs() < tol, "layer_norm var {var}");
    }
    // Affine version against a naive f64 evaluation.
    let w = rng.vec::<T>(c);
    let b = rng.vec::<T>(c);
    let eps = 1e-6;
    let y = layer_norm(x.view(), Some(w.view()), Some(b.view()), eps);
    let (xf, wf, bf) = (f64s(&x), f64s(&w), f64s(&b));
    let mut want = Array2::zeros((n, c));
    let mut mag = Array2::zeros((n, c));
    for r in 0..n {
        let row = xf.row(r);
        let mean = row.sum() / c as f64;
        let var = row.mapv(|v| (v - mean) * (v - mean)).sum() / c as f64;
        for j in 0..c {
            let z = (row[j] - mean) / (var + eps).sqrt();
            want[[r, j]] = z * wf[j] + bf[j];
            mag[[r, j]] = (z * wf[j]).abs() + bf[j].abs() + (wf[j] * 1.0).abs();
        }
    }
    assert_close(&y, &want, &mag, 50.0 * T::epsilon().to_f64_exact(), "layer_norm");
    // Weight only / bias only.
    let yw = layer_norm(x.view(), Some(w.view()), None, eps);
    let yb = layer_norm(x.view(), None, Some(b.view()), eps);
    let y0 = layer_norm(x.view(), None, None, eps);
    assert_eq!(yw, &y0 * &w);
    assert_eq!(yb, &y0 + &b);
}

#[test]
fn layer_norm_normalises() {
    check_layer_norm::<f32>();
    check_layer_norm::<f64>();
}
// ------------------------------------------------------------ batch norm

fn check_batch_norm<T: Float>() {
    let mut rng = Rng::new(6);
    let (bn, c, h, w) = (2, 5, 3, 4);
    let x = rng.t4::<T>((bn, c, h, w));
    let mean = rng.vec::<T>(c);
    let var = rng.vec::<T>(c).mapv(|v| v.abs() + T::from_f64_lossy(0.1));
    let wt = rng.vec::<T>(c);
    let bs = rng.vec::<T>(c);
    let eps = 1e-5;
    let mut y = x.clone();
    batch_norm_inplace(&mut y, mean.view(), var.view(), Some(wt.view()), Some(bs.view()), eps);
    let xf = f64s(&x);
    let mut want = Array4::zeros(x.dim());
    let mut mag = Array4::zeros(x.dim());
    for ((n, ch, i, j), v) in want.indexed_iter_mut() {
        let z = (xf[[n, ch, i, j]] - mean[ch].to_f64_exact()) / (var[ch].to_f64_exact() + eps).sqrt()
            * wt[ch].to_f64_exact();
        *v = z + bs[ch].to_f64_exact();
        let mref: &mut f64 = &mut mag[[n, ch, i, j]];
        *mref = (xf[[n, ch, i, j]] * wt[ch].to_f64_exact()).abs() / (var[ch].to_f64_exact() + eps).sqrt()
            + (mean[ch].to_f64_exact() * wt[ch].to_f64_exact()).abs() / (var[ch].to_f64_exact() + eps).sqrt()
            + bs[ch].to_f64_exact().abs();
    }
    assert_close(&y, &want, &mag, 16.0 * T::epsilon().to_f64_exact(), "batch_norm");
    // Exactly PyTorch's alpha/beta formulation, and weight/bias defaults.
    let mut y2 = x.clone();
    batch_norm_inplace(&mut y2, mean.view(), var.view(), None, None, eps);
    let e = T::from_f64_lossy(eps);
    for ((n, ch, i, j), &v) in y2.indexed_iter() {
        let alpha = T::one() / (var[ch] + e).sqrt();
        let beta = T::zero() - mean[ch] * alpha;
        assert_eq!(v, x[[n, ch, i, j]] * alpha + beta);
    }
}

#[test]
fn batch_norm_matches_formula() {
    check_batch_norm::<f32>();
    check_batch_norm::<f64>();
}
