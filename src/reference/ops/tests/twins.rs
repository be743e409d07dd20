//! Every optimised kernel against its plain twin ([`crate::reference::ops::plain`]) on random
//! shapes and values (proptest): the blocked GEMMs, the tiled im2col convolution, Winograd,
//! the transposed convolution, the lane softmax (Cephes `exp`), the lane LayerNorm and the
//! blocked attention. The bound is that of a K-term dot product relative to Σ|terms|
//! ([`dot_tol`]), computed from the plain twin in f64 on the same inputs.

use ndarray::{Array2, Array4, Dimension};
use proptest::prelude::*;

use super::{dot_tol, Rng};
use crate::reference::ops::activation::softmax_rows_lanes;
use crate::reference::ops::attention::{attention_blocked, GatheredBias};
use crate::reference::ops::conv::{conv2d_tiled, conv_transpose2d_tiled};
use crate::reference::ops::gemm::{gemm_into, linear_gemm, matmul_gemm};
use crate::reference::ops::norm::layer_norm_lanes;
use crate::reference::ops::plain;
use crate::reference::ops::winograd::Winograd;

/// `|fast - twin| <= tol · mag + tiny` elementwise, with `mag` the twin on |inputs| (f64).
fn close<D: Dimension>(
    fast: &ndarray::Array<f32, D>,
    twin: &ndarray::Array<f32, D>,
    mag: &ndarray::Array<f64, D>,
    tol: f64,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(fast.shape(), twin.shape());
    for ((&f, &t), &m) in fast.iter().zip(twin).zip(mag) {
        let err = (f as f64 - t as f64).abs();
        prop_assert!(err <= tol * m + 1e-30, "fast {} twin {} err {} bound {}", f, t, err, tol * m);
    }
    Ok(())
}

