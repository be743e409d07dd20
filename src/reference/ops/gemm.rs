//! Matrix products: `linear`, `matmul`, and the GEMM under every product of the reference.
//!
//! The default build multiplies with the `gemm` crate (pure Rust; its AVX-512, AVX2+FMA or SSE
//! kernels are chosen at run time for the CPU found). The `blas` feature routes the same calls
//! through ndarray's BLAS backend (the system OpenBLAS, kept single-threaded: the parallelism is
//! ours).
//!
//! Results never depend on the number of threads: a large product is cut into blocks of output
//! rows or columns whose sizes depend only on the shapes ([`PAR_BLOCKS`]), every block is one
//! single-threaded GEMM over the full inner dimension, and rayon only decides which thread runs
//! which block.

use ndarray::parallel::prelude::*;
use ndarray::{Array2, ArrayView1, ArrayView2, ArrayViewMut2, Axis};

use crate::Float;

/// Below this many multiply-adds a GEMM runs as one block on the current thread.
const PAR_GEMM_MIN_WORK: usize = 1 << 18;
/// Smallest block of rows/columns a parallel GEMM is split into.
const PAR_GEMM_MIN_CHUNK: usize = 32;
/// A large GEMM is split into (at most) this many blocks, whatever the thread count, so that the
/// split — and with it every rounding — is a function of the shapes alone.
pub(super) const PAR_BLOCKS: usize = 8;

/// `c = a · b + beta · c` with `beta` 0 or 1, as one single-threaded GEMM (`beta = 0` ignores
/// the old contents of `c`, NaN included).
pub(super) fn gemm_block<T: Float>(a: ArrayView2<T>, b: ArrayView2<T>, beta: T, mut c: ArrayViewMut2<T>) {
    let (m, k) = a.dim();
    let n = b.ncols();
    debug_assert_eq!(b.nrows(), k, "gemm: inner dimensions differ");
    debug_assert_eq!(c.dim(), (m, n), "gemm: output shape mismatch");
    debug_assert!(beta == T::zero() || beta == T::one(), "gemm: beta is 0 or 1");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if beta == T::zero() {
            c.fill(T::zero());
        }
        return;
    }
    backend::gemm(a, b, beta, c.view_mut());
}

#[cfg(not(feature = "blas"))]
mod backend {
    use ndarray::{ArrayView2, ArrayViewMut2};

    use crate::Float;

    /// `c = a·b + beta·c` through `gemm::gemm` (`dst := alpha·dst + beta·lhs·rhs` in its naming),
    /// on the calling thread.
    pub(super) fn gemm<T: Float>(a: ArrayView2<T>, b: ArrayView2<T>, beta: T, mut c: ArrayViewMut2<T>) {
        let (m, k) = a.dim();
        let n = b.ncols();
        let (ars, acs) = (a.strides()[0], a.strides()[1]);
        let (brs, bcs) = (b.strides()[0], b.strides()[1]);
        let (crs, ccs) = (c.strides()[0], c.strides()[1]);
        // SAFETY: the three pointers and their strides describe the live views `a` (m x k),
        // `b` (k x n) and `c` (m x n); `c` is borrowed mutably, so it aliases neither input.
        // `T` is f32 or f64 (the only `Float` types), which `gemm` supports.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                ccs,
                crs,
                beta != T::zero(),
                a.as_ptr(),
                acs,
                ars,
                b.as_ptr(),
                bcs,
                brs,
                beta,
                T::one(),
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    }
}

#[cfg(feature = "blas")]
mod backend {
    // Links the BLAS implementation (the system OpenBLAS) that ndarray's `blas` backend calls.
    use blas_src as _;
    use ndarray::linalg::general_mat_mul;
    use ndarray::{ArrayView2, ArrayViewMut2};

    use crate::Float;

    extern "C" {
        /// OpenBLAS's thread-count setter (libopenblas).
        fn openblas_set_num_threads(n: std::ffi::c_int);
        /// The name of the kernel set OpenBLAS chose at load time (`SkylakeX`, `Haswell`, ...).
        fn openblas_get_corename() -> *const std::ffi::c_char;
    }

    /// The kernel set the loaded OpenBLAS uses (`openblas_get_corename`).
    pub fn openblas_core() -> String {
        // SAFETY: OpenBLAS returns a pointer to a static NUL-terminated name (or null).
        let p = unsafe { openblas_get_corename() };
        if p.is_null() {
            return String::new();
        }
        // SAFETY: non-null, NUL-terminated, static (see above).
        unsafe { std::ffi::CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }

    /// A better `OPENBLAS_CORETYPE` for this CPU when OpenBLAS's own detection fell back to
    /// kernels older than AVX2 (Debian's OpenBLAS 0.3.21 picks `Prescott`, SSE3, on the
    /// AVX-512 Xeons of this project's machines: 3.4x slower): `SkylakeX` where the CPU and OS
    /// support AVX-512 (F, BW, DQ, VL), `Haswell` where AVX2 + FMA; `None` when OpenBLAS's choice
    /// is AVX2-class already or nothing better is supported.
    pub fn openblas_better_core() -> Option<&'static str> {
        let core = openblas_core().to_ascii_lowercase();
        const MODERN: &[&str] =
            &["haswell", "skylakex", "cooperlake", "sapphirerapids", "zen", "skylake", "broadwell", "excavator"];
        if MODERN.iter().any(|m| core.contains(m)) {
            return None;
        }
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512f") && has!("avx512bw") && has!("avx512dq") && has!("avx512vl") {
                return Some("SkylakeX");
            }
            if has!("avx2") && has!("fma") {
                return Some("Haswell");
            }
        }
        None
    }

    static SINGLE_THREADED: std::sync::Once = std::sync::Once::new();

    /// `c = a·b + beta·c` through ndarray's `general_mat_mul`, which calls `cblas_sgemm` /
    /// `cblas_dgemm` for BLAS-compatible layouts. OpenBLAS is set to one thread first: the
    /// reference runs several products at once on rayon's threads.
    pub(super) fn gemm<T: Float>(a: ArrayView2<T>, b: ArrayView2<T>, beta: T, mut c: ArrayViewMut2<T>) {
        // SAFETY: a plain setter of OpenBLAS's global thread count, called once.
        SINGLE_THREADED.call_once(|| unsafe { openblas_set_num_threads(1) });
        general_mat_mul(T::one(), &a, &b, beta, &mut c);
    }
}

