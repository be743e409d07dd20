//! Property tests (proptest) of the ndarray reference: algebraic facts about the pure ops, the
//! attention and its relative-position index, and the segmentor's inference modes.
//!
//! Every property is stated against something independent of the code under test (a naive
//! loop, an adjoint identity, an invariance, a second way to run the same model), so a wrong
//! implementation makes it fail. Shapes are small and case counts chosen so that the whole file
//! runs in a few seconds in release.
//!
//! Bulk data (weights, images) is drawn from a seeded generator whose seed is part of the case,
//! so a failure is reproducible from the printed counterexample; the shapes and options of the
//! case shrink as usual.

use ndarray::{s, Array2, Array3, Array4, ArrayD, Axis, IxDyn};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use serde_json::json;

use beit_seg::array::AnyArray;
use beit_seg::config::{BeitConfig, SegmentorConfig};
use beit_seg::model::relative_position_index;
use beit_seg::reference::beit::BeitAttention;
use beit_seg::reference::ops;
use beit_seg::reference::segmentor::EncoderDecoder;
use beit_seg::reference::Recorder;
use beit_seg::weights::WeightStore;

// ------------------------------------------------------------------------------- helpers

mod common;
use common::Rng;

/// Tensor constructors on the shared generator.
impl Rng {
    fn t4(&mut self, shape: (usize, usize, usize, usize), lo: f64, hi: f64) -> Array4<f64> {
        Array4::from_shape_simple_fn(shape, || self.uniform(lo, hi))
    }
    fn t3(&mut self, shape: (usize, usize, usize), lo: f64, hi: f64) -> Array3<f64> {
        Array3::from_shape_simple_fn(shape, || self.uniform(lo, hi))
    }
    fn t2(&mut self, shape: (usize, usize), lo: f64, hi: f64) -> Array2<f64> {
        Array2::from_shape_simple_fn(shape, || self.uniform(lo, hi))
    }
    fn td(&mut self, shape: &[usize], lo: f64, hi: f64) -> ArrayD<f64> {
        ArrayD::from_shape_simple_fn(IxDyn(shape), || self.uniform(lo, hi))
    }
}

/// `|a - b| <= tol` element-wise, reporting the first offending index.
fn assert_all_close<D: ndarray::Dimension>(
    what: &str,
    got: &ndarray::Array<f64, D>,
    want: &ndarray::Array<f64, D>,
    tol: f64,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.shape(), want.shape(), "{}: shapes differ", what);
    for ((i, &g), &w) in got.indexed_iter().zip(want.iter()) {
        prop_assert!(
            (g - w).abs() <= tol,
            "{}: at {:?} got {:e}, want {:e} (diff {:e} > tol {:e})",
            what,
            i,
            g,
            w,
            (g - w).abs(),
            tol
        );
    }
    Ok(())
}

/// Exact (bitwise for non-NaN) equality, reporting the first offending index.
fn assert_all_equal<D: ndarray::Dimension>(
    what: &str,
    got: &ndarray::Array<f64, D>,
    want: &ndarray::Array<f64, D>,
) -> Result<(), TestCaseError> {
    assert_all_close(what, got, want, 0.0)
}

fn max_abs<D: ndarray::Dimension>(a: &ndarray::Array<f64, D>) -> f64 {
    a.iter().fold(0.0f64, |m, v| m.max(v.abs()))
}

/// One axis of a convolution: (kernel, stride, padding, dilation, input length) with the input
/// long enough for the dilated kernel to fit the padded input.
fn conv_axis() -> impl Strategy<Value = (usize, usize, usize, usize, usize)> {
    (1usize..=4, 1usize..=3, 0usize..=2, 1usize..=3).prop_flat_map(|(k, s, p, d)| {
        let extent = d * (k - 1) + 1;
        let nmin = extent.saturating_sub(2 * p).max(1);
        (Just(k), Just(s), Just(p), Just(d), nmin..=nmin + 6)
    })
}

/// One axis of a transposed convolution: (kernel, stride, padding, input length) with a
/// positive output length `(n - 1)·s - 2p + k`.
fn conv_t_axis() -> impl Strategy<Value = (usize, usize, usize, usize)> {
    (1usize..=4, 1usize..=3).prop_flat_map(|(k, s)| (Just(k), Just(s), 0usize..=k)).prop_flat_map(|(k, s, p)| {
        let nmin = if k > 2 * p { 1 } else { (2 * p - k) / s + 2 };
        (Just(k), Just(s), Just(p), nmin..=nmin + 4)
    })
}

/// One axis of a max pool: (kernel, stride, padding ≤ k/2, input length ≥ k - 2p).
fn pool_axis() -> impl Strategy<Value = (usize, usize, usize, usize)> {
    (1usize..=4, 1usize..=3).prop_flat_map(|(k, s)| (Just(k), Just(s), 0usize..=k / 2)).prop_flat_map(|(k, s, p)| {
        let nmin = k.saturating_sub(2 * p).max(1);
        (Just(k), Just(s), Just(p), nmin..=nmin + 6)
    })
}