fn abs4(a: &Array4<f32>) -> Array4<f64> {
    a.mapv(|v| (v as f64).abs())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn gemm_matches_the_textbook_product(m in 1usize..300, k in 0usize..70, n in 1usize..300, seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let (a, b) = (rng.mat::<f32>((m, k)), rng.mat::<f32>((k, n)));
        let twin = plain::matmul(a.view(), b.view());
        let mag = plain::matmul(a.mapv(|v| (v as f64).abs()).view(), b.mapv(|v| (v as f64).abs()).view());
        let mut blocked = Array2::zeros((m, n));
        gemm_into(a.view(), b.view(), 0.0, blocked.view_mut());
        close(&blocked, &twin, &mag, 2.0 * dot_tol::<f32>(k))?;
        close(&matmul_gemm(a.view(), b.view()), &twin, &mag, 2.0 * dot_tol::<f32>(k))?;
        let bias = rng.vec::<f32>(n);
        let wt = b.t().to_owned();
        let lin = linear_gemm(a.view(), wt.view(), Some(bias.view()));
        let lin_twin = plain::linear(a.view(), wt.view(), Some(bias.view()));
        close(&lin, &lin_twin, &(mag + 1.0), 2.0 * dot_tol::<f32>(k + 1))?;
    }

    #[test]
    fn conv2d_kernels_match_the_textbook_loop(
        (b, cin, h, w) in (1usize..3, 1usize..9, 3usize..20, 3usize..20),
        (cout, k) in (1usize..9, 1usize..4),
        (s, p, d) in (1usize..3, 0usize..3, 1usize..3),
        tile in prop_oneof![Just(1usize << 22), 16usize..400],
        seed in any::<u64>(),
    ) {
        prop_assume!(h + 2 * p > d * (k - 1) && w + 2 * p > d * (k - 1));
        let mut rng = Rng::new(seed);
        let (x, wt, bias) = (rng.t4::<f32>((b, cin, h, w)), rng.t4::<f32>((cout, cin, k, k)), rng.vec::<f32>(cout));
        let twin = plain::conv2d(x.view(), wt.view(), Some(bias.view()), (s, s), (p, p), (d, d));
        let mag = plain::conv2d(abs4(&x).view(), abs4(&wt).view(), Some(bias.mapv(|v| (v as f64).abs()).view()), (s, s), (p, p), (d, d));
        let tol = 2.0 * dot_tol::<f32>(cin * k * k + 1);
        close(&conv2d_tiled(x.view(), wt.view(), Some(bias.view()), (s, s), (p, p), (d, d), tile), &twin, &mag, tol)?;
        if k == 3 && s == 1 && d == 1 {
            // Winograd's transforms add up to 4x4 terms per tap: a few more roundings.
            let wino = Winograd::new(wt.view()).conv2d(x.view(), Some(bias.view()), (p, p));
            close(&wino, &twin, &mag, 8.0 * tol)?;
        }
    }

    #[test]
    fn conv_transpose2d_matches_the_textbook_loop(
        (b, cin, h, w) in (1usize..3, 1usize..9, 1usize..12, 1usize..12),
        (cout, k, s, p) in (1usize..9, 1usize..4, 1usize..4, 0usize..2),
        tile in prop_oneof![Just(1usize << 22), 8usize..200],
        seed in any::<u64>(),
    ) {
        prop_assume!((h - 1) * s + k > 2 * p && (w - 1) * s + k > 2 * p);
        let mut rng = Rng::new(seed);
        let (x, wt, bias) = (rng.t4::<f32>((b, cin, h, w)), rng.t4::<f32>((cin, cout, k, k)), rng.vec::<f32>(cout));
        let twin = plain::conv_transpose2d(x.view(), wt.view(), Some(bias.view()), (s, s), (p, p));
        let mag = plain::conv_transpose2d(abs4(&x).view(), abs4(&wt).view(), Some(bias.mapv(|v| (v as f64).abs()).view()), (s, s), (p, p));
        let fast = conv_transpose2d_tiled(x.view(), wt.view(), Some(bias.view()), (s, s), (p, p), tile);
        close(&fast, &twin, &mag, 2.0 * dot_tol::<f32>(cin * k * k + 1))?;
    }

    #[test]
    fn softmax_and_layer_norm_match_the_textbook_rows(n in 1usize..40, c in 1usize..300, scale in 0.1f64..30.0, seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let x = rng.mat::<f32>((n, c)).mapv(|v| v * scale as f32);
        let mut fast = x.clone();
        softmax_rows_lanes(fast.view_mut());
        let mut twin = x.clone();
        plain::softmax_rows_inplace(twin.view_mut());
        // exp within 2 ulp (Cephes), sums of c terms: relative to each output.
        let mag = twin.mapv(|v| v as f64);
        close(&fast, &twin, &mag, 4.0 * dot_tol::<f32>(c))?;
        let (g, bt) = (rng.vec::<f32>(c), rng.vec::<f32>(c));
        let ln = layer_norm_lanes(x.view(), Some(g.view()), Some(bt.view()), 1e-6);
        let ln_twin = plain::layer_norm(x.view(), Some(g.view()), Some(bt.view()), 1e-6);
        let ln_mag = ln_twin.mapv(|v| (v as f64).abs() + 1.0);
        close(&ln, &ln_twin, &ln_mag, 4.0 * dot_tol::<f32>(c))?;
    }

    #[test]
    fn blocked_attention_matches_the_textbook_heads(
        (b, nh, n, d) in (1usize..3, 1usize..4, 1usize..300, 1usize..17),
        rows in 1usize..50,
        seed in any::<u64>(),
    ) {
        let mut rng = Rng::new(seed);
        let (q, k, v) = (rng.t4::<f32>((b, nh, n, d)), rng.t4::<f32>((b, nh, n, d)), rng.t4::<f32>((b, nh, n, d)));
        let table = rng.mat::<f32>((rows, nh));
        let index = Array2::from_shape_fn((n, n), |_| rng.below(rows));
        let bias = GatheredBias::new(table.view(), index.clone());
        let twin = plain::attention(q.view(), k.view(), v.view(), table.t(), index.view());
        let fast = attention_blocked(q.view(), k.view(), v.view(), &bias);
        // softmax weights sum to 1: |out| <= max|v|, every entry within a few ulp of 1 · (d + n) terms.
        let mag = Array4::from_elem(twin.dim(), 1.0);
        close(&fast, &twin, &mag, 4.0 * dot_tol::<f32>(n + d))?;
    }
}
