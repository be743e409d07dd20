//! GEMM throughput at the shapes of a BEiT-B + UPerNet 640x640 crop: the `gemm` crate (the
//! default build's GEMM, single-threaded per block as the reference calls it) against
//! `matrixmultiply` (ndarray's default `general_mat_mul`), interleaved so that both see the same
//! machine load. Prints GFLOP/s (2·M·N·K per product) per shape and library.
//!
//! Run: `cargo bench --bench gemm` (about a minute on 2 cores). Speed is measured here, never in
//! tests.

use std::time::Instant;

use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, ArrayView2, ArrayViewMut2};

/// (name, M, N, K) with C (M x N) = A (M x K) · B (K x N).
const SHAPES: &[(&str, usize, usize, usize)] = &[
    ("fpn_bottleneck 3x3 tile (768 x 640 x 5535)", 768, 640, 5535),
    ("fpn conv 3x3 tile (768 x 640 x 6912)", 768, 640, 6912),
    ("im2col 25600x3072x768 (1x1 lateral at 160²)", 768, 25600, 768),
    ("qkv linear (1601 x 2304 x 768)", 1601, 2304, 768),
    ("proj linear (1601 x 768 x 768)", 1601, 768, 768),
    ("mlp fc2 (1601 x 768 x 3072)", 1601, 768, 3072),
    ("attention q·kᵀ per head (1601 x 1601 x 64)", 1601, 1601, 64),
];

fn with_gemm(a: ArrayView2<f32>, b: ArrayView2<f32>, mut c: ArrayViewMut2<f32>) {
    let (m, k) = a.dim();
    let n = b.ncols();
    // SAFETY: pointers and strides of live views of the stated shapes; c is exclusive.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            c.strides()[1],
            c.strides()[0],
            false,
            a.as_ptr(),
            a.strides()[1],
            a.strides()[0],
            b.as_ptr(),
            b.strides()[1],
            b.strides()[0],
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Best seconds of `reps` calls of `f`.
fn best_of(reps: usize, mut f: impl FnMut()) -> f64 {
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let reps = std::env::var("GEMM_BENCH_REPS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    println!("{:<48} {:>14} {:>14} {:>8}", "shape (one thread)", "gemm GFLOP/s", "mm GFLOP/s", "ratio");
    for &(name, m, n, k) in SHAPES {
        let a = Array2::from_shape_fn((m, k), |(i, j)| ((i * 7 + j * 3) % 17) as f32 / 17.0 - 0.5);
        let b = Array2::from_shape_fn((k, n), |(i, j)| ((i * 5 + j * 11) % 13) as f32 / 13.0 - 0.5);
        let mut c1 = Array2::<f32>::zeros((m, n));
        let mut c2 = Array2::<f32>::zeros((m, n));
        let flop = 2.0 * (m * n * k) as f64;
        let (mut tg, mut tm) = (f64::INFINITY, f64::INFINITY);
        for _ in 0..reps {
            tg = tg.min(best_of(1, || with_gemm(a.view(), b.view(), c1.view_mut())));
            tm = tm.min(best_of(1, || general_mat_mul(1.0, &a, &b, 0.0, &mut c2)));
        }
        let max_diff = c1.iter().zip(&c2).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(max_diff < 1e-2 * (k as f32).sqrt(), "{name}: results differ by {max_diff}");
        println!("{name:<48} {:>14.1} {:>14.1} {:>8.2}", flop / tg / 1e9, flop / tm / 1e9, tm / tg);
    }
}