/// Direct 6-loop convolution (`torch.nn.functional.conv2d`, groups = 1, zero padding).
#[allow(clippy::too_many_arguments)]
fn naive_conv2d(
    x: &Array4<f64>,
    w: &Array4<f64>,
    bias: Option<&ndarray::Array1<f64>>,
    stride: (usize, usize),
    padding: (usize, usize),
    dilation: (usize, usize),
) -> Array4<f64> {
    let (b, cin, h, wd) = x.dim();
    let (cout, _, kh, kw) = w.dim();
    let ho = (h + 2 * padding.0 - dilation.0 * (kh - 1) - 1) / stride.0 + 1;
    let wo = (wd + 2 * padding.1 - dilation.1 * (kw - 1) - 1) / stride.1 + 1;
    let mut y = Array4::zeros((b, cout, ho, wo));
    for n in 0..b {
        for o in 0..cout {
            for i in 0..ho {
                for j in 0..wo {
                    let mut acc = bias.map_or(0.0, |bv| bv[o]);
                    for c in 0..cin {
                        for u in 0..kh {
                            for v in 0..kw {
                                let ih = (i * stride.0 + u * dilation.0) as isize - padding.0 as isize;
                                let iw = (j * stride.1 + v * dilation.1) as isize - padding.1 as isize;
                                if ih >= 0 && iw >= 0 && (ih as usize) < h && (iw as usize) < wd {
                                    acc += w[[o, c, u, v]] * x[[n, c, ih as usize, iw as usize]];
                                }
                            }
                        }
                    }
                    y[[n, o, i, j]] = acc;
                }
            }
        }
    }
    y
}

/// `cases` cases; failures persisted to `proptest-regressions/properties.txt` (relative to the
/// package root, where cargo runs integration tests), so a committed regression file replays
/// them first on every run.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("proptest-regressions/properties.txt"))),
        ..ProptestConfig::default()
    }
}

fn dot4(a: &Array4<f64>, b: &Array4<f64>) -> f64 {
    a.iter().zip(b.iter()).map(|(x, y)| x * y).sum()
}

