//! Unit tests of the operators, one file per op family, against naive f64 evaluations of the
//! documented formulas. Inputs come from the shared test generator (`tests/common/mod.rs`).

use ndarray::{Array, Array1, Array2, Array4, Dimension};

use crate::Float;

#[path = "../../../../tests/common/mod.rs"]
mod common;

mod activation;
mod argmax;
mod conv;
mod linear;
mod norm;
mod pool;
mod resize;
mod threads;
mod twins;

pub(super) use common::Rng;

/// Tensor constructors on the shared generator: entries uniform in [-1, 1), rounded to `T`.
impl Rng {
    pub fn vec<T: Float>(&mut self, n: usize) -> Array1<T> {
        Array1::from_shape_fn(n, |_| T::from_f64_lossy(self.uniform(-1.0, 1.0)))
    }
    pub fn mat<T: Float>(&mut self, shape: (usize, usize)) -> Array2<T> {
        Array2::from_shape_fn(shape, |_| T::from_f64_lossy(self.uniform(-1.0, 1.0)))
    }
    pub fn t4<T: Float>(&mut self, shape: (usize, usize, usize, usize)) -> Array4<T> {
        Array4::from_shape_fn(shape, |_| T::from_f64_lossy(self.uniform(-1.0, 1.0)))
    }
}

/// The array in f64 (exactly).
pub(super) fn f64s<T: Float, D: Dimension>(a: &Array<T, D>) -> Array<f64, D> {
    a.mapv(|v| v.to_f64_exact())
}

/// `|got - want| <= tol * mag + tiny`, elementwise.
pub(super) fn assert_close<T: Float, D: Dimension>(
    got: &Array<T, D>,
    want: &Array<f64, D>,
    mag: &Array<f64, D>,
    tol: f64,
    what: &str,
) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    for ((g, w), m) in got.iter().zip(want).zip(mag) {
        let g = g.to_f64_exact();
        let err = (g - w).abs();
        assert!(
            err <= tol * m + 1e-300 || (g.is_nan() && w.is_nan()),
            "{what} ({}): got {g}, want {w}, err {err}, bound {}",
            T::DTYPE,
            tol * m
        );
    }
}

/// Bound factor on the error of a K-term dot product in `T`, relative to Σ|terms|.
pub(super) fn dot_tol<T: Float>(k: usize) -> f64 {
    2.0 * (k as f64 + 2.0) * T::epsilon().to_f64_exact()
}
