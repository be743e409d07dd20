//! The scalar types the reference runs in: `f32` and `f64`.
//!
//! MMSegmentation runs in float32 (`model.float()`) or, for the float64 twin fixtures, in float64
//! (`model.double()`). Every reference op is generic over [`Float`] so that the same code path is
//! checked at both precisions.

use std::fmt::{Debug, Display};

/// A real scalar the reference can compute in (`f32` or `f64`).
pub trait Float:
    ndarray::LinalgScalar
    + ndarray::ScalarOperand
    + num_traits::Float
    + num_traits::FromPrimitive
    + num_traits::ToPrimitive
    + std::iter::Sum
    + std::ops::AddAssign
    + std::ops::SubAssign
    + std::ops::MulAssign
    + std::ops::DivAssign
    + Default
    + Debug
    + Display
    + Send
    + Sync
    + 'static
{
    /// `"float32"` or `"float64"`, as numpy and the fixture format name it.
    const DTYPE: &'static str;
    /// Converts from f64 (rounding to nearest for f32).
    fn from_f64_lossy(v: f64) -> Self;
    /// Widens to f64 (exact).
    fn to_f64_exact(self) -> f64;
    /// The Gauss error function in this precision (libm `erff`/`erf`), as `torch.erf`.
    fn erf(self) -> Self;
}

impl Float for f32 {
    const DTYPE: &'static str = "float32";
    #[inline]
    fn from_f64_lossy(v: f64) -> Self {
        v as f32
    }
    #[inline]
    fn to_f64_exact(self) -> f64 {
        self as f64
    }
    #[inline]
    fn erf(self) -> Self {
        // Computed in f64 and rounded once: within half an ulp of the true value, which is at
        // least as close as PyTorch's vectorised float erf.
        libm::erf(self as f64) as f32
    }
}

impl Float for f64 {
    const DTYPE: &'static str = "float64";
    #[inline]
    fn from_f64_lossy(v: f64) -> Self {
        v
    }
    #[inline]
    fn to_f64_exact(self) -> f64 {
        self
    }
    #[inline]
    fn erf(self) -> Self {
        libm::erf(self)
    }
}

/// The precision a case was generated in, or a model runs in: numpy's `float32` / `float64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dtype {
    F32,
    F64,
}

impl Dtype {
    /// numpy's name: `float32`, `float64`.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "float32",
            Dtype::F64 => "float64",
        }
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