// ------------------------------------------------------------------------------- ops

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn softmax_rows_sum_to_one_and_are_shift_invariant(
        rows in 1usize..=5,
        cols in 1usize..=9,
        seed in any::<u64>(),
        spread in 0.0f64..60.0,
        shift in -200.0f64..200.0,
    ) {
        let mut rng = Rng::new(seed);
        let x = rng.t2((rows, cols), -spread, spread);
        let mut y = x.clone();
        ops::softmax_rows_inplace(y.view_mut());
        for (r, row) in y.rows().into_iter().enumerate() {
            let sum: f64 = row.sum();
            prop_assert!((sum - 1.0).abs() <= 1e-13, "row {} sums to {}", r, sum);
            prop_assert!(row.iter().all(|&v| (0.0..=1.0).contains(&v)), "row {} leaves [0, 1]: {:?}", r, row);
        }
        // Adding the same constant to a row does not change its softmax.
        let mut ys = &x + shift;
        ops::softmax_rows_inplace(ys.view_mut());
        assert_all_close("softmax(x + c) vs softmax(x)", &ys, &y, 1e-12)?;
    }

    #[test]
    fn layer_norm_standardises_rows_and_is_scale_invariant(
        rows in 1usize..=4,
        cols in 2usize..=16,
        seed in any::<u64>(),
        offset in -50.0f64..50.0,
        scale in 0.01f64..100.0,
    ) {
        let mut rng = Rng::new(seed);
        let x = rng.t2((rows, cols), -3.0, 3.0) + offset;
        let mut min_var = f64::INFINITY;
        for row in x.rows() {
            let m = row.mean().unwrap();
            min_var = min_var.min(row.mapv(|v| (v - m) * (v - m)).mean().unwrap());
        }
        // eps must be negligible next to every row variance, of x and of scale·x.
        prop_assume!(min_var > 0.1);
        let eps = 1e-12;
        let y = ops::layer_norm(x.view(), None, None, eps);
        for (r, row) in y.rows().into_iter().enumerate() {
            let m = row.mean().unwrap();
            let var = row.mapv(|v| (v - m) * (v - m)).mean().unwrap();
            prop_assert!(m.abs() <= 1e-12, "row {} has mean {:e}", r, m);
            // var(y) = v / (v + eps): 1 up to eps/v and rounding.
            prop_assert!((var - 1.0).abs() <= 1e-10, "row {} has variance {}", r, var);
        }
        // LN(s·x) = LN(x) for s > 0, up to the eps effect: y_s/y = sqrt(v + eps)/sqrt(v + eps/s²),
        // a relative change of at most eps/(2·min(1, s²)·v).
        let ys = ops::layer_norm((&x * scale).view(), None, None, eps);
        let eps_effect = eps / (2.0 * scale.powi(2).min(1.0) * min_var);
        let tol = 1e-12 + 1.01 * eps_effect * max_abs(&y);
        assert_all_close("LN(s x) vs LN(x)", &ys, &y, tol)?;
        // With affine parameters: LN(x)·w + b, column-wise.
        let w = rng.t2((1, cols), -2.0, 2.0).remove_axis(Axis(0));
        let b = rng.t2((1, cols), -2.0, 2.0).remove_axis(Axis(0));
        let ya = ops::layer_norm(x.view(), Some(w.view()), Some(b.view()), eps);
        assert_all_close("LN affine", &ya, &(&y * &w + &b), 1e-12)?;
    }

    #[test]
    fn gelu_matches_erf_formula_and_is_monotone_above_its_minimum(
        x in -40.0f64..40.0,
        a in -0.75f64..12.0,
        delta in 1e-6f64..5.0,
    ) {
        let got = ops::gelu(x);
        // PyTorch's kernel (and the doc of `gelu`): x·0.5·(1 + erf(x·M_SQRT1_2)), bit for bit.
        let torch = x * 0.5 * (1.0 + libm::erf(x * std::f64::consts::FRAC_1_SQRT_2));
        prop_assert_eq!(got.to_bits(), torch.to_bits(), "gelu({}) = {:e}, torch formula {:e}", x, got, torch);
        // The textbook 0.5·x·(1 + erf(x/√2)): x/√2 and x·(1/√2) may differ by an ulp, which
        // 1 + erf(t) amplifies where erf(t) ≈ -1; bound that by the conditioning of erf.
        let t = x / std::f64::consts::SQRT_2;
        let want = 0.5 * x * (1.0 + libm::erf(t));
        let derf = std::f64::consts::FRAC_2_SQRT_PI * (-t * t).exp();
        let tol = 4.0 * f64::EPSILON * want.abs() + 0.5 * x.abs() * f64::EPSILON * (2.0 + 2.0 * derf * t.abs());
        prop_assert!((got - want).abs() <= tol,
            "gelu({}) = {:e}, formula {:e} (diff {:e} > {:e})", x, got, want, (got - want).abs(), tol);
        // f32: the f64 value rounded (within one f32 ulp of it).
        let xf = x as f32;
        let wantf = 0.5 * (xf as f64) * (1.0 + libm::erf(xf as f64 / std::f64::consts::SQRT_2));
        let gotf = ops::gelu(xf);
        prop_assert!(((gotf as f64) - wantf).abs() <= (f32::EPSILON as f64) * wantf.abs() + 1e-40,
            "gelu::<f32>({}) = {:e}, formula {:e}", xf, gotf, wantf);
        // Strictly increasing on [-0.75, ∞): the derivative there is at least ~8e-4, so a step
        // of 1e-6 raises the value far more than rounding can lower it.
        let b = a + delta;
        prop_assert!(ops::gelu(a) < ops::gelu(b), "gelu({}) = {:e} >= gelu({}) = {:e}", a, ops::gelu(a), b, ops::gelu(b));
    }

    #[test]
    fn conv2d_equals_naive_convolution(
        batch in 1usize..=2,
        cin in 1usize..=3,
        cout in 1usize..=3,
        (kh, sh, ph, dh, h) in conv_axis(),
        (kw, sw, pw, dw, w) in conv_axis(),
        with_bias in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let mut rng = Rng::new(seed);
        let x = rng.t4((batch, cin, h, w), -1.0, 1.0);
        let wt = rng.t4((cout, cin, kh, kw), -1.0, 1.0);
        let bias = rng.t2((1, cout), -1.0, 1.0).remove_axis(Axis(0));
        let bias = with_bias.then_some(bias);
        let got = ops::conv2d(x.view(), wt.view(), bias.as_ref().map(|b| b.view()), (sh, sw), (ph, pw), (dh, dw));
        let want = naive_conv2d(&x, &wt, bias.as_ref(), (sh, sw), (ph, pw), (dh, dw));
        assert_all_close("conv2d vs naive", &got, &want, 1e-12)?;
    }

    #[test]
    fn linear_equals_naive_matrix_product(
        n in 1usize..=160,
        inp in 1usize..=48,
        out in 1usize..=96,
        with_bias in any::<bool>(),
        seed in any::<u64>(),
    ) {
        // Sizes reach the parallel, column- or row-blocked GEMM path (>= 2^18 multiply-adds).
        let mut rng = Rng::new(seed);
        let x = rng.t2((n, inp), -1.0, 1.0);
        let w = rng.t2((out, inp), -1.0, 1.0);
        let b = rng.t2((1, out), -1.0, 1.0).remove_axis(Axis(0));
        let b = with_bias.then_some(b);
        let y = ops::linear(x.view(), w.view(), b.as_ref().map(|b| b.view()));
        let want = Array2::from_shape_fn((n, out), |(i, j)| {
            b.as_ref().map_or(0.0, |b| b[j]) + (0..inp).map(|k| x[[i, k]] * w[[j, k]]).sum::<f64>()
        });
        assert_all_close("linear vs naive", &y, &want, 1e-12)?;
    }

    #[test]
    fn batch_norm_eval_matches_its_formula(
        b in 1usize..=2, c in 1usize..=4, h in 1usize..=5, w in 1usize..=5,
        affine in any::<bool>(), seed in any::<u64>(),
    ) {
        let mut rng = Rng::new(seed);
        let x = rng.t4((b, c, h, w), -3.0, 3.0);
        let mean = rng.t2((1, c), -1.0, 1.0).remove_axis(Axis(0));
        let var = rng.t2((1, c), 0.1, 3.0).remove_axis(Axis(0));
        let gamma = rng.t2((1, c), -2.0, 2.0).remove_axis(Axis(0));
        let beta = rng.t2((1, c), -2.0, 2.0).remove_axis(Axis(0));
        let eps = 1e-5;
        let mut y = x.clone();
        if affine {
            ops::batch_norm_inplace(&mut y, mean.view(), var.view(), Some(gamma.view()), Some(beta.view()), eps);
        } else {
            ops::batch_norm_inplace(&mut y, mean.view(), var.view(), None, None, eps);
        }
        let want = Array4::from_shape_fn((b, c, h, w), |(n, ch, i, j)| {
            let v = (x[[n, ch, i, j]] - mean[ch]) / (var[ch] + eps).sqrt();
            if affine { v * gamma[ch] + beta[ch] } else { v }
        });
        assert_all_close("batch_norm vs formula", &y, &want, 1e-13)?;
    }

    #[test]
    fn conv_transpose2d_is_adjoint_of_conv2d_with_the_same_weight(
        batch in 1usize..=2,
        cin in 1usize..=3,
        cout in 1usize..=3,
        (kh, sh, ph, h) in conv_t_axis(),
        (kw, sw, pw, w) in conv_t_axis(),
        seed in any::<u64>(),
    ) {
        // convT:  y[b,o, i·s+u-p, j·s+v-p] += Σ_c x[b,c,i,j] · W[c,o,u,v]     (W: Cin × Cout × k × k)
        // conv:   z[b,c,i,j] = Σ_{o,u,v} W'[c,o,u,v] · y[b,o, i·s+u-p, j·s+v-p]  (W': Cout' × Cin' × k × k)
        // so with W' = W (the same array, read as a conv weight from Cout channels to Cin channels,
        // no flip) ⟨convT(x, W), y⟩ = ⟨x, conv(y, W)⟩, and conv maps the convT output size back to H.
        let mut rng = Rng::new(seed);
        let x = rng.t4((batch, cin, h, w), -1.0, 1.0);
        let wt = rng.t4((cin, cout, kh, kw), -1.0, 1.0);
        let ct = ops::conv_transpose2d(x.view(), wt.view(), None, (sh, sw), (ph, pw));
        let (ho, wo) = ((h - 1) * sh + kh - 2 * ph, (w - 1) * sw + kw - 2 * pw);
        prop_assert_eq!(ct.dim(), (batch, cout, ho, wo));
        let y = rng.t4((batch, cout, ho, wo), -1.0, 1.0);
        let z = ops::conv2d(y.view(), wt.view(), None, (sh, sw), (ph, pw), (1, 1));
        prop_assert_eq!(z.dim(), (batch, cin, h, w));
        let lhs = dot4(&ct, &y);
        let rhs = dot4(&x, &z);
        // Rounding bound: the same sum of products in two orders.
        let bound = dot4(
            &ops::conv_transpose2d(x.mapv(f64::abs).view(), wt.mapv(f64::abs).view(), None, (sh, sw), (ph, pw)),
            &y.mapv(f64::abs),
        );
        prop_assert!((lhs - rhs).abs() <= 1e-13 * (1.0 + bound),
            "<convT(x), y> = {:e} but <x, conv(y)> = {:e}", lhs, rhs);
        // The bias is added once to every output pixel of its channel.
        let bias = rng.t2((1, cout), -1.0, 1.0).remove_axis(Axis(0));
        let ctb = ops::conv_transpose2d(x.view(), wt.view(), Some(bias.view()), (sh, sw), (ph, pw));
        let want = &ct + &bias.view().insert_axis(Axis(1)).insert_axis(Axis(2));
        assert_all_close("convT with bias", &ctb, &want, 1e-12)?;
    }

    #[test]
    fn bilinear_resize_to_same_size_is_identity(
        b in 1usize..=2, c in 1usize..=3, h in 1usize..=9, w in 1usize..=9,
        align_corners in any::<bool>(), seed in any::<u64>(),
    ) {
        let x = Rng::new(seed).t4((b, c, h, w), -10.0, 10.0);
        let y = ops::resize(x.view(), (h, w), align_corners);
        assert_all_equal("resize to the same size", &y, &x)?;
        // Also through a non-standard (transposed-back) layout.
        let xt = x.clone().reversed_axes();
        let y2 = ops::resize(xt.t(), (h, w), align_corners);
        assert_all_equal("resize of a strided view", &y2, &x)?;
    }

    #[test]
    fn bilinear_resize_of_constant_is_constant_and_stays_in_range(
        h in 1usize..=7, w in 1usize..=7, oh in 1usize..=20, ow in 1usize..=20,
        value in -100.0f64..100.0, align_corners in any::<bool>(), seed in any::<u64>(),
    ) {
        let x = Array4::from_elem((1, 2, h, w), value);
        let y = ops::resize(x.view(), (oh, ow), align_corners);
        prop_assert_eq!(y.dim(), (1, 2, oh, ow));
        for &v in y.iter() {
            prop_assert!((v - value).abs() <= 4.0 * f64::EPSILON * value.abs(), "constant {} resized to {}", value, v);
        }
        // Each output is a convex combination of inputs: inside [min, max] of its plane.
        let x = Rng::new(seed).t4((1, 2, h, w), -10.0, 10.0);
        let y = ops::resize(x.view(), (oh, ow), align_corners);
        for ch in 0..2 {
            let plane = x.slice(s![0, ch, .., ..]);
            let lo = plane.fold(f64::INFINITY, |m, &v| m.min(v));
            let hi = plane.fold(f64::NEG_INFINITY, |m, &v| m.max(v));
            for &v in y.slice(s![0, ch, .., ..]).iter() {
                prop_assert!(v >= lo - 1e-14 && v <= hi + 1e-14, "{} outside [{}, {}]", v, lo, hi);
            }
        }
    }

    #[test]
    fn bilinear_align_corners_keeps_the_four_corners(
        h in 1usize..=8, w in 1usize..=8, oh in 2usize..=64, ow in 2usize..=64, seed in any::<u64>(),
    ) {
        let x = Rng::new(seed).t4((2, 2, h, w), -10.0, 10.0);
        let y = ops::resize(x.view(), (oh, ow), true);
        // (n-1)/(m-1)·(m-1) need not round back to n-1 exactly (e.g. 1/49·49 < 1), in PyTorch
        // too, so the far corners are kept up to a few ulps.
        let tol = 1e-14 * max_abs(&x);
        for b in 0..2 {
            for c in 0..2 {
                for &(oi, oj, ii, ij) in &[(0, 0, 0, 0), (0, ow - 1, 0, w - 1), (oh - 1, 0, h - 1, 0), (oh - 1, ow - 1, h - 1, w - 1)] {
                    let (g, e) = (y[[b, c, oi, oj]], x[[b, c, ii, ij]]);
                    prop_assert!((g - e).abs() <= tol, "corner ({}, {}) is {} but input ({}, {}) is {}", oi, oj, g, ii, ij, e);
                }
            }
        }
        // The first corner involves no rounding at all.
        prop_assert_eq!(y[[0, 0, 0, 0]], x[[0, 0, 0, 0]]);
    }

    #[test]
    fn adaptive_avg_pool_to_input_size_is_identity_and_to_one_is_the_mean(
        b in 1usize..=2, c in 1usize..=3, h in 1usize..=9, w in 1usize..=9, seed in any::<u64>(),
    ) {
        let x = Rng::new(seed).t4((b, c, h, w), -10.0, 10.0);
        let same = ops::adaptive_avg_pool2d(x.view(), (h, w));
        assert_all_equal("adaptive pool to the input size", &same, &x)?;
        let one = ops::adaptive_avg_pool2d(x.view(), (1, 1));
        prop_assert_eq!(one.dim(), (b, c, 1, 1));
        for n in 0..b {
            for ch in 0..c {
                let mean = x.slice(s![n, ch, .., ..]).mean().unwrap();
                prop_assert!((one[[n, ch, 0, 0]] - mean).abs() <= 1e-13, "({}, {}): {} vs mean {}", n, ch, one[[n, ch, 0, 0]], mean);
            }
        }
        // Pooling (h, w) to (h, 1) gives the row means.
        let rowm = ops::adaptive_avg_pool2d(x.view(), (h, 1));
        let want = x.mean_axis(Axis(3)).unwrap().insert_axis(Axis(3));
        assert_all_close("adaptive pool to (h, 1)", &rowm, &want, 1e-13)?;
    }

    #[test]
    fn max_pool_commutes_with_monotone_increasing_maps(
        b in 1usize..=2, c in 1usize..=2,
        (kh, sh, ph, h) in pool_axis(),
        (kw, sw, pw, w) in pool_axis(),
        seed in any::<u64>(),
    ) {
        let x = Rng::new(seed).t4((b, c, h, w), -3.0, 3.0);
        // x ↦ x³ + 2x is non-decreasing in floating point too (each rounded op is monotone), so
        // the window maximum maps to the maximum of the mapped window, exactly.
        let f = |v: f64| v * v * v + 2.0 * v;
        let pooled_then_mapped = ops::max_pool2d(x.view(), (kh, kw), (sh, sw), (ph, pw)).mapv(f);
        let mapped_then_pooled = ops::max_pool2d(x.mapv(f).view(), (kh, kw), (sh, sw), (ph, pw));
        assert_all_equal("maxpool(f(x)) vs f(maxpool(x))", &mapped_then_pooled, &pooled_then_mapped)?;
        let g = f64::exp;
        let a = ops::max_pool2d(x.view(), (kh, kw), (sh, sw), (ph, pw)).mapv(g);
        let bb = ops::max_pool2d(x.mapv(g).view(), (kh, kw), (sh, sw), (ph, pw));
        assert_all_equal("maxpool(exp(x)) vs exp(maxpool(x))", &bb, &a)?;
    }

    // What flip test-time augmentation relies on: the label map of flipped logits is the flipped
    // label map. (Nothing true relates slide(flip(img)) to slide(img) for these models: the patch
    // embedding and the relative-position table are not flip-symmetric, so no such property.)
    #[test]
    fn argmax_of_flipped_logits_is_flipped_argmax(
        b in 1usize..=2, c in 1usize..=5, h in 1usize..=5, w in 1usize..=6,
        values in proptest::collection::vec(prop::sample::select(vec![-1.0, 0.0, 0.5, 1.0, f64::NAN]), 2 * 5 * 5 * 6),
    ) {
        // Few distinct values: ties (first channel wins) and NaNs (first NaN wins) are common.
        let n = b * c * h * w;
        let x = Array4::from_shape_vec((b, c, h, w), values[..n].to_vec()).unwrap();
        let flipped = x.slice(s![.., .., .., ..;-1]).to_owned();
        let got = ops::argmax_channels(flipped.view());
        let want = ops::argmax_channels(x.view()).slice(s![.., .., ..;-1]).to_owned();
        prop_assert_eq!(got, want);
    }
}

