//! GELU, ReLU and the row softmax.

use ndarray::{Array2, ArrayD, IxDyn};

use super::{f64s, Rng};
use crate::reference::ops::activation::softmax_rows_biased_inplace;
use crate::reference::ops::{gelu, gelu_inplace, relu_inplace, softmax_rows_inplace};
use crate::Float;

#[test]
fn gelu_values() {
    // Φ(1) and -Φ(-1). PyTorch's scalar kernel, `x * 0.5 * (1 + erf(x * M_SQRT1_2))` with
    // glibc's erf, gives 0.841344746068543 and -0.15865525393145702 (as does libm here):
    // one ulp from the values of `0.5 * x * (1 + erf(x / sqrt(2)))`, whose argument rounds
    // differently. Both are accepted to within 2 ulp.
    let ulp = |v: f64| f64::EPSILON * v.abs();
    assert!((gelu(1.0f64) - 0.8413447460685429).abs() <= 2.0 * ulp(0.8413447460685429));
    assert!((gelu(-1.0f64) + 0.15865525393145707).abs() <= 2.0 * ulp(0.15865525393145707));
    assert_eq!(gelu(1.0f64), 0.841344746068543);
    assert_eq!(gelu(-1.0f64), -0.15865525393145702);
    assert_eq!(gelu(0.0f64), 0.0);
    assert_eq!(gelu(1.0f32), 0.8413447460685429f64 as f32);
    assert_eq!(gelu(-1.0f32), -0.15865525393145707f64 as f32);
    for &v in &[-6.0f64, -2.5, -0.3, 0.1, 0.7, 3.0, 9.0] {
        let want = v * 0.5 * (1.0 + libm::erf(v / std::f64::consts::SQRT_2));
        assert!((gelu(v) - want).abs() <= 1e-15 * want.abs().max(1e-300));
        let v32 = v as f32;
        let w = v32 as f64;
        let want32 = (w * 0.5 * (1.0 + libm::erf(w * std::f64::consts::FRAC_1_SQRT_2))) as f32;
        assert_eq!(gelu(v32), want32);
    }
    assert!(gelu(f64::NAN).is_nan());
    let mut a = Array2::from_shape_fn((3, 4), |(i, j)| i as f32 - j as f32 * 0.5);
    let want = a.mapv(gelu);
    gelu_inplace(&mut a);
    assert_eq!(a, want);
}

#[test]
fn relu_values() {
    let mut a = ArrayD::from_shape_vec(IxDyn(&[2, 3]), vec![-1.0f64, 0.0, 2.5, -0.1, f64::NAN, 7.0]).unwrap();
    relu_inplace(&mut a);
    let v = a.into_raw_vec_and_offset().0;
    assert_eq!(&v[..4], &[0.0, 0.0, 2.5, 0.0]);
    assert!(v[4].is_nan());
    assert_eq!(v[5], 7.0);
}

fn check_softmax<T: Float>() {
    let mut rng = Rng::new(3);
    let x = rng.mat::<T>((17, 45)).mapv(|v| v * T::from_f64_lossy(20.0));
    let mut y = x.clone();
    softmax_rows_inplace(y.view_mut());
    let xf = f64s(&x);
    for (r, row) in y.rows().into_iter().enumerate() {
        let s: f64 = row.iter().map(|v| v.to_f64_exact()).sum();
        assert!((s - 1.0).abs() < 64.0 * T::epsilon().to_f64_exact(), "softmax sum {s}");
        let max = xf.row(r).fold(f64::NEG_INFINITY, |m, &v| m.max(v));
        let z: f64 = xf.row(r).iter().map(|&v| (v - max).exp()).sum();
        for (j, v) in row.iter().enumerate() {
            let want = (xf[[r, j]] - max).exp() / z;
            let err = (v.to_f64_exact() - want).abs();
            assert!(
                err <= 64.0 * T::epsilon().to_f64_exact() * want.max(1e-30) + 1e-300,
                "softmax {r},{j}: got {v}, want {want}"
            );
        }
    }
    // Works on a non-contiguous (transposed) view, and a NaN poisons its row only.
    let mut z = x.t().to_owned();
    z[[0, 3]] = T::nan();
    let mut zt = z.t().to_owned();
    softmax_rows_inplace(z.view_mut().reversed_axes());
    softmax_rows_inplace(zt.view_mut());
    assert!(zt.row(3).iter().all(|v| v.is_nan()));
    assert!(zt.row(2).iter().all(|v| !v.is_nan()));
    for (a, b) in z.t().iter().zip(zt.iter()) {
        assert!(a == b || (a.is_nan() && b.is_nan()));
    }
}

#[test]
fn softmax_rows_sum_to_one() {
    check_softmax::<f32>();
    check_softmax::<f64>();
}

fn check_softmax_biased<T: Float>() {
    let mut rng = Rng::new(8);
    // 37 columns: two full 16-lane chunks and a remainder; a table of 11 entries.
    let (n, m) = (5, 37);
    let x = rng.mat::<T>((n, m)).mapv(|v| v * T::from_f64_lossy(10.0));
    let table = rng.vec::<T>(11).mapv(|v| v * T::from_f64_lossy(3.0));
    let index: Vec<u32> = (0..n * m).map(|i| ((i * 7 + i / m) % 11) as u32).collect();
    let mut y = x.clone();
    softmax_rows_biased_inplace(y.view_mut(), table.as_slice().unwrap(), &index);
    for r in 0..n {
        // x + bias rounded to T first, then the softmax in f64.
        let z: Vec<f64> = (0..m).map(|j| (x[[r, j]] + table[index[r * m + j] as usize]).to_f64_exact()).collect();
        let max = z.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
        let sum: f64 = z.iter().map(|&v| (v - max).exp()).sum();
        for j in 0..m {
            let want = (z[j] - max).exp() / sum;
            let err = (y[[r, j]].to_f64_exact() - want).abs();
            assert!(
                err <= 16.0 * T::epsilon().to_f64_exact() * want + 1e-300,
                "biased softmax {r},{j} ({}): got {}, want {want}",
                T::DTYPE,
                y[[r, j]]
            );
        }
    }
    // Without bias it is the plain softmax of x + 0; a NaN poisons its row only; a row of
    // -inf but one entry is one-hot.
    let zeros = vec![T::zero(); 1];
    let mut a = x.clone();
    softmax_rows_biased_inplace(a.view_mut(), &zeros, &vec![0; n * m]);
    let mut b = x.clone();
    softmax_rows_inplace(b.view_mut());
    assert_eq!(a, b);
    let mut c = x.clone();
    c[[1, 20]] = T::nan();
    c.row_mut(2).fill(T::neg_infinity());
    c[[2, 33]] = T::zero();
    softmax_rows_biased_inplace(c.view_mut(), &zeros, &vec![0; n * m]);
    assert!(c.row(1).iter().all(|v| v.is_nan()));
    assert!(c.row(0).iter().chain(c.row(3)).all(|v| !v.is_nan()));
    assert!(c.row(2).iter().enumerate().all(|(j, &v)| v == if j == 33 { T::one() } else { T::zero() }));
}

#[test]
fn biased_softmax_matches_add_then_softmax() {
    check_softmax_biased::<f32>();
    check_softmax_biased::<f64>();
}