#[cfg(feature = "blas")]
pub use backend::{openblas_better_core, openblas_core};

/// `c = a · b + beta · c` (`beta` 0 or 1), split into blocks of output columns (or rows) run in
/// parallel. Every block is one [`gemm_block`] over the full inner dimension, and the blocks
/// depend only on the shapes, so the result does not depend on the thread count.
pub(super) fn gemm_into<T: Float>(a: ArrayView2<T>, b: ArrayView2<T>, beta: T, mut c: ArrayViewMut2<T>) {
    let (m, k) = a.dim();
    let n = b.ncols();
    let work = m.saturating_mul(n).saturating_mul(k.max(1));
    if work < PAR_GEMM_MIN_WORK || m.max(n) < 2 * PAR_GEMM_MIN_CHUNK {
        gemm_block(a, b, beta, c);
        return;
    }
    if n >= m {
        let chunk = n.div_ceil(PAR_BLOCKS).max(PAR_GEMM_MIN_CHUNK);
        c.axis_chunks_iter_mut(Axis(1), chunk)
            .into_par_iter()
            .zip(b.axis_chunks_iter(Axis(1), chunk).into_par_iter())
            .for_each(|(cc, bc)| gemm_block(a, bc, beta, cc));
    } else {
        let chunk = m.div_ceil(PAR_BLOCKS).max(PAR_GEMM_MIN_CHUNK);
        c.axis_chunks_iter_mut(Axis(0), chunk)
            .into_par_iter()
            .zip(a.axis_chunks_iter(Axis(0), chunk).into_par_iter())
            .for_each(|(cc, ac)| gemm_block(ac, b, beta, cc));
    }
}

/// `torch.matmul` of two matrices: `y = a · b`, (M, K) · (K, N) → (M, N), on the calling thread
/// (the attention runs one per head in parallel).
pub fn matmul<T: Float>(a: ArrayView2<T>, b: ArrayView2<T>) -> Array2<T> {
    assert_eq!(a.ncols(), b.nrows(), "matmul: ({}, {}) · ({}, {})", a.nrows(), a.ncols(), b.nrows(), b.ncols());
    if super::plain_kernels() {
        return super::plain::matmul(a, b);
    }
    matmul_gemm(a, b)
}

/// [`matmul`] as one single-threaded GEMM ([`gemm_block`]).
pub(super) fn matmul_gemm<T: Float>(a: ArrayView2<T>, b: ArrayView2<T>) -> Array2<T> {
    let mut y = Array2::zeros((a.nrows(), b.ncols()));
    gemm_block(a, b, T::zero(), y.view_mut());
    y
}

/// `torch.nn.functional.linear`: `y = x · weightᵀ + bias`.
///
/// `x` is (N, in), `weight` (out, in), `bias` (out); the result is (N, out). One GEMM (split
/// into parallel blocks) with the bias as its initial accumulator (`beta = 1`). Inputs in
/// another memory layout are copied to the standard one first, so that the GEMM (whose kernels
/// depend on the strides) sums in the same order for every layout.
pub fn linear<T: Float>(x: ArrayView2<T>, weight: ArrayView2<T>, bias: Option<ArrayView1<T>>) -> Array2<T> {
    let (in_features, w_in) = (x.ncols(), weight.ncols());
    assert_eq!(in_features, w_in, "linear: x has {in_features} features but weight expects {w_in}");
    if super::plain_kernels() {
        return super::plain::linear(x, weight, bias);
    }
    linear_gemm(x, weight, bias)
}

/// [`linear`] as one parallel blocked GEMM ([`gemm_into`]) with the bias as its initial
/// accumulator.
pub(super) fn linear_gemm<T: Float>(x: ArrayView2<T>, weight: ArrayView2<T>, bias: Option<ArrayView1<T>>) -> Array2<T> {
    let (n, out_features) = (x.nrows(), weight.nrows());
    let (mut y, beta) = match bias {
        Some(b) => {
            assert_eq!(b.len(), out_features, "linear: bias length {} != out_features {out_features}", b.len());
            (Array2::from_shape_fn((n, out_features), |(_, j)| b[j]), T::one())
        }
        None => (Array2::zeros((n, out_features)), T::zero()),
    };
    if n > 0 && out_features > 0 {
        let (x, weight) = (x.as_standard_layout(), weight.as_standard_layout());
        gemm_into(x.view(), weight.t(), beta, y.view_mut());
    }
    y
}