proptest! {
    #![proptest_config(config(16))]

    #[test]
    fn conv2d_equals_naive_convolution_with_many_channels(
        cin in 8usize..=24,
        cout in 24usize..=64,
        k in 1usize..=3,
        stride in 1usize..=2,
        h in 6usize..=14,
        w in 6usize..=14,
        seed in any::<u64>(),
    ) {
        // Enough work for the parallel GEMM split (1x1: pointwise path) and several im2col tiles.
        let mut rng = Rng::new(seed);
        let x = rng.t4((1, cin, h, w), -1.0, 1.0);
        let wt = rng.t4((cout, cin, k, k), -1.0, 1.0);
        let bias = rng.t2((1, cout), -1.0, 1.0).remove_axis(Axis(0));
        let p = k / 2;
        let got = ops::conv2d(x.view(), wt.view(), Some(bias.view()), (stride, stride), (p, p), (1, 1));
        let want = naive_conv2d(&x, &wt, Some(&bias), (stride, stride), (p, p), (1, 1));
        assert_all_close("conv2d vs naive", &got, &want, 1e-12)?;
    }
}

// ------------------------------------------------------------------------------- attention

fn beit_config(window: (usize, usize), embed: usize, heads: usize, qv_bias: bool) -> BeitConfig {
    let v = json!({
        "type": "BEiT", "img_size": [16 * window.0, 16 * window.1], "patch_size": 16, "in_channels": 3,
        "embed_dims": embed, "num_layers": 1, "num_heads": heads, "mlp_ratio": 2, "qv_bias": qv_bias,
        "norm_cfg": {"type": "LN", "eps": 1e-6},
    });
    BeitConfig::from_value(&v, "backbone").expect("valid BEiT config")
}

