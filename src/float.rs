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
    /// `e^x`, written so that a loop of it vectorises (what `torch.exp` / the softmax kernel
    /// compute with SLEEF's vectorised exp): for f32 [`exp_f32`] (within 2 ulp), for f64
    /// libm's `exp` (correctly rounded in practice).
    fn exp_vec(self) -> Self;
}

/// `e^x` in f32 without a libm call, branch-free so that loops of it vectorise: Cephes'
/// `expf` (range reduction `x = n·ln2 + r`, |r| ≤ ln2/2, with ln2 split in two parts; a
/// degree-7 polynomial for `e^r`; `2^n` put into the exponent bits). Within 2 ulp of the true
/// value on [-87.3, 88.3]; 0 below (where `e^x` is subnormal, |error| < 1.2e-38), +inf above,
/// NaN for NaN. Uses no fused multiply-add, so every CPU gives the same bits.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LO: f32 = -87.336_55; // ln(f32::MIN_POSITIVE), rounded up
    const HI: f32 = 88.376_26; // 127.5·ln2: 2^n stays finite
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4; // 0.693359375, exact in 9 bits
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5·2^23: adding and subtracting rounds to an integer
    let xc = x.clamp(LO, HI);
    let t = xc * LOG2E + ROUND; // 1.5·2^23 + n: n sits in the low mantissa bits
    let n = t - ROUND;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let z = r * r;
    let p = (((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1)
        * r
        + 0.5)
        * z
        + r
        + 1.0;
    // 2^n from the bits of t (integer arithmetic only, which vectorises; n ∈ [-126, 127] is a
    // normal power of two; a NaN x gives some scale and stays NaN through p).
    let n_int = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let scale = f32::from_bits((n_int.wrapping_add(127) << 23) as u32);
    let y = p * scale;
    if x < LO {
        0.0
    } else if x > HI {
        f32::INFINITY
    } else {
        y
    }
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
    #[inline(always)]
    fn exp_vec(self) -> Self {
        exp_f32(self)
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
    #[inline]
    fn exp_vec(self) -> Self {
        libm::exp(self)
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

/// The arithmetic a model runs in, or a half-precision twin was made in: one type for the
/// CLI, the backends, the bench and the fixture format (`"precision"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// float64 everywhere (the float64 twin fixtures).
    Fp64,
    /// float32 everywhere (TF32 off).
    #[default]
    Fp32,
    /// float16, as `torch.autocast(dtype=torch.float16)` runs a model.
    Fp16,
    /// bfloat16, as `torch.autocast(dtype=torch.bfloat16)` runs a model.
    Bf16,
}

impl Precision {
    /// `fp64`, `fp32`, `fp16`, `bf16` (also `float64`, `float32`, `float16`/`half`, `bfloat16`).
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "fp64" | "f64" | "float64" | "double" => Ok(Precision::Fp64),
            "fp32" | "f32" | "float32" | "float" => Ok(Precision::Fp32),
            "fp16" | "f16" | "float16" | "half" => Ok(Precision::Fp16),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            o => Err(format!("unknown precision `{o}` (fp32, fp16, bf16, fp64)")),
        }
    }

    /// `fp64`, `fp32`, `fp16`, `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp64 => "fp64",
            Precision::Fp32 => "fp32",
            Precision::Fp16 => "fp16",
            Precision::Bf16 => "bf16",
        }
    }

    /// Whether this is a half precision (fp16, bf16).
    pub fn is_half(self) -> bool {
        matches!(self, Precision::Fp16 | Precision::Bf16)
    }

    /// The unit roundoff `u` (half the distance from 1 to the next value): 2^-53, 2^-24, 2^-11,
    /// 2^-8.
    pub fn unit_roundoff(self) -> f64 {
        match self {
            Precision::Fp64 => f64::EPSILON / 2.0,
            Precision::Fp32 => f32::EPSILON as f64 / 2.0,
            Precision::Fp16 => 2f64.powi(-11),
            Precision::Bf16 => 2f64.powi(-8),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::exp_f32;

    /// Distance in units in the last place between two finite f32 of the same sign.
    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn exp_f32_is_within_two_ulp_of_the_true_value() {
        let mut worst = 0;
        let mut x = -87.3f32;
        while x < 88.3 {
            for v in [x, x + 1e-3, x - 3.7e-4, x * 0.999] {
                let want = (v as f64).exp() as f32;
                if want.is_normal() {
                    worst = worst.max(ulps(exp_f32(v), want));
                }
            }
            x += 0.0137;
        }
        // Around zero, where softmax inputs (x - max <= 0) spend most of their time.
        for i in -20000..=20000 {
            let v = i as f32 * 1e-4;
            worst = worst.max(ulps(exp_f32(v), (v as f64).exp() as f32));
        }
        assert!(worst <= 2, "worst error {worst} ulp");
    }

    #[test]
    fn exp_f32_edges() {
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(-100.0), 0.0);
        assert_eq!(exp_f32(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp_f32(89.0), f32::INFINITY);
        assert!(exp_f32(f32::NAN).is_nan());
        // Just inside the range: finite and close.
        let hi = exp_f32(88.3);
        assert!(hi.is_finite() && ulps(hi, (88.3f32 as f64).exp() as f32) <= 2);
        assert!(exp_f32(-87.3) > 0.0);
    }
}