/// Random weights for `BeitAttention::load(_, "attn", cfg)`, with the relative-position table
/// zero when `zero_table`.
fn attention_store(cfg: &BeitConfig, seed: u64, zero_table: bool) -> WeightStore<f64> {
    let mut probe = WeightStore::<f64>::from_arrays(Vec::new());
    let _ = BeitAttention::load(&mut probe, "attn", cfg);
    let mut rng = Rng::new(seed);
    let arrays: Vec<(String, AnyArray)> = probe
        .requests()
        .iter()
        .map(|(k, shape)| {
            let mut a = rng.td(shape, -1.0, 1.0);
            if zero_table && k.ends_with("relative_position_bias_table") {
                a.fill(0.0);
            }
            (k.clone(), AnyArray::F64(a))
        })
        .collect();
    WeightStore::from_arrays(arrays)
}

/// A window, embed dims divisible by the heads, a batch, and a permutation of the patch tokens.
fn attention_case() -> impl Strategy<Value = ((usize, usize), usize, usize, usize, bool, Vec<usize>, u64)> {
    (1usize..=4, 1usize..=4, 1usize..=4, 1usize..=4, 1usize..=2, any::<bool>(), any::<u64>()).prop_flat_map(
        |(wh, ww, heads, head_dim, batch, qv, seed)| {
            let n = wh * ww;
            let perm = Just((1..=n).collect::<Vec<usize>>()).prop_shuffle();
            (Just((wh, ww)), Just(heads * head_dim), Just(heads), Just(batch), Just(qv), perm, Just(seed))
        },
    )
}

/// `x` with its patch tokens reordered: `out[:, 1 + i] = x[:, perm[i]]`, `out[:, 0] = x[:, 0]`.
fn permute_tokens(x: &Array3<f64>, perm: &[usize]) -> Array3<f64> {
    let mut out = x.clone();
    for (i, &p) in perm.iter().enumerate() {
        out.slice_mut(s![.., 1 + i, ..]).assign(&x.slice(s![.., p, ..]));
    }
    out
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn attention_with_zero_rel_pos_table_is_equivariant_to_patch_token_permutations(
        (window, embed, heads, batch, qv_bias, perm, seed) in attention_case(),
    ) {
        let cfg = beit_config(window, embed, heads, qv_bias);
        let mut ws = attention_store(&cfg, seed, true);
        let attn = BeitAttention::load(&mut ws, "attn", &cfg);
        ws.finish().expect("the store holds exactly the attention's parameters");
        prop_assert!(attn.bias.table().iter().all(|&v| v == 0.0));
        let n = window.0 * window.1 + 1;
        let x = Rng::new(seed ^ 0x5555).t3((batch, n, embed), -2.0, 2.0);
        let y = attn.forward(&x, "attn", &mut Recorder::none());
        let yp = attn.forward(&permute_tokens(&x, &perm), "attn", &mut Recorder::none());
        assert_all_close("attn(P x) vs P attn(x)", &yp, &permute_tokens(&y, &perm), 1e-12)?;
    }

    #[test]
    fn relative_position_index_maps_offsets_one_to_one_onto_table_rows(
        wh in 1usize..=8, ww in 1usize..=8,
    ) {
        let idx = relative_position_index((wh, ww));
        let n = wh * ww;
        let t = (2 * wh - 1) * (2 * ww - 1) + 3;
        prop_assert_eq!(idx.dim(), (n + 1, n + 1));
        // offset (dh, dw) -> row, and row -> offset: both must stay single-valued.
        let mut row_of = std::collections::HashMap::new();
        let mut offset_of = std::collections::HashMap::new();
        for p in 0..n {
            for q in 0..n {
                let off = ((p / ww) as isize - (q / ww) as isize, (p % ww) as isize - (q % ww) as isize);
                let r = idx[[1 + p, 1 + q]];
                prop_assert!(r < t - 3, "patch pair ({}, {}) uses row {} >= T-3 = {}", p, q, r, t - 3);
                let prev = *row_of.entry(off).or_insert(r);
                prop_assert_eq!(prev, r, "offset {:?} maps to rows {} and {}", off, prev, r);
                let prev = *offset_of.entry(r).or_insert(off);
                prop_assert_eq!(prev, off, "row {} is used by offsets {:?} and {:?}", r, prev, off);
            }
        }
        // Every one of the (2wh-1)(2ww-1) offsets occurs, so every row 0..T-4 is hit.
        prop_assert_eq!(row_of.len(), (2 * wh - 1) * (2 * ww - 1));
        prop_assert_eq!(offset_of.len(), t - 3);
        // The class-token entries.
        for j in 1..=n {
            prop_assert_eq!(idx[[0, j]], t - 3, "cls -> patch");
            prop_assert_eq!(idx[[j, 0]], t - 2, "patch -> cls");
        }
        prop_assert_eq!(idx[[0, 0]], t - 1, "cls -> cls");
    }
}

// ------------------------------------------------------------------------------- segmentor

/// A tiny BEiT + UPerHead config (no neck: the backbone's maps go straight to the head).
#[derive(Debug, Clone)]
struct TinyModel {
    embed: usize,
    layers: usize,
    heads: usize,
    img: (usize, usize),
    channels: usize,
    classes: usize,
    align_corners: bool,
    qv_bias: bool,
    final_norm: bool,
    seed: u64,
}

impl TinyModel {
    fn config(&self) -> SegmentorConfig {
        let idx: Vec<usize> = (0..self.layers).collect();
        let v = json!({
            "backbone": {
                "type": "BEiT", "img_size": [self.img.0, self.img.1], "patch_size": 16, "in_channels": 3,
                "embed_dims": self.embed, "num_layers": self.layers, "num_heads": self.heads, "mlp_ratio": 2,
                "out_indices": idx, "qv_bias": self.qv_bias, "final_norm": self.final_norm,
                "norm_cfg": {"type": "LN", "eps": 1e-6},
            },
            "decode_head": {
                "type": "UPerHead", "in_channels": vec![self.embed; self.layers], "in_index": idx,
                "pool_scales": [1, 2, 3], "channels": self.channels, "num_classes": self.classes,
                "norm_cfg": {"type": "BN", "requires_grad": true}, "align_corners": self.align_corners,
            },
            "test_cfg": {"mode": "whole"},
        });
        SegmentorConfig::from_value(&v).expect("valid tiny config")
    }

    /// The model with random weights filling `parameter_shapes` (BN running_var positive).
    fn build(&self) -> EncoderDecoder<f64> {
        let cfg = self.config();
        let mut rng = Rng::new(self.seed);
        let arrays: Vec<(String, AnyArray)> = EncoderDecoder::<f64>::parameter_shapes(&cfg)
            .into_iter()
            .map(|(k, shape)| {
                let a = if k.ends_with("running_var") {
                    rng.td(&shape, 0.5, 2.0)
                } else if k.ends_with("norm.weight")
                    || k.ends_with("ln1.weight")
                    || k.ends_with("ln2.weight")
                    || k.ends_with("bn.weight")
                {
                    rng.td(&shape, 0.5, 1.5)
                } else {
                    rng.td(&shape, -0.5, 0.5)
                };
                (k, AnyArray::F64(a))
            })
            .collect();
        EncoderDecoder::load(&cfg, WeightStore::from_arrays(arrays)).expect("random weights fit the config")
    }
}

fn tiny_model() -> impl Strategy<Value = TinyModel> {
    (
        prop::sample::select(vec![8usize, 12, 16]),
        1usize..=2,
        1usize..=2,
        prop::sample::select(vec![16usize, 32, 48]),
        prop::sample::select(vec![16usize, 32, 48]),
        4usize..=8,
        2usize..=4,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(|(embed, layers, heads, ih, iw, channels, classes, align_corners, qv_bias, final_norm, seed)| {
            TinyModel {
                embed,
                layers,
                heads,
                img: (ih, iw),
                channels,
                classes,
                align_corners,
                qv_bias,
                final_norm,
                seed,
            }
        })
}

proptest! {
    #![proptest_config(config(48))]

    #[test]
    fn slide_inference_with_crop_covering_the_image_equals_whole_inference(
        m in tiny_model(),
        extra in (0usize..=20, 0usize..=20),
        stride in (1usize..=64, 1usize..=64),
        batch in 1usize..=2,
    ) {
        let model = m.build();
        let (h, w) = m.img;
        let img = Rng::new(m.seed ^ 0xABCD).t4((batch, 3, h, w), -2.0, 2.0);
        let whole = model.encode_decode(&img, &mut Recorder::none()).unwrap();
        prop_assert_eq!(whole.dim(), (batch, m.classes, h, w));
        let slide = model.slide_inference(&img, (h + extra.0, w + extra.1), stride).unwrap();
        // One window, counted once: the same numbers exactly.
        assert_all_equal("slide (crop >= image) vs whole", &slide, &whole)?;
    }

    #[test]
    fn slide_inference_on_an_exact_grid_of_crops_equals_stitched_tiles(
        m in tiny_model(),
        grid in (1usize..=3, 1usize..=3),
    ) {
        let model = m.build();
        let (hc, wc) = m.img;
        let (h, w) = (grid.0 * hc, grid.1 * wc);
        let img = Rng::new(m.seed ^ 0x1234).t4((1, 3, h, w), -2.0, 2.0);
        let slide = model.slide_inference(&img, (hc, wc), (hc, wc)).unwrap();
        let mut stitched = Array4::<f64>::zeros((1, m.classes, h, w));
        for gi in 0..grid.0 {
            for gj in 0..grid.1 {
                let (y0, x0) = (gi * hc, gj * wc);
                let tile = img.slice(s![.., .., y0..y0 + hc, x0..x0 + wc]).to_owned();
                let logits = model.encode_decode(&tile, &mut Recorder::none()).unwrap();
                stitched.slice_mut(s![.., .., y0..y0 + hc, x0..x0 + wc]).assign(&logits);
            }
        }
        assert_all_equal("slide (stride = crop) vs stitched tiles", &slide, &stitched)?;
    }

    #[test]
    fn batch_inference_equals_per_image_inference(
        m in tiny_model(),
        batch in 2usize..=3,
    ) {
        let model = m.build();
        let (h, w) = m.img;
        let img = Rng::new(m.seed ^ 0x7777).t4((batch, 3, h, w), -2.0, 2.0);
        let out = model.forward(&img, &mut Recorder::none()).unwrap();
        prop_assert_eq!(out.seg_logits.dim(), (batch, m.classes, h, w));
        let tol = 1e-12 * (1.0 + max_abs(&out.seg_logits));
        for i in 0..batch {
            let single = img.slice(s![i..i + 1, .., .., ..]).to_owned();
            let one = model.forward(&single, &mut Recorder::none()).unwrap();
            let part = out.seg_logits.slice(s![i..i + 1, .., .., ..]).to_owned();
            assert_all_close(&format!("image {i} of the batch vs alone"), &part, &one.seg_logits, tol)?;
            // pred is the argmax of seg_logits, per image.
            prop_assert_eq!(out.pred.slice(s![i, .., ..]).to_owned(), ops::argmax_channels(part.view()).remove_axis(Axis(0)));
        }
    }

    #[test]
    fn slide_inference_is_the_per_pixel_mean_of_overlapping_window_logits(
        m in tiny_model(),
        extra in (0usize..=24, 0usize..=24),
        stride_frac in (0.0f64..1.0, 0.0f64..1.0),
    ) {
        // mmseg's slide_inference restated: windows every stride (≥ 8 px here, to bound the
        // number of windows), the last one moved back to end at the border, logits summed and
        // divided by the per-pixel window count. Image sizes need not be multiples of the patch.
        let model = m.build();
        let (hc, wc) = m.img;
        let (h, w) = (hc + extra.0, wc + extra.1);
        let hs = 8 + ((hc - 8) as f64 * stride_frac.0) as usize;
        let ws = 8 + ((wc - 8) as f64 * stride_frac.1) as usize;
        let img = Rng::new(m.seed ^ 0x4242).t4((1, 3, h, w), -2.0, 2.0);
        let got = model.slide_inference(&img, (hc, wc), (hs, ws)).unwrap();
        let h_grids = (h as isize - hc as isize + hs as isize - 1).max(0) as usize / hs + 1;
        let w_grids = (w as isize - wc as isize + ws as isize - 1).max(0) as usize / ws + 1;
        let mut sum = Array4::<f64>::zeros((1, m.classes, h, w));
        let mut count = Array2::<f64>::zeros((h, w));
        for hi in 0..h_grids {
            for wi in 0..w_grids {
                let y2 = (hi * hs + hc).min(h);
                let x2 = (wi * ws + wc).min(w);
                let (y1, x1) = (y2 - hc, x2 - wc);
                let tile = img.slice(s![.., .., y1..y2, x1..x2]).to_owned();
                let logits = model.encode_decode(&tile, &mut Recorder::none()).unwrap();
                let mut dst = sum.slice_mut(s![.., .., y1..y2, x1..x2]);
                dst += &logits;
                count.slice_mut(s![y1..y2, x1..x2]).mapv_inplace(|c| c + 1.0);
            }
        }
        prop_assert!(count.iter().all(|&c| c >= 1.0), "a pixel is covered by no window");
        let want = &sum / &count;
        assert_all_close("slide vs per-pixel window mean", &got, &want, 1e-12 * (1.0 + max_abs(&want)))?;
    }
}

// ------------------------------------------------------------------------------- flip TTA

/// The float64 reference behind the evaluation's model interface.
struct F64Model(EncoderDecoder<f64>);

impl beit_seg::backend::Model for F64Model {
    fn describe(&self) -> String {
        "ref f64".into()
    }
    fn run(
        &self,
        _inputs: &beit_seg::array::AnyArray,
        _wanted: &[String],
    ) -> Result<beit_seg::backend::Outputs, beit_seg::backend::BackendError> {
        Err(beit_seg::backend::BackendError::Unsupported("seg_logits only".into()))
    }
    fn seg_logits(&self, input: Array4<f32>) -> Result<Array4<f32>, beit_seg::backend::BackendError> {
        let x = input.mapv(|v| v as f64);
        let out = self.0.forward(&x, &mut Recorder::none())?;
        Ok(out.seg_logits.mapv(|v| v as f32))
    }
}

proptest! {
    #![proptest_config(config(24))]

    /// With a flip augmentation the TTA averages P(x) and flip(P(flip x)); evaluating the
    /// flipped image gives the same two terms, so TTA(flip x) = flip(TTA(x)) exactly (scale 1:
    /// the resize is the identity) and the predictions are mirror images.
    #[test]
    fn flip_tta_of_a_flipped_image_is_the_flipped_tta(m in tiny_model(), seed in any::<u64>()) {
        let model = F64Model(m.build());
        let (h, w) = m.img;
        let mut rng = Rng::new(seed);
        let img = ndarray::Array3::<u8>::from_shape_fn((h, w, 3), |_| (rng.next_u64() % 256) as u8);
        let settings = beit_seg::eval::EvalSettings {
            pipeline: beit_seg::eval::TestPipeline::ade20k(),
            preprocess: beit_seg::eval::Preprocess::ade20k(),
            aug: Some(beit_seg::eval::MsFlip { img_scale: (h.max(w), h.min(w)), ratios: vec![1.0], flip: true, min_size: None }),
            crop: None,
            align_corners: m.align_corners,
            num_classes: m.classes,
        };
        prop_assert_eq!(settings.plan((h, w)), vec![((h, w), false), ((h, w), true)]);
        let p = beit_seg::eval::predict(&settings, &model, img.view(), "x").unwrap();
        let flipped = img.slice(ndarray::s![.., ..;-1, ..]).to_owned();
        let q = beit_seg::eval::predict(&settings, &model, flipped.view(), "flipped x").unwrap();
        let q_back = q.seg.slice(ndarray::s![.., .., ..;-1]).to_owned();
        prop_assert!(q_back == p.seg, "TTA(flip x) is not flip(TTA(x))");
        prop_assert!(q.pred.slice(ndarray::s![.., ..;-1]) == p.pred);
    }
}
